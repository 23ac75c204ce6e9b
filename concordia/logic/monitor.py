"""The job monitor's queries: a user's jobs filtered, sorted, paged, and counted by status."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.states import JobStatus
from concordia.db.tables import Job
from concordia.logic.errors import Invalid
from concordia.logic.jobs import JobSummary

#: The jobs table itself: the monitor's reads are Core queries (rows, no ORM objects), which
#: cost the server a fraction of the ORM's work per request (bench/load.py polls them).
_jobs = Job.__table__

SortKey = Literal[
    "id", "-id", "updated", "-updated", "created", "-created", "name", "-name", "status", "-status"
]
_SORT_COLUMNS = {
    "id": _jobs.c.id,
    "updated": _jobs.c.updated_at,
    "created": _jobs.c.created_at,
    "name": _jobs.c.name,
    "status": _jobs.c.status,
}


class JobPage(BaseModel):
    items: list[JobSummary]
    total: int
    page: int
    per_page: int


class JobFilter(BaseModel):
    """What the job monitor narrows by; dates are inclusive, in UTC."""

    statuses: list[str] = []
    submission: int | None = None
    application: str | None = None
    text: str | None = None
    created_from: date | None = None
    created_to: date | None = None


def _filtered(owner_id: int, where: JobFilter, *, by_status: bool = True) -> Select[Any]:
    query = select(_jobs.c.id).where(_jobs.c.owner_id == owner_id)
    unknown = [s for s in where.statuses if s not in JobStatus.__members__.values()]
    if unknown:
        raise Invalid("status", f"unknown status {unknown[0]!r}", location="query")
    if by_status and where.statuses:
        query = query.where(_jobs.c.status.in_(where.statuses))
    elif by_status:
        query = query.where(_jobs.c.status != JobStatus.DELETED.value)
    if where.submission is not None:
        query = query.where(_jobs.c.submission_id == where.submission)
    if where.application:
        query = query.where(_jobs.c.application == where.application)
    if where.text:
        pattern = where.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(_jobs.c.name.ilike(f"%{pattern}%", escape="\\"))
    if where.created_from and where.created_to and where.created_from > where.created_to:
        raise Invalid("created_to", "must not be before created_from", location="query")
    if where.created_from:
        query = query.where(_jobs.c.created_at >= datetime.combine(where.created_from, time(), UTC))
    if where.created_to:
        end = datetime.combine(where.created_to + timedelta(days=1), time(), UTC)
        query = query.where(_jobs.c.created_at < end)
    return query


async def list_jobs(
    session: AsyncSession,
    owner_id: int,
    where: JobFilter,
    *,
    page: int = 1,
    per_page: int = 50,
    sort: SortKey = "-updated",
) -> JobPage:
    """One page of a user's jobs with their total; Deleted jobs only when asked for."""
    base = _filtered(owner_id, where)
    items = await _page_items(session, base, page, per_page, sort)
    if len(items) < per_page and (items or page == 1):
        # The last page: the total follows from it, with no COUNT over every matching row.
        total = (page - 1) * per_page + len(items)
    else:
        total = await session.scalar(select(func.count()).select_from(base.subquery())) or 0
    return JobPage(items=items, total=total, page=page, per_page=per_page)


async def monitor_jobs(
    session: AsyncSession,
    owner_id: int,
    where: JobFilter,
    *,
    page: int = 1,
    per_page: int = 50,
    sort: SortKey = "-updated",
) -> tuple[JobPage, dict[str, int]]:
    """The job monitor's page and its counts per status, in two queries: the total is
    the sum of the counts of the statuses shown, not a third COUNT over the table."""
    counts = await count_by_status(session, owner_id, where)
    shown = where.statuses or [s for s in counts if s != JobStatus.DELETED.value]
    total = sum(counts.get(s, 0) for s in set(shown))
    items = await _page_items(session, _filtered(owner_id, where), page, per_page, sort)
    return JobPage(items=items, total=total, page=page, per_page=per_page), counts


#: Jobs one action on "every job matching the filters" takes at most.
MOST_MATCHING = 100_000


async def matching_ids(session: AsyncSession, owner_id: int, where: JobFilter) -> list[int]:
    """The ids of every job matching the filters (the monitor's "select all matching"), in
    the order they were made."""
    query = _filtered(owner_id, where).order_by(_jobs.c.id).limit(MOST_MATCHING)
    return list(await session.scalars(query))


async def count_by_status(session: AsyncSession, owner_id: int, where: JobFilter) -> dict[str, int]:
    """Jobs per status under every filter but the status one (one GROUP BY)."""
    query = (
        _filtered(owner_id, where, by_status=False)
        .with_only_columns(_jobs.c.status, func.count())
        .group_by(_jobs.c.status)
    )
    rows = (await session.execute(query)).all()
    order = [s.value for s in JobStatus]
    return {s: n for s, n in sorted(rows, key=lambda row: order.index(row[0]))}


async def _page_items(
    session: AsyncSession, base: Select[Any], page: int, per_page: int, sort: SortKey
) -> list[JobSummary]:
    column = _SORT_COLUMNS[sort.lstrip("-")]
    order = [column.desc(), _jobs.c.id.desc()] if sort.startswith("-") else [column, _jobs.c.id]
    summary_columns = [_jobs.c[f] for f in JobSummary.model_fields]
    query = (
        base.with_only_columns(*summary_columns)
        .order_by(*order)
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    rows = (await session.execute(query)).mappings().all()
    # The columns are the model's fields, typed by the table: nothing left to validate.
    return [JobSummary.model_construct(**r) for r in rows]
