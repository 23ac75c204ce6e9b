"""A user's jobs by id, as their actions (kill, reschedule, delete) read them: many at once."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db.tables import Job

#: Ids per statement: asyncpg takes at most 32,767 bound values (SQLite, as some builds
#: have it, 32,766), and "all jobs matching these filters" may be 100,000.
IDS_PER_STATEMENT = 5_000


async def owned(
    session: AsyncSession, owner_id: int, job_ids: Collection[int], *, lock: bool = False
) -> dict[int, Job]:
    """The jobs of ``job_ids`` that are this user's, by id (another user's are left out, as
    if they did not exist). ``lock``: their rows stay locked until the transaction ends
    (PostgreSQL), so that a change made meanwhile by the worker is waited for."""
    ids = list(job_ids)
    found: dict[int, Job] = {}
    for start in range(0, len(ids), IDS_PER_STATEMENT):
        chunk = ids[start : start + IDS_PER_STATEMENT]
        query = select(Job).where(Job.id.in_(chunk), Job.owner_id == owner_id)
        if lock:
            query = query.with_for_update()
        found.update((job.id, job) for job in await session.scalars(query))
    return found
