"""Queries of images and their users: the catalogue rows a user sees, who claimed an image
and under which VOs, and the jobs that still run in it."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, delete, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import BindParameter

from concordia.core.image_status import ImageStatus
from concordia.core.states import FINAL_STATES
from concordia.db.tables import Image, ImageUser, Job, Submission

#: An image's row, the viewer's jobs that used it, and whether the viewer is one of its users.
ImageUse = tuple[Image, int, bool]


def _jobs_of(user_id: int | BindParameter[int]) -> Any:
    """The user's jobs that used an image, beside each image row (one query)."""
    return (
        select(func.coalesce(func.sum(Submission.job_count), 0))
        .where(Submission.image_id == Image.id, Submission.owner_id == user_id)
        .correlate(Image)
        .scalar_subquery()
    )


def _asked_by(user_id: int) -> ColumnElement[bool]:
    """Whether the user is one of an image's users, beside each image row."""
    return exists().where(ImageUser.image_id == Image.id, ImageUser.user_id == user_id)


def _seen_by(user_id: int, shared_vos: Collection[str]) -> ColumnElement[bool]:
    """An image the user asked for, or one a member of ``shared_vos`` asked for under it."""
    theirs: ColumnElement[bool] = ImageUser.user_id == user_id
    if shared_vos:
        theirs = or_(theirs, ImageUser.vo.in_(shared_vos))
    return exists().where(ImageUser.image_id == Image.id, theirs)


async def images_seen_by(
    session: AsyncSession, user_id: int, shared_vos: Collection[str], application: str | None
) -> list[ImageUse]:
    """The images not deleted that the user sees (see ``_seen_by``), of ``application`` if
    given, newest first, each with its use by the user."""
    query = (
        select(Image, _jobs_of(user_id), _asked_by(user_id))
        .where(Image.status != ImageStatus.DELETED, _seen_by(user_id, shared_vos))
        .order_by(Image.created_at.desc())
    )
    if application:
        query = query.where(Image.application == application)
    return [(row, jobs, yours) for row, jobs, yours in (await session.execute(query)).all()]


async def _image_use(
    session: AsyncSession, image: str, user_id: int, *where: ColumnElement[bool]
) -> ImageUse | None:
    query = select(Image, _jobs_of(user_id), _asked_by(user_id)).where(Image.id == image, *where)
    found = (await session.execute(query)).first()
    return None if found is None else (found[0], found[1], found[2])


#: The statement of image_with_claims, built once: it runs for every submission's image.
_WITH_CLAIMS = (
    select(Image, _jobs_of(bindparam("user_id")), ImageUser.vo)
    .outerjoin(
        ImageUser,
        and_(ImageUser.image_id == Image.id, ImageUser.user_id == bindparam("user_id")),
    )
    .where(Image.id == bindparam("image"))
)


async def image_with_claims(
    session: AsyncSession, image: str, user_id: int
) -> tuple[ImageUse, set[str]] | None:
    """The image (in any state) with its use by the user and the VOs the user claimed it
    under, in one query (the select-if-exists of every submission asks both); None: no
    such image."""
    rows = (await session.execute(_WITH_CLAIMS, {"image": image, "user_id": user_id})).all()
    if not rows:
        return None
    vos = {vo for _, _, vo in rows if vo is not None}
    row, jobs, _ = rows[0]
    return (row, jobs, bool(vos)), vos


async def image_seen_by(
    session: AsyncSession, image: str, user_id: int, shared_vos: Collection[str]
) -> ImageUse | None:
    """The image (in any state) with its use by the user, if the user sees it (see
    ``_seen_by``); None: no such image, or not theirs to see."""
    return await _image_use(session, image, user_id, _seen_by(user_id, shared_vos))


async def is_user_of(session: AsyncSession, image: str, user_id: int) -> bool:
    """Whether the user is one of the image's users (under any VO)."""
    mine = exists().where(ImageUser.image_id == image, ImageUser.user_id == user_id)
    return bool(await session.scalar(select(mine)))


async def claimed_in(session: AsyncSession, image: str, vos: Collection[str]) -> bool:
    """Whether someone is one of the image's users under one of ``vos``."""
    shared = exists().where(ImageUser.image_id == image, ImageUser.vo.in_(vos))
    return bool(await session.scalar(select(shared)))


async def has_other_users(session: AsyncSession, image: str, user_id: int) -> bool:
    """Whether anyone but the user is one of the image's users."""
    others = exists().where(ImageUser.image_id == image, ImageUser.user_id != user_id)
    return bool(await session.scalar(select(others)))


async def claims_on(session: AsyncSession, image: str) -> list[tuple[int, str]]:
    """(user id, VO) of each claim on the image: who uses it, under which VO."""
    rows = await session.execute(
        select(ImageUser.user_id, ImageUser.vo).where(ImageUser.image_id == image)
    )
    return [(user, vo) for user, vo in rows.all()]


async def vos_claimed_by(session: AsyncSession, image: str, user_id: int) -> set[str]:
    """The VOs the user is recorded as one of the image's users under."""
    query = select(ImageUser.vo).where(ImageUser.image_id == image, ImageUser.user_id == user_id)
    return set(await session.scalars(query))


async def drop_claims(session: AsyncSession, image: str, user_id: int) -> None:
    """Delete the user's claims on the image (under every VO)."""
    await session.execute(
        delete(ImageUser).where(ImageUser.image_id == image, ImageUser.user_id == user_id)
    )


async def images_building(session: AsyncSession) -> list[Image]:
    """The rows of the images whose build is asked for and not ended."""
    return list(await session.scalars(select(Image).where(Image.status == ImageStatus.BUILDING)))


async def images_building_or_among(
    session: AsyncSession, image_ids: Collection[str]
) -> list[Image]:
    """The rows of the images being built, and of those of ``image_ids`` whatever their
    status."""
    query = select(Image).where(or_(Image.status == ImageStatus.BUILDING, Image.id.in_(image_ids)))
    return list(await session.scalars(query))


async def active_jobs(session: AsyncSession, image: str, owner_id: int | None) -> int:
    """Jobs not yet over that run in the image (only ``owner_id``'s, if given)."""
    query = (
        select(func.count())
        .select_from(Job)
        .join(Submission, Job.submission_id == Submission.id)
        .where(Submission.image_id == image, Job.status.not_in([s.value for s in FINAL_STATES]))
    )
    if owner_id is not None:
        query = query.where(Submission.owner_id == owner_id)
    return await session.scalar(query) or 0
