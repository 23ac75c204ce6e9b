"""Workers' leases: each worker holds a numbered slot (its jobs carry the number, so that
another worker knows them as taken, and adopts them once the slot is free: its holder died);
one of them, the leader, also runs what only one process may (image builds). On SQLite one
worker runs at a time: any other waits as a standby and takes over when it dies."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

log = logging.getLogger(__name__)

#: PostgreSQL advisory lock key of the leader (any fixed 64-bit number).
LEASE_KEY = 0x636F6E636F726469  # "concordi"
#: The first half of the two-part advisory keys of the workers' slots (a 32-bit number).
SLOT_CLASS = 0x636F6E63  # "conc"
#: How often the holder checks it still holds its locks (its connection may have been cut),
#: and a worker that does not lead tries to.
CHECK_SECONDS = 2.0
#: How often a standby on SQLite tries the lock file.
POLL_SECONDS = 0.5
#: The lock file of the worker on SQLite, in the data dir.
LOCK_FILE = "worker.lock"
#: How long a process that must run alone tries the lock file before it gives up: a lock
#: being let go (a process that just stopped, whose last copy of the descriptor is in a
#: child not yet exec'd on a busy machine; another process's look with a shared lock)
#: frees in moments, a live worker's never.
LET_GO_SECONDS = 2.0
LET_GO_POLL_SECONDS = 0.02


class LeaseHeld(RuntimeError):
    """Another process runs the background work on this database."""


HELD = (
    "another process (a `concordia worker`, or a `concordia serve` without --workers) runs "
    "the background work on this database: start `concordia serve --workers N` beside it"
)


@dataclass
class Lease:
    """What a worker holds: its slot number, whether it leads, and an event set while the
    lease is lost (PostgreSQL: the connection holding it was cut, as by a database restart)."""

    slot: int
    leads: bool
    #: Whether other workers may run beside this one (PostgreSQL), their jobs not its own.
    side_by_side: bool = False
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when this worker becomes the leader after its start (the last leader died).
    now_leads: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def worker_lease(
    engine: AsyncEngine,
    data_dir: Path,
    on_wait: Callable[[], None] | None = None,
    *,
    alone: bool = False,
) -> AsyncIterator[Lease]:
    """Held for the body. ``alone`` (`serve` without --workers: its web pages and work in one
    process): LeaseHeld if another process leads. On SQLite a worker is alone too, but waits
    as a standby with ``on_wait`` (called once if another process holds the lease now)."""
    if engine.url.get_backend_name() == "postgresql":
        async with _advisory(engine, alone) as lease:
            yield lease
    else:
        async with _flock(data_dir / LOCK_FILE, None if alone else on_wait):
            yield Lease(slot=1, leads=True)  # a file lock goes only with its process


async def live_slots(session: AsyncSession) -> set[int]:
    """The slots whose workers are alive now (PostgreSQL: where workers run side by side)."""
    rows = await session.execute(
        text(
            "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = :c AND objsubid = 2"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        {"c": SLOT_CLASS},
    )
    return {int(slot) for (slot,) in rows.all()}


async def live_workers(session: AsyncSession, data_dir: Path) -> int:
    """How many workers hold their lease now: on PostgreSQL their slots, on SQLite the lock
    file (0 or 1)."""
    if session.get_bind().dialect.name == "postgresql":
        return len(await live_slots(session))
    return int(await asyncio.to_thread(_lock_file_held, data_dir / LOCK_FILE))


def _lock_file_held(path: Path) -> bool:
    # A shared lock taken and dropped at once: refused while a worker holds its exclusive
    # one. A worker trying in that instant waits as a standby, and takes it POLL_SECONDS on.
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # no worker ever ran on this data dir
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the shared lock, if taken
    return False


async def _flocked(fd: int, every: float, within: float | None = None) -> bool:
    """Whether the lock was taken, tried now and every ``every`` seconds for ``within``
    seconds at most (None: until it is)."""
    loop = asyncio.get_running_loop()
    deadline = None if within is None else loop.time() + within
    while not _try_flock(fd):
        if deadline is not None and loop.time() >= deadline:
            return False
        await asyncio.sleep(every)
    return True


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
        if on_wait is None:  # alone: a lock being let go is waited for, a moment
            if not await _flocked(fd, LET_GO_POLL_SECONDS, within=LET_GO_SECONDS):
                raise LeaseHeld(HELD)
        elif not _try_flock(fd):
            on_wait()
            # Polled (a lock file has no event to wait on): a standby stopped meanwhile stops.
            await _flocked(fd, POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # releases the lock


async def _try(connection: AsyncConnection, sql: str, **keys: int) -> bool:
    got = await connection.scalar(text(sql), keys)
    await connection.commit()  # the lock outlives transactions; none is left open
    return bool(got)


async def _try_lead(connection: AsyncConnection) -> bool:
    return await _try(connection, "SELECT pg_try_advisory_lock(:k)", k=LEASE_KEY)


async def _take_slot(connection: AsyncConnection, slot: int | None = None) -> int | None:
    """The lowest free slot (or the one named), held on this connection; None if taken."""
    for n in [slot] if slot is not None else range(1, 1 << 20):
        if await _try(connection, "SELECT pg_try_advisory_lock(:c, :n)", c=SLOT_CLASS, n=n):
            return n
    return None


@asynccontextmanager
async def _advisory(engine: AsyncEngine, alone: bool) -> AsyncIterator[Lease]:
    # Session-level advisory locks live as long as their connection: a worker that dies
    # frees its slot (its jobs are adopted) and its lead (another worker leads).
    connection = await engine.connect()
    leads = await _try_lead(connection)
    if alone and not leads:
        await connection.close()
        raise LeaseHeld(HELD)
    slot = await _take_slot(connection)
    assert slot is not None  # a million workers: not a deployment
    lease = Lease(slot=slot, leads=leads, side_by_side=True)

    async def watch() -> None:
        nonlocal connection
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                if lease.lost.is_set():  # taken again on a new connection, if free now
                    with contextlib.suppress(Exception):
                        await connection.close()
                    connection = await engine.connect()
                    if await _take_slot(connection, lease.slot) and (
                        not lease.leads or await _try_lead(connection)
                    ):
                        log.warning("the worker lease is held again")
                        lease.lost.clear()
                elif not lease.leads:  # the leader may have died
                    if await _try_lead(connection):
                        lease.leads = True
                        lease.now_leads.set()
                else:
                    await connection.execute(text("SELECT 1"))
                    await connection.commit()
            except Exception as exc:
                if not lease.lost.is_set():
                    log.error("the worker lease was lost: %s", exc)
                lease.lost.set()

    watcher = asyncio.create_task(watch(), name="worker-lease")
    try:
        yield lease
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        with contextlib.suppress(Exception):
            await connection.close()
