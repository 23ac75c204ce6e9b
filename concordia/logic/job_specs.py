"""What a backend is given of each job handed to it, and the jobs that cannot run (image
files gone, no usable proxy, a data lake refusing): failed, with why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.backends.base import JobImage, JobSpec, Owner
from concordia.core.application import ApplicationDef
from concordia.core.states import JobStatus
from concordia.db import submission_runs
from concordia.db.job_rows import ReadyJob
from concordia.images.store import StoredImage
from concordia.logic import datalake_grid, datalake_tokens
from concordia.logic.applications import ApplicationCatalog
from concordia.logic.jobs import transition
from concordia.logic.keyring import Keyring
from concordia.logic.platform import ImageBuilds, Platform
from concordia.logic.proxies import usable_proxy
from concordia.logic.scheduling import FairShare
from concordia.logic.submission_plans import job_spec
from concordia.settings import Settings


@dataclass
class RoundMemory:
    """What a worker's dispatch rounds keep from one round to the next."""

    #: Application definitions by id, as stored when first used.
    definitions: dict[int, ApplicationDef] = field(default_factory=dict)
    #: Each RSE's WebDAV base URL, as Rucio said it (grid jobs write their data there).
    rse_urls: dict[str, str] = field(default_factory=dict)
    #: Per backend with a room limit, the turns of its users.
    shares: dict[str, FairShare] = field(default_factory=dict)
    #: Set by a round that left jobs for later (Rucio did not say where an RSE is): the
    #: worker dispatches no more until the next poll interval.
    retry_later: bool = False


async def specs_for(
    platform: Platform,
    session: AsyncSession,
    memory: RoundMemory,
    jobs: Sequence[ReadyJob],
    *,
    uploads_data: bool,
    last_before_start: int,
) -> list[JobSpec]:
    """What the backend needs of each job; a job that cannot run fails here, with why.
    A backend that ``uploads_data`` is told where a data-lake submission's jobs store
    their data; such a job waits while Rucio does not say where its RSE is. A job not newer
    than ``last_before_start`` may have been handed over by a process that died."""
    submission_ids = {job.submission_id for job in jobs}
    runs = await _runs_of(platform.images, session, memory, submission_ids)
    lakes = {}
    if uploads_data:
        urls = memory.rse_urls
        lakes = await datalake_grid.grid_lakes(
            platform.settings, platform.datalake, session, submission_ids, urls
        )
    proxies: dict[tuple[int, str, int], tuple[bytes | None, str]] = {}
    groups = await _groups_of(session, {job.submission_id for job in jobs})
    specs = []
    for job in jobs:
        app, image_id, image = runs[job.submission_id]
        if image_id is not None and image is None:  # removed from the store by hand
            minor = "Image files missing from the store: rebuild the image"
            transition(session, job, JobStatus.FAILED, minor=minor, source="JobScheduling")
            continue
        proxy = None
        if app.proxy:  # checked at submission; it may have been replaced or run out since
            key = (job.owner_id, groups[job.submission_id].group, app.cpu_time)
            if key not in proxies:
                proxies[key] = await usable_proxy(
                    platform.settings, platform.db, platform.keyring, *key
                )
            proxy, why = proxies[key]
            if proxy is None:
                minor = f"No usable proxy ({why}): get one on the account page, then reschedule"
                transition(session, job, JobStatus.FAILED, minor=minor, source="JobScheduling")
                continue
        maybe_submitted = job.id <= last_before_start
        run_as = groups[job.submission_id]
        spec = _spec(platform.catalog, job, app, image, proxy, run_as, maybe_submitted)
        lake = lakes.get(job.submission_id)
        if lake is None or _to_lake(
            platform.settings, platform.keyring, session, memory, job, app, spec, lake
        ):
            specs.append(spec)
    return specs


def _to_lake(
    settings: Settings,
    keyring: Keyring,
    session: AsyncSession,
    memory: RoundMemory,
    job: ReadyJob,
    app: ApplicationDef,
    spec: JobSpec,
    lake: datalake_grid.GridLake,
) -> bool:
    """Tell the job's spec where its data go in the data lake; False if it cannot start now
    (failed here with why, or waiting for Rucio to say where its RSE is)."""
    if lake.error:
        minor = f"Data lake: {lake.error}"
        transition(session, job, JobStatus.FAILED, minor=minor, source="JobScheduling")
        return False
    if lake.url is None:  # Rucio did not answer: the next round tries again
        memory.retry_later = True
        return False
    spec.datalake = datalake_grid.grid_settings(
        settings, lake.url, lake.choice, app,
        submission_id=job.submission_id, index=job.index, job_uuid=job.uuid,
        attempt=job.reschedule_count, ca=lake.ca,
    )  # fmt: skip
    if (keys := datalake_tokens.link_keys(keyring)) is not None:
        # Its wrapper fetches a token per file with it, as it uploads.
        link = datalake_tokens.upload_link(settings, settings.public_url, keys, job.uuid)
        spec.datalake["token_url"] = link
    return True


async def _groups_of(session: AsyncSession, submission_ids: set[int]) -> dict[int, Owner]:
    """Each submission's owner, VO and DIRAC group (a grid backend acts as them; their
    jobs' proxies must carry the group)."""
    rows = await submission_runs.owners(session, submission_ids)
    return {sid: Owner(owner, vo, group) for sid, owner, vo, group in rows}


async def _runs_of(
    images: ImageBuilds, session: AsyncSession, memory: RoundMemory, submission_ids: set[int]
) -> dict[int, tuple[ApplicationDef, str | None, JobImage | None]]:
    """Each submission's application definition (as stored when it was first used), its
    image id, and the image its jobs run in (None too when its files are gone)."""
    rows = await submission_runs.applications_and_images(session, submission_ids)
    missing = {app_id for _, app_id, _ in rows} - set(memory.definitions)
    if missing:
        for app_id, definition in await submission_runs.definitions(session, missing):
            memory.definitions[app_id] = ApplicationDef.model_validate(definition)
    store = images.store
    return {
        sid: (memory.definitions[app_id], image, job_image(store.get(image)) if image else None)
        for sid, app_id, image in rows
    }


def _spec(
    catalog: ApplicationCatalog,
    job: ReadyJob,
    app: ApplicationDef,
    image: JobImage | None,
    proxy: bytes | None,
    run_as: Owner,
    maybe_submitted: bool,
) -> JobSpec:
    return job_spec(
        app,
        catalog.directory,
        uuid=job.uuid,
        job_id=job.id,
        name=job.name,
        argv=job.argv,
        submission_id=job.submission_id,
        jdl=job.jdl,
        image=image,
        proxy=proxy,
        owner=run_as.user,
        vo=run_as.vo,
        group=run_as.group,
        attempt=job.reschedule_count,
        maybe_submitted=maybe_submitted,
    )


def job_image(image: StoredImage | None) -> JobImage | None:
    if image is None:
        return None
    squashfs = image.format_path("squashfs")
    oci_archive = image.format_path("oci")
    return JobImage(
        id=image.id,
        rootfs=image.rootfs,
        squashfs=squashfs if squashfs.exists() else None,
        squashfs_sha256=image.meta.get("formats", {}).get("squashfs", {}).get("sha256"),
        oci_archive=oci_archive if oci_archive.exists() else None,
        env=image.meta.get("env", {}),
        workdir=image.meta.get("workdir", "/work"),
        application=image.meta.get("application", ""),
        redistributable=image.meta.get("redistributable", False),
    )
