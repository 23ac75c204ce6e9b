"""Dispatch: Received -> Checking -> Waiting (the queue all workers share), and from there
into a backend once the job's image is ready; the backend's answer to a hand-over."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.backends.base import Backend, BackendError, BackendRef, JobSpec
from concordia.core.image_status import BUILDING, CANCELLED, FAILED, ImageStatus
from concordia.core.states import JobStatus
from concordia.db import worker_jobs
from concordia.db.job_rows import READY_COLUMNS, JobRow, ReadyJob, rows_where, store_rows
from concordia.db.queue import heads, held_by_owner, take
from concordia.logic.database import Database
from concordia.logic.job_ends import TOLD_ENDS, end_in_backend
from concordia.logic.job_specs import RoundMemory, specs_for
from concordia.logic.jobs import backend_ref, record_status, transition
from concordia.logic.platform import Platform
from concordia.logic.scheduling import Choice, FairShare, user_limit_minor
from concordia.settings import OperationSettings

log = logging.getLogger(__name__)

#: Jobs handed to a backend per round: small enough that the first jobs start while the
#: rest of a big submission is still being handed over, and no round stalls the loop; a
#: multiple of 20, DiracX's most JDLs per call.
DISPATCH_BATCH = 120
WAITING_FOR_IMAGE = "Waiting for image"
#: A job's minor status when its image's build ended without an image: cancelled builds
#: fail their jobs as failed ones do, rather than leave them waiting for a retry that may
#: never come (holding their queue places and the image against deletion).
IMAGE_ENDED = {FAILED: "Image build failed", CANCELLED: "Image build cancelled"}


@dataclass
class Dispatched:
    """What a dispatch round did: the jobs whose state it changed, and what to hand over."""

    jobs: list[JobRow]
    specs: list[JobSpec]


async def dispatch_round(
    platform: Platform,
    memory: RoundMemory,
    name: str,
    backend: Backend,
    *,
    room: int | None,
    being_handed: set[int],
    last_before_start: int,
) -> Dispatched | None:
    """New jobs, each into the queue; from the queue, as many as there is ``room`` for
    (None: no limit), none of ``being_handed``; None when there was no job to look at.
    The jobs handed over are the worker's from then on."""
    slot = platform.process.lease.slot
    async with platform.writing() as session:
        queued = worker_jobs.to_hand_over(name, slot)
        received = worker_jobs.received(name)
        new = await take(session, READY_COLUMNS, received, limit=DISPATCH_BATCH, leave=being_handed)
        # With no room limit (the grid) the oldest; else shared fairly between users.
        choice = None
        if room is None:
            old = await take(
                session, READY_COLUMNS, queued, limit=DISPATCH_BATCH, leave=being_handed
            )
        else:
            share = memory.shares.setdefault(name, FairShare())
            choice = await _choose(
                platform.settings, session, share, name, room, queued, new, being_handed
            )
            picked = {*choice.chosen, *choice.held_back} - {row.id for row in new}
            # Chosen from a read without locks: still in the queue once locked, or another
            # worker took it meanwhile (on PostgreSQL the lock reads the row as committed).
            old = await take(
                session, READY_COLUMNS, worker_jobs.with_ids(picked), queued,
                limit=len(picked), leave=(),
            )  # fmt: skip
        if not old and not new:
            return None
        # More than a round takes (not only more than there is room for): back at once.
        if len(new) == DISPATCH_BATCH or (room is None and len(old) == DISPATCH_BATCH):
            platform.process.wake()
        rows = [(ReadyJob(*row[:-1]), row[-1]) for row in old + new]
        before = {job.id: (job.status, job.minor_status) for job, _ in rows}
        limit = platform.settings.max_running_jobs_per_user
        ready = queue_states(session, name, rows, choice, limit)
        specs = []
        if ready:
            uploads_data = backend.uploads_data
            specs = await specs_for(
                platform, session, memory, ready,
                uploads_data=uploads_data, last_before_start=last_before_start,
            )  # fmt: skip
        jobs = [job for job, _ in rows if (job.status, job.minor_status) != before[job.id]]
        await store_rows(session, jobs)
        if specs:
            await worker_jobs.claim(session, [spec.job_id for spec in specs], slot)
    return Dispatched(list(jobs), specs)


def queue_states(
    session: AsyncSession,
    name: str,
    rows: Sequence[tuple[ReadyJob, ImageStatus | None]],
    choice: Choice | None,
    user_limit: int,
) -> list[ReadyJob]:
    """Each job (with its image's status) checked, then failed if its image's build ended
    without an image, Waiting for its image while it builds, else Waiting for a slot of the
    backend (or held back by its owner's limit); the jobs to hand over now, in the order
    ``choice`` put them (None: all, as they come)."""
    ready: list[ReadyJob] = []
    for job, image_status in rows:
        if job.status == JobStatus.RECEIVED.value:
            transition(session, job, JobStatus.CHECKING, minor="JobSanity", source="JobSanity")
        if image_status in (FAILED, CANCELLED):
            transition(
                session, job, JobStatus.FAILED, minor=IMAGE_ENDED[image_status],
                source="JobScheduling",
            )  # fmt: skip
        elif image_status == BUILDING:
            transition(
                session, job, JobStatus.WAITING, minor=WAITING_FOR_IMAGE, source="JobScheduling"
            )
        else:
            minor = f"Waiting for a {name} slot"
            if choice is not None and job.id in choice.held_back:
                minor = user_limit_minor(user_limit)
            if job.minor_status == minor:  # queued already, or a failed hand-over
                pass
            elif job.status == JobStatus.WAITING.value:  # image ready, or a user limit
                source = "Images" if job.minor_status == WAITING_FOR_IMAGE else "JobScheduling"
                record_status(session, job, JobStatus.WAITING, minor=minor, source=source)
            else:
                transition(session, job, JobStatus.WAITING, minor=minor, source="JobScheduling")
            if choice is None or job.id in choice.chosen:
                ready.append(job)
    if choice is not None:  # in the order chosen: the backend starts them in it
        order = {job_id: n for n, job_id in enumerate(choice.chosen)}
        ready.sort(key=lambda job: order[job.id])
    return ready


async def _choose(
    settings: OperationSettings,
    session: AsyncSession,
    share: FairShare,
    name: str,
    room: int,
    queued: ColumnElement[bool],
    new: Sequence[Any],
    being_handed: set[int],
) -> Choice:
    """The jobs of the queue (and the new ones) to hand over, shared between users."""
    room = min(room, DISPATCH_BATCH)
    waiting = await heads(session, queued, per_owner=room, leave=being_handed)
    # A new job whose image is ready joins the queue now; its owner may be next.
    waiting += [(row.id, row.owner_id) for row in new if row[-1] not in (FAILED, BUILDING)]
    owners = {owner for _, owner in waiting}
    held = await held_by_owner(session, name, owners, being_handed)
    limit = settings.max_running_jobs_per_user
    return share.choose(waiting, room, held, limit)


async def record_hand_over(db: Database, name: str, refs: dict[str, BackendRef]) -> list[JobRow]:
    """The backend's refs of the jobs it took, by uuid; a job it refused fails, with why
    (unless a user ended it meanwhile). The JDL the backend was sent is the job's, as its
    page shows it."""
    async with db.writing() as session:
        jobs = await rows_where(session, worker_jobs.with_uuids(refs))
        for job in jobs:
            ref = refs[job.uuid]
            if ref.error is not None:
                if job.status == JobStatus.WAITING.value and job.backend_ref is None:
                    minor = f"Refused by {name}: {ref.error}"
                    transition(session, job, JobStatus.FAILED, minor=minor, source=name)
                continue
            job.backend_ref = ref.ref
            job.backend_state = {**job.backend_state, **ref.state}
        await store_rows(session, jobs)
        sent = [{"id": j.id, "jdl": jdl} for j in jobs if (jdl := refs[j.uuid].jdl) is not None]
        await worker_jobs.store_jdls(session, sent)
    return jobs


async def end_late(name: str, backend: Backend, jobs: Sequence[JobRow]) -> None:
    """Jobs killed or deleted while being handed over: the backend has them now, so it is
    told too (a backend that cannot be told: their copies there end on their own)."""
    for status in TOLD_ENDS:
        late = [backend_ref(j) for j in jobs if j.status == status.value and j.backend_ref]
        if late:
            try:
                await end_in_backend(backend, status, late)
            except BackendError as exc:
                log.warning("%d %s jobs not told to %s: %s", len(late), status, name, exc)
