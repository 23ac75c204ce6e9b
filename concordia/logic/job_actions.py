"""A user's actions on jobs: kill, reschedule, delete, one job or many at once."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Collection, Sequence

from concordia.backends.base import Backend, BackendError, BackendUnreachable
from concordia.core.states import (
    ACTIVE_STATES,
    KILLABLE_STATES,
    USER_RESCHEDULABLE_STATES,
    InvalidTransition,
    JobStatus,
    one_of,
)
from concordia.db import datalake_files, owned_jobs
from concordia.db.tables import Job
from concordia.logic.database import Database
from concordia.logic.errors import Conflict, DomainError, NotFound, Unavailable
from concordia.logic.events import EventBus
from concordia.logic.job_ends import end_in_backend
from concordia.logic.job_models import BulkAction, BulkOutcome, DeletedJob, JobSummary
from concordia.logic.jobs import backend_ref, job_event, requeue, transition
from concordia.logic.platform import Platform
from concordia.logic.process import Process
from concordia.settings import ServerSettings

log = logging.getLogger(__name__)


async def bulk_action(
    platform: Platform, owner_id: int, action: BulkAction, job_ids: Sequence[int]
) -> BulkOutcome:
    """Apply one action to each job; a refusal (and its reason) stops only that job. The
    jobs are read together, each backend told once, all recorded in one transaction."""
    if action == "kill":
        results = await kill_jobs(platform, owner_id, job_ids)
    elif action == "reschedule":
        results = await reschedule_jobs(
            platform.db, platform.bus, platform.process, owner_id, job_ids
        )
    else:
        results = await delete_jobs(platform, owner_id, job_ids)
    outcome = BulkOutcome(action=action, succeeded=[], refused=[])
    for job_id, result in results.items():
        if isinstance(result, DomainError):
            outcome.refused.append(result.message)
        else:
            outcome.succeeded.append(job_id)
    if action == "delete" and outcome.succeeded:
        outcome.notice = await lake_notice(platform.db, outcome.succeeded)
    return outcome


async def lake_notice(db: Database, job_ids: Sequence[int]) -> str:
    """What deleting these jobs leaves in the data lake: never deleted with them, the user
    is told, and deletes them with Rucio if they want to."""
    async with db.reading() as session:
        in_lake = await datalake_files.count_of_jobs(session, job_ids)
    if not in_lake:
        return ""
    return (
        f"{in_lake} file(s) of the deleted job(s) stay in the data lake: deleting a job never "
        "deletes them there; delete them with Rucio if you no longer need them."
    )


#: Each job's end, by id: what it became, or why it was refused.
Outcomes = dict[int, JobSummary | DomainError]
#: The jobs refused, by id, each with why.
Refusals = dict[int, DomainError]
#: Where a job is in its backend's hands: a kill must reach it there.
_IN_BACKEND = {*ACTIVE_STATES, JobStatus.WAITING}


def _only(outcomes: Outcomes, job_id: int) -> JobSummary:
    """The one job's end; its refusal raised."""
    if isinstance(ended := outcomes[job_id], DomainError):
        raise ended
    return ended


async def kill_job(platform: Platform, owner_id: int, job_id: int) -> JobSummary:
    return _only(await kill_jobs(platform, owner_id, [job_id]), job_id)


async def kill_jobs(platform: Platform, owner_id: int, job_ids: Sequence[int]) -> Outcomes:
    """Kill the user's jobs: each, by id, Killed or why not."""

    def refusal(job_id: int, status: JobStatus) -> DomainError | None:
        if status in KILLABLE_STATES:
            return None
        return Conflict(f"job {job_id} is {status}: it cannot be killed")

    results, _ = await _end_jobs(
        platform, owner_id, job_ids, JobStatus.KILLED, "Killed by user", refusal, _IN_BACKEND
    )
    return results


async def _end_jobs(
    platform: Platform,
    owner_id: int,
    job_ids: Sequence[int],
    status: JobStatus,
    minor: str,
    refusal: Callable[[int, JobStatus], DomainError | None],
    in_backend: Collection[JobStatus],
) -> tuple[Outcomes, list[Job]]:
    """Kill or delete (``status``) the user's jobs that ``refusal`` lets through: read in
    one statement, each backend told once for all its jobs in ``in_backend`` states,
    recorded in one transaction. Each job's end by id, and the jobs that ended."""
    ids = list(dict.fromkeys(job_ids))
    async with platform.reading() as session:
        found = await owned_jobs.owned(session, owner_id, ids)
    results: Outcomes = {}
    seen: list[Job] = []
    for job_id in ids:
        job = found.get(job_id)
        if job is None:
            results[job_id] = NotFound(f"no job {job_id}")
        elif (refused := refusal(job_id, JobStatus(job.status))) is not None:
            results[job_id] = refused
        else:
            seen.append(job)
    placed = [j for j in seen if j.backend_ref is not None and JobStatus(j.status) in in_backend]
    results.update(await _tell_backends(platform.backends, platform.process, placed, status))
    left = [j for j in seen if j.id not in results]
    results.update(await _record_ends(platform, owner_id, left, status, minor))
    ended = [j for j in left if not isinstance(results[j.id], DomainError)]
    return {job_id: results[job_id] for job_id in ids}, ended


async def _tell_backends(
    backends: dict[str, Backend], process: Process, jobs: Sequence[Job], status: JobStatus
) -> Refusals:
    """Each backend told once that its jobs are ``status`` (Killed or Deleted), outside any
    lock (stopping a process takes its grace period; a grid's call may need the database,
    to refresh a user's tokens). The jobs it could not be told of, each with why (nothing
    changes for them), and the jobs a kill found ended there already (they keep that state,
    which the next poll brings with its history)."""
    refused: Refusals = {}
    by_backend: dict[str, list[Job]] = {}
    for job in jobs:
        by_backend.setdefault(job.backend, []).append(job)
    done = "killed" if status is JobStatus.KILLED else "deleted"
    for name, told in by_backend.items():
        try:
            ended = await end_in_backend(backends[name], status, [backend_ref(j) for j in told])
        except BackendUnreachable as exc:
            refused.update(
                {
                    j.id: Unavailable(f"job {j.id} was not {done}, try again later: {exc}")
                    for j in told
                }
            )
            continue
        except BackendError as exc:
            refused.update(
                {j.id: Conflict(f"job {j.id} was not {done}: {name}: {exc}") for j in told}
            )
            continue
        by_uuid = {j.uuid: j for j in told}
        for update in ended:
            job = by_uuid[update.uuid]
            minor = f", {update.minor_status})" if update.minor_status else ")"
            refused[job.id] = Conflict(
                f"job {job.id} was not killed: the kill came too late, it had ended on "
                f"{name} ({update.status}{minor}"
            )
        if ended:
            process.look_again()
    return refused


async def _record_ends(
    platform: Platform, owner_id: int, seen: Sequence[Job], status: JobStatus, minor: str
) -> Outcomes:
    """Record Killed or Deleted, all in one transaction; a job handed to its backend since
    it was ``seen`` (a hand-over was under way) is then told to its backend too."""
    results: Outcomes = {}
    if not seen:
        return results
    async with platform.writing() as session:
        now = await owned_jobs.owned(session, owner_id, [j.id for j in seen], lock=True)
        for job_id in (j.id for j in seen):
            job = now.get(job_id)
            if job is None:
                results[job_id] = NotFound(f"no job {job_id}")
            elif JobStatus(job.status) is not status:  # the backend may have reported it
                try:
                    transition(session, job, status, minor=minor, source="User")
                except InvalidTransition:  # it ended on its own meanwhile
                    results[job_id] = Conflict(
                        f"job {job_id} is {job.status} now: it was not changed"
                    )
    handed = [
        now[j.id]
        for j in seen
        if j.backend_ref is None and j.id not in results and now[j.id].backend_ref is not None
    ]
    told = await _tell_backends(platform.backends, platform.process, handed, status)
    for refused in told.values():
        log.warning("%s", refused.message)  # recorded: the backend's copy ends on its own
    for job_id in (j.id for j in seen):
        if job_id not in results:
            platform.bus.publish(job_event(now[job_id]))
            results[job_id] = JobSummary.model_validate(now[job_id], from_attributes=True)
    return results


async def reschedule_job(
    db: Database, bus: EventBus, process: Process, owner_id: int, job_id: int
) -> JobSummary:
    return _only(await reschedule_jobs(db, bus, process, owner_id, [job_id]), job_id)


async def reschedule_jobs(
    db: Database, bus: EventBus, process: Process, owner_id: int, job_ids: Sequence[int]
) -> Outcomes:
    """Queue the user's ended jobs again, in one transaction: each, by id, its new state or
    why not."""
    ids = list(dict.fromkeys(job_ids))
    results: Outcomes = {}
    again: list[Job] = []
    async with db.writing() as session:
        found = await owned_jobs.owned(session, owner_id, ids, lock=True)
        for job_id in ids:
            job = found.get(job_id)
            if job is None:
                results[job_id] = NotFound(f"no job {job_id}")
            elif (status := JobStatus(job.status)) not in USER_RESCHEDULABLE_STATES:
                results[job_id] = Conflict(
                    f"job {job_id} is {status}: only {one_of(USER_RESCHEDULABLE_STATES)} jobs "
                    "can be rescheduled"
                )
            else:
                requeue(session, job, minor="Rescheduled by user", source="User")
                again.append(job)
    for job in again:
        bus.publish(job_event(job))
        results[job.id] = JobSummary.model_validate(job, from_attributes=True)
    if again:
        process.look_again()
    return {job_id: results[job_id] for job_id in ids}


async def delete_job(platform: Platform, owner_id: int, job_id: int) -> DeletedJob:
    summary = _only(await delete_jobs(platform, owner_id, [job_id]), job_id)
    deleted = DeletedJob.model_validate(summary.model_dump())
    deleted.notice = await lake_notice(platform.db, [job_id])
    return deleted


async def delete_jobs(platform: Platform, owner_id: int, job_ids: Sequence[int]) -> Outcomes:
    """Delete the user's ended jobs: each, by id, Deleted or why not; then their files go
    (their data in the data lake stay: lake_notice says so)."""

    def refusal(job_id: int, status: JobStatus) -> DomainError | None:
        if status is JobStatus.DELETED:
            return NotFound(f"no job {job_id}")
        if status in ACTIVE_STATES:
            return Conflict(f"job {job_id} is {status}: kill it before deleting it")
        return None

    results, ended = await _end_jobs(
        platform,
        owner_id,
        job_ids,
        JobStatus.DELETED,
        "Deleted by user",
        refusal,
        frozenset(JobStatus),  # an ended job too: its backend forgets it
    )
    await asyncio.to_thread(_remove_dirs, platform.settings, [j.uuid for j in ended])
    return results


def _remove_dirs(settings: ServerSettings, uuids: Sequence[str]) -> None:
    """The deleted jobs' directories (logs, outputs), in one thread for all."""
    for uuid in uuids:
        shutil.rmtree(settings.jobs_dir / uuid, ignore_errors=True)
