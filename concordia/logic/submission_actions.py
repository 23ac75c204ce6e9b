"""What a user does to a whole submission: kill its unfinished jobs, reschedule its failed
ones, delete it, download all its outputs, one page of its jobs at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Literal

from concordia.core.states import FINAL_STATES, JobStatus
from concordia.db import submission_jobs
from concordia.logic import outputs
from concordia.logic.database import Database
from concordia.logic.job_actions import bulk_action
from concordia.logic.job_models import BulkOutcome
from concordia.logic.platform import Platform
from concordia.logic.submission_models import SubmissionJob
from concordia.logic.submission_views import owned_submission

SubmissionAction = Literal["kill", "reschedule", "delete"]
#: The jobs each action takes: kill those not finished, reschedule those that failed; a
#: delete kills the unfinished ones first, then deletes them all.
UNFINISHED = frozenset(JobStatus) - FINAL_STATES
TAKES: dict[SubmissionAction, frozenset[JobStatus]] = {
    "kill": UNFINISHED,
    "reschedule": frozenset({JobStatus.FAILED}),
    "delete": frozenset(JobStatus) - {JobStatus.DELETED},
}
#: Rows of a submission's page.
PAGE_SIZE = 100


async def act(
    platform: Platform, owner_id: int, submission_id: int, action: SubmissionAction
) -> BulkOutcome:
    """Apply ``action`` to each of the submission's jobs it takes; a job refused (and why)
    stops only that job. Another user's submission is not found."""
    ids = await _job_ids(platform.db, owner_id, submission_id, TAKES[action])
    if action != "delete":
        return await bulk_action(platform, owner_id, action, ids)
    unfinished = await _job_ids(platform.db, owner_id, submission_id, UNFINISHED)
    killed = await bulk_action(platform, owner_id, "kill", unfinished)
    deleted = await bulk_action(platform, owner_id, "delete", ids)
    return deleted.model_copy(update={"refused": killed.refused + deleted.refused})


def taken(counts: Mapping[str, int]) -> dict[SubmissionAction, int]:
    """How many jobs each action would take, from the submission's jobs per status (its
    view's counts): what a confirmation says."""
    return {
        action: sum(counts.get(status.value, 0) for status in statuses)
        for action, statuses in TAKES.items()
    }


async def jobs_page(
    db: Database, owner_id: int, submission_id: int, page: int
) -> list[SubmissionJob]:
    """One page (from 1) of the submission's jobs, in index order."""
    async with db.reading() as session:
        await owned_submission(session, owner_id, submission_id)
        rows = await submission_jobs.jobs_page(
            session, submission_id, (page - 1) * PAGE_SIZE, PAGE_SIZE
        )
    return [SubmissionJob.model_validate(row) for row in rows]


async def zip_outputs(
    platform: Platform, owner_id: int, submission_id: int
) -> AsyncIterator[bytes]:
    """The outputs of every job of the submission that has any (not deleted) as one zip,
    streamed, each job's under job-<id>/; refused as a job's zip is (413, 429)."""
    async with platform.reading() as session:
        await owned_submission(session, owner_id, submission_id)
        jobs = await submission_jobs.jobs(session, submission_id, TAKES["delete"])
    return await outputs.zip_outputs(
        platform.settings, platform.backends, platform.work, owner_id, jobs
    )


async def _job_ids(
    db: Database, owner_id: int, submission_id: int, statuses: frozenset[JobStatus]
) -> list[int]:
    async with db.reading() as session:
        await owned_submission(session, owner_id, submission_id)
        return await submission_jobs.job_ids(session, submission_id, statuses)
