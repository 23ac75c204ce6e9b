"""What a user sees of images: the view models, and the catalogue queries that fill them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.image_status import ImageStatus
from concordia.db import images as image_queries
from concordia.db.tables import Image
from concordia.images.store import FORMAT_FILES
from concordia.logic.database import Database
from concordia.logic.errors import Forbidden, NotFound
from concordia.logic.identity import Identity
from concordia.logic.platform import ImageBuilds
from concordia.settings import ImageSettings


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


def builders(settings: ImageSettings, images: ImageBuilds) -> BuildersView:
    choice = images.choice
    return BuildersView(
        builder=choice.builder.version if choice.builder else None,
        summary=choice.summary,
        problems=choice.problems,
        formats=list(settings.image_formats),
    )


def checked_id(image_id: str) -> str:
    """An image id is 64 lowercase hex digits; anything else names no image (never a path)."""
    if len(image_id) != 64 or any(c not in "0123456789abcdef" for c in image_id):
        raise NotFound(f"no image {image_id[:80]}")
    return image_id


def _shared_vos(settings: ImageSettings, user: Identity) -> list[str]:
    """The VOs whose members' images the user may see too (read-only: see require_user_of):
    with images_shared_in_vo, the user's own; else none."""
    return user.vos if settings.images_shared_in_vo else []


async def list_images(
    settings: ImageSettings, db: Database, user: Identity, application: str | None = None
) -> list[ImageView]:
    shared = _shared_vos(settings, user)
    async with db.reading() as session:
        rows = await image_queries.images_seen_by(session, user.user_id, shared, application)
    return [_view(row, jobs, yours) for row, jobs, yours in rows]


async def get_image(settings: ImageSettings, db: Database, user: Identity, image: str) -> ImageView:
    """An image the user may see; any other is 'not found', as if it did not exist."""
    shared = _shared_vos(settings, user)
    async with db.reading() as session:
        found = await image_queries.image_seen_by(session, image, user.user_id, shared)
    if found is None or found[0].status == ImageStatus.DELETED:
        raise NotFound(f"no image {image}")
    return _view(*found)


async def find_claimed(
    session: AsyncSession, image: str, user_id: int
) -> tuple[ImageView, set[str]] | None:
    """The image as ``user_id`` sees it, if it exists (any state), and the VOs the user
    claimed it under."""
    found = await image_queries.image_with_claims(session, image, user_id)
    return None if found is None else (_view(*found[0]), found[1])


async def may_change(settings: ImageSettings, db: Database, user: Identity, image: str) -> None:
    """Raises unless the user may rebuild or delete the image (see require_user_of)."""
    async with db.reading() as session:
        await require_user_of(settings, session, user, image)


async def require_user_of(
    settings: ImageSettings, session: AsyncSession, user: Identity, image: str
) -> None:
    """Only an image's own users change it; members of their VOs see it read-only (403), and
    anyone else does not see it at all (404)."""
    if await image_queries.is_user_of(session, image, user.user_id):
        return
    shared = _shared_vos(settings, user)
    if shared and await image_queries.claimed_in(session, image, shared):
        raise Forbidden(
            "this image is shared with your VO read-only: only those who asked for it "
            "may rebuild or delete it (asking for its configuration makes it yours too)"
        )
    raise NotFound(f"no image {image}")


def _view(row: Image, jobs: int, yours: bool) -> ImageView:
    fields = {n: getattr(row, n) for n in ImageView.model_fields if n not in ("jobs", "yours")}
    return ImageView.model_validate({**fields, "jobs": jobs, "yours": bool(yours)})


async def image_file(
    settings: ImageSettings, db: Database, images: ImageBuilds, user: Identity, image: str, fmt: str
) -> tuple[Path, ImageView]:
    """The file of one format of a ready image (for download), and the image."""
    view = await get_image(settings, db, user, image)
    if fmt not in view.formats:
        raise NotFound(f"image {image} has no {fmt} format")
    return images.store.path(image) / FORMAT_FILES[fmt], view
