"""Queries of the jobs a worker holds: those it follows in a backend, hands over, claims and
adopts from workers that are gone."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.image_status import BUILDING
from concordia.core.states import JobStatus
from concordia.db.tables import Image, Job


async def followed(
    session: AsyncSession, backend: str, statuses: Collection[JobStatus], slot: int
) -> list[tuple[str, str, dict[str, Any]]]:
    """(uuid, backend ref, backend state) of the worker's jobs in one of ``statuses`` that
    the backend holds (they have a ref)."""
    rows = await session.execute(
        select(Job.uuid, Job.backend_ref, Job.backend_state).where(
            Job.status.in_([s.value for s in statuses]),
            Job.backend == backend,
            Job.backend_ref.is_not(None),
            Job.worker == slot,
        )
    )
    return [(uuid, ref, state) for uuid, ref, state in rows.all()]


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


def received(backend: str) -> ColumnElement[bool]:
    """The backend's new jobs (Received)."""
    return and_(Job.backend == backend, Job.status == JobStatus.RECEIVED.value)


def with_ids(job_ids: Collection[int]) -> ColumnElement[bool]:
    return Job.id.in_(job_ids)


def with_uuids(uuids: Collection[str]) -> ColumnElement[bool]:
    return Job.uuid.in_(uuids)


def of_worker(slot: int, uuids: Collection[str]) -> ColumnElement[bool]:
    """Those of the jobs whose row names the worker in ``slot``."""
    return and_(Job.uuid.in_(uuids), Job.worker == slot)


def to_hand_over(backend: str, slot: int) -> ColumnElement[bool]:
    """The backend's jobs Waiting without a ref: in the shared queue (no worker), or this
    worker's, whose hand-over failed or was cut short by a crash; not another's, which may
    be being handed over now; not while its image builds (no image: no Image row, a NULL
    status)."""
    return and_(
        Job.backend == backend,
        Job.status == JobStatus.WAITING.value,
        Job.backend_ref.is_(None),
        or_(Job.worker.is_(None), Job.worker == slot),
        or_(Image.status.is_(None), Image.status != BUILDING),
    )


async def claim(session: AsyncSession, job_ids: Collection[int], slot: int) -> None:
    """The jobs become the worker's: no other takes them, or adopts them while it lives."""
    await session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.worker.is_distinct_from(slot))
        .values(worker=slot)
    )


async def store_jdls(session: AsyncSession, jdls: Sequence[dict[str, Any]]) -> None:
    """Each job's JDL (``{"id": ..., "jdl": ...}``), in one statement."""
    if jdls:
        await session.execute(update(Job), list(jdls))


async def newest_job_id(session: AsyncSession) -> int:
    return await session.scalar(select(func.max(Job.id))) or 0


async def gone_jobs(
    session: AsyncSession, backend: str, statuses: Collection[JobStatus], live: Collection[int]
) -> list[Job]:
    """The backend's jobs in one of ``statuses`` whose worker is gone (its slot is not in
    ``live``), locked; those another transaction holds are left (PostgreSQL): another worker
    adopting them, or one killed in a transaction that the database has not ended yet."""
    rows = await session.scalars(
        select(Job).where(_gone(backend, statuses, live)).with_for_update(skip_locked=True)
    )
    return list(rows)


async def count_gone(
    session: AsyncSession, backend: str, statuses: Collection[JobStatus], live: Collection[int]
) -> int:
    """How many jobs gone_jobs would find, those another transaction holds included."""
    return (
        await session.scalar(
            select(func.count()).select_from(Job).where(_gone(backend, statuses, live))
        )
        or 0
    )


def _gone(
    backend: str, statuses: Collection[JobStatus], live: Collection[int]
) -> ColumnElement[bool]:
    # A job with no worker is in the shared queue, but for those of before workers had
    # slots, handed over already, and those under way without one (before LeaseNotHeld a
    # worker could put its own queued jobs back, then run them).
    unqueued = or_(Job.backend_ref.is_not(None), Job.status != JobStatus.WAITING.value)
    gone = or_(
        and_(Job.worker.is_not(None), Job.worker.not_in(live)),
        and_(Job.worker.is_(None), unqueued),
    )
    return and_(Job.backend == backend, Job.status.in_([s.value for s in statuses]), gone)
