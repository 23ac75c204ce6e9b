"""Bounded thread pools per kind of heavy work, with a per-user count of work in progress."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from concordia.logic.errors import TooMany
from concordia.settings import OperationSettings

T = TypeVar("T")


class WorkPool:
    """A few threads of its own for one kind of work, and how many turns each user holds.

    A user's turn spans the whole piece of work (a zip streamed for minutes holds one),
    while the threads are only taken for each blocking step: a slow client holds its turn,
    not a thread.
    """

    def __init__(self, kind: str, threads: int, per_user: int, refusal: str) -> None:
        self.kind = kind
        self.per_user = per_user
        self.refusal = refusal
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix=f"concordia-{kind}")
        self.held: Counter[int] = Counter()

    @contextmanager
    def turn(self, user_id: int) -> Iterator[None]:
        """Hold one of the user's turns; refused with 429 when they hold them all. Taken and
        given back on the event loop's thread (no lock needed), without awaiting: a stream
        cancelled when its client goes gives it back all the same."""
        if self.held[user_id] >= self.per_user:
            raise TooMany(f"{self.refusal} (at most {self.per_user}): wait for one to end")
        self.held[user_id] += 1
        try:
            yield
        finally:
            self.held[user_id] -= 1
            if not self.held[user_id]:
                del self.held[user_id]

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """One blocking step on this pool's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    async def call(self, user_id: int, fn: Callable[..., T], *args: object) -> T:
        """A blocking piece of work in one of the user's turns."""
        with self.turn(user_id):
            return await self.run(fn, *args)


class WorkPools:
    """The pools of one process, sized by the settings."""

    def __init__(self, settings: OperationSettings) -> None:
        self.zips = WorkPool(
            "zip", settings.zip_threads, settings.zip_per_user, "too many downloads at once"
        )
        self.listings = WorkPool(
            "listing",
            settings.listing_threads,
            settings.listing_per_user,
            "too many output listings at once",
        )
        self.credentials = WorkPool(
            "credential",
            settings.credential_threads,
            settings.credential_per_user,
            "a credential of yours is being opened already",
        )

    def shutdown(self) -> None:
        for pool in (self.zips, self.listings, self.credentials):
            pool.executor.shutdown(wait=False, cancel_futures=True)
