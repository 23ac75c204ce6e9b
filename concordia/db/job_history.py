"""Queries of the jobs' status history: one job's, the rows a transaction recorded, and the
changes after a given row (other processes' changes, as a web process relays them)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db.job_rows import ROW_COLUMNS, JobRow
from concordia.db.tables import Job, JobStatusHistory


async def history_of(session: AsyncSession, job_id: int) -> Sequence[JobStatusHistory]:
    """The job's history rows, oldest first."""
    rows = await session.scalars(
        select(JobStatusHistory)
        .where(JobStatusHistory.job_id == job_id)
        .order_by(JobStatusHistory.timestamp, JobStatusHistory.id)
    )
    return rows.all()


async def add_history(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """The history rows (column values), in one multi-row INSERT."""
    await session.execute(insert(JobStatusHistory), rows)


async def last_history_id(session: AsyncSession) -> int:
    """The id of the newest history row; 0 when there is none."""
    return await session.scalar(select(func.max(JobStatusHistory.id))) or 0


async def changes_after(
    session: AsyncSession, last: int, missing: Collection[int]
) -> list[tuple[int, JobRow]]:
    """(history id, the job's row as it is now) of each history row after ``last`` or among
    the ids ``missing``, in id order (a job changed twice comes twice)."""
    seen = or_(JobStatusHistory.id > last, JobStatusHistory.id.in_(missing))
    rows = await session.execute(
        select(JobStatusHistory.id, *ROW_COLUMNS)
        .join(Job, Job.id == JobStatusHistory.job_id)
        .where(seen)
        .order_by(JobStatusHistory.id)
    )
    return [(row[0], JobRow(*row[1:])) for row in rows.all()]
