"""The job monitor's rules: a user's jobs filtered, sorted, paged, and counted by status."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.states import JobStatus
from concordia.db import job_monitor
from concordia.db.job_monitor import JobWhere
from concordia.logic.errors import Invalid
from concordia.logic.job_models import JobSummary

SortKey = Literal[
    "id", "-id", "updated", "-updated", "created", "-created", "name", "-name", "status", "-status"
]
#: Jobs counted at most for a total or a status: beyond it the monitor says "more than", as
#: counting a collaboration's million jobs would make every page wait for it.
COUNTED = 10_000
#: Jobs one action on "every job matching the filters" takes at most.
MOST_MATCHING = 100_000
_ORDER = [s.value for s in JobStatus]


class JobPage(BaseModel):
    items: list[JobSummary]
    #: The jobs matching, counted up to COUNTED; ``more``: there are more than that.
    total: int
    page: int
    per_page: int
    more: bool = False


class StatusCounts(BaseModel):
    """Jobs per status, each counted up to COUNTED; ``more`` names those beyond it."""

    counts: dict[str, int]
    more: list[str] = []


class JobFilter(BaseModel):
    """What the job monitor narrows by; dates are inclusive, in UTC."""

    statuses: list[str] = []
    submission: int | None = None
    application: str | None = None
    text: str | None = None
    created_from: date | None = None
    created_to: date | None = None


def _where(owner_id: int, where: JobFilter) -> JobWhere:
    """The filter as the database takes it; Invalid for an unknown status or dates the wrong
    way round. Deleted jobs are shown only when asked for."""
    unknown = [s for s in where.statuses if s not in _ORDER]
    if unknown:
        raise Invalid("status", f"unknown status {unknown[0]!r}", location="query")
    if where.created_from and where.created_to and where.created_from > where.created_to:
        raise Invalid("created_to", "must not be before created_from", location="query")
    return JobWhere(
        owner_id=owner_id,
        statuses=tuple(where.statuses),
        hidden=JobStatus.DELETED.value,
        submission=where.submission,
        application=where.application,
        text=where.text,
        created_from=_midnight(where.created_from),
        created_to=_midnight(where.created_to + timedelta(days=1) if where.created_to else None),
    )


def _midnight(day: date | None) -> datetime | None:
    return datetime.combine(day, time(), UTC) if day else None


async def list_jobs(
    session: AsyncSession,
    owner_id: int,
    where: JobFilter,
    *,
    page: int = 1,
    per_page: int = 50,
    sort: SortKey = "-updated",
) -> JobPage:
    """One page of a user's jobs with their total (counted up to COUNTED)."""
    checked = _where(owner_id, where)
    items = await _page_items(session, checked, page, per_page, sort)
    if len(items) < per_page and (items or page == 1):
        # The last page: its exact total follows from it, with no count of the matching rows.
        total = (page - 1) * per_page + len(items)
        return JobPage(items=items, total=total, page=page, per_page=per_page)
    counted = await job_monitor.count_up_to(session, checked, COUNTED)
    more = counted > COUNTED
    return JobPage(
        items=items, total=min(counted, COUNTED), page=page, per_page=per_page, more=more
    )


async def monitor_jobs(
    session: AsyncSession,
    owner_id: int,
    where: JobFilter,
    *,
    page: int = 1,
    per_page: int = 50,
    sort: SortKey = "-updated",
) -> tuple[JobPage, StatusCounts]:
    """The job monitor's page and its counts per status: the total is the sum of the
    counts of the statuses shown, not another count over the table."""
    counts = await count_by_status(session, owner_id, where)
    shown = set(where.statuses or [s for s in counts.counts if s != JobStatus.DELETED.value])
    total = sum(counts.counts.get(s, 0) for s in shown)
    items = await _page_items(session, _where(owner_id, where), page, per_page, sort)
    more = any(s in shown for s in counts.more)
    found = JobPage(items=items, total=total, page=page, per_page=per_page, more=more)
    return found, counts


async def matching_ids(session: AsyncSession, owner_id: int, where: JobFilter) -> list[int]:
    """The ids of every job matching the filters (the monitor's "select all matching"), in
    the order they were made, MOST_MATCHING at most."""
    return await job_monitor.ids_up_to(session, _where(owner_id, where), MOST_MATCHING)


async def count_by_status(session: AsyncSession, owner_id: int, where: JobFilter) -> StatusCounts:
    """Jobs per status under every filter but the status one, each up to COUNTED."""
    found = await job_monitor.counts_up_to(session, _where(owner_id, where), _ORDER, COUNTED)
    counts = {s: min(found[s], COUNTED) for s in _ORDER if s in found}
    return StatusCounts(counts=counts, more=[s for s in counts if found[s] > COUNTED])


async def _page_items(
    session: AsyncSession, where: JobWhere, page: int, per_page: int, sort: SortKey
) -> list[JobSummary]:
    columns = list(JobSummary.model_fields)
    rows = await job_monitor.page_rows(session, where, columns, sort, page=page, per_page=per_page)
    # The columns are the model's fields, typed by the table: nothing left to validate.
    return [JobSummary.model_construct(**r) for r in rows]
