"""One worker at a time: the background loops (reconciler, local jobs, image builds) run in
the process holding this lease; any other waits as a standby and takes over when it dies."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

#: PostgreSQL advisory lock key of the worker lease (any fixed 64-bit number).
LEASE_KEY = 0x636F6E636F726469  # "concordi"
#: How often the holder checks it still holds it (its connection may have been cut).
CHECK_SECONDS = 2.0
#: How often a standby on SQLite tries the lock file.
POLL_SECONDS = 0.5


class LeaseHeld(RuntimeError):
    """Another process runs the background work on this database."""


HELD = (
    "another process (a `concordia worker`, or a `concordia serve` without --workers) runs "
    "the background work on this database: start `concordia serve --workers N` beside it"
)


@asynccontextmanager
async def worker_lease(
    engine: AsyncEngine, data_dir: Path, on_wait: Callable[[], None] | None = None
) -> AsyncIterator[asyncio.Event]:
    """Held for the body. With ``on_wait``, a standby: it is called once if another process
    holds the lease now, and the lease is waited for; without, LeaseHeld is raised then.
    Yields an event set while the lease is lost (PostgreSQL: the connection holding it was
    cut, as by a database restart; it is taken again when it can be)."""
    if engine.url.get_backend_name() == "postgresql":
        async with _advisory(engine, on_wait) as lost:
            yield lost
    else:
        async with _flock(data_dir / "worker.lock", on_wait):
            yield asyncio.Event()  # a file lock goes only with its process


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@asynccontextmanager
async def _flock(path: Path, on_wait: Callable[[], None] | None) -> AsyncIterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not _try_flock(fd):
            if on_wait is None:
                raise LeaseHeld(HELD)
            on_wait()
            # Polled (a lock file has no event to wait on): a standby stopped meanwhile stops.
            while not _try_flock(fd):  # noqa: ASYNC110
                await asyncio.sleep(POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # releases the lock


async def _try_lock(connection: AsyncConnection) -> bool:
    got = await connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEASE_KEY})
    await connection.commit()  # the lock outlives transactions; none is left open
    return bool(got)


@asynccontextmanager
async def _advisory(
    engine: AsyncEngine, on_wait: Callable[[], None] | None
) -> AsyncIterator[asyncio.Event]:
    # A session-level advisory lock lives as long as its connection: a worker that dies lets
    # a standby take over.
    connection = await engine.connect()
    if not await _try_lock(connection):
        if on_wait is None:
            await connection.close()
            raise LeaseHeld(HELD)
        on_wait()
        await connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LEASE_KEY})
        await connection.commit()
    lost = asyncio.Event()

    async def watch() -> None:
        nonlocal connection
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                if lost.is_set():  # taken again on a new connection, if no one has it now
                    with contextlib.suppress(Exception):
                        await connection.close()
                    connection = await engine.connect()
                    if await _try_lock(connection):
                        log.warning("the worker lease is held again")
                        lost.clear()
                else:
                    await connection.execute(text("SELECT 1"))
                    await connection.commit()
            except Exception as exc:
                if not lost.is_set():
                    log.error("the worker lease was lost: %s", exc)
                lost.set()

    watcher = asyncio.create_task(watch(), name="worker-lease")
    try:
        yield lost
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        with contextlib.suppress(Exception):
            await connection.close()
