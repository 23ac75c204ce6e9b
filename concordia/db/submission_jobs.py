"""Queries of one submission's jobs: adding them, by status, a page of them in index order,
their counts, whether any is left (not deleted)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import func, insert, select
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


async def insert_jobs(session: AsyncSession, rows: list[dict[str, Any]]) -> list[int]:
    """Add the jobs of ``rows`` (their columns' values); their ids, in the rows' order."""
    # One multi-row INSERT (a batch may have thousands of jobs: ORM objects would cost
    # their bookkeeping each); the ids come back in the rows' order.
    ids = await session.scalars(insert(Job).returning(Job.id, sort_by_parameter_order=True), rows)
    return list(ids)


async def status_counts(session: AsyncSession, submission_id: int) -> list[tuple[str, int, int]]:
    """(status, how many of the submission's jobs are in it, how many of those their
    backend has taken) of each status its jobs are in."""
    # count(backend_ref) counts the jobs that have one: those their backend has taken.
    rows = await session.execute(
        select(Job.status, func.count(), func.count(Job.backend_ref))
        .where(Job.submission_id == submission_id)
        .group_by(Job.status)
    )
    return [(status, n, taken) for status, n, taken in rows.all()]


async def all_job_ids(session: AsyncSession, submission_id: int) -> list[int]:
    """The ids of all the submission's jobs, in index order."""
    ids = await session.scalars(
        select(Job.id).where(Job.submission_id == submission_id).order_by(Job.index)
    )
    return list(ids)
