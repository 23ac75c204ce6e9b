"""The query behind grid image links: which image a job runs in, and whether it is over."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db.tables import Job, Submission


async def job_image(session: AsyncSession, job_uuid: str) -> tuple[str | None, str] | None:
    """(the image id of the job's submission, the job's status); None: no such job."""
    row = (
        await session.execute(
            select(Submission.image_id, Job.status)
            .join(Submission, Submission.id == Job.submission_id)
            .where(Job.uuid == job_uuid)
        )
    ).first()
    return None if row is None else (row[0], row[1])
