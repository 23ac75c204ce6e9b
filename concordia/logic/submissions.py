"""Submissions: check a request, plan its jobs (with their JDL), store them, report progress."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.application import (
    ApplicationDef,
    JobPlan,
    ParameterErrors,
    ParamValue,
    expand_batch,
    validate_build_args,
    validate_parameters,
)
from concordia.core.jdl import job_jdl
from concordia.core.states import JobStatus
from concordia.db.tables import Application, Job, Submission, utcnow
from concordia.logic.accounts import member_of, require_vo
from concordia.logic.diracx_accounts import per_user, require_connection
from concordia.logic.errors import Forbidden, Invalid, NotFound
from concordia.logic.identity import Identity
from concordia.logic.images import select_or_build
from concordia.logic.jobs import JobRow, publish_jobs, record_status
from concordia.logic.platform import Platform
from concordia.logic.proxies import ensure_proxy
from concordia.metrics import SUBMISSION_SECONDS

STD_OUTPUT, STD_ERROR = "std.out", "std.err"


class SubmissionRequest(BaseModel):
    application: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    build_args: dict[str, Any] = Field(default_factory=dict)
    backend: str | None = None
    #: The VO to submit under; default: the first of the application's VOs the user is in.
    vo: str | None = None


class PlannedJob(BaseModel):
    index: int
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


class SubmissionPreview(BaseModel):
    """What a submission would create, before anything is stored."""

    count: int
    names: list[str]
    ranges: list[SequenceRange]
    first_jdl: str


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


def _job_group(app: ApplicationDef, submission_id: int | None) -> str:
    return f"{app.name}.{submission_id}" if submission_id is not None else app.name


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
    app: ApplicationDef, values: dict[str, ParamValue], submission_id: int | None = None
) -> list[PlannedJob]:
    """Every job of a submission with its JDL (also the preview of one not yet made)."""
    return [_planned(app, plan, submission_id) for plan in expand_batch(app, values)]


def preview(app: ApplicationDef, request: SubmissionRequest) -> SubmissionPreview:
    """The jobs a request would create and the JDL of the first; raises Invalid. No I/O."""
    values, _ = check_request(app, request)
    plans = expand_batch(app, values)
    ranges = [
        SequenceRange(name=seq, first=int(plans[0].values[seq]), last=int(plans[-1].values[seq]))
        for seq in app.batch.sequences
    ]
    return SubmissionPreview(
        count=len(plans),
        names=[plan.name for plan in plans],
        ranges=ranges,
        first_jdl=_planned(app, plans[0], None).jdl,
    )


def _planned(app: ApplicationDef, plan: JobPlan, submission_id: int | None) -> PlannedJob:
    jdl = job_jdl(
        executable=plan.argv[0],
        arguments=plan.argv[1:],
        job_name=plan.name,
        job_group=_job_group(app, submission_id),
        input_sandbox=[rel.rsplit("/", 1)[-1] for rel in app.input_files],
        output_sandbox=[*app.outputs, STD_OUTPUT, STD_ERROR],
        std_output=STD_OUTPUT,
        std_error=STD_ERROR,
        cpu_time=app.cpu_time,
        priority=app.priority,
        tags=app.tags,
    )
    return PlannedJob(
        index=plan.index, name=plan.name, parameters=plan.values, argv=plan.argv, jdl=jdl
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
    """How long a proxy must last for an application's jobs: the operator's minimum (24 h by
    default, as DIRAC's web launchpad), longer if a job may run longer."""
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


async def _submit_batch(
    platform: Platform, identity: Identity, request: SubmissionRequest
) -> SubmissionView:
    owner_id = identity.user_id
    app = platform.catalog.get(request.application)
    backend = request.backend or platform.settings.default_backend
    if backend not in platform.backends:
        raise Invalid("backend", f"unknown backend; available: {', '.join(platform.backends)}")
    values, build_args = check_request(app, request)  # every check before any write
    what = f"The application {app.title}"
    vo = require_vo(identity, app.vos, what, platform.settings)
    if request.vo is not None:  # one of the user's VOs that the application is open to
        if app.vos and request.vo not in app.vos:
            raise Forbidden(f"{what} is open to {', '.join(app.vos)}, not to {request.vo!r}")
        vo = member_of(identity, request.vo).vo
    member = identity.membership(vo)
    if backend == "diracx" and per_user(platform):  # jobs would fail without their token
        await require_connection(platform, identity, vo, member.dirac_group if member else "")
    if app.proxy:  # refused now rather than a job failing later for want of a proxy
        await ensure_proxy(platform, identity, proxy_needed(platform, app), vo or None)
    image = None
    if app.image is not None:  # the container: selected if it exists, else its build starts
        selection = await select_or_build(platform, identity, app.name, build_args, vo=vo)
        image = selection.image.id
    async with platform.writing() as session:
        app_row = await _application_row(session, app)
        submission = Submission(
            owner_id=owner_id,
            application_id=app_row.id,
            application=app.name,
            parameters=values,
            build_args=build_args,
            backend=backend,
            job_count=0,
            image_id=image,
            vo=vo,
            group=member.dirac_group if member is not None else "",
        )
        session.add(submission)
        await session.flush()
        planned = plan_jobs(app, values, submission.id)
        submission.job_count = len(planned)
        now = utcnow()
        received, accepted = JobStatus.RECEIVED, "Job accepted"
        uuids = [str(uuid.uuid4()) for _ in planned]
        new_jobs = [
            {
                "uuid": job_uuid,
                "submission_id": submission.id,
                "owner_id": owner_id,
                "application": app.name,
                "index": p.index,
                "name": p.name,
                "parameters": p.parameters,
                "argv": p.argv,
                "jdl": p.jdl,
                "status": received.value,
                "minor_status": accepted,
                "backend": backend,
                "created_at": now,
                "updated_at": now,
            }
            for p, job_uuid in zip(planned, uuids, strict=True)
        ]
        # One multi-row INSERT (a batch may have thousands of jobs: ORM objects would cost
        # their bookkeeping each); the ids come back in the rows' order.
        ids = await session.scalars(
            insert(Job).returning(Job.id, sort_by_parameter_order=True), new_jobs
        )
        jobs = [
            JobRow(
                id=job_id, uuid=job_uuid, owner_id=owner_id, submission_id=submission.id,
                status=received.value, minor_status=accepted, application_status="",
                updated_at=now, started_at=None, ended_at=None, exit_code=None,
                backend_ref=None, backend_state={},
            )
            for job_id, job_uuid in zip(ids, uuids, strict=True)
        ]  # fmt: skip
        for job in jobs:
            record_status(session, job, received, minor=accepted, source="User", at=now)
        submission_id = submission.id
    publish_jobs(platform.bus, jobs)
    platform.wakeup.set()
    return await get_submission(platform, owner_id, submission_id)


async def _owned_submission(session: AsyncSession, owner_id: int, submission_id: int) -> Submission:
    """The caller's submission; another user's is 'not found', as if it did not exist."""
    submission = await session.get(Submission, submission_id)
    if submission is None or submission.owner_id != owner_id:
        raise NotFound(f"no submission {submission_id}")
    return submission


async def get_submission(platform: Platform, owner_id: int, submission_id: int) -> SubmissionView:
    async with platform.reading() as session:
        submission = await _owned_submission(session, owner_id, submission_id)
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
    )


async def submission_jobs(
    platform: Platform, owner_id: int, submission_id: int
) -> list[SubmissionJob]:
    """The jobs of the caller's submission in index order; another user's is not found."""
    async with platform.reading() as session:
        await _owned_submission(session, owner_id, submission_id)
        rows = await session.execute(
            select(Job.id, Job.index, Job.name, Job.status, Job.minor_status)
            .where(Job.submission_id == submission_id)
            .order_by(Job.index)
        )
        return [SubmissionJob.model_validate(dict(row)) for row in rows.mappings()]


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
