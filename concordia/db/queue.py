"""Queries of the queue of jobs waiting for a backend: taking jobs, each owner's next ones,
what each owner holds in a backend, what each owner has not finished."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.states import FINAL_STATES, JobStatus
from concordia.db.tables import Image, Job, Submission, User

#: Jobs handed to a backend and not over: what an owner holds of its slots.
_HOLDING = [JobStatus.WAITING, JobStatus.MATCHED, JobStatus.RUNNING, JobStatus.COMPLETING]
_HOLDING += [JobStatus.STALLED]
#: Each owner's next jobs looked at in a round at the most, over all owners: bounds a round
#: when many users wait at once (those with the newest jobs then wait a round longer).
MOST_HEADS = 2000


async def take(
    session: AsyncSession,
    columns: Sequence[Any],
    *where: ColumnElement[bool],
    limit: int,
    leave: Collection[int],
) -> list[Any]:
    """The columns (a job's, and the status of its image, which ``where`` may test) of the
    oldest jobs matching, locked; those another process is taking are left to it
    (PostgreSQL), as are those in ``leave``."""
    if limit == 0:
        return []
    query = (
        select(*columns, Image.status)
        .join(Submission, Job.submission_id == Submission.id)
        .outerjoin(Image, Submission.image_id == Image.id)
        .where(*where, Job.id.not_in(leave))
        .order_by(Job.id)
        .limit(limit)
        .with_for_update(of=Job, skip_locked=True)
    )
    return list((await session.execute(query)).all())


async def heads(
    session: AsyncSession, *where: ColumnElement[bool], per_owner: int, leave: Collection[int]
) -> list[tuple[int, int]]:
    """(job id, owner id) of each owner's ``per_owner`` oldest jobs matching, not locked
    (PostgreSQL forbids FOR UPDATE with window functions: the chosen are locked by take)."""
    if per_owner == 0:
        return []
    rank = func.row_number().over(partition_by=Job.owner_id, order_by=Job.id).label("rank")
    ranked = (
        select(Job.id, Job.owner_id, rank)
        .join(Submission, Job.submission_id == Submission.id)
        .outerjoin(Image, Submission.image_id == Image.id)
        .where(*where, Job.id.not_in(leave))
        .subquery()
    )
    query = (
        select(ranked.c.id, ranked.c.owner_id)
        .where(ranked.c.rank <= per_owner)
        .order_by(ranked.c.rank, ranked.c.id)
        .limit(MOST_HEADS)
    )
    return [(job_id, owner) for job_id, owner in (await session.execute(query)).all()]


async def held_by_owner(
    session: AsyncSession, backend: str, owners: Collection[int], handing: Collection[int]
) -> dict[int, int]:
    """Per owner, their jobs the backend holds (handed over and not over), counting those in
    ``handing`` (being handed over now: no ref yet)."""
    if not owners:
        return {}
    held: dict[int, int] = dict.fromkeys(owners, 0)
    queries = [
        select(Job.owner_id, func.count()).where(
            Job.status.in_([s.value for s in _HOLDING]),
            Job.backend == backend,
            Job.backend_ref.is_not(None),
            Job.owner_id.in_(owners),
        )
    ]
    if handing:
        queries.append(select(Job.owner_id, func.count()).where(Job.id.in_(handing)))
    for query in queries:
        for owner, count in (await session.execute(query.group_by(Job.owner_id))).all():
            if owner in held:
                held[owner] += count
    return held


async def unfinished_jobs(session: AsyncSession, owner_id: int, *, lock: bool = False) -> int:
    """The owner's jobs not yet over (Done, Failed, Killed or Deleted). ``lock``: the
    owner's row first (PostgreSQL), so that their transactions counting it go one at a time
    (SQLite's writers do)."""
    if lock:
        await session.execute(select(User.id).where(User.id == owner_id).with_for_update())
    query = select(func.count()).where(
        Job.owner_id == owner_id, Job.status.not_in([s.value for s in FINAL_STATES])
    )
    return (await session.scalar(query)) or 0
