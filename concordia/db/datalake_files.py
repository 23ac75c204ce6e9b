"""Queries of datalake_files: a job's files stored in the data lake."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db.tables import DatalakeFile, Job, Submission, User


async def of_job(session: AsyncSession, job_id: int) -> Sequence[DatalakeFile]:
    """The job's files in the data lake, by name."""
    rows = await session.scalars(
        select(DatalakeFile).where(DatalakeFile.job_id == job_id).order_by(DatalakeFile.name)
    )
    return rows.all()


async def named(session: AsyncSession, job_id: int, name: str) -> DatalakeFile | None:
    """One of the job's files by its name in the data lake."""
    row: DatalakeFile | None = await session.scalar(
        select(DatalakeFile).where(DatalakeFile.job_id == job_id, DatalakeFile.name == name)
    )
    return row


async def record(
    session: AsyncSession,
    job_id: int,
    *,
    scope: str,
    name: str,
    size: int,
    adler32: str,
    rse: str,
    state: str,
) -> None:
    """Record a file Rucio has; a file recorded already (an upload resumed after a crash)
    is brought up to date, never recorded twice."""
    row = await session.scalar(
        select(DatalakeFile).where(DatalakeFile.scope == scope, DatalakeFile.name == name)
    )
    if row is None:
        session.add(
            DatalakeFile(
                job_id=job_id, scope=scope, name=name, bytes=size, adler32=adler32, rse=rse,
                state=state,
            )
        )  # fmt: skip
    else:
        row.bytes, row.adler32, row.rse, row.state = size, adler32, rse, state


async def count_of_jobs(session: AsyncSession, job_ids: Sequence[int]) -> int:
    """How many files of these jobs are in the data lake."""
    rows = await session.scalars(select(DatalakeFile.id).where(DatalakeFile.job_id.in_(job_ids)))
    return len(rows.all())


async def submissions_with_datalake(session: AsyncSession, submission_ids: set[int]) -> set[int]:
    """Of these submissions, those whose data go to the data lake."""
    if not submission_ids:
        return set()
    rows = await session.scalars(
        select(Submission.id).where(
            Submission.id.in_(submission_ids), Submission.datalake_rse.is_not(None)
        )
    )
    return set(rows)


async def held_jobs(session: AsyncSession, status: str, minor: str, slot: int) -> list[int]:
    """The worker's jobs in this status and minor status (held for their uploads)."""
    rows = await session.scalars(
        select(Job.id).where(Job.status == status, Job.minor_status == minor, Job.worker == slot)
    )
    return list(rows)


async def submissions_of(session: AsyncSession, submission_ids: set[int]) -> Sequence[Submission]:
    """Of these submissions, those whose data go to the data lake."""
    if not submission_ids:
        return []
    rows = await session.scalars(
        select(Submission).where(
            Submission.id.in_(submission_ids), Submission.datalake_rse.is_not(None)
        )
    )
    return rows.all()


async def uploading_job(session: AsyncSession, job_uuid: str) -> tuple[Job, Submission, str] | None:
    """A job by its uuid with its submission and its owner's username (the subject of its
    upload tokens); None: no such job."""
    row = (
        await session.execute(
            select(Job, Submission, User.username)
            .join(Submission, Submission.id == Job.submission_id)
            .join(User, User.id == Job.owner_id)
            .where(Job.uuid == job_uuid)
        )
    ).first()
    return None if row is None else (row[0], row[1], row[2])
