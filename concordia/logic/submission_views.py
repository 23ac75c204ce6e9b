"""Submissions read back: the caller's own, their jobs counted by status, their progress."""

from __future__ import annotations

from collections import Counter

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.states import JobStatus
from concordia.db import submission_jobs as job_queries
from concordia.db.tables import Submission
from concordia.logic.database import Database
from concordia.logic.datalake_choice import stored_choice
from concordia.logic.errors import NotFound
from concordia.logic.submission_models import Progress, SubmissionView


async def owned_submission(session: AsyncSession, owner_id: int, submission_id: int) -> Submission:
    """The caller's submission; another user's is 'not found', as if it did not exist, and
    so is one whose jobs are all deleted (deleting a submission deletes its jobs)."""
    submission = await session.get(Submission, submission_id)
    if submission is None or submission.owner_id != owner_id:
        raise NotFound(f"no submission {submission_id}")
    if not await job_queries.any_left(session, submission_id):
        raise NotFound(f"no submission {submission_id}: it was deleted")
    return submission


async def get_submission(db: Database, owner_id: int, submission_id: int) -> SubmissionView:
    async with db.reading() as session:
        submission = await owned_submission(session, owner_id, submission_id)
        rows = await job_queries.status_counts(session, submission_id)
        counts = {status: n for status, n, _ in rows}
        handed_over = sum(taken for _, _, taken in rows)
        job_ids = await job_queries.all_job_ids(session, submission_id)
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
        datalake=stored_choice(submission),
    )


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
