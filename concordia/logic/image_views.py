"""What a user sees of images: the view models, and the catalogue queries that fill them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.image_status import ImageStatus
from concordia.db.tables import Image, ImageUser, Submission
from concordia.images.store import FORMAT_FILES
from concordia.logic.errors import Forbidden, NotFound
from concordia.logic.identity import Identity
from concordia.logic.platform import Platform


class FormatView(BaseModel):
    file: str
    size: int
    sha256: str


class ImageView(BaseModel):
    id: str
    application: str
    build_args: dict[str, Any]
    status: ImageStatus
    builder: str
    formats: dict[str, FormatView]
    rootfs_size: int
    created_at: datetime
    built_at: datetime | None
    error: str
    #: The viewer's jobs that ran (or will run) in this image (others' are theirs to know).
    jobs: int
    #: Whether the viewer asked for it (may rebuild or delete it); false for an image shared
    #: with their VO read-only.
    yours: bool


class BuildersView(BaseModel):
    """Which builder this server uses, and why each other one is not used (what to install)."""

    builder: str | None
    summary: str
    problems: dict[str, str]
    formats: list[str]


class ImageSelection(BaseModel):
    """The answer to "this configuration, please": selected (it existed) or being built."""

    selected: bool
    image: ImageView


class ImageState(BaseModel):
    """What a configuration's image is now, without building anything (the form shows it)."""

    id: str | None
    #: ready, building, failed, or None: not built yet (a submission builds it).
    status: ImageStatus | None
    #: Why it cannot be built here, if it cannot.
    problem: str | None = None


def builders(platform: Platform) -> BuildersView:
    choice = platform.images.choice
    return BuildersView(
        builder=choice.builder.version if choice.builder else None,
        summary=choice.summary,
        problems=choice.problems,
        formats=list(platform.settings.image_formats),
    )


def checked_id(image_id: str) -> str:
    """An image id is 64 lowercase hex digits; anything else names no image (never a path)."""
    if len(image_id) != 64 or any(c not in "0123456789abcdef" for c in image_id):
        raise NotFound(f"no image {image_id[:80]}")
    return image_id


def _jobs_of(user_id: int) -> Any:
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


def _seen_by(platform: Platform, user: Identity) -> ColumnElement[bool]:
    """An image the user may see: one they asked for, or with images_shared_in_vo one that a
    member of one of their VOs asked for under it (read-only: see require_user_of)."""
    theirs: ColumnElement[bool] = ImageUser.user_id == user.user_id
    if platform.settings.images_shared_in_vo and user.vos:
        theirs = or_(theirs, ImageUser.vo.in_(user.vos))
    return exists().where(ImageUser.image_id == Image.id, theirs)


async def list_images(
    platform: Platform, user: Identity, application: str | None = None
) -> list[ImageView]:
    query = (
        select(Image, _jobs_of(user.user_id), _asked_by(user.user_id))
        .where(Image.status != ImageStatus.DELETED, _seen_by(platform, user))
        .order_by(Image.created_at.desc())
    )
    if application:
        query = query.where(Image.application == application)
    async with platform.reading() as session:
        rows = (await session.execute(query)).all()
    return [_view(row, jobs, yours) for row, jobs, yours in rows]


async def get_image(platform: Platform, user: Identity, image: str) -> ImageView:
    """An image the user may see; any other is 'not found', as if it did not exist."""
    async with platform.reading() as session:
        found = await find_image(session, image, user.user_id, _seen_by(platform, user))
    if found is None or found.status == ImageStatus.DELETED:
        raise NotFound(f"no image {image}")
    return found


async def find_image(
    session: AsyncSession, image: str, user_id: int, *where: ColumnElement[bool]
) -> ImageView | None:
    """The image as ``user_id`` sees it, if it exists and matches ``where`` (any state)."""
    query = select(Image, _jobs_of(user_id), _asked_by(user_id)).where(Image.id == image, *where)
    found = (await session.execute(query)).first()
    return None if found is None else _view(*found)


async def may_change(platform: Platform, user: Identity, image: str) -> None:
    """Raises unless the user may rebuild or delete the image (see require_user_of)."""
    async with platform.reading() as session:
        await require_user_of(session, platform, user, image)


async def require_user_of(
    session: AsyncSession, platform: Platform, user: Identity, image: str
) -> None:
    """Only an image's own users change it; members of their VOs see it read-only (403), and
    anyone else does not see it at all (404)."""
    mine = exists().where(ImageUser.image_id == image, ImageUser.user_id == user.user_id)
    if await session.scalar(select(mine)):
        return
    if platform.settings.images_shared_in_vo and user.vos:
        shared = exists().where(ImageUser.image_id == image, ImageUser.vo.in_(user.vos))
        if await session.scalar(select(shared)):
            raise Forbidden(
                "this image is shared with your VO read-only: only those who asked for it "
                "may rebuild or delete it (asking for its configuration makes it yours too)"
            )
    raise NotFound(f"no image {image}")


def _view(row: Image, jobs: int, yours: bool) -> ImageView:
    fields = {n: getattr(row, n) for n in ImageView.model_fields if n not in ("jobs", "yours")}
    return ImageView.model_validate({**fields, "jobs": jobs, "yours": bool(yours)})


async def image_file(
    platform: Platform, user: Identity, image: str, fmt: str
) -> tuple[Path, ImageView]:
    """The file of one format of a ready image (for download), and the image."""
    view = await get_image(platform, user, image)
    if fmt not in view.formats:
        raise NotFound(f"image {image} has no {fmt} format")
    return platform.images.store.path(image) / FORMAT_FILES[fmt], view
