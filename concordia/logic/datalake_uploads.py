"""A held job's data put in the data lake once its process ends (uploaded from here, or
registered as its grid wrapper wrote them), then the job Done or Failed."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import logging
import os
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.backends.base import Backend
from concordia.core.application import ApplicationDef
from concordia.core.states import InvalidTransition, JobStatus
from concordia.datalake.errors import DatalakeError
from concordia.datalake.store import DataLake
from concordia.db import datalake_files
from concordia.db.tables import Application, Job, Submission, User
from concordia.logic.database import Database
from concordia.logic.datalake_choice import (
    DID_NAME,
    DatalakeChoice,
    file_name,
    name_prefix,
    stored_choice,
)
from concordia.logic.datalake_grid import MANIFEST, read_manifest
from concordia.logic.datalake_identity import lake_for, service_lake
from concordia.logic.errors import Conflict
from concordia.logic.events import EventBus
from concordia.logic.jobs import publish_jobs, transition
from concordia.logic.outputs import fetch_outputs
from concordia.logic.platform import Platform
from concordia.settings import ServerSettings

log = logging.getLogger(__name__)

#: The minor status of a job whose process is over while its data go to the data lake: the
#: worker resumes such a job after a restart rather than count it lost.
UPLOADING = "Uploading data to the data lake"
DONE_MINOR = "Execution Complete"
SOURCE = "DataLake"
#: How often a held grid job's sandbox is asked for before it waits for a restart.
FETCH_TRIES = 4


async def with_data(session: AsyncSession, submission_ids: set[int]) -> set[int]:
    """Of these submissions, those whose data go to the data lake: their jobs that end well
    stay Completing (UPLOADING; the worker resumes them after a restart), Done only once
    every upload succeeded (store_job_data)."""
    return await datalake_files.submissions_with_datalake(session, submission_ids)


def _data_outputs(outputs: Path, globs: list[str]) -> list[str]:
    """The relative paths under outputs/ that are data (by the application's globs)."""
    found: list[str] = []
    for root, _dirs, files in os.walk(outputs):
        for file in files:
            rel = os.path.relpath(os.path.join(root, file), outputs)
            if any(fnmatch.fnmatchcase(rel, glob) for glob in globs):
                found.append(rel)
    return sorted(found)


async def store_job_data(platform: Platform, job_id: int) -> None:
    """Upload a held job's data outputs, then make it Done (or Failed with the reason).
    Safe to run again after a crash at any point: uploads are idempotent, rows unique."""
    async with platform.reading() as session:
        job = await session.get(Job, job_id)
        if job is None or job.status != JobStatus.COMPLETING.value or job.minor_status != UPLOADING:
            return
        submission = await session.get(Submission, job.submission_id)
        assert submission is not None
        app_row = await session.get(Application, submission.application_id)
        owner = await session.get(User, job.owner_id)
        assert app_row is not None and owner is not None
    app = ApplicationDef.model_validate(app_row.definition)
    choice = stored_choice(submission)
    try:
        if choice is None or choice.dataset is None:
            raise DatalakeError("the submission names no dataset")
        backend = platform.backends.get(job.backend)
        async with lake_for(platform, owner.id, owner.username) as acting:
            log.info("job %s: its data go to the data lake as %s", job_id, acting.who)
            if backend is not None and backend.uploads_data:
                await _register_all(platform, acting.lake, job, submission, app, owner, choice)
            else:
                await _upload_all(
                    platform.settings,
                    platform.db,
                    platform.datalake,
                    acting.lake,
                    job,
                    submission,
                    app,
                    owner,
                    choice,
                )
    except (DatalakeError, OSError) as exc:
        log.warning("job %s: data lake upload failed: %s", job_id, exc)
        await _end(platform.db, platform.bus, job_id, JobStatus.FAILED, f"data lake: {exc}")
        return
    await _end(platform.db, platform.bus, job_id, JobStatus.DONE, DONE_MINOR)


async def _upload_all(
    settings: ServerSettings,
    db: Database,
    datalake: DataLake | None,
    lake: DataLake,
    job: Job,
    submission: Submission,
    app: ApplicationDef,
    owner: User,
    choice: DatalakeChoice,
) -> None:
    assert choice.dataset is not None
    outputs = settings.jobs_dir / job.uuid / "outputs"
    globs = app.datalake.data if app.datalake else []
    data = await asyncio.to_thread(_data_outputs, outputs, globs)
    meta = await _prepare(datalake, lake, job, submission, app, owner.username, choice)
    for rel in data:
        name = file_name(app.name, submission.id, job.index, job.uuid, rel, job.reschedule_count)
        if not DID_NAME.fullmatch(name):
            raise DatalakeError(f"{rel}: its name in the data lake ({name!r}) is not allowed")
        path = outputs / rel
        stored = await lake.upload(
            path, choice.scope, name, choice.rse, dataset=(choice.scope, choice.dataset), meta=meta
        )
        async with db.writing() as session:
            await datalake_files.record(
                session, job.id, scope=stored.scope, name=stored.name, size=stored.bytes,
                adler32=stored.adler32, rse=stored.rse, state=stored.state,
            )  # fmt: skip
        # In the lake now: the local copy goes (a resumed upload finds it recorded).
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _prepare(
    datalake: DataLake | None,
    lake: DataLake,
    job: Job,
    submission: Submission,
    app: ApplicationDef,
    username: str,
    choice: DatalakeChoice,
) -> dict[str, str | int | float]:
    """The user's scope (added by the service account: users cannot add scopes) and the
    submission's dataset there; the metadata of the job's files."""
    assert choice.dataset is not None
    await service_lake(datalake).ensure_scope(choice.scope, username)
    await lake.add_dataset(
        choice.scope,
        choice.dataset,
        {"application": app.name, "submission_id": submission.id, "user": username},
    )
    meta: dict[str, str | int | float] = {
        "application": app.name,
        "parameters": json.dumps(job.parameters, sort_keys=True),
        "job_id": job.id,
        "submission_id": submission.id,
        "backend": job.backend,
        "site": str(job.backend_state.get("site") or job.backend),
        "jdl_digest": hashlib.sha256(job.jdl.encode()).hexdigest(),
    }
    if isinstance(run := job.parameters.get("run"), int | float | str):
        meta["run"] = run
    if submission.image_id:
        meta["image_id"] = submission.image_id
    return meta


async def _end(db: Database, bus: EventBus, job_id: int, status: JobStatus, minor: str) -> None:
    async with db.writing() as session:
        job = await session.get(Job, job_id)
        if job is None or job.status != JobStatus.COMPLETING.value or job.minor_status != UPLOADING:
            return  # killed or deleted meanwhile
        try:
            transition(session, job, status, minor=minor, source=SOURCE)
        except InvalidTransition:
            return
    publish_jobs(bus, [job])


async def _register_all(
    platform: Platform,
    lake: DataLake,
    job: Job,
    submission: Submission,
    app: ApplicationDef,
    owner: User,
    choice: DatalakeChoice,
) -> None:
    """Register what the job's wrapper stored, as its manifest (in the sandbox) says."""
    assert choice.dataset is not None
    await _fetch(platform.settings, platform.backends, job)
    path = platform.settings.jobs_dir / job.uuid / "outputs" / MANIFEST
    try:
        text = await asyncio.to_thread(path.read_text)
    except FileNotFoundError:
        if app.datalake and app.datalake.data:
            raise DatalakeError(
                f"the job came back without {MANIFEST}: its data were not stored"
            ) from None
        return  # nothing was for the data lake
    prefix = name_prefix(app.name, submission.id, job.index, job.uuid, job.reschedule_count)
    files = read_manifest(text, prefix)
    meta = await _prepare(platform.datalake, lake, job, submission, app, owner.username, choice)
    for stored_file in files:
        stored = await lake.register(
            choice.scope, stored_file.name, choice.rse, bytes=stored_file.bytes,
            adler32=stored_file.adler32, dataset=(choice.scope, choice.dataset), meta=meta,
        )  # fmt: skip
        async with platform.writing() as session:
            await datalake_files.record(
                session, job.id, scope=stored.scope, name=stored.name, size=stored.bytes,
                adler32=stored.adler32, rse=stored.rse, state=stored.state,
            )  # fmt: skip


async def _fetch(settings: ServerSettings, backends: dict[str, Backend], job: Job) -> None:
    """The job's sandbox, a few times if its backend does not answer (then the job stays
    held: the worker tries again at its next timed poll)."""
    for attempt in range(FETCH_TRIES):
        try:
            await fetch_outputs(settings, backends, job)
            return
        except Conflict:
            if attempt == FETCH_TRIES - 1:
                raise
            await asyncio.sleep(2.0**attempt)


async def held_jobs(db: Database, slot: int) -> list[int]:
    """This worker's jobs whose uploads are under way or were cut short (a restart)."""
    async with db.reading() as session:
        return await datalake_files.held_jobs(session, JobStatus.COMPLETING.value, UPLOADING, slot)
