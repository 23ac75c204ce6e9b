"""What operators watch: whether this process can serve, and the jobs by state and backend."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from concordia.db.job_counts import jobs_by_state_and_backend
from concordia.db.lease import live_workers
from concordia.db.migrate import schema_heads, schema_revisions
from concordia.logic.database import Database
from concordia.logic.process import Process
from concordia.settings import ServerSettings, Settings

log = logging.getLogger(__name__)

#: A database slower than this to answer one tiny query cannot serve requests either.
READY_TIMEOUT_SECONDS = 5.0


async def unready_reason(db: Database) -> str | None:
    """None when the database answers and its schema is the latest; else why not, in words
    that name no host, database or password (readiness is asked without signing in)."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), db.reading() as session:
            revisions = await schema_revisions(session)
    except TimeoutError:
        return f"the database did not answer within {READY_TIMEOUT_SECONDS:g} s"
    except Exception as exc:
        log.warning("readiness: the database does not answer: %s", exc)
        return f"the database does not answer ({type(exc).__name__})"
    if revisions != schema_heads():
        found = ", ".join(sorted(revisions)) or "none"
        latest = ", ".join(sorted(schema_heads()))
        return f"the database schema is at {found}, not at the latest ({latest})"
    return None


async def job_counts(db: Database) -> list[tuple[str, str, int]] | None:
    """(state, backend, count) of every job in the database, in one GROUP BY: the same
    answer from every process that shares it. None when the database does not answer (a
    scrape then still has the process's own metrics)."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), db.reading() as session:
            return await jobs_by_state_and_backend(session)
    except Exception as exc:
        log.warning("metrics: the database does not answer: %s", exc)
        return None


async def workers_alive(settings: ServerSettings, db: Database, process: Process) -> int | None:
    """How many workers hold their lease now (this process counts, if it runs the work);
    None when the database does not answer."""
    here = process.worker_alive()
    if here is not None:
        return here
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), db.reading() as session:
            return await live_workers(session, settings.data_dir)
    except Exception as exc:
        log.warning("workers: the database does not answer: %s", exc)
        return None


@dataclass
class WorkerWatch:
    """When a process last saw a worker holding its lease (monotonic clock; its start if
    never): a worker restarting is not yet an absence."""

    seen: float = field(default_factory=time.monotonic)


async def workers_absent_reason(
    settings: Settings, db: Database, process: Process, watch: WorkerWatch
) -> str | None:
    """None while a worker holds its lease, or did within the last worker_absence_seconds;
    else why the background work is not done."""
    alive = await workers_alive(settings, db, process)
    now = time.monotonic()
    if alive is None:
        return "the database does not answer"
    if alive:
        watch.seen = now
        return None
    absent = settings.worker_absence_seconds
    if now - watch.seen < absent:
        return None
    return (
        f"no worker has held its lease for over {absent:g} s: no job is run, no image built "
        "(start `concordia worker`)"
    )
