"""Queries of the jobs a worker holds: those it hands over and claims, those users ended."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.image_status import BUILDING
from concordia.core.states import JobStatus
from concordia.db.tables import Image, Job


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


def to_hand_over(slot: int) -> ColumnElement[bool]:
    """Waiting without a ref: in the shared queue (no worker), or this worker's, whose
    hand-over failed or was cut short by a crash; not another's, which may be being handed
    over now; not while its image builds (no image: no Image row, a NULL status)."""
    return and_(
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
