"""Submitting: every check a submission makes, its dry run, its jobs stored as Received."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.auth.groups import Membership
from concordia.backends.base import Backend
from concordia.core.application import ApplicationDef
from concordia.core.parameters import ParamValue
from concordia.core.states import JobStatus
from concordia.db import submission_jobs as job_queries
from concordia.db import submissions as submission_queries
from concordia.db.job_rows import JobRow
from concordia.db.queue import unfinished_jobs
from concordia.db.tables import Submission, utcnow
from concordia.logic.accounts import member_of, require_vo
from concordia.logic.datalake_choice import DatalakeChoice, choose, default_dataset
from concordia.logic.diracx_accounts import require_connection
from concordia.logic.errors import Conflict, Forbidden, TooMany
from concordia.logic.identity import Identity
from concordia.logic.image_plans import plan_image
from concordia.logic.image_selection import ImageClaim, claim_image, image_state
from concordia.logic.jobs import publish_jobs, record_status
from concordia.logic.platform import Platform
from concordia.logic.proxies import ensure_proxy
from concordia.logic.submission_models import (
    PlannedJob,
    SubmissionPlan,
    SubmissionRequest,
    SubmissionView,
)
from concordia.logic.submission_plans import (
    check_request,
    chosen_backend,
    cpu_estimate,
    next_submission_id,
    plan_jobs,
)
from concordia.logic.submission_views import get_submission
from concordia.metrics import SUBMISSION_SECONDS
from concordia.settings import OperationSettings, Settings


def proxy_needed(settings: Settings, app: ApplicationDef) -> timedelta:
    """How long a proxy must last for an application's jobs: the operator's minimum (8 h by
    default, under the 12 h of IAM's managed proxies), longer if a job may run longer."""
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
    backend, chosen = chosen_backend(platform.settings, platform.backends, request)
    values, build_args = check_request(app, request)  # every check before any write
    lake = choose(
        platform.settings, app, identity.username, request.datalake,
        given="datalake" in request.model_fields_set,
    )  # fmt: skip
    # What the backend would refuse, before an image build starts for nothing (checked
    # again with the submission's own id once it has one).
    plan_jobs(
        chosen, app, values, await next_submission_id(platform.db), platform.catalog.directory,
        preview=True,
    )  # fmt: skip
    what = f"The application {app.title}"
    vo = require_vo(identity, app.vos, what, platform.settings)
    if request.vo is not None:  # one of the user's VOs that the application is open to
        if app.vos and request.vo not in app.vos:
            raise Forbidden(f"{what} is open to {', '.join(app.vos)}, not to {request.vo!r}")
        vo = member_of(identity, request.vo).vo
    member = identity.membership(vo)
    if chosen.needs_user_token:  # jobs would fail without their token
        group = member.dirac_group if member else ""
        await require_connection(
            platform.db, platform.backends, platform.keyring, identity, vo, group
        )
    # Refused now rather than a job failing later for want of a proxy; a dry run leaves the
    # proxy alone, as making one is a change.
    if app.proxy and not dry_run:
        needed = proxy_needed(platform.settings, app)
        await ensure_proxy(
            platform.settings, platform.db, platform.keyring, identity, needed, vo or None
        )
    adding = int(values[app.batch.count]) if app.batch.count else 1
    async with platform.reading() as session:  # before an image build starts for nothing
        await check_queue_room(platform.settings, session, identity.user_id, adding)
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
        admitted.chosen, app, values, await next_submission_id(platform.db),
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
    image = (
        None
        if app.image is None
        else plan_image(platform.settings, platform.catalog, platform.images, app, build_args)
    )
    claim: ImageClaim | None = None
    async with platform.writing() as session:
        # The container, selected if it exists, else marked building: claimed in the
        # submission's own transaction, so that a refused submission leaves no claim behind.
        if image is not None:
            claim = await claim_image(
                platform.settings, platform.images, session, identity, image, [vo]
            )
        app_row = await submission_queries.application_row(session, app)
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
        await check_queue_room(platform.settings, session, owner_id, len(planned), lock=True)
        submission.job_count = len(planned)
        jobs = await _store_jobs(session, submission, planned)
        submission_id = submission.id
    if claim is not None:  # its build starts now, if it must be built
        claim.after_commit(platform)
    publish_jobs(platform.bus, jobs)
    platform.look_again()
    return await get_submission(platform.db, owner_id, submission_id)


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
    ids = await job_queries.insert_jobs(session, new_jobs)
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
    settings: OperationSettings,
    session: AsyncSession,
    owner_id: int,
    adding: int,
    *,
    lock: bool = False,
) -> None:
    """Raises TooMany if ``adding`` jobs would take the user over their limit of jobs not yet
    over (max_queued_jobs_per_user): one user's hundred thousand jobs would slow every
    query of the queue, and outlive the operator's patience."""
    limit = settings.max_queued_jobs_per_user
    if not limit:
        return
    unfinished = await unfinished_jobs(session, owner_id, lock=lock)
    if unfinished + adding > limit:
        raise TooMany(
            f"This submission of {adding} jobs would take you over the limit of {limit} jobs "
            f"not yet finished per user: you have {unfinished}. Wait for some to finish, or "
            "kill or delete some, then submit again (or submit fewer jobs)."
        )
