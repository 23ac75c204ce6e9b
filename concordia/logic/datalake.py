"""The data lake (Rucio): a submission's choice, a local job's data uploaded after it ends,
a job's files listed and downloaded."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.backends.wrapper.concordia_job import DATALAKE_MANIFEST
from concordia.core.application import ApplicationDef
from concordia.core.states import InvalidTransition, JobStatus
from concordia.datalake.errors import DatalakeError
from concordia.datalake.errors import NotFound as LakeNotFound
from concordia.datalake.store import DataLake
from concordia.db import datalake_files
from concordia.db.tables import Application, DatalakeFile, Job, Submission, User
from concordia.logic.errors import Conflict, Invalid, NotFound, Unavailable
from concordia.logic.jobs import get_owned_job, publish_jobs, transition
from concordia.logic.outputs import fetch_outputs
from concordia.logic.platform import Platform
from concordia.settings import Settings

log = logging.getLogger(__name__)

#: Rucio's rule for DID names (its generic schema): letters, digits, dot, dash, underscore.
DID_NAME = re.compile(r"[A-Za-z0-9._-]{1,250}")
#: And for scopes: the same characters, 25 at most.
SCOPE_NAME = re.compile(r"[A-Za-z0-9._-]{1,25}")
#: The minor status of a job whose process is over while its data go to the data lake: the
#: worker resumes such a job after a restart rather than count it lost.
UPLOADING = "Uploading data to the data lake"
DONE_MINOR = "Execution Complete"
SOURCE = "DataLake"
#: What a grid job's wrapper lists its stored files in (in the output sandbox).
MANIFEST = DATALAKE_MANIFEST
ADLER32 = re.compile(r"[0-9a-fA-F]{8}")
#: How often a held grid job's sandbox is asked for before it waits for a restart.
FETCH_TRIES = 4


class DatalakeRequest(BaseModel):
    """A submission's data-lake wish: where its data go (each part optional)."""

    model_config = ConfigDict(extra="forbid")
    rse: str | None = Field(default=None, description="An RSE the server offers; default its own.")
    dataset: str | None = Field(
        default=None,
        description="The dataset's name in the user's scope; default "
        "<application>.<submission id>.<8 random hex digits>.",
    )


class DatalakeChoice(BaseModel):
    """Where a submission's data go; ``dataset`` None until the submission has its id."""

    scope: str
    rse: str
    dataset: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def did(self) -> str | None:
        """The dataset's DID (scope:name); None until it has its name."""
        return f"{self.scope}:{self.dataset}" if self.dataset is not None else None


class DatalakeFileView(BaseModel):
    did: str
    scope: str
    name: str
    bytes: int
    adler32: str
    rse: str
    state: str


def default_dataset(application: str, submission_id: int) -> str:
    """A submission's dataset unless the user names one (stored with the submission):
    readable, and unique in a scope that another installation (or this one after a new
    database) shares, numbering its submissions from 1 again: 8 random hex digits, as the
    jobs' names have their uuids'."""
    return f"{application}.{submission_id}.{secrets.token_hex(4)}"


def name_prefix(
    application: str, submission_id: int, index: int, job_uuid: str, attempt: int = 0
) -> str:
    """What a job's data outputs are named by in the scope, before each file's own name:
    readable (application, submission, job index) and unique: the jobs of one submission
    write the same file names, and another installation of Concordia (or this one after a
    new database) numbers its submissions from 1 again in a scope they share, hence the
    job's uuid. A rescheduled job's run gets r<attempt>: its bytes differ, and a DID's
    content never changes. A grid job's wrapper is given it and names its files alike."""
    run = f"{index}" if not attempt else f"{index}r{attempt}"
    return f"{application}.{submission_id}.{run}.{job_uuid[:8]}."


def file_name(
    application: str,
    submission_id: int,
    index: int,
    job_uuid: str,
    relative: str,
    attempt: int = 0,
) -> str:
    """A data output's name in the scope: the job's prefix, then its path under outputs/."""
    prefix = name_prefix(application, submission_id, index, job_uuid, attempt)
    return prefix + relative.replace("/", "_")


def user_scope(settings: Settings, username: str) -> str:
    """The user's scope, by the operator's template (user.{account})."""
    return settings.datalake_scope.format(account=username)


def choose(
    settings: Settings,
    app: ApplicationDef,
    username: str,
    wish: DatalakeRequest | None,
    *,
    given: bool,
) -> DatalakeChoice | None:
    """Where a submission's data go; None: not to the data lake. Not ``given``: the
    application's default. Raises Invalid naming the field. No I/O."""
    if not given:
        if not (settings.datalake_enabled and app.datalake and app.datalake.default):
            return None
        wish = DatalakeRequest()
    if wish is None:  # an explicit null: no data lake
        return None
    if not settings.datalake_enabled:
        raise Invalid("datalake", "this server has no data lake (no Rucio server configured)")
    rse = wish.rse or settings.datalake_rse
    if rse not in settings.datalake_rses:
        raise Invalid(
            "datalake.rse", f"unknown RSE {rse!r}; offered: {', '.join(settings.datalake_rses)}"
        )
    if wish.dataset is not None and not DID_NAME.fullmatch(wish.dataset):
        raise Invalid(
            "datalake.dataset",
            "a dataset name is 1 to 250 letters, digits, dots, dashes or underscores",
        )
    scope = user_scope(settings, username)
    if not SCOPE_NAME.fullmatch(scope):
        raise Invalid("datalake", f"your account cannot name a Rucio scope ({scope!r})")
    return DatalakeChoice(scope=scope, rse=rse, dataset=wish.dataset)


def stored_choice(submission: Submission) -> DatalakeChoice | None:
    if submission.datalake_rse is None or submission.datalake_scope is None:
        return None
    return DatalakeChoice(
        scope=submission.datalake_scope,
        rse=submission.datalake_rse,
        dataset=submission.datalake_dataset,
    )


# Listing and download.


def _view(row: DatalakeFile) -> DatalakeFileView:
    return DatalakeFileView(
        did=f"{row.scope}:{row.name}", scope=row.scope, name=row.name, bytes=row.bytes,
        adler32=row.adler32, rse=row.rse, state=row.state,
    )  # fmt: skip


async def job_files(platform: Platform, owner_id: int, job_id: int) -> list[DatalakeFileView]:
    """The caller's job's files in the data lake (another user's job: not found)."""
    async with platform.reading() as session:
        await get_owned_job(session, owner_id, job_id)
        return [_view(row) for row in await datalake_files.of_job(session, job_id)]


async def open_file(
    platform: Platform, owner_id: int, job_id: int, name: str
) -> tuple[DatalakeFileView, AsyncIterator[bytes]]:
    """One of the caller's job's files and its bytes, streamed from the data lake."""
    async with platform.reading() as session:
        await get_owned_job(session, owner_id, job_id)
        row = await datalake_files.named(session, job_id, name)
    if row is None:
        raise NotFound(f"job {job_id} has no file {name!r} in the data lake")
    lake = platform.datalake
    if lake is None:
        raise Unavailable("this server has no data lake configured now")
    view = _view(row)
    chunks = lake.open(row.scope, row.name)
    try:  # the first chunk here: a file gone from the lake is a 404, not a broken download
        first = await anext(chunks)
    except StopAsyncIteration:
        first = b""
    except LakeNotFound:
        raise NotFound(f"{view.did} is no longer in the data lake") from None
    except DatalakeError as exc:
        raise Unavailable(f"the data lake did not give {view.did}: {exc}") from None

    async def stream() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return view, stream()


# Uploads after a job's process ends.


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
        if platform.datalake is None:
            raise DatalakeError("this server has no data lake configured now")
        if choice is None or choice.dataset is None:
            raise DatalakeError("the submission names no dataset")
        backend = platform.backends.get(job.backend)
        if backend is not None and backend.uploads_data:
            await _register_all(platform, job, submission, app, owner.username, choice)
        else:
            await _upload_all(platform, job, submission, app, owner.username, choice)
    except (DatalakeError, OSError) as exc:
        log.warning("job %s: data lake upload failed: %s", job_id, exc)
        await _end(platform, job_id, JobStatus.FAILED, f"data lake: {exc}")
        return
    await _end(platform, job_id, JobStatus.DONE, DONE_MINOR)


async def _upload_all(
    platform: Platform,
    job: Job,
    submission: Submission,
    app: ApplicationDef,
    username: str,
    choice: DatalakeChoice,
) -> None:
    lake = platform.datalake
    assert lake is not None and choice.dataset is not None
    outputs = platform.settings.jobs_dir / job.uuid / "outputs"
    globs = app.datalake.data if app.datalake else []
    data = await asyncio.to_thread(_data_outputs, outputs, globs)
    meta = await _prepare(lake, job, submission, app, username, choice)
    for rel in data:
        name = file_name(app.name, submission.id, job.index, job.uuid, rel, job.reschedule_count)
        if not DID_NAME.fullmatch(name):
            raise DatalakeError(f"{rel}: its name in the data lake ({name!r}) is not allowed")
        path = outputs / rel
        stored = await lake.upload(
            path, choice.scope, name, choice.rse, dataset=(choice.scope, choice.dataset), meta=meta
        )
        async with platform.writing() as session:
            await datalake_files.record(
                session, job.id, scope=stored.scope, name=stored.name, size=stored.bytes,
                adler32=stored.adler32, rse=stored.rse, state=stored.state,
            )  # fmt: skip
        # In the lake now: the local copy goes (a resumed upload finds it recorded).
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _prepare(
    lake: DataLake,
    job: Job,
    submission: Submission,
    app: ApplicationDef,
    username: str,
    choice: DatalakeChoice,
) -> dict[str, str | int | float]:
    """The user's scope and the submission's dataset there; the metadata of the job's files."""
    assert choice.dataset is not None
    await lake.ensure_scope(choice.scope, username)
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


async def _end(platform: Platform, job_id: int, status: JobStatus, minor: str) -> None:
    async with platform.writing() as session:
        job = await session.get(Job, job_id)
        if job is None or job.status != JobStatus.COMPLETING.value or job.minor_status != UPLOADING:
            return  # killed or deleted meanwhile
        try:
            transition(session, job, status, minor=minor, source=SOURCE)
        except InvalidTransition:
            return
    publish_jobs(platform.bus, [job])


# A grid job's data: its wrapper writes them to the RSE, Concordia registers them.


@dataclass
class GridLake:
    """Where a submission's grid jobs store their data: its choice and the RSE's WebDAV
    base URL (None: Rucio did not say now, the jobs wait); ``error``: they cannot run."""

    choice: DatalakeChoice
    url: str | None
    error: str = ""
    #: The CA the wrapper verifies the RSE with (PEM; None: the node's own).
    ca: str | None = None


async def grid_lakes(
    platform: Platform, session: AsyncSession, submission_ids: set[int], urls: dict[str, str]
) -> dict[int, GridLake]:
    """Of these submissions, those whose data go to the data lake, with where their jobs
    write. ``urls`` is the caller's memory of RSE addresses (they change rarely: Rucio is
    asked once an RSE per process)."""
    found: dict[int, GridLake] = {}
    rows = await datalake_files.submissions_of(session, submission_ids)
    try:
        ca = ca_text(platform.settings) if rows else None
        unusable = ""
    except OSError as exc:  # the operator's CA file gone: the jobs cannot verify the RSE
        ca, unusable = None, f"the data lake's CA cannot be read: {exc}"
    for submission in rows:
        choice = stored_choice(submission)
        if choice is None:
            continue
        lake = platform.datalake
        if lake is None or unusable:
            why = unusable or "this server has no data lake now"
            found[submission.id] = GridLake(choice, None, why)
            continue
        if choice.rse not in urls:
            try:
                urls[choice.rse] = await lake.rse_url(choice.rse)
            except DatalakeError as exc:
                log.warning("data lake: where %s is, Rucio did not say: %s", choice.rse, exc)
        found[submission.id] = GridLake(choice, urls.get(choice.rse), ca=ca)
    return found


def ca_text(settings: Settings) -> str | None:
    """The CA the server trusts for the data lake, as PEM text a job's wrapper is given
    (None: the node's own CAs)."""
    verify = settings.datalake_verify
    return Path(verify).read_text() if isinstance(verify, str) and verify else None


def grid_settings(
    settings: Settings,
    url: str,
    choice: DatalakeChoice,
    app: ApplicationDef,
    *,
    submission_id: int,
    index: int,
    job_uuid: str,
    attempt: int,
    ca: str | None,
) -> dict[str, Any]:
    """JobSpec.datalake of one job: where its wrapper writes its data, under which names."""
    lake: dict[str, Any] = {
        "url": url,
        "scope": choice.scope,
        "names": name_prefix(app.name, submission_id, index, job_uuid, attempt),
        "data": list(app.datalake.data) if app.datalake else [],
        "sandbox_max_bytes": settings.datalake_sandbox_max_bytes,
    }
    if ca is not None:
        lake["ca"] = ca
    return lake


@dataclass(frozen=True)
class StoredFile:
    """One file a grid job's wrapper stored, as its manifest says."""

    name: str
    bytes: int
    adler32: str


def read_manifest(text: str, prefix: str) -> list[StoredFile]:
    """The files of a wrapper's manifest; raises DatalakeError on anything but what the
    wrapper writes, or a name that is not the job's (a payload may write a manifest of its
    own; the wrapper replaces it, but Concordia registers nothing it did not name)."""
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise DatalakeError(f"the job's {MANIFEST} is not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise DatalakeError(f"the job's {MANIFEST} is not a list")
    files: list[StoredFile] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise DatalakeError(f"the job's {MANIFEST} holds {entry!r}")
        name, size, adler32 = entry.get("name"), entry.get("bytes"), entry.get("adler32")
        if not isinstance(name, str) or not name.startswith(prefix) or not DID_NAME.fullmatch(name):
            raise DatalakeError(f"the job's {MANIFEST} names {name!r}, not a file of this job")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise DatalakeError(f"the job's {MANIFEST} gives {name} no size")
        if not isinstance(adler32, str) or not ADLER32.fullmatch(adler32):
            raise DatalakeError(f"the job's {MANIFEST} gives {name} no adler32")
        files.append(StoredFile(name, size, adler32.lower()))
    return files


async def _register_all(
    platform: Platform,
    job: Job,
    submission: Submission,
    app: ApplicationDef,
    username: str,
    choice: DatalakeChoice,
) -> None:
    """Register what the job's wrapper stored, as its manifest (in the sandbox) says."""
    lake = platform.datalake
    assert lake is not None and choice.dataset is not None
    await _fetch(platform, job)
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
    meta = await _prepare(lake, job, submission, app, username, choice)
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


async def _fetch(platform: Platform, job: Job) -> None:
    """The job's sandbox, a few times if its backend does not answer (then the job stays
    held: the worker tries again at its next timed poll)."""
    for attempt in range(FETCH_TRIES):
        try:
            await fetch_outputs(platform, job)
            return
        except Conflict:
            if attempt == FETCH_TRIES - 1:
                raise
            await asyncio.sleep(2.0**attempt)


async def held_jobs(platform: Platform, slot: int) -> list[int]:
    """This worker's jobs whose uploads are under way or were cut short (a restart)."""
    async with platform.reading() as session:
        return await datalake_files.held_jobs(session, JobStatus.COMPLETING.value, UPLOADING, slot)
