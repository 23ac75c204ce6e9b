"""The jobs table's rows as status changes, hand-overs and dispatch rounds read and write
them: lighter than ORM Jobs, read locked and written back in one statement."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db.tables import Job


@dataclass
class JobRow:
    """The fields of a job that status changes and hand-overs read and write: lighter than an
    ORM Job (no parameters, argv or JDL), and written back in one statement (store_rows)
    where ORM objects would cost their bookkeeping per job; the reconciler's rounds and a
    big submission handle hundreds of jobs at once."""

    id: int
    uuid: str
    owner_id: int
    submission_id: int
    status: str
    minor_status: str
    application_status: str
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    exit_code: int | None
    backend_ref: str | None
    backend_state: dict[str, Any]


ROW_FIELDS = tuple(f.name for f in fields(JobRow))
ROW_COLUMNS = tuple(getattr(Job, name) for name in ROW_FIELDS)


@dataclass
class ReadyJob(JobRow):
    """A job being dispatched: its row and what its backend needs of it."""

    name: str
    argv: list[str]
    jdl: str
    reschedule_count: int
    index: int


READY_COLUMNS = (*ROW_COLUMNS, Job.name, Job.argv, Job.jdl, Job.reschedule_count, Job.index)


async def rows_where(session: AsyncSession, *where: ColumnElement[bool]) -> list[JobRow]:
    """The rows, locked until the transaction ends (PostgreSQL; SQLite's writers are one at a
    time): read to be changed, they must not change in another process meanwhile."""
    query = select(*ROW_COLUMNS).where(*where).order_by(Job.id).with_for_update()
    result = await session.execute(query)
    return [JobRow(*row) for row in result.all()]


async def store_rows(session: AsyncSession, rows: Iterable[JobRow]) -> None:
    """One UPDATE by primary key for all the rows (a subclass's extra fields stay out)."""
    values = [{name: getattr(row, name) for name in ROW_FIELDS} for row in rows]
    if values:
        await session.execute(update(Job), values)
