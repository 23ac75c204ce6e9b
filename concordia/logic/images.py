"""Images: select the image of an application's configuration if it exists, else build it once."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, delete, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.application import ApplicationDef, ParameterErrors, validate_build_args
from concordia.core.build_progress import BuildProgress
from concordia.core.recipe import Recipe, image_id
from concordia.core.states import FINAL_STATES
from concordia.db.tables import Image, ImageUser, Job, Submission, utcnow
from concordia.images.build import PodmanSetup, choose_builder, run_build
from concordia.images.builders import (
    CURRENT_BUILD,
    BuildCancelled,
    BuildError,
    BuildPlan,
    Source,
    cancel_build,
    forget_cancel,
)
from concordia.images.stages import StageCache
from concordia.images.store import FORMAT_FILES, ImageStore, StoredImage
from concordia.logic.applications import ApplicationCatalog
from concordia.logic.errors import Conflict, Forbidden, Invalid, NotFound
from concordia.logic.events import Event
from concordia.logic.identity import Identity
from concordia.logic.outputs import read_chunk
from concordia.logic.platform import ImageBuilds, Platform
from concordia.metrics import IMAGE_BUILD_SECONDS
from concordia.settings import Settings

log = logging.getLogger(__name__)

BUILDING, READY, FAILED, DELETED = "building", "ready", "failed", "deleted"
#: A build its user stopped: its jobs fail ("Image build cancelled"), retry builds again.
CANCELLED = "cancelled"
#: The stage cache's directory in the image store (private: never an image id).
STAGES_DIR = ".stages"
#: Longest chain of recipe:APP bases (a loop is refused long before).
_MAX_BASES = 8


class FormatView(BaseModel):
    file: str
    size: int
    sha256: str


class ImageView(BaseModel):
    id: str
    application: str
    build_args: dict[str, Any]
    status: str
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


def builders(platform: Platform) -> BuildersView:
    choice = platform.images.choice
    return BuildersView(
        builder=choice.builder.version if choice.builder else None,
        summary=choice.summary,
        problems=choice.problems,
        formats=list(platform.settings.image_formats),
    )


class ImageSelection(BaseModel):
    """The answer to "this configuration, please": selected (it existed) or being built."""

    selected: bool
    image: ImageView


def open_image_builds(settings: Settings) -> ImageBuilds:
    """The image store and the builder probed on this machine."""
    store = ImageStore(settings.images_dir)
    store.prepare()
    podman = PodmanSetup(settings.image_podman_bases, settings.data_dir / "podman")
    choice = choose_builder(list(settings.image_builders), list(settings.image_formats), podman)
    log.info("image builder: %s", choice.summary)
    stages = StageCache(settings.images_dir / STAGES_DIR, int(settings.image_stage_cache_gb * 1e9))
    stages.prepare()
    return ImageBuilds(store, choice, stages)


# Planning: configuration -> recipe, files, sources -> id. No database.
def unavailable_reason(platform: Platform, app: ApplicationDef) -> str | None:
    """Why the application's image cannot be made here (an operator-provided file is not
    configured); None if it can."""
    if app.image is None:
        return None
    return _missing_source(platform, app, flat_recipe(platform.catalog, app))


def _missing_source(platform: Platform, app: ApplicationDef, recipe: Recipe) -> str | None:
    for name, use in recipe.sources.items():
        if name not in platform.settings.sources:
            hint = f" {use.help}" if use.help else ""
            return f"{app.title} is unavailable: its build needs the file '{name}'.{hint}"
    return None


def flat_recipe(catalog: ApplicationCatalog, app: ApplicationDef) -> Recipe:
    """The application's recipe with its recipe:APP bases folded in (one build)."""
    chain = []
    current: ApplicationDef | None = app
    while current is not None:
        if current.image is None:
            raise Conflict(f"application {current.name!r} has no image recipe")
        chain.append(current.image)
        base = current.image.base_recipe
        if len(chain) > _MAX_BASES or base == app.name:
            raise Conflict(f"the image recipe of {app.name!r} has a loop of bases")
        current = catalog.get(base) if base else None
    recipe = chain.pop()
    while chain:
        recipe = chain.pop().on_top_of(recipe)
    return recipe


def plan_image(platform: Platform, app: ApplicationDef, build_args: dict[str, Any]) -> BuildPlan:
    """The build of this configuration and its id. Raises Conflict if it cannot be built."""
    builder = platform.images.choice.builder
    if builder is None:
        raise Conflict(f"images cannot be built here: {platform.images.choice.summary}")
    recipe = flat_recipe(platform.catalog, app)
    reason = _missing_source(platform, app, recipe)
    if reason:
        raise Conflict(reason)
    files = {dest: platform.catalog.directory / src for src, dest in recipe.files.items()}
    digests = {dest: _file_digest(path) for dest, path in files.items()}
    sources = {}
    for name, use in recipe.sources.items():
        configured = platform.settings.sources[name]
        sources[use.dest] = Source(configured.url, configured.sha256)
        digests[use.dest] = configured.sha256
    return BuildPlan(
        image_id=image_id(recipe, build_args, digests, builder.version),
        application=app.name,
        recipe=recipe,
        build_args=build_args,
        files=files,
        sources=sources,
        timeout=platform.settings.image_build_timeout,
    )


_digests: dict[tuple[Path, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a recipe file, remembered while it keeps its size and mtime."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise Conflict(f"the image recipe's file {path.name} is missing") from exc
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _digests:
        _digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _digests[key]


def check_build_args(app: ApplicationDef, raw: dict[str, Any]) -> dict[str, Any]:
    try:
        return validate_build_args(app, raw)
    except ParameterErrors as exc:
        raise Invalid.many([(f"build_args.{e.field}", e.message) for e in exc.errors]) from None


# Select or build.
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

    Whoever asks becomes one of the image's users, under ``vo`` (a submission's) or else each
    of their VOs. An image's bytes follow from the public recipe and the build arguments
    alone, so one that someone else asked for is selected for this user too rather than built
    twice (that a configuration exists is no one's data); asking is what puts it in the
    user's catalogue. Who else uses it, and their jobs, stay theirs."""
    app = platform.catalog.get(application)
    if app.image is None:
        raise Invalid("application", "this application runs without an image")
    plan = plan_image(platform, app, check_build_args(app, raw_build_args))
    vos = [vo] if vo is not None else (user.vos or [""])
    if not force:  # the usual case, an image that exists and is theirs: no write, no lock
        async with platform.reading() as session:
            view = await _find(session, plan.image_id, user.user_id)
            unclaimed = await _unclaimed(session, plan.image_id, user.user_id, vos)
        complete = platform.images.store.complete(plan.image_id)
        if view is not None and view.status == READY and complete and not unclaimed:
            return ImageSelection(selected=True, image=view)
    async with platform.writing() as session:  # one writer: the check and the claim are one
        row = await session.get(Image, plan.image_id)
        stored = platform.images.store.get(plan.image_id)
        if row is None and stored is not None and not force:
            row = _adopt(stored)  # in the store but not in this database (a shared store)
            session.add(row)
        ready = row is not None and row.status == READY and stored is not None
        if row is not None and (row.status == BUILDING or (ready and not force)):
            selected = ready
        else:
            if row is None:
                row = Image(id=plan.image_id, application=app.name, build_args=plan.build_args)
                session.add(row)
            row.status, row.error, row.created_at = BUILDING, "", utcnow()
            row.builder = platform.images.choice.summary
            selected = False
            await session.flush()
            if platform.runs_work:  # else the worker starts it (start_builds), told by NOTIFY
                _start(platform, replace(plan, fresh=force))
        await session.flush()  # the image row before its users'
        for name in await _unclaimed(session, plan.image_id, user.user_id, vos):
            session.add(ImageUser(image_id=plan.image_id, user_id=user.user_id, vo=name))
        await session.flush()
        _publish(platform, row, await _audience(session, platform, row.id))
    return ImageSelection(selected=selected, image=await get_image(platform, user, plan.image_id))


async def _unclaimed(session: AsyncSession, image: str, user_id: int, vos: list[str]) -> list[str]:
    """Which of these VOs the user is not yet recorded as a user of the image under."""
    query = select(ImageUser.vo).where(ImageUser.image_id == image, ImageUser.user_id == user_id)
    have = set(await session.scalars(query))
    return [vo for vo in vos if vo not in have]


def _adopt(stored: StoredImage) -> Image:
    """A database row for an image found complete in the store: its id is its content."""
    meta = stored.meta
    return Image(
        id=stored.id,
        application=meta["application"],
        build_args=meta["build_args"],
        status=READY,
        builder=meta["builder"],
        formats=meta["formats"],
        rootfs_size=meta["rootfs_size"],
        built_at=utcnow(),
    )


class ImageState(BaseModel):
    """What a configuration's image is now, without building anything (the form shows it)."""

    id: str | None
    #: ready, building, failed, or None: not built yet (a submission builds it).
    status: str | None
    #: Why it cannot be built here, if it cannot.
    problem: str | None = None


async def image_state(
    platform: Platform, application: str, raw_build_args: dict[str, Any]
) -> ImageState:
    app = platform.catalog.get(application)
    if app.image is None:
        return ImageState(id=None, status=None)
    try:
        plan = plan_image(platform, app, check_build_args(app, raw_build_args))
    except Conflict as exc:
        return ImageState(id=None, status=None, problem=exc.message)
    async with platform.reading() as session:
        row = await session.get(Image, plan.image_id)
    status = None if row is None or row.status == DELETED else row.status
    if status is None and platform.images.store.complete(plan.image_id):
        status = READY  # in a shared store: selected when asked for
    return ImageState(id=plan.image_id, status=status)


def _start(platform: Platform, plan: BuildPlan) -> None:
    platform.images.started += 1
    task = asyncio.create_task(_build(platform, plan), name=f"image-build-{plan.image_id[:12]}")
    platform.images.tasks[plan.image_id] = task
    task.add_done_callback(lambda _: platform.images.tasks.pop(plan.image_id, None))


async def _build(platform: Platform, plan: BuildPlan) -> None:
    images = platform.images
    builder = images.choice.builder
    assert builder is not None
    error, cancelled = "", False
    CURRENT_BUILD.set(plan.image_id)  # this task's context, passed on to the build's thread
    async with images.slots:
        started = time.perf_counter()
        try:
            formats: list[str] = list(platform.settings.image_formats)
            stored = await asyncio.to_thread(
                run_build, plan, builder, images.store, formats, images.stages
            )
        except BuildCancelled:
            error, cancelled = "cancelled", True
        except BuildError as exc:
            error = str(exc)
        except Exception as exc:  # a bug: the image fails, the platform goes on
            log.exception("image build %s", plan.image_id)
            error = f"internal error: {exc}"
        finally:
            forget_cancel(plan.image_id)
        outcome = CANCELLED if cancelled else FAILED if error else READY
        IMAGE_BUILD_SECONDS.labels(outcome).observe(time.perf_counter() - started)
    async with platform.writing() as session:
        found = await session.get(Image, plan.image_id)
        if found is None:
            return
        row = found
        if cancelled or (error and row.status == CANCELLED):
            row.status = CANCELLED  # its error says who, since cancel_image
        elif error:
            row.status, row.error = FAILED, error
        else:  # made (if cancelled as it finished, the image is whole all the same)
            row.status, row.builder, row.built_at = READY, builder.version, utcnow()
            row.formats, row.rootfs_size = stored.meta["formats"], stored.meta["rootfs_size"]
        audience = await _audience(session, platform, row.id)
    _publish(platform, row, audience)
    platform.wakeup.set()  # jobs waiting for this image may go


def clear_build_leftovers(builds: ImageBuilds) -> None:
    """What builds of a process that died left (half-made images, podman's containers): for
    the process that builds, before it starts to; never while another builds."""
    builds.store.clear_leftovers()
    if builds.stages is not None:
        builds.stages.clear_leftovers()
    if builds.choice.builder is not None:
        builds.choice.builder.remove_leftovers()


async def start_builds(platform: Platform) -> None:
    """The builds asked for and not running here: after a restart, those that were running
    (their half-made workspace was discarded; those whose application changed since fail, as
    do their jobs); in the worker, those a web process asked for."""
    async with platform.reading() as session:
        rows = list(await session.scalars(select(Image).where(Image.status == BUILDING)))
    building = {row.id for row in rows}
    for running in list(platform.images.tasks):
        if running not in building:  # cancelled in a web process
            cancel_build(running)
    for row in rows:
        if row.id in platform.images.tasks:
            continue
        try:
            app = platform.catalog.get(row.application)
            plan = plan_image(platform, app, dict(row.build_args))
        except (NotFound, Conflict) as exc:
            await _fail(platform, row.id, f"interrupted by a restart and cannot resume: {exc}")
            continue
        if plan.image_id != row.id:
            await _fail(platform, row.id, "interrupted by a restart; the application changed")
            continue
        _start(platform, plan)


async def cancel_image(platform: Platform, user: Identity, image: str) -> ImageView:
    """Stop the image's build: its commands are stopped and its workspace removed (by the
    process that builds it, within a second or so), and its waiting jobs fail. Only one of
    its users may; Conflict unless it is building."""
    async with platform.writing() as session:
        row = await session.get(Image, image)
        if row is None or row.status == DELETED:
            raise NotFound(f"no image {image}")
        await _require_user_of(session, platform, user, image)
        if row.status != BUILDING:
            raise Conflict(f"the image is {row.status}, not being built")
        row.status, row.error = CANCELLED, f"cancelled by {user.username}"
        audience = await _audience(session, platform, image)
    if image in platform.images.tasks:  # else the worker stops it, told by NOTIFY
        cancel_build(image)
    _publish(platform, row, audience)
    platform.wakeup.set()  # its waiting jobs fail now
    return await get_image(platform, user, image)


#: How long a retry waits for the build it follows to have stopped.
RETRY_WAIT_SECONDS = 30


async def retry_image(platform: Platform, user: Identity, image: str) -> ImageSelection:
    """Build a failed or cancelled image again: the same application and build arguments
    (a new id if the recipe changed since). Conflict unless failed or cancelled."""
    view = await get_image(platform, user, image)
    await may_change(platform, user, image)
    if view.status not in (FAILED, CANCELLED):
        raise Conflict(f"the image is {view.status}: only a failed or cancelled build is retried")
    # A build just cancelled may still be stopping here: it would end the new one with it.
    stopping = platform.images.tasks.get(image)
    if stopping is not None:
        done, _ = await asyncio.wait({stopping}, timeout=RETRY_WAIT_SECONDS)
        if not done:
            raise Conflict("the cancelled build is still stopping: retry in a moment")
    return await select_or_build(platform, user, view.application, view.build_args)


async def _fail(platform: Platform, image: str, error: str) -> None:
    async with platform.writing() as session:
        row = await session.get(Image, image)
        if row is not None:
            row.status, row.error = FAILED, error
    platform.wakeup.set()


Audience = tuple[list[int], list[str]]


async def _audience(session: AsyncSession, platform: Platform, image: str) -> Audience:
    """Whom an image's changes reach: its users, and with images_shared_in_vo their VOs."""
    rows = (
        await session.execute(
            select(ImageUser.user_id, ImageUser.vo).where(ImageUser.image_id == image)
        )
    ).all()
    shared = platform.settings.images_shared_in_vo
    return sorted({user for user, _ in rows}), sorted({vo for _, vo in rows if vo and shared})


async def announce_image(platform: Platform, session: AsyncSession, row: Image) -> None:
    """Tell the image's audience of its state (a web process, of a build in the worker)."""
    _publish(platform, row, await _audience(session, platform, row.id))


def _publish(platform: Platform, row: Image, audience: Audience) -> None:
    data = {"id": row.id, "application": row.application, "status": row.status}
    viewers, vos = audience
    event = Event(kind="image", owner_id=None, data=data, viewers=viewers, vos=vos)
    platform.bus.publish(event)


# The catalogue.
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
    member of one of their VOs asked for under it (read-only: see _require_user_of)."""
    theirs: ColumnElement[bool] = ImageUser.user_id == user.user_id
    if platform.settings.images_shared_in_vo and user.vos:
        theirs = or_(theirs, ImageUser.vo.in_(user.vos))
    return exists().where(ImageUser.image_id == Image.id, theirs)


async def list_images(
    platform: Platform, user: Identity, application: str | None = None
) -> list[ImageView]:
    query = (
        select(Image, _jobs_of(user.user_id), _asked_by(user.user_id))
        .where(Image.status != DELETED, _seen_by(platform, user))
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
        found = await _find(session, image, user.user_id, _seen_by(platform, user))
    if found is None or found.status == DELETED:
        raise NotFound(f"no image {image}")
    return found


async def _find(
    session: AsyncSession, image: str, user_id: int, *where: ColumnElement[bool]
) -> ImageView | None:
    query = select(Image, _jobs_of(user_id), _asked_by(user_id)).where(Image.id == image, *where)
    found = (await session.execute(query)).first()
    return None if found is None else _view(*found)


async def may_change(platform: Platform, user: Identity, image: str) -> None:
    """Raises unless the user may rebuild or delete the image (see _require_user_of)."""
    async with platform.reading() as session:
        await _require_user_of(session, platform, user, image)


async def _require_user_of(
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


async def delete_image(platform: Platform, user: Identity, image: str) -> None:
    """The user stops using the image; its files go with its last user. Refused while it
    builds or jobs that use it are not over (the user's own, while others still use it)."""
    async with platform.writing() as session:
        row = await session.get(Image, image)
        if row is None or row.status == DELETED:
            raise NotFound(f"no image {image}")
        await _require_user_of(session, platform, user, image)
        if row.status == BUILDING:
            raise Conflict("the image is being built; delete it when the build has ended")
        others = await session.scalar(
            select(exists().where(ImageUser.image_id == image, ImageUser.user_id != user.user_id))
        )
        active_query = (
            select(func.count())
            .select_from(Job)
            .join(Submission, Job.submission_id == Submission.id)
            .where(Submission.image_id == image, Job.status.not_in([s.value for s in FINAL_STATES]))
        )
        if others:  # their jobs are theirs to know, and the image stays for them
            active_query = active_query.where(Submission.owner_id == user.user_id)
        active = await session.scalar(active_query)
        if active:
            raise Conflict(f"{active} job(s) not yet finished use this image")
        audience = await _audience(session, platform, image)
        await session.execute(
            delete(ImageUser).where(ImageUser.image_id == image, ImageUser.user_id == user.user_id)
        )
        if not others:
            await asyncio.to_thread(platform.images.store.delete, image)
            row.status, row.formats, row.rootfs_size = DELETED, {}, 0
    _publish(platform, row, audience)


async def image_file(
    platform: Platform, user: Identity, image: str, fmt: str
) -> tuple[Path, ImageView]:
    """The file of one format of a ready image (for download), and the image."""
    view = await get_image(platform, user, image)
    if fmt not in view.formats:
        raise NotFound(f"image {image} has no {fmt} format")
    return platform.images.store.path(image) / FORMAT_FILES[fmt], view


# Build logs.
async def read_log(
    platform: Platform, user: Identity, image: str, offset: int = 0
) -> tuple[str, int, str]:
    """The build log from byte ``offset``: (text, next offset, the image's status)."""
    if offset < 0:
        raise Invalid("offset", "must be >= 0", location="query")
    view = await get_image(platform, user, image)
    path, limit = platform.images.store.log_path(image), platform.settings.max_log_chunk
    text, next_offset, _ = await asyncio.to_thread(read_chunk, path, offset, limit)
    return text, next_offset, view.status


async def progress_until(
    platform: Platform, user: Identity, image: str, offset: int
) -> BuildProgress:
    """Where the build was when its log reached byte ``offset`` (a follower reconnecting)."""
    progress, at = BuildProgress(), 0
    while at < offset:
        text, next_offset, _ = await read_log(platform, user, image, at)
        if next_offset <= at:
            break
        progress.advance(text.encode()[: offset - at].decode(errors="ignore"))
        at = next_offset
    return progress


async def follow_log(
    platform: Platform, user: Identity, image: str, offset: int = 0
) -> AsyncIterator[str]:
    """The build log as it grows, until the build ends (then the rest, and stop)."""
    async with platform.bus.subscribe() as events:
        while True:
            text, offset, status = await read_log(platform, user, image, offset)
            if text:
                yield text
                continue
            if status != BUILDING:
                return
            try:  # a line written or the build's end, whichever comes first
                await asyncio.wait_for(events.get(), timeout=0.25)
            except TimeoutError:
                pass
