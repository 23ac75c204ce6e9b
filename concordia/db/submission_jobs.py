"""Queries of one submission's jobs: by status, a page of them in index order, whether any
is left (not deleted)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.states import JobStatus
from concordia.db.tables import Job


async def job_ids(
    session: AsyncSession, submission_id: int, statuses: Collection[JobStatus]
) -> list[int]:
    """The ids of the submission's jobs in one of ``statuses``, in index order."""
    found = await session.scalars(
        select(Job.id)
        .where(Job.submission_id == submission_id, Job.status.in_([s.value for s in statuses]))
        .order_by(Job.index)
    )
    return list(found)


async def jobs(
    session: AsyncSession, submission_id: int, statuses: Collection[JobStatus]
) -> list[Job]:
    """The submission's jobs in one of ``statuses``, in index order."""
    found = await session.scalars(
        select(Job)
        .where(Job.submission_id == submission_id, Job.status.in_([s.value for s in statuses]))
        .order_by(Job.index)
    )
    return list(found)


async def any_left(session: AsyncSession, submission_id: int) -> bool:
    """Whether the submission has a job that is not deleted."""
    query = select(Job.id).where(
        Job.submission_id == submission_id, Job.status != JobStatus.DELETED.value
    )
    return (await session.scalars(query.limit(1))).first() is not None


async def jobs_page(
    session: AsyncSession, submission_id: int, offset: int, limit: int
) -> list[dict[str, Any]]:
    """A page of the submission's jobs (id, index, name, status, minor status), in index
    order."""
    rows = await session.execute(
        select(Job.id, Job.index, Job.name, Job.status, Job.minor_status)
        .where(Job.submission_id == submission_id)
        .order_by(Job.index)
        .offset(offset)
        .limit(limit)
    )
    return [dict(row) for row in rows.mappings()]
