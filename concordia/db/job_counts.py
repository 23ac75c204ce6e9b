"""The SQL of what operators count: every job by state and backend."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db.tables import Job


async def jobs_by_state_and_backend(session: AsyncSession) -> list[tuple[str, str, int]]:
    """(state, backend, count) of every job in the database, in one GROUP BY."""
    rows = await session.execute(
        select(Job.status, Job.backend, func.count()).group_by(Job.status, Job.backend)
    )
    return [(state, backend, count) for state, backend, count in rows.all()]
