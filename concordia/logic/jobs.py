"""Jobs' status: transitions with their history, the events that tell of them, one job's
detail, a job requeued."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.backends.base import BackendRef
from concordia.core.states import JobStatus, check_transition, status_text
from concordia.db import job_history, submission_runs
from concordia.db.tables import Job, utcnow
from concordia.logic.database import HISTORY_KEY
from concordia.logic.errors import NotFound
from concordia.logic.events import Event, EventBus
from concordia.logic.job_models import HistoryEntry, JobDetail


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


def requeue(session: AsyncSession, job: Job, *, minor: str, source: str) -> None:
    """Rescheduled then Received at once: DIRAC's 'virtual' Rescheduled state."""
    transition(session, job, JobStatus.RESCHEDULED, minor=minor, source=source)
    transition(session, job, JobStatus.RECEIVED, minor="Job rescheduled", source=source)
    job.reschedule_count += 1
    job.exit_code = None
    job.started_at = job.ended_at = None
    job.backend_ref = None  # handed over again (a new run; a grid gives it a new id)


def backend_ref(job: Placed) -> BackendRef:
    return BackendRef(uuid=job.uuid, ref=job.backend_ref or job.uuid, state=job.backend_state)
