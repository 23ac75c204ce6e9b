"""Adoption: the jobs of a worker that is gone become another's; those whose process died
with it are Stalled, then rescheduled or Failed (the reschedule policy); those queued in it
go back into the shared queue; a grid's are followed by the adopter."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.backends.base import Backend
from concordia.core.states import ACTIVE_STATES, JobStatus
from concordia.db import worker_jobs
from concordia.db.lease import CHECK_SECONDS, live_slots
from concordia.db.tables import Job
from concordia.logic import datalake_uploads
from concordia.logic.job_ends import end_in_backend
from concordia.logic.jobs import backend_ref, requeue, transition
from concordia.logic.process import Process
from concordia.settings import OperationSettings

log = logging.getLogger(__name__)

#: The states of the jobs a worker holds: in the queue or its backend, or under way there.
HELD_STATES = (JobStatus.WAITING, *ACTIVE_STATES)


#: Seconds a slot must have been seen free before its jobs are adopted, where workers run
#: side by side. Its holder may be alive, cut off from the database (a restart, a network
#: cut): it sees that within CHECK_SECONDS and stops its jobs, and until then it would run
#: them, and start those it has queued, beside their adopter, in the same job directories.
ADOPT_AFTER = CHECK_SECONDS + 1.0


@dataclass
class FreeSlots:
    """When this worker first saw each slot free (with jobs held in it), on the monotonic
    clock: its jobs are adopted once it has been free for ``after`` seconds."""

    after: float
    since: dict[int, float] = field(default_factory=dict)

    def settled(self, free: set[int], live: set[int], now: float) -> tuple[set[int], float | None]:
        """Of the ``free`` slots, those free long enough, and the seconds until the next of
        the others is (None: none waits); a ``live`` slot is forgotten (taken again, it is
        seen free anew). Both as of ``now``: a wait reckoned later could find the time up of
        a slot not settled here, and leave it (the worker's timers may also fire early:
        uvloop's have a millisecond's resolution)."""
        for slot in live:
            self.since.pop(slot, None)
        for slot in free:
            self.since.setdefault(slot, now)
        left = {s: self.since[s] + self.after - now for s in free}
        waiting = [t for t in left.values() if t > 0]
        return {s for s, t in left.items() if t <= 0}, min(waiting) if waiting else None


def free_slots(process: Process) -> FreeSlots:
    """How long this worker waits on a free slot: ADOPT_AFTER where workers run side by side;
    not at all where one runs at a time (SQLite's lock goes only with its process)."""
    return FreeSlots(ADOPT_AFTER if process.lease.side_by_side else 0.0)


class LeaseNotHeld(RuntimeError):
    """The worker's slot is not held in the database: its round is not done."""


#: Seconds between looks at start for jobs whose rows another transaction holds.
BUSY_RETRY = 0.5


@dataclass
class Adopted:
    """A backend's jobs adopted: all of them, and those whose data go to the data lake."""

    jobs: list[Job] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    #: Whether some were left, their rows held by another transaction (looked for at start
    #: only: later rounds look again anyway).
    busy: bool = False
    #: Seconds until those left are looked for again: until their slot is free long enough,
    #: at most BUSY_RETRY when some were busy (None: none waits).
    wait: float | None = None


async def others_alive(process: Process, session: AsyncSession, *, at_start: bool) -> set[int]:
    """The slots of the other workers alive now (none where one worker runs at a time). At
    start, this worker's own slot counts as gone (it held it just now)."""
    slot = process.lease.slot
    live: set[int] = set()
    if process.lease.side_by_side:
        live = await live_slots(session)
        if slot not in live:
            # The database restarted (or cut the lease's connection) and the lease watcher
            # has not seen it yet: this worker's own jobs would look gone, and be taken from
            # the backend that still runs them. It stops (or takes its slot again, `serve`):
            # its jobs are adopted then, by the slot's holder.
            raise LeaseNotHeld(f"worker slot {slot} not held: no jobs adopted")
    return live - {slot} if at_start else live


async def newest_job_id(session: AsyncSession) -> int:
    """The newest job now: any job up to it may have been handed to its backend by a process
    that died before recording it."""
    return await worker_jobs.newest_job_id(session)


async def adopt_from(
    settings: OperationSettings,
    process: Process,
    session: AsyncSession,
    name: str,
    backend: Backend,
    live: set[int],
    free: FreeSlots,
    now: float,
    *,
    at_start: bool = False,
) -> Adopted:
    """The backend's jobs whose worker is not in ``live``, now this worker's, those of a
    slot that has been ``free`` long enough. A backend that does not survive a restart lost
    those under way. ``at_start``, those another transaction holds are waited for too."""
    jobs = await worker_jobs.gone_jobs(session, name, HELD_STATES, live)
    # This worker's own slot's jobs are gone at start only: one that a killed transaction
    # still holds must be waited for, or it would be left Running for ever.
    busy = at_start and await worker_jobs.count_gone(session, name, HELD_STATES, live) > len(jobs)
    settled, wait = free.settled({j.worker for j in jobs if j.worker is not None}, live, now)
    if busy:
        wait = BUSY_RETRY if wait is None else min(wait, BUSY_RETRY)
    jobs = [j for j in jobs if j.worker is None or j.worker in settled]
    if not jobs:
        return Adopted(busy=busy, wait=wait)
    slot, shared = process.lease.slot, process.shared
    gone_from = {job.id: process_name(job.worker, shared) for job in jobs}
    for job in jobs:
        job.worker = slot
    lost: list[Job] = []
    held: list[Job] = []
    queued = 0
    if not backend.survives_restart:  # its jobs died with their worker
        # Those whose data were being uploaded are not lost: their process had ended; their
        # uploads are resumed here.
        held = [j for j in jobs if _held(j)]
        lost = [j for j in jobs if j.status != JobStatus.WAITING.value and not _held(j)]
        await end_in_backend(backend, JobStatus.KILLED, [backend_ref(j) for j in lost])
        for job in lost:
            stall(session, job, settings.max_reschedules, gone_from[job.id])
        # Queued in the process that died: back in the shared queue.
        for job in jobs:
            if job.status == JobStatus.WAITING.value and job.backend_ref is not None:
                job.backend_ref, job.worker = None, None
                queued += 1
    log.warning(
        "%s adopted %d %s job(s) of %s, gone: %d stalled, %d back in the queue, "
        "%d followed here",
        process_name(slot, shared), len(jobs), name,
        ", ".join(sorted(set(gone_from.values()))), len(lost), queued,
        len(jobs) - len(lost) - queued,
    )  # fmt: skip
    return Adopted(jobs, [j.id for j in held], busy, wait)


def stall(session: AsyncSession, job: Job, max_reschedules: int, gone: str) -> None:
    """A job whose process was lost: Stalled, Failed, and rescheduled while it has
    reschedules left."""
    if job.status != JobStatus.MATCHED.value:  # a Matched job never started: nothing stalled
        transition(
            session,
            job,
            JobStatus.STALLED,
            minor=f"Job process lost: {gone} stopped while it ran",
            source="StalledJobAgent",
        )
    transition(session, job, JobStatus.FAILED, minor="Stalled", source="StalledJobAgent")
    if job.reschedule_count < max_reschedules:
        requeue(session, job, minor="Rescheduled after a stall", source="StalledJobAgent")


def process_name(worker: int | None, shared: bool) -> str:
    """A process that runs jobs, as jobs' histories and the log name it: a worker by its slot
    (its start-up line in the log gives its pid and host), or `serve` running alone."""
    return f"worker {worker}" if shared and worker is not None else "the server"


def _held(job: Job) -> bool:
    """Whether a job's process has ended and its data are going to the data lake."""
    return (
        job.status == JobStatus.COMPLETING.value and job.minor_status == datalake_uploads.UPLOADING
    )
