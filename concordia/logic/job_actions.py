"""A user's actions on jobs: kill, reschedule, delete, one job or many at once."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

from concordia.backends.base import BackendError, BackendUnreachable, StatusUpdate
from concordia.core.states import (
    ACTIVE_STATES,
    KILLABLE_STATES,
    USER_RESCHEDULABLE_STATES,
    InvalidTransition,
    JobStatus,
    one_of,
)
from concordia.db import datalake_files
from concordia.db.tables import Job
from concordia.logic.errors import Conflict, DomainError, NotFound, Unavailable
from concordia.logic.job_ends import end_in_backend
from concordia.logic.job_models import BulkAction, BulkOutcome, DeletedJob, JobSummary
from concordia.logic.jobs import backend_ref, get_owned_job, job_event, requeue, transition
from concordia.logic.platform import Platform

log = logging.getLogger(__name__)


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
            platform.look_again()
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
    platform.look_again()
    return JobSummary.model_validate(job, from_attributes=True)


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
