"""What backends report of their jobs, stored: each job's status, minor status, exit code
and backend state, Done held as Completing while Concordia stores its data."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.backends.base import BackendRef, StatusUpdate
from concordia.core.states import InvalidTransition, JobStatus
from concordia.db import worker_jobs
from concordia.db.job_rows import JobRow, rows_where, store_rows
from concordia.logic import datalake_uploads
from concordia.logic.database import Database
from concordia.logic.jobs import record_status, transition
from concordia.logic.process import Process

log = logging.getLogger(__name__)

#: Jobs whose news one transaction stores (per_write): a poll may bring news of thousands
#: (a grid's batch moving on), and while it is stored every other write waits: a hand-over
#: being recorded (the next jobs not sent meanwhile), a user's kill.
JOBS_PER_WRITE = 200


async def followed(
    db: Database, process: Process, backend: str, statuses: Collection[JobStatus]
) -> dict[str, BackendRef]:
    """The refs of this worker's jobs in one of ``statuses`` that the backend holds, by uuid:
    those whose news it reports."""
    async with db.reading() as session:
        rows = await worker_jobs.followed(session, backend, statuses, process.lease.slot)
    return {u: BackendRef(uuid=u, ref=r, state=s) for u, r, s in rows}


def once_each(updates: Iterable[StatusUpdate]) -> list[StatusUpdate]:
    """The news, each once: a backend that keeps its history (a grid) may tell kept news
    again. One piece of news is a job's status and minor status at a time."""
    return list({_news_key(u): u for u in updates}.values())


def per_write(updates: list[StatusUpdate], jobs: int | None = None) -> list[list[StatusUpdate]]:
    """The updates in groups of at most ``jobs`` jobs (JOBS_PER_WRITE), each stored in a
    transaction of its own: each job's updates in one group, in their order."""
    size = jobs or JOBS_PER_WRITE
    group_of: dict[str, int] = {}
    groups: list[list[StatusUpdate]] = []
    for update in updates:
        index = group_of.setdefault(update.uuid, len(group_of) // size)
        if index == len(groups):
            groups.append([])
        groups[index].append(update)
    return groups


def _news_key(update: StatusUpdate) -> tuple[str, str, str, datetime]:
    return (update.uuid, update.status.value, update.minor_status, update.timestamp)


async def store_updates(
    session: AsyncSession, backend: str, slot: int, updates: list[StatusUpdate]
) -> tuple[dict[str, JobRow], list[int]]:
    """The updates of the jobs of the worker in ``slot``, stored; the rows they changed, by
    uuid, and the ids of the jobs held Completing while their data go to the data lake."""
    # A job adopted by another worker (its row no longer names this one's slot) is not this
    # worker's to record, as a deleted job is not.
    found = await rows_where(session, worker_jobs.of_worker(slot, {u.uuid for u in updates}))
    rows = {row.uuid: row for row in found}
    with_data: set[int] = set()
    # Concordia stores the data of these jobs: Done after that (one query, only in a round
    # where some job ended well).
    done = {u.uuid for u in updates if u.status is JobStatus.DONE}
    if done:
        ended = {r.submission_id for r in found if r.uuid in done}
        with_data = await datalake_uploads.with_data(session, ended)
    held: list[int] = []
    for update in updates:
        row = rows.get(update.uuid)
        if row is None:
            continue
        if update.status is JobStatus.DONE and row.submission_id in with_data:
            update = update.model_copy(
                update={"status": JobStatus.COMPLETING, "source": datalake_uploads.SOURCE,
                        "minor_status": datalake_uploads.UPLOADING}
            )  # fmt: skip
            held.append(row.id)
        _apply(session, backend, row, update)
    await store_rows(session, found)
    return rows, held


def _apply(session: AsyncSession, backend: str, job: JobRow, update: StatusUpdate) -> None:
    # The same status again is news of its minor status (DIRAC logs those too).
    same = JobStatus(job.status) == update.status
    try:
        (record_status if same else transition)(
            session,
            job,
            update.status,
            minor=update.minor_status,
            app_status=update.application_status,
            source=update.source or f"{backend} backend",
            at=update.timestamp,
        )
    except InvalidTransition as exc:
        # A user's kill or delete may overtake what the backend saw; anything else is a
        # backend bug worth shouting about, but never worth stopping for.
        level = logging.INFO if JobStatus(job.status).is_final else logging.ERROR
        log.log(level, "job %s: update ignored: %s", job.id, exc)
        return
    job.backend_state = {**job.backend_state, **update.state}
    if update.exit_code is not None:
        job.exit_code = update.exit_code
