"""What operators watch: whether this process can serve, and the jobs by state and backend."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import func, select

from concordia.db.migrate import schema_heads, schema_revisions
from concordia.db.tables import Job
from concordia.logic.platform import Platform

log = logging.getLogger(__name__)

#: A database slower than this to answer one tiny query cannot serve requests either.
READY_TIMEOUT_SECONDS = 5.0


async def unready_reason(platform: Platform) -> str | None:
    """None when the database answers and its schema is the latest; else why not, in words
    that name no host, database or password (readiness is asked without signing in)."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), platform.reading() as session:
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


async def job_counts(platform: Platform) -> list[tuple[str, str, int]] | None:
    """(state, backend, count) of every job in the database, in one GROUP BY: the same
    answer from every process that shares it. None when the database does not answer (a
    scrape then still has the process's own metrics)."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS), platform.reading() as session:
            rows = await session.execute(
                select(Job.status, Job.backend, func.count()).group_by(Job.status, Job.backend)
            )
            return [(state, backend, count) for state, backend, count in rows.all()]
    except Exception as exc:
        log.warning("metrics: the database does not answer: %s", exc)
        return None
