"""Submissions: check a request, plan its jobs (with their JDL), store them, report progress."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.auth.groups import Membership
from concordia.backends.base import Backend, JobRefused, JobSpec
from concordia.core.application import (
    ApplicationDef,
    ParameterErrors,
    ParamValue,
    expand_batch,
    validate_build_args,
    validate_parameters,
)
from concordia.core.image_status import ImageStatus
from concordia.core.rules import WARN_SHARE
from concordia.core.states import JobStatus
from concordia.core.units import duration
from concordia.db import submission_jobs as job_queries
from concordia.db.queue import unfinished_jobs
from concordia.db.tables import Application, Job, Submission, utcnow
from concordia.logic.accounts import member_of, require_vo
from concordia.logic.datalake_choice import (
    DatalakeChoice,
    DatalakeRequest,
    choose,
    default_dataset,
    stored_choice,
)
from concordia.logic.diracx_accounts import require_connection
from concordia.logic.errors import Conflict, Forbidden, Invalid, NotFound, TooMany
from concordia.logic.identity import Identity
from concordia.logic.image_plans import plan_image
from concordia.logic.image_selection import ImageClaim, claim_image, image_state
from concordia.logic.jobs import JobRow, publish_jobs, record_status
from concordia.logic.platform import Platform
from concordia.logic.proxies import ensure_proxy
from concordia.metrics import SUBMISSION_SECONDS

#: What a job's uuid is in the preview of a submission not yet made.
PREVIEW_UUID = "<job uuid>"


class SubmissionRequest(BaseModel):
    # A misspelt key ("paramters") would otherwise be dropped and the defaults submitted.
    model_config = ConfigDict(extra="forbid")
    application: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    build_args: dict[str, Any] = Field(default_factory=dict)
    backend: str | None = None
    #: The VO to submit under; default: the first of the application's VOs the user is in.
    vo: str | None = None
    #: Where its data outputs go in the data lake; absent: the application's default;
    #: null: not to the data lake.
    datalake: DatalakeRequest | None = None


class PlannedJob(BaseModel):
    index: int
    uuid: str
    name: str
    parameters: dict[str, Any]
    argv: list[str]
    jdl: str


class Progress(BaseModel):
    waiting: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    killed: int = 0
    deleted: int = 0


class SequenceRange(BaseModel):
    """The values a batch sequence takes across the jobs (e.g. runs 7 to 9)."""

    name: str
    first: int
    last: int


class CpuEstimate(BaseModel):
    """CPU time by the application's estimate: one job's, the batch's, and the job limit."""

    per_job_seconds: float
    total_seconds: float
    limit_seconds: int
    #: Said when a job may not finish within its limit (a job over it is refused).
    warning: str | None = None


class SubmissionPreview(BaseModel):
    """What a submission would create, before anything is stored."""

    count: int
    names: list[str]
    ranges: list[SequenceRange]
    #: The backend the jobs would go to, and the JDL it would be given for the first (a
    #: value in <angle brackets> is known only at submission or hand-over).
    backend: str
    first_jdl: str
    cpu: CpuEstimate | None = None


class SubmissionPlan(BaseModel):
    """A dry run: what a submission would create and where, every check passed; nothing stored."""

    dry_run: bool = True
    application: str
    backend: str
    vo: str
    group: str
    parameters: dict[str, Any]
    build_args: dict[str, Any]
    #: The image jobs would run in; None for an application without one.
    image_id: str | None
    #: ready, building, failed; None: a submission would build it first.
    image_status: ImageStatus | None
    job_count: int
    cpu: CpuEstimate | None
    #: Where its data outputs would go (a dataset named after the submission when
    #: none is given); None: not to the data lake.
    datalake: DatalakeChoice | None = None
    #: Every job with its JDL (its JobGroup gets the submission's number when submitted).
    jobs: list[PlannedJob]


class SubmissionJob(BaseModel):
    """One row of a submission's job table."""

    id: int
    index: int
    name: str
    status: str
    minor_status: str


class SubmissionView(BaseModel):
    id: int
    application: str
    image_id: str | None
    parameters: dict[str, Any]
    build_args: dict[str, Any]
    backend: str
    vo: str
    group: str
    job_count: int
    created_at: datetime
    counts: dict[str, int]
    progress: Progress
    #: Jobs the backend has taken (a grid: accepted, with its id); the rest are on their way.
    handed_over: int = 0
    finished: bool
    job_ids: list[int]
    #: Where its data outputs go in the data lake (its dataset's DID); None: not there.
    datalake: DatalakeChoice | None = None


def job_group(app: ApplicationDef, submission_id: int) -> str:
    """The submission's name among a grid's jobs (DIRAC's JobGroup)."""
    return f"{app.name}.{submission_id}"


def job_spec(
    app: ApplicationDef,
    directory: Path,
    *,
    uuid: str,
    job_id: int,
    name: str,
    argv: list[str],
    submission_id: int,
    **run: Any,
) -> JobSpec:
    """What a backend is given of a job of ``app``; ``run`` says how it runs now (image,
    proxy, owner, attempt...). The one place both the recorded JDL and the job sent are
    made from: they cannot differ."""
    return JobSpec(
        uuid=uuid,
        job_id=job_id,
        name=name,
        argv=argv,
        input_files=[directory / rel for rel in app.input_files],
        outputs=app.outputs,
        cpu_time=app.cpu_time,
        priority=app.priority,
        tags=app.tags,
        network=app.network,
        limits=app.limits,
        job_group=job_group(app, submission_id),
        **run,
    )


def check_request(
    app: ApplicationDef, request: SubmissionRequest
) -> tuple[dict[str, ParamValue], dict[str, ParamValue]]:
    """The coerced parameters and build arguments; raises Invalid naming the field. No I/O."""
    try:
        values = validate_parameters(app, request.parameters)
    except ParameterErrors as exc:
        raise Invalid.many([(f"parameters.{e.field}", e.message) for e in exc.errors]) from None
    try:
        build_args = validate_build_args(app, request.build_args)
    except ParameterErrors as exc:
        raise Invalid.many([(f"build_args.{e.field}", e.message) for e in exc.errors]) from None
    return values, build_args


def plan_jobs(
    backend: Backend,
    app: ApplicationDef,
    values: dict[str, ParamValue],
    submission_id: int,
    directory: Path,
    *,
    preview: bool = False,
) -> list[PlannedJob]:
    """Every job of a submission with the JDL its backend is given, each with a new uuid
    (``preview``: only the first, its uuid a placeholder); raises Invalid naming each rule
    of the backend the jobs break."""
    plans = expand_batch(app, values)
    if preview:
        plans, uuids = plans[:1], [PREVIEW_UUID]
    else:
        uuids = [str(uuid.uuid4()) for _ in plans]
    planned = []
    for plan, job_uuid in zip(plans, uuids, strict=True):
        spec = job_spec(
            app, directory, uuid=job_uuid, job_id=0, name=plan.name, argv=plan.argv,
            submission_id=submission_id,
        )  # fmt: skip
        try:
            jdl = backend.describe(spec)
        except JobRefused as exc:
            raise Invalid.many([("application", p) for p in exc.problems]) from None
        planned.append(
            PlannedJob(
                index=plan.index, uuid=job_uuid, name=plan.name, parameters=plan.values,
                argv=plan.argv, jdl=jdl,
            )
        )  # fmt: skip
    return planned


def chosen_backend(platform: Platform, request: SubmissionRequest) -> tuple[str, Backend]:
    """The backend a request names, or the default; raises Invalid for an unknown one."""
    name = request.backend or platform.settings.default_backend
    if name not in platform.backends:
        raise Invalid("backend", f"unknown backend; available: {', '.join(platform.backends)}")
    return name, platform.backends[name]


async def next_submission_id(platform: Platform) -> int:
    """The id the next submission will most likely have (another may take it first)."""
    async with platform.reading() as session:
        return (await session.scalar(select(func.max(Submission.id))) or 0) + 1


async def preview(
    platform: Platform, app: ApplicationDef, request: SubmissionRequest
) -> SubmissionPreview:
    """The jobs a request would create and the JDL its backend would be given for the first;
    raises Invalid naming each bad value, or each rule of the backend the jobs break."""
    name, backend = chosen_backend(platform, request)
    values, _ = check_request(app, request)
    plans = expand_batch(app, values)
    ranges = [
        SequenceRange(name=seq, first=int(plans[0].values[seq]), last=int(plans[-1].values[seq]))
        for seq in app.batch.sequences
    ]
    [first] = plan_jobs(
        backend, app, values, await next_submission_id(platform), platform.catalog.directory,
        preview=True,
    )  # fmt: skip
    return SubmissionPreview(
        count=len(plans),
        names=[plan.name for plan in plans],
        ranges=ranges,
        backend=name,
        first_jdl=first.jdl,
        cpu=cpu_estimate(app, values, len(plans)),
    )


def cpu_estimate(
    app: ApplicationDef, values: dict[str, ParamValue], count: int
) -> CpuEstimate | None:
    """The application's estimate of CPU time for these values, if it has one."""
    seconds = app.cpu_seconds(values)
    if seconds is None:
        return None
    warning = None
    if seconds >= WARN_SHARE * app.cpu_time:
        warning = (
            f"each job needs about {duration(seconds)} of its {duration(app.cpu_time)}: "
            "a slow worker node may stop it before the end; give each job less work"
        )
    return CpuEstimate(
        per_job_seconds=seconds,
        total_seconds=seconds * count,
        limit_seconds=app.cpu_time,
        warning=warning,
    )


async def _application_row(session: AsyncSession, app: ApplicationDef) -> Application:
    fingerprint = app.fingerprint()
    row = await session.scalar(select(Application).where(Application.fingerprint == fingerprint))
    if row is None:
        row = Application(
            name=app.name, fingerprint=fingerprint, definition=app.model_dump(mode="json")
        )
        session.add(row)
        await session.flush()
    return row


def proxy_needed(platform: Platform, app: ApplicationDef) -> timedelta:
    """How long a proxy must last for an application's jobs: the operator's minimum (8 h by
    default, under the 12 h of IAM's managed proxies), longer if a job may run longer."""
    settings = platform.settings
    wall = app.cpu_time * settings.local_wall_time_factor
    return timedelta(seconds=max(settings.proxy_min_lifetime_hours * 3600, wall))


async def submit_batch(
    platform: Platform, identity: Identity, request: SubmissionRequest
) -> SubmissionView:
    """Store a submission and its jobs as Received; the reconciler takes it from there."""
    started = time.perf_counter()
    view = await _submit_batch(platform, identity, request)
    # Accepted submissions only: a refusal is quick and says nothing of the platform's speed.
    SUBMISSION_SECONDS.observe(time.perf_counter() - started)
    return view


@dataclass(frozen=True)
class _Admitted:
    """A request that passed every check a submission makes before it stores anything."""

    app: ApplicationDef
    backend: str
    chosen: Backend
    values: dict[str, ParamValue]
    build_args: dict[str, ParamValue]
    vo: str
    member: Membership | None
    datalake: DatalakeChoice | None


async def _admit(
    platform: Platform, identity: Identity, request: SubmissionRequest, *, dry_run: bool
) -> _Admitted:
    app = platform.catalog.get(request.application)
    backend, chosen = chosen_backend(platform, request)
    values, build_args = check_request(app, request)  # every check before any write
    lake = choose(
        platform.settings, app, identity.username, request.datalake,
        given="datalake" in request.model_fields_set,
    )  # fmt: skip
    # What the backend would refuse, before an image build starts for nothing (checked
    # again with the submission's own id once it has one).
    await preview(platform, app, request)
    what = f"The application {app.title}"
    vo = require_vo(identity, app.vos, what, platform.settings)
    if request.vo is not None:  # one of the user's VOs that the application is open to
        if app.vos and request.vo not in app.vos:
            raise Forbidden(f"{what} is open to {', '.join(app.vos)}, not to {request.vo!r}")
        vo = member_of(identity, request.vo).vo
    member = identity.membership(vo)
    if chosen.needs_user_token:  # jobs would fail without their token
        await require_connection(platform, identity, vo, member.dirac_group if member else "")
    # Refused now rather than a job failing later for want of a proxy; a dry run leaves the
    # proxy alone, as making one is a change.
    if app.proxy and not dry_run:
        await ensure_proxy(platform, identity, proxy_needed(platform, app), vo or None)
    adding = int(values[app.batch.count]) if app.batch.count else 1
    async with platform.reading() as session:  # before an image build starts for nothing
        await check_queue_room(platform, session, identity.user_id, adding)
    return _Admitted(app, backend, chosen, values, build_args, vo, member, lake)


async def dry_run(
    platform: Platform, identity: Identity, request: SubmissionRequest
) -> SubmissionPlan:
    """Every check of a submission, and the jobs with the JDLs it would create; nothing is
    stored and no image is built."""
    admitted = await _admit(platform, identity, request, dry_run=True)
    app, values = admitted.app, admitted.values
    image_id = image_status = None
    if app.image is not None:
        state = await image_state(platform, app.name, admitted.build_args)
        if state.problem:
            raise Conflict(state.problem)  # as the submission's build would be refused
        image_id, image_status = state.id, state.status
    jobs = plan_jobs(
        admitted.chosen, app, values, await next_submission_id(platform),
        platform.catalog.directory,
    )  # fmt: skip
    member = admitted.member
    return SubmissionPlan(
        application=app.name,
        backend=admitted.backend,
        vo=admitted.vo,
        group=member.dirac_group if member is not None else "",
        parameters=values,
        build_args=admitted.build_args,
        image_id=image_id,
        image_status=image_status,
        job_count=len(jobs),
        cpu=cpu_estimate(app, values, len(jobs)),
        datalake=admitted.datalake,
        jobs=jobs,
    )


async def _submit_batch(
    platform: Platform, identity: Identity, request: SubmissionRequest
) -> SubmissionView:
    owner_id = identity.user_id
    admitted = await _admit(platform, identity, request, dry_run=False)
    app, backend, chosen = admitted.app, admitted.backend, admitted.chosen
    values, build_args = admitted.values, admitted.build_args
    vo, member = admitted.vo, admitted.member
    # The image's plan is checked before any write (it may be refused: Conflict).
    image = None if app.image is None else plan_image(platform, app, build_args)
    claim: ImageClaim | None = None
    async with platform.writing() as session:
        # The container, selected if it exists, else marked building: claimed in the
        # submission's own transaction, so that a refused submission leaves no claim behind.
        if image is not None:
            claim = await claim_image(session, platform, identity, image, [vo])
        app_row = await _application_row(session, app)
        submission = Submission(
            owner_id=owner_id,
            application_id=app_row.id,
            application=app.name,
            parameters=values,
            build_args=build_args,
            backend=backend,
            job_count=0,
            image_id=None if image is None else image.image_id,
            vo=vo,
            group=member.dirac_group if member is not None else "",
        )
        if (lake := admitted.datalake) is not None:
            submission.datalake_scope, submission.datalake_rse = lake.scope, lake.rse
            submission.datalake_dataset = lake.dataset
        session.add(submission)
        await session.flush()
        if lake is not None and lake.dataset is None:  # named after the submission
            submission.datalake_dataset = default_dataset(app.name, submission.id)
        planned = plan_jobs(chosen, app, values, submission.id, platform.catalog.directory)
        # Again in the transaction that adds them: the user's submissions one at a time.
        await check_queue_room(platform, session, owner_id, len(planned), lock=True)
        submission.job_count = len(planned)
        jobs = await _store_jobs(session, submission, planned)
        submission_id = submission.id
    if claim is not None:  # its build starts now, if it must be built
        claim.after_commit(platform)
    publish_jobs(platform.bus, jobs)
    platform.wakeup.set()
    return await get_submission(platform, owner_id, submission_id)


async def _store_jobs(
    session: AsyncSession, submission: Submission, planned: list[PlannedJob]
) -> list[JobRow]:
    """The submission's jobs, stored as Received with their first history row."""
    now = utcnow()
    received, accepted = JobStatus.RECEIVED, "Job accepted"
    new_jobs = [
        {
            "uuid": p.uuid,
            "submission_id": submission.id,
            "owner_id": submission.owner_id,
            "application": submission.application,
            "index": p.index,
            "name": p.name,
            "parameters": p.parameters,
            "argv": p.argv,
            "jdl": p.jdl,
            "status": received.value,
            "minor_status": accepted,
            "backend": submission.backend,
            "created_at": now,
            "updated_at": now,
        }
        for p in planned
    ]
    # One multi-row INSERT (a batch may have thousands of jobs: ORM objects would cost
    # their bookkeeping each); the ids come back in the rows' order.
    ids = await session.scalars(
        insert(Job).returning(Job.id, sort_by_parameter_order=True), new_jobs
    )
    jobs = [
        JobRow(
            id=job_id, uuid=job_uuid, owner_id=submission.owner_id, submission_id=submission.id,
            status=received.value, minor_status=accepted, application_status="",
            updated_at=now, started_at=None, ended_at=None, exit_code=None,
            backend_ref=None, backend_state={},
        )
        for job_id, job_uuid in zip(ids, [p.uuid for p in planned], strict=True)
    ]  # fmt: skip
    for job in jobs:
        record_status(session, job, received, minor=accepted, source="User", at=now)
    return jobs


async def check_queue_room(
    platform: Platform, session: AsyncSession, owner_id: int, adding: int, *, lock: bool = False
) -> None:
    """Raises TooMany if ``adding`` jobs would take the user over their limit of jobs not yet
    over (max_queued_jobs_per_user): one user's hundred thousand jobs would slow every
    query of the queue, and outlive the operator's patience."""
    limit = platform.settings.max_queued_jobs_per_user
    if not limit:
        return
    unfinished = await unfinished_jobs(session, owner_id, lock=lock)
    if unfinished + adding > limit:
        raise TooMany(
            f"This submission of {adding} jobs would take you over the limit of {limit} jobs "
            f"not yet finished per user: you have {unfinished}. Wait for some to finish, or "
            "kill or delete some, then submit again (or submit fewer jobs)."
        )


async def owned_submission(session: AsyncSession, owner_id: int, submission_id: int) -> Submission:
    """The caller's submission; another user's is 'not found', as if it did not exist, and
    so is one whose jobs are all deleted (deleting a submission deletes its jobs)."""
    submission = await session.get(Submission, submission_id)
    if submission is None or submission.owner_id != owner_id:
        raise NotFound(f"no submission {submission_id}")
    if not await job_queries.any_left(session, submission_id):
        raise NotFound(f"no submission {submission_id}: it was deleted")
    return submission


async def get_submission(platform: Platform, owner_id: int, submission_id: int) -> SubmissionView:
    async with platform.reading() as session:
        submission = await owned_submission(session, owner_id, submission_id)
        # count(backend_ref) counts the jobs that have one: those their backend has taken.
        rows = (
            await session.execute(
                select(Job.status, func.count(), func.count(Job.backend_ref))
                .where(Job.submission_id == submission_id)
                .group_by(Job.status)
            )
        ).all()
        counts = {status: n for status, n, _ in rows}
        handed_over = sum(taken for _, _, taken in rows)
        ids = await session.scalars(
            select(Job.id).where(Job.submission_id == submission_id).order_by(Job.index)
        )
        job_ids = list(ids)
    return SubmissionView(
        id=submission.id,
        application=submission.application,
        image_id=submission.image_id,
        parameters=submission.parameters,
        build_args=submission.build_args,
        backend=submission.backend,
        vo=submission.vo,
        group=submission.group,
        job_count=submission.job_count,
        created_at=submission.created_at,
        counts=counts,
        progress=progress_of(counts),
        handed_over=handed_over,
        finished=all(JobStatus(s).is_final for s in counts),
        job_ids=job_ids,
        datalake=stored_choice(submission),
    )


def progress_of(counts: dict[str, int]) -> Progress:
    """The four numbers a user watches: waiting, running, done, failed (and killed/deleted)."""
    by = Counter[str]()
    for status, n in counts.items():
        by[_BUCKET[JobStatus(status)]] += n
    return Progress(**by)


_BUCKET = {
    JobStatus.RECEIVED: "waiting",
    JobStatus.CHECKING: "waiting",
    JobStatus.WAITING: "waiting",
    JobStatus.RESCHEDULED: "waiting",
    JobStatus.MATCHED: "running",
    JobStatus.RUNNING: "running",
    JobStatus.COMPLETING: "running",
    JobStatus.STALLED: "running",
    JobStatus.DONE: "done",
    JobStatus.FAILED: "failed",
    JobStatus.KILLED: "killed",
    JobStatus.DELETED: "deleted",
}
