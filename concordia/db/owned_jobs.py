"""A user's jobs by id, as their actions (kill, delete) read them: many in one statement."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db.tables import Job


async def owned(
    session: AsyncSession, owner_id: int, job_ids: Collection[int], *, lock: bool = False
) -> dict[int, Job]:
    """The jobs of ``job_ids`` that are this user's, by id (another user's are left out, as
    if they did not exist). ``lock``: their rows stay locked until the transaction ends
    (PostgreSQL), so that a change made meanwhile by the worker is waited for."""
    if not job_ids:
        return {}
    query = select(Job).where(Job.id.in_(list(job_ids)), Job.owner_id == owner_id)
    if lock:
        query = query.with_for_update()
    return {job.id: job for job in await session.scalars(query)}
