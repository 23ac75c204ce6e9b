"""The one way a kill or a delete reaches a backend, whoever asks: a user, a hand-over that
ended after it, a web process that could not stop the job, a worker adopting lost jobs."""

from __future__ import annotations

from concordia.backends.base import Backend, BackendRef, StatusUpdate
from concordia.core.states import JobStatus
from concordia.db import worker_jobs
from concordia.logic.database import Database

#: The ends a user records that a backend must be told of, in the order they are told.
TOLD_ENDS = (JobStatus.KILLED, JobStatus.DELETED)


async def end_in_backend(
    backend: Backend, status: JobStatus, refs: list[BackendRef]
) -> list[StatusUpdate]:
    """Tell the backend its jobs were killed (``status`` Killed) or deleted (Deleted). A
    kill returns the jobs that had ended there on their own already."""
    if status is JobStatus.KILLED:
        return await backend.kill(refs)
    await backend.delete(refs)
    return []


async def end_recorded(db: Database, backend: Backend, followed: dict[str, BackendRef]) -> None:
    """Of the jobs ``followed`` in a backend that runs them in this process, those a user
    killed or deleted in a web process (which recorded it and could not stop them): stopped
    here, and followed no more."""
    async with db.reading() as session:
        found = await worker_jobs.statuses_among(session, followed, TOLD_ENDS)
    for status in TOLD_ENDS:
        refs = [followed.pop(uuid) for uuid, now in found if now == status.value]
        if refs:
            await end_in_backend(backend, status, refs)
