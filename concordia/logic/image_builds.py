"""Image build tasks: start builds, record how they end, resume them, cancel them."""

from __future__ import annotations

import asyncio
import logging
import time

from concordia.core.image_status import ImageStatus
from concordia.db import images as image_queries
from concordia.db.tables import Image, utcnow
from concordia.images.build import PodmanSetup, choose_builder, run_build
from concordia.images.builders import (
    CURRENT_BUILD,
    BuildCancelled,
    BuildError,
    cancel_build,
    forget_cancel,
)
from concordia.images.plan import BuildPlan
from concordia.images.stages import StageCache
from concordia.images.store import ImageStore, StoredImage
from concordia.logic.database import Database
from concordia.logic.errors import Conflict, NotFound
from concordia.logic.identity import Identity
from concordia.logic.image_events import audience, publish
from concordia.logic.image_plans import plan_image
from concordia.logic.image_views import ImageView, get_image, require_user_of
from concordia.logic.platform import ImageBuilds, Platform
from concordia.logic.process import Process
from concordia.metrics import IMAGE_BUILD_SECONDS
from concordia.settings import ImageSettings, ServerSettings

log = logging.getLogger(__name__)

#: The stage cache's directory in the image store (private: never an image id).
STAGES_DIR = ".stages"


def open_image_builds(
    settings: ImageSettings, server: ServerSettings, *, here: bool = True
) -> ImageBuilds:
    """The image store (in the ``server``'s data dir) and the builder probed on this machine;
    builds run in this process if ``here``."""
    store = ImageStore(server.images_dir)
    store.prepare()
    podman = PodmanSetup(settings.image_podman_bases, server.data_dir / "podman")
    choice = choose_builder(list(settings.image_builders), list(settings.image_formats), podman)
    log.info("image builder: %s", choice.summary)
    stages = StageCache(server.images_dir / STAGES_DIR, int(settings.image_stage_cache_gb * 1e9))
    stages.prepare()
    return ImageBuilds(store, choice, here=here, stages=stages)


def clear_build_leftovers(builds: ImageBuilds) -> None:
    """What builds of a process that died left (half-made images, podman's containers): for
    the process that builds, before it starts to; never while another builds."""
    builds.store.clear_leftovers()
    if builds.stages is not None:
        builds.stages.clear_leftovers()
    if builds.choice.builder is not None:
        builds.choice.builder.remove_leftovers()


def start_build(platform: Platform, plan: BuildPlan) -> None:
    """Run the build of ``plan`` in a task of this process (its row says building)."""
    platform.images.started += 1
    task = asyncio.create_task(_build(platform, plan), name=f"image-build-{plan.image_id[:12]}")
    platform.images.tasks[plan.image_id] = task
    task.add_done_callback(lambda _: platform.images.tasks.pop(plan.image_id, None))


async def _build(platform: Platform, plan: BuildPlan) -> None:
    stored, outcome, error = await _run_build(platform.settings, platform.images, plan)
    async with platform.writing() as session:
        row = await session.get(Image, plan.image_id)
        if row is None:
            return
        _record_end(platform.images, row, stored, outcome, error)
        reached = await audience(platform.settings, session, row.id)
    publish(platform.bus, row, reached)
    platform.look_again()  # jobs waiting for this image may go


async def _run_build(
    settings: ImageSettings, images: ImageBuilds, plan: BuildPlan
) -> tuple[StoredImage | None, ImageStatus, str]:
    """The image made, or how the build ended without it (cancelled or failed, and why)."""
    builder = images.choice.builder
    assert builder is not None
    stored, outcome, error = None, ImageStatus.READY, ""
    CURRENT_BUILD.set(plan.image_id)  # this task's context, passed on to the build's thread
    async with images.slots:
        started = time.perf_counter()
        try:
            formats: list[str] = list(settings.image_formats)
            stored = await asyncio.to_thread(
                run_build, plan, builder, images.store, formats, images.stages
            )
        except BuildCancelled:
            outcome, error = ImageStatus.CANCELLED, "cancelled"
        except BuildError as exc:
            outcome, error = ImageStatus.FAILED, str(exc)
        except Exception as exc:  # a bug: the image fails, the platform goes on
            log.exception("image build %s", plan.image_id)
            outcome, error = ImageStatus.FAILED, f"internal error: {exc}"
        finally:
            forget_cancel(plan.image_id)
        IMAGE_BUILD_SECONDS.labels(outcome).observe(time.perf_counter() - started)
    return stored, outcome, error


def _record_end(
    images: ImageBuilds, row: Image, stored: StoredImage | None, outcome: ImageStatus, error: str
) -> None:
    """Set the image's row to how its build ended."""
    cancelled = row.status == ImageStatus.CANCELLED  # by cancel_image, as it was building
    if outcome == ImageStatus.CANCELLED or (outcome == ImageStatus.FAILED and cancelled):
        row.status = ImageStatus.CANCELLED  # its error says who, since cancel_image
    elif outcome == ImageStatus.FAILED or stored is None:
        row.status, row.error = ImageStatus.FAILED, error
    else:  # made (if cancelled as it finished, the image is whole all the same)
        builder = images.choice.builder
        assert builder is not None
        row.status, row.builder, row.built_at = ImageStatus.READY, builder.version, utcnow()
        row.formats, row.rootfs_size = stored.meta["formats"], stored.meta["rootfs_size"]


async def start_builds(platform: Platform) -> None:
    """The builds asked for and not running here: after a restart, those that were running
    (their half-made workspace was discarded; those whose application changed since fail, as
    do their jobs); in the worker, those a web process asked for."""
    async with platform.reading() as session:
        rows = await image_queries.images_building(session)
    building = {row.id for row in rows}
    for running in list(platform.images.tasks):
        if running not in building:  # cancelled in a web process
            cancel_build(running)
    for row in rows:
        if row.id in platform.images.tasks:
            continue
        try:
            app = platform.catalog.get(row.application)
            plan = plan_image(
                platform.settings, platform.catalog, platform.images, app, dict(row.build_args)
            )
        except (NotFound, Conflict) as exc:
            reason = f"interrupted by a restart and cannot resume: {exc}"
            await _fail(platform.db, platform.process, row.id, reason)
            continue
        if plan.image_id != row.id:
            reason = "interrupted by a restart; the application changed"
            await _fail(platform.db, platform.process, row.id, reason)
            continue
        start_build(platform, plan)


async def _fail(db: Database, process: Process, image: str, error: str) -> None:
    async with db.writing() as session:
        row = await session.get(Image, image)
        if row is not None:
            row.status, row.error = ImageStatus.FAILED, error
    process.look_again()


async def cancel_image(platform: Platform, user: Identity, image: str) -> ImageView:
    """Stop the image's build: its commands are stopped and its workspace removed (by the
    process that builds it, within a second or so), and its waiting jobs fail. Only one of
    its users may; Conflict unless it is building."""
    async with platform.writing() as session:
        row = await session.get(Image, image)
        if row is None or row.status == ImageStatus.DELETED:
            raise NotFound(f"no image {image}")
        await require_user_of(platform.settings, session, user, image)
        if row.status != ImageStatus.BUILDING:
            raise Conflict(f"the image is {row.status}, not being built")
        row.status, row.error = ImageStatus.CANCELLED, f"cancelled by {user.username}"
        reached = await audience(platform.settings, session, image)
    if image in platform.images.tasks:  # else the worker stops it, told by NOTIFY
        cancel_build(image)
    publish(platform.bus, row, reached)
    platform.look_again()  # its waiting jobs fail now
    return await get_image(platform.settings, platform.db, user, image)
