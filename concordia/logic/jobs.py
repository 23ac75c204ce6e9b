"""Jobs: status transitions with history, one job's detail, kill, reschedule, delete."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.backends.base import BackendError, BackendRef, BackendUnreachable, StatusUpdate
from concordia.core.states import (
    ACTIVE_STATES,
    KILLABLE_STATES,
    USER_RESCHEDULABLE_STATES,
    InvalidTransition,
    JobStatus,
    check_transition,
    one_of,
    status_text,
)
from concordia.db import datalake_files, job_history, submission_runs
from concordia.db.tables import Job, utcnow
from concordia.logic.errors import Conflict, DomainError, NotFound, Unavailable
from concordia.logic.events import Event, EventBus
from concordia.logic.job_ends import end_in_backend
from concordia.logic.job_models import (
    BulkAction,
    BulkOutcome,
    DeletedJob,
    HistoryEntry,
    JobDetail,
    JobSummary,
)
from concordia.logic.platform import HISTORY_KEY, Platform

log = logging.getLogger(__name__)


class Tracked(Protocol):
    """What a status change touches: a Job, or a lighter row of the same fields."""

    id: int
    status: str
    minor_status: str
    application_status: str
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


class Announced(Tracked, Protocol):
    """What a job change event says."""

    owner_id: int
    submission_id: int


class Placed(Protocol):
    """Where a job lives in its backend."""

    uuid: str
    backend_ref: str | None
    backend_state: dict[str, Any]


def transition(
    session: AsyncSession,
    job: Tracked,
    status: JobStatus,
    *,
    minor: str = "",
    app_status: str = "",
    source: str,
    at: datetime | None = None,
) -> None:
    """Move a job to ``status``, refusing what DIRAC's machine refuses; record the history."""
    check_transition(JobStatus(job.status), status)
    record_status(session, job, status, minor=minor, app_status=app_status, source=source, at=at)


def record_status(
    session: AsyncSession,
    job: Tracked,
    status: JobStatus,
    *,
    minor: str = "",
    app_status: str = "",
    source: str,
    at: datetime | None = None,
) -> None:
    """Set a job's status and add its history row (a new job's first status, or a transition).
    Status texts longer than their columns are cut here, where every one is written."""
    at = at or utcnow()
    minor, app_status = status_text(minor), status_text(app_status)
    job.status = status.value
    job.minor_status = minor
    if app_status:
        job.application_status = app_status
    job.updated_at = at
    if status is JobStatus.RUNNING and job.started_at is None:
        job.started_at = at
    if status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.KILLED):
        job.ended_at = at
    # Rows wait in the session and go in one multi-row INSERT at commit (Platform.writing):
    # one ORM object per row would cost one statement per row.
    history: list[dict[str, Any]] = session.info.setdefault(HISTORY_KEY, [])
    history.append(
        {
            "job_id": job.id,
            "status": status.value,
            "minor_status": minor,
            "application_status": app_status,
            "source": source,
            "timestamp": at,
        }
    )


def job_event(job: Announced) -> Event:
    return Event(
        kind="job",
        owner_id=job.owner_id,
        data={
            "id": job.id,
            "submission_id": job.submission_id,
            "status": job.status,
            "minor_status": job.minor_status,
            "updated_at": job.updated_at.isoformat(),
        },
    )


def publish_jobs(bus: EventBus, jobs: Sequence[Announced]) -> None:
    if not bus.listened:  # events nobody reads are not even made (a round has hundreds)
        return
    for job in jobs:
        bus.publish(job_event(job))


async def get_owned_job(
    session: AsyncSession, owner_id: int, job_id: int, *, lock: bool = False
) -> Job:
    """A job of this user; another user's job is 'not found', as if it did not exist.
    ``lock``: its row stays locked until the transaction ends (PostgreSQL), so that a change
    made meanwhile by another process (the worker) is waited for rather than overwritten."""
    job = await session.get(Job, job_id, with_for_update=lock)
    if job is None or job.owner_id != owner_id:
        raise NotFound(f"no job {job_id}")
    return job


async def job_detail(session: AsyncSession, job: Job) -> JobDetail:
    rows = await job_history.history_of(session, job.id)
    derived = {
        "isolated": job.backend_state.get("isolated"),
        "site": job.backend_state.get("site"),
        "history": [HistoryEntry.model_validate(r, from_attributes=True) for r in rows],
        "image_id": await submission_runs.image_of(session, job.submission_id),
    }
    stored = {name: getattr(job, name) for name in JobDetail.model_fields if name not in derived}
    return JobDetail.model_validate({**stored, **derived})


async def bulk_action(
    platform: Platform, owner_id: int, action: BulkAction, job_ids: Sequence[int]
) -> BulkOutcome:
    """Apply one action to each job in turn; a refusal (and its reason) stops only that job."""
    act: Callable[[Platform, int, int], Awaitable[JobSummary]] = {
        "kill": kill_job,
        "reschedule": reschedule_job,
        "delete": delete_job,
    }[action]
    outcome = BulkOutcome(action=action, succeeded=[], refused=[])
    for job_id in dict.fromkeys(job_ids):
        try:
            await act(platform, owner_id, job_id)
        except DomainError as exc:
            outcome.refused.append(exc.message)
        else:
            outcome.succeeded.append(job_id)
    if action == "delete" and outcome.succeeded:
        outcome.notice = await lake_notice(platform, outcome.succeeded)
    return outcome


async def lake_notice(platform: Platform, job_ids: Sequence[int]) -> str:
    """What deleting these jobs leaves in the data lake: never deleted with them, the user
    is told, and deletes them with Rucio if they want to."""
    async with platform.reading() as session:
        in_lake = await datalake_files.count_of_jobs(session, job_ids)
    if not in_lake:
        return ""
    return (
        f"{in_lake} file(s) of the deleted job(s) stay in the data lake: deleting a job never "
        "deletes them there; delete them with Rucio if you no longer need them."
    )


async def kill_job(platform: Platform, owner_id: int, job_id: int) -> JobSummary:
    async with platform.reading() as session:
        job = await get_owned_job(session, owner_id, job_id)
    status = JobStatus(job.status)
    if status not in KILLABLE_STATES:
        raise Conflict(f"job {job_id} is {status}: it cannot be killed")
    if job.backend_ref is not None and (status in ACTIVE_STATES or status is JobStatus.WAITING):
        for ended in await _tell_backend(platform, job, "kill"):
            # It ended there before the kill arrived: it keeps that state, which the next
            # poll brings with its history.
            platform.wakeup.set()
            raise Conflict(
                f"job {job_id} was not killed: the kill came too late, it had ended on "
                f"{job.backend} ({ended.status}"
                + (f", {ended.minor_status})" if ended.minor_status else ")")
            )
    return await _record_end(platform, job, JobStatus.KILLED, "Killed by user")


async def _tell_backend(
    platform: Platform, job: Job, action: Literal["kill", "delete"]
) -> list[StatusUpdate]:
    """The backend first, outside the lock (stopping a process takes its grace period; a
    grid's call may need the database, to refresh a user's tokens): if it cannot be told,
    nothing changes. A kill returns the job if it had ended on its own already."""
    backend = platform.backends[job.backend]
    done = "killed" if action == "kill" else "deleted"
    try:
        status = JobStatus.KILLED if action == "kill" else JobStatus.DELETED
        return await end_in_backend(backend, status, [backend_ref(job)])
    except BackendUnreachable as exc:
        raise Unavailable(f"job {job.id} was not {done}, try again later: {exc}") from None
    except BackendError as exc:
        raise Conflict(f"job {job.id} was not {done}: {job.backend}: {exc}") from None


async def _record_end(platform: Platform, seen: Job, status: JobStatus, minor: str) -> JobSummary:
    """Record Killed or Deleted; a job handed to its backend since it was ``seen`` (a
    hand-over was under way) is then told to its backend too."""
    async with platform.writing() as session:
        job = await get_owned_job(session, seen.owner_id, seen.id, lock=True)
        now = JobStatus(job.status)
        if now is not status:  # the backend may have reported it already
            try:
                transition(session, job, status, minor=minor, source="User")
            except InvalidTransition:  # it ended on its own meanwhile
                raise Conflict(f"job {job.id} is {now} now: it was not changed") from None
    if seen.backend_ref is None and job.backend_ref is not None:
        try:
            await _tell_backend(platform, job, "kill" if status is JobStatus.KILLED else "delete")
        except DomainError as exc:  # recorded: the backend's copy ends on its own
            log.warning("%s", exc.message)
    platform.bus.publish(job_event(job))
    return JobSummary.model_validate(job, from_attributes=True)


async def reschedule_job(platform: Platform, owner_id: int, job_id: int) -> JobSummary:
    async with platform.writing() as session:
        job = await get_owned_job(session, owner_id, job_id, lock=True)
        status = JobStatus(job.status)
        if status not in USER_RESCHEDULABLE_STATES:
            raise Conflict(
                f"job {job_id} is {status}: only {one_of(USER_RESCHEDULABLE_STATES)} jobs "
                "can be rescheduled"
            )
        requeue(session, job, minor="Rescheduled by user", source="User")
    platform.bus.publish(job_event(job))
    platform.wakeup.set()
    return JobSummary.model_validate(job, from_attributes=True)


def requeue(session: AsyncSession, job: Job, *, minor: str, source: str) -> None:
    """Rescheduled then Received at once: DIRAC's 'virtual' Rescheduled state."""
    transition(session, job, JobStatus.RESCHEDULED, minor=minor, source=source)
    transition(session, job, JobStatus.RECEIVED, minor="Job rescheduled", source=source)
    job.reschedule_count += 1
    job.exit_code = None
    job.started_at = job.ended_at = None
    job.backend_ref = None  # handed over again (a new run; a grid gives it a new id)


async def delete_job(platform: Platform, owner_id: int, job_id: int) -> DeletedJob:
    async with platform.reading() as session:
        job = await get_owned_job(session, owner_id, job_id)
    status = JobStatus(job.status)
    if status is JobStatus.DELETED:
        raise NotFound(f"no job {job_id}")
    if status in ACTIVE_STATES:
        raise Conflict(f"job {job_id} is {status}: kill it before deleting it")
    if job.backend_ref is not None:
        await _tell_backend(platform, job, "delete")
    summary = DeletedJob.model_validate(
        (await _record_end(platform, job, JobStatus.DELETED, "Deleted by user")).model_dump()
    )
    await asyncio.to_thread(shutil.rmtree, platform.settings.jobs_dir / job.uuid, True)
    summary.notice = await lake_notice(platform, [job.id])
    return summary


def backend_ref(job: Placed) -> BackendRef:
    return BackendRef(uuid=job.uuid, ref=job.backend_ref or job.uuid, state=job.backend_state)
