"""Queries of what submissions' jobs run as and in: their owner, VO and group, their
application and image."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db.tables import Application, Submission, User


async def owners(
    session: AsyncSession, submission_ids: Collection[int]
) -> list[tuple[int, str, str, str]]:
    """(submission id, owner's username, VO, DIRAC group) of each submission."""
    rows = await session.execute(
        select(Submission.id, User.username, Submission.vo, Submission.group)
        .join(User, User.id == Submission.owner_id)
        .where(Submission.id.in_(submission_ids))
    )
    return [(sid, owner, vo, group) for sid, owner, vo, group in rows.all()]


async def applications_and_images(
    session: AsyncSession, submission_ids: Collection[int]
) -> list[tuple[int, int, str | None]]:
    """(submission id, application id, image id) of each submission."""
    rows = await session.execute(
        select(Submission.id, Submission.application_id, Submission.image_id).where(
            Submission.id.in_(submission_ids)
        )
    )
    return [(sid, app_id, image_id) for sid, app_id, image_id in rows.all()]


async def definitions(session: AsyncSession, app_ids: Collection[int]) -> list[tuple[int, Any]]:
    """(application id, stored definition) of each application."""
    rows = await session.execute(
        select(Application.id, Application.definition).where(Application.id.in_(app_ids))
    )
    return [(app_id, definition) for app_id, definition in rows.all()]


async def image_of(session: AsyncSession, submission_id: int) -> str | None:
    """The id of the image the submission's jobs run in (None: none, or no such submission)."""
    return await session.scalar(select(Submission.image_id).where(Submission.id == submission_id))
