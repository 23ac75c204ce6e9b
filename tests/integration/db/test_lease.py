"""`serve` alone on SQLite takes the worker's lock file: a lock being let go (its holder just
stopped) is waited for a moment; a live worker's is refused with why."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from concordia.db.lease import LOCK_FILE, LeaseHeld, worker_lease


def held(path: Path, until: threading.Event, seconds: float = 30) -> threading.Thread:
    """The lock file locked by another descriptor (another process's, as far as flock goes)
    until ``until`` is set (or ``seconds`` passed), then let go; returned once locked."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def let_go() -> None:
        until.wait(seconds)
        os.close(fd)

    thread = threading.Thread(target=let_go)
    thread.start()
    return thread


async def test_serve_alone_takes_a_lock_let_go_as_it_starts(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'concordia.db'}")
    holder = held(tmp_path / LOCK_FILE, threading.Event(), seconds=0.3)
    try:
        async with worker_lease(engine, tmp_path, alone=True) as lease:
            assert lease.leads
            assert not holder.is_alive()  # taken once the other let go, not beside it
    finally:
        holder.join()
        await engine.dispose()


async def test_serve_alone_is_refused_beside_a_live_worker(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'concordia.db'}")
    stop = threading.Event()
    holder = held(tmp_path / LOCK_FILE, stop)
    try:
        with pytest.raises(LeaseHeld, match="another process"):
            async with worker_lease(engine, tmp_path, alone=True):
                pytest.fail("the lease was taken beside a live worker")
    finally:
        stop.set()
        holder.join()
        await engine.dispose()
