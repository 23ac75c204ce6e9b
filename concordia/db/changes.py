"""Word between processes sharing the database that it changed: PostgreSQL's NOTIFY sent
with each writing transaction, else (SQLite) a short timer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

log = logging.getLogger(__name__)

CHANNEL = "concordia_changes"
#: Who sent a notification: a process needs no word of its own changes.
SENDER = f"{socket.gethostname()}:{os.getpid()}"
#: Where no notification can come (SQLite, or PostgreSQL's listener reconnecting): how
#: often the other processes' changes are looked for.
POLL_SECONDS = 0.5


def notifies(url: str) -> bool:
    return url.startswith("postgresql")


async def notify(session: AsyncSession) -> None:
    """Delivered to the listeners when the transaction commits (and not if it rolls back)."""
    await session.execute(
        text("SELECT pg_notify(:channel, :sender)"), {"channel": CHANNEL, "sender": SENDER}
    )


class ChangeFeed:
    """Calls ``on_change`` when another process may have changed the database: at each of
    their commits (PostgreSQL), or every POLL_SECONDS (SQLite; PostgreSQL while the listening
    connection is down: a restarted server drops it, and it is made again)."""

    def __init__(self, engine: AsyncEngine, on_change: Callable[[], None]) -> None:
        self.engine = engine
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        listen = notifies(self.engine.url.render_as_string())
        self._task = asyncio.create_task(self._listen() if listen else self._poll(), name="changes")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _notified(self, _connection: Any, _pid: int, _channel: str, sender: str) -> None:
        if sender != SENDER:
            self.on_change()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            self.on_change()

    async def _listen(self) -> None:
        while True:
            try:
                await self._listen_once()
            except Exception as exc:  # the server restarting, or gone for a while
                log.warning("not listening for database changes, retrying: %s", exc)
            for _ in range(int(2 / POLL_SECONDS)):  # polling until listening again
                await asyncio.sleep(POLL_SECONDS)
                self.on_change()

    async def _listen_once(self) -> None:
        lost = asyncio.Event()
        async with self.engine.connect() as connection:
            raw: Any = (await connection.get_raw_connection()).driver_connection
            await raw.add_listener(CHANNEL, self._notified)
            raw.add_termination_listener(lambda *_: lost.set())
            self.on_change()  # what was missed while not listening
            while not lost.is_set():  # a dead peer is noticed by a query, not by waiting
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), timeout=5)
                if not lost.is_set():
                    await connection.execute(text("SELECT 1"))
                    await connection.commit()
