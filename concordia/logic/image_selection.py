"""Select or build: an image for whoever asks (built once if need be), and their claims."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.image_status import ImageStatus
from concordia.db import images as image_queries
from concordia.db.tables import Image, ImageUser, utcnow
from concordia.images.plan import BuildPlan
from concordia.images.store import StoredImage
from concordia.logic.errors import Conflict, NotFound
from concordia.logic.identity import Identity
from concordia.logic.image_builds import start_build
from concordia.logic.image_events import Audience, audience, publish
from concordia.logic.image_plans import check_build_args, plan_image, plan_requested
from concordia.logic.image_views import (
    ImageSelection,
    ImageState,
    find_claimed,
    get_image,
    may_change,
    require_user_of,
)
from concordia.logic.platform import ImageBuilds, Platform
from concordia.settings import ImageSettings

#: How long a retry waits for the build it follows to have stopped.
RETRY_WAIT_SECONDS = 30


@dataclass(frozen=True)
class ImageClaim:
    """An image claimed in a transaction not yet committed, and what follows its commit."""

    image_id: str
    #: Whether the image was ready (else it is being built).
    selected: bool
    #: The build to start once committed; None: the image is ready or already building.
    build: BuildPlan | None
    row: Image
    reached: Audience

    def after_commit(self, platform: Platform) -> None:
        """Start the build and tell the image's users: only once the claim is committed, so
        that a transaction rolled back leaves no build running and tells no one."""
        if self.build is not None and platform.images.here:  # else the worker, told by NOTIFY
            start_build(platform, self.build)
        publish(platform.bus, self.row, self.reached)


async def select_or_build(
    platform: Platform,
    user: Identity,
    application: str,
    raw_build_args: dict[str, Any],
    *,
    force: bool = False,
    vo: str | None = None,
) -> ImageSelection:
    """The image of this configuration: selected at once if it exists, else exactly one build
    starts (however many ask at the same time); ``force`` rebuilds a ready image.

    Whoever asks becomes one of the image's users, under ``vo`` or else each of their VOs.
    An image's bytes follow from the public recipe and the build arguments alone, so one
    that someone else asked for is selected for this user too rather than built twice (that
    a configuration exists is no one's data); asking is what puts it in the user's
    catalogue. Who else uses it, and their jobs, stay theirs."""
    plan = plan_requested(
        platform.settings, platform.catalog, platform.images, application, raw_build_args
    )
    vos = [vo] if vo is not None else (user.vos or [""])
    if not force:  # the usual case, an image that exists and is theirs: no write, no lock
        async with platform.reading() as session:
            found = await find_claimed(session, plan.image_id, user.user_id)
        if found is not None:
            view, claimed = found
            ready = view.status == ImageStatus.READY
            if ready and claimed.issuperset(vos) and platform.images.store.complete(view.id):
                return ImageSelection(selected=True, image=view)
    async with platform.writing() as session:  # one writer: the check and the claim are one
        claim = await claim_image(
            platform.settings, platform.images, session, user, plan, vos, force=force
        )
    claim.after_commit(platform)
    view = await get_image(platform.settings, platform.db, user, plan.image_id)
    return ImageSelection(selected=claim.selected, image=view)


async def claim_image(
    settings: ImageSettings,
    images: ImageBuilds,
    session: AsyncSession,
    user: Identity,
    plan: BuildPlan,
    vos: list[str],
    *,
    force: bool = False,
) -> ImageClaim:
    """In the caller's transaction: the image of ``plan`` (found, adopted from the store, or
    marked building) and the user's claims on it under ``vos``. The caller commits, then
    calls ``after_commit``. Marked building, its earlier build's log is removed at once (a
    rollback does not bring it back; the row keeps that build's error)."""
    row = await session.get(Image, plan.image_id)
    stored = images.store.get(plan.image_id)
    if row is None and stored is not None and not force:
        row = _adopt(stored)  # in the store but not in this database (a shared store)
        session.add(row)
    ready = row is not None and row.status == ImageStatus.READY and stored is not None
    build = None
    # None yet, or failed, cancelled, deleted, or a rebuild asked for: built (again).
    if row is None or not (row.status == ImageStatus.BUILDING or (ready and not force)):
        if row is None:
            row = Image(id=plan.image_id, application=plan.application, build_args=plan.build_args)
            session.add(row)
        row.status, row.error, row.created_at = ImageStatus.BUILDING, "", utcnow()
        # Before the commit, so before the build begins, in this process or a worker: a
        # reader of the log from now on sees this build's alone, from its first byte.
        images.store.forget_log(plan.image_id)
        row.builder = images.choice.summary
        ready, build = False, replace(plan, fresh=force)
    await session.flush()  # the image row before its users'
    for name in await _unclaimed(session, plan.image_id, user.user_id, vos):
        session.add(ImageUser(image_id=plan.image_id, user_id=user.user_id, vo=name))
    await session.flush()
    reached = await audience(settings, session, row.id)
    return ImageClaim(plan.image_id, ready, build, row, reached)


async def _unclaimed(session: AsyncSession, image: str, user_id: int, vos: list[str]) -> list[str]:
    """Which of these VOs the user is not yet recorded as a user of the image under."""
    have = await image_queries.vos_claimed_by(session, image, user_id)
    return [vo for vo in vos if vo not in have]


def _adopt(stored: StoredImage) -> Image:
    """A database row for an image found complete in the store: its id is its content."""
    meta = stored.meta
    return Image(
        id=stored.id,
        application=meta["application"],
        build_args=meta["build_args"],
        status=ImageStatus.READY,
        builder=meta["builder"],
        formats=meta["formats"],
        rootfs_size=meta["rootfs_size"],
        built_at=utcnow(),
    )


async def image_state(
    platform: Platform, application: str, raw_build_args: dict[str, Any]
) -> ImageState:
    """What this configuration's image is now, without building or claiming anything."""
    app = platform.catalog.get(application)
    if app.image is None:
        return ImageState(id=None, status=None)
    try:
        build_args = check_build_args(app, raw_build_args)
        plan = plan_image(platform.settings, platform.catalog, platform.images, app, build_args)
    except Conflict as exc:
        return ImageState(id=None, status=None, problem=exc.message)
    async with platform.reading() as session:
        row = await session.get(Image, plan.image_id)
    status: ImageStatus | None = None
    if row is not None and row.status != ImageStatus.DELETED:
        status = ImageStatus(row.status)
    if status is None and platform.images.store.complete(plan.image_id):
        status = ImageStatus.READY  # in a shared store: selected when asked for
    return ImageState(id=plan.image_id, status=status)


async def retry_image(platform: Platform, user: Identity, image: str) -> ImageSelection:
    """Build a failed or cancelled image again: the same application and build arguments
    (a new id if the recipe changed since). Conflict unless failed or cancelled."""
    view = await get_image(platform.settings, platform.db, user, image)
    await may_change(platform.settings, platform.db, user, image)
    if view.status not in (ImageStatus.FAILED, ImageStatus.CANCELLED):
        raise Conflict(f"the image is {view.status}: only a failed or cancelled build is retried")
    # A build just cancelled may still be stopping here: it would end the new one with it.
    stopping = platform.images.tasks.get(image)
    if stopping is not None:
        done, _ = await asyncio.wait({stopping}, timeout=RETRY_WAIT_SECONDS)
        if not done:
            raise Conflict("the cancelled build is still stopping: retry in a moment")
    return await select_or_build(platform, user, view.application, view.build_args)


async def delete_image(platform: Platform, user: Identity, image: str) -> None:
    """The user stops using the image; its files go with its last user. Refused while it
    builds or jobs that use it are not over (the user's own, while others still use it)."""
    async with platform.writing() as session:
        row = await session.get(Image, image)
        if row is None or row.status == ImageStatus.DELETED:
            raise NotFound(f"no image {image}")
        await require_user_of(platform.settings, session, user, image)
        if row.status == ImageStatus.BUILDING:
            raise Conflict("the image is being built; delete it when the build has ended")
        others = await image_queries.has_other_users(session, image, user.user_id)
        # With other users, only this user's jobs count: theirs are theirs to know, and the
        # image stays for them.
        owner_id = user.user_id if others else None
        active = await image_queries.active_jobs(session, image, owner_id)
        if active:
            raise Conflict(f"{active} job(s) not yet finished use this image")
        reached = await audience(platform.settings, session, image)
        await image_queries.drop_claims(session, image, user.user_id)
        if not others:
            await asyncio.to_thread(platform.images.store.delete, image)
            row.status, row.formats, row.rootfs_size = ImageStatus.DELETED, {}, 0
    publish(platform.bus, row, reached)
