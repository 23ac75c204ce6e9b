"""The job monitor's statements: a user's jobs filtered, sorted, paged, counted up to a bound."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, literal, select, union_all
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db.tables import Job

#: The jobs table itself: the monitor's reads are Core queries (rows, no ORM objects), which
#: cost the server a fraction of the ORM's work per request (bench/load.py polls them).
_jobs = Job.__table__
SORT_COLUMNS = ("id", "updated", "created", "name", "status")
_COLUMN = {"updated": "updated_at", "created": "created_at"}


@dataclass(frozen=True)
class JobWhere:
    """Which of a user's jobs: checked values (the logic refused bad ones). ``statuses``
    empty: every status but ``hidden``; dates are a half-open range [from, to)."""

    owner_id: int
    statuses: tuple[str, ...] = ()
    hidden: str = ""
    submission: int | None = None
    application: str | None = None
    text: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None


def _selected(where: JobWhere, *, by_status: bool = True) -> Select[Any]:
    query = select(_jobs.c.id).where(_jobs.c.owner_id == where.owner_id)
    if by_status and where.statuses:
        query = query.where(_jobs.c.status.in_(where.statuses))
    elif by_status and where.hidden:
        query = query.where(_jobs.c.status != where.hidden)
    if where.submission is not None:
        query = query.where(_jobs.c.submission_id == where.submission)
    if where.application:
        query = query.where(_jobs.c.application == where.application)
    if where.text:
        pattern = where.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(_jobs.c.name.ilike(f"%{pattern}%", escape="\\"))
    if where.created_from:
        query = query.where(_jobs.c.created_at >= where.created_from)
    if where.created_to:
        query = query.where(_jobs.c.created_at < where.created_to)
    return query


async def page_rows(
    session: AsyncSession,
    where: JobWhere,
    columns: list[str],
    sort: str,
    *,
    page: int,
    per_page: int,
) -> list[RowMapping]:
    """One page of the jobs' ``columns``, sorted by ``sort`` ("-" first: descending; one of
    SORT_COLUMNS), then by id."""
    name = sort.lstrip("-")
    column = _jobs.c[_COLUMN.get(name, name)]
    descending = sort.startswith("-")
    order = [column.desc(), _jobs.c.id.desc()] if descending else [column, _jobs.c.id]
    query = (
        _selected(where)
        .with_only_columns(*(_jobs.c[c] for c in columns))
        .order_by(*order)
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    return list((await session.execute(query)).mappings().all())


async def count_up_to(session: AsyncSession, where: JobWhere, bound: int) -> int:
    """How many jobs match, counted up to ``bound`` + 1 at most: a count beyond the bound
    reads no more rows than the bound (a million matching rows would take tens of ms)."""
    matching = _selected(where).with_only_columns(literal(1)).limit(bound + 1).subquery()
    return int(await session.scalar(select(func.count()).select_from(matching)) or 0)


async def counts_up_to(
    session: AsyncSession, where: JobWhere, statuses: list[str], bound: int
) -> dict[str, int]:
    """Jobs per status under every filter but the status one, each counted up to ``bound``
    + 1 at most (one statement: a bounded count per status, on the owner-status index)."""
    parts = []
    for status in statuses:
        matching = (
            _selected(where, by_status=False)
            .with_only_columns(literal(1))
            .where(_jobs.c.status == status)
            .limit(bound + 1)
            .subquery()
        )
        parts.append(select(literal(status).label("status"), func.count()).select_from(matching))
    rows = (await session.execute(union_all(*parts))).all() if parts else []
    return {str(status): int(n) for status, n in rows if n}


async def ids_up_to(session: AsyncSession, where: JobWhere, most: int) -> list[int]:
    """The ids of the matching jobs in the order they were made, ``most`` at most."""
    query = _selected(where).order_by(_jobs.c.id).limit(most)
    return list(await session.scalars(query))
