"""Queries of the jobs a worker holds."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.states import JobStatus
from concordia.db.tables import Job


async def statuses_among(
    session: AsyncSession, uuids: Collection[str], statuses: Collection[JobStatus]
) -> list[tuple[str, str]]:
    """(uuid, status) of those of the jobs that are in one of ``statuses``."""
    rows = await session.execute(
        select(Job.uuid, Job.status).where(
            Job.uuid.in_(uuids), Job.status.in_([s.value for s in statuses])
        )
    )
    return [(uuid, status) for uuid, status in rows.all()]
