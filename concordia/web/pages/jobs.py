"""The job monitor (filters, counts per status, bulk actions, live rows) and a job's page."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from typing import Any, get_args
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.datastructures import QueryParams

from concordia.core.states import KILLABLE_STATES, RESCHEDULABLE_STATES, JobStatus
from concordia.logic import datalake_views, job_actions, monitor, outputs
from concordia.logic import jobs as job_logic
from concordia.logic.errors import DomainError, Invalid
from concordia.logic.job_models import BulkAction, BulkOutcome
from concordia.logic.monitor import JobFilter, SortKey
from concordia.web.deps import PlatformDep, RowId
from concordia.web.pages.common import PageUser, page_number, read_form, render

log = logging.getLogger(__name__)
router = APIRouter()
PAGE_SIZES = (50, 100, 200)
OUTPUTS_PER_PAGE = 100  # outputs on a job's page: a job may leave thousands
SORTS: tuple[SortKey, ...] = get_args(SortKey)
ACTIONS: tuple[BulkAction, ...] = get_args(BulkAction)
STATUSES = [s.value for s in JobStatus]
FLASH = "jobs_flash"


@dataclass
class MonitorQuery:
    """The monitor's GET parameters, checked; links keep them (bookmarkable)."""

    where: JobFilter
    page: int
    per_page: int
    sort: SortKey
    params: dict[str, list[str]]

    @property
    def query(self) -> str:
        return urlencode(self.params, doseq=True)

    def link(self, **changes: object) -> str:
        """This query with some parameters changed; any change but paging restarts at page 1."""
        params = {k: v for k, v in self.params.items() if k != "page" or "page" in changes}
        for name, value in changes.items():
            if value is None:
                params.pop(name, None)
            else:
                params[name] = [str(value)]
        return "/jobs?" + urlencode(params, doseq=True)

    def sort_link(self, column: str) -> tuple[str, str]:
        """The header link for a column and its aria-sort value."""
        if self.sort == column:
            return self.link(sort=f"-{column}"), "ascending"
        if self.sort == f"-{column}":
            return self.link(sort=column), "descending"
        first = column if column in ("name", "status") else f"-{column}"
        return self.link(sort=first), "none"


def monitor_query(request: Request) -> MonitorQuery:
    return query_of(request.query_params)


def query_of(raw: QueryParams) -> MonitorQuery:
    """The monitor's parameters from a query string, checked (Invalid names each bad one)."""
    params = {k: [v for v in raw.getlist(k) if v.strip()] for k in raw}
    params = {k: v for k, v in params.items() if v}
    one = {k: v[-1].strip() for k, v in params.items()}
    problems: list[tuple[str, str]] = []

    def number(name: str, default: int) -> int:
        if name in one and not one[name].isdigit():
            problems.append((name, "must be a whole number"))
        return int(one[name]) if one.get(name, "").isdigit() else default

    def day(name: str) -> date | None:
        try:
            return date.fromisoformat(one[name]) if name in one else None
        except ValueError:
            problems.append((name, "must be a date (YYYY-MM-DD)"))
            return None

    statuses = [s for v in params.get("status", []) for s in v.split(",") if s]
    bad = [s for s in statuses if s not in STATUSES]
    if bad:
        problems.append(("status", f"unknown status {bad[0]!r}"))
    submission = number("submission", 0) or None
    page, per_page = max(number("page", 1), 1), number("per_page", PAGE_SIZES[0])
    if per_page not in PAGE_SIZES:
        problems.append(("per_page", f"must be one of {', '.join(map(str, PAGE_SIZES))}"))
    sort = next((s for s in SORTS if s == one.get("sort", "-updated")), None)
    if sort is None:
        problems.append(("sort", f"must be one of {', '.join(SORTS)}"))
    created = day("created_from"), day("created_to")
    if problems:
        raise Invalid.many(problems, location="query")
    where = JobFilter(
        statuses=statuses,
        submission=submission,
        application=one.get("application"),
        text=one.get("q"),
        created_from=created[0],
        created_to=created[1],
    )
    return MonitorQuery(where, page, per_page, sort or "-updated", params)


async def _monitor(request: Request, platform: PlatformDep, user_id: int) -> dict[str, Any]:
    query = monitor_query(request)
    async with platform.reading() as session:
        found, counts = await monitor.monitor_jobs(
            session, user_id, query.where, page=query.page, per_page=query.per_page, sort=query.sort
        )
    pages = max(1, -(-found.total // query.per_page), found.page if found.more else 1)
    return {
        "q": query,
        "found": found,
        "counts": counts.counts,
        "more": counts.more,
        "pages": pages,
    }


def flash_of(outcome: BulkOutcome, asked: int, **more: str) -> dict[str, Any]:
    """The report of an action on jobs shown once on the next page (jobs_flash.html): how
    many of those asked for it took, and why the first ten refused were refused."""
    return {
        "action": outcome.action,
        "asked": asked,
        "succeeded": len(outcome.succeeded),
        "refused": outcome.refused[:10],
        "more": max(0, len(outcome.refused) - 10),
        "notice": outcome.notice,
        **more,
    }


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request, platform: PlatformDep, user: PageUser) -> HTMLResponse:
    context = await _monitor(request, platform, user.user_id)
    apps = sorted({*platform.catalog.apps, *filter(None, [context["q"].where.application])})
    flash = request.session.pop(FLASH, None)
    return render(
        request, "jobs.html", statuses=STATUSES, applications=apps, flash=flash, **context
    )


@router.get("/jobs/table", response_class=HTMLResponse)
async def jobs_table(request: Request, platform: PlatformDep, user: PageUser) -> HTMLResponse:
    return render(request, "jobs_table.html", **await _monitor(request, platform, user.user_id))


@router.get("/jobs/counts", response_class=HTMLResponse)
async def jobs_counts(request: Request, platform: PlatformDep, user: PageUser) -> HTMLResponse:
    query = monitor_query(request)
    async with platform.reading() as session:
        counts = await monitor.count_by_status(session, user.user_id, query.where)
    return render(request, "jobs_counts.html", q=query, counts=counts.counts, more=counts.more)


@router.post("/jobs/bulk")
async def jobs_bulk(request: Request, platform: PlatformDep, user: PageUser) -> RedirectResponse:
    form = await read_form(request)
    action = next((a for a in ACTIONS if a == form.get("action")), None)
    if action is None:
        raise Invalid("action", f"must be one of {', '.join(ACTIONS)}", location="form")
    back = str(form.get("back", ""))
    if form.get("matching") == "1":  # every job matching the filters, not only those shown
        async with platform.reading() as session:
            where = query_of(QueryParams(back)).where
            ids = await monitor.matching_ids(session, user.user_id, where)
    else:
        ids = [int(v) for v in form.getlist("job") if isinstance(v, str) and v.isdigit()]
    outcome = await job_actions.bulk_action(platform, user.user_id, action, ids)
    request.session[FLASH] = flash_of(outcome, len(ids))
    back = urlencode(parse_qsl(back))  # a query string, nothing else
    return RedirectResponse(f"/jobs?{back}" if back else "/jobs", status_code=303)


@router.get("/jobs/{job_id:int}", response_class=HTMLResponse)
async def job_page(
    job_id: RowId, request: Request, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    context = await _job_parts(job_id, request, platform, user.user_id)
    job = context.pop("job")
    jobs_dir, limit = platform.settings.jobs_dir, outputs.PREVIEW_BYTES
    logs = {s: outputs.read_log(jobs_dir, job, s, 0, limit) for s in ("stdout", "stderr")}
    return render(request, "job.html", logs=logs, flash=request.session.pop(FLASH, None), **context)


@router.get("/jobs/{job_id:int}/parts", response_class=HTMLResponse)
async def job_parts(
    job_id: RowId, request: Request, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    """History and outputs again, swapped in when the job changes (htmx out-of-band)."""
    context = await _job_parts(job_id, request, platform, user.user_id)
    return render(request, "job_parts.html", oob=True, **context)


async def _job_parts(
    job_id: int, request: Request, platform: PlatformDep, user_id: int
) -> dict[str, Any]:
    page = page_number(request, "outputs_page")
    async with platform.reading() as session:
        job = await job_logic.get_owned_job(session, user_id, job_id)
        detail = await job_logic.job_detail(session, job)
    if JobStatus(job.status).is_final:
        try:
            await outputs.fetch_outputs(platform.settings, platform.backends, job)
        except DomainError as exc:  # e.g. the grid's store is down: what is here is shown
            log.warning("job %s: %s", job_id, exc.message)
    found = await platform.work.listings.call(
        user_id, outputs.list_outputs, platform.settings.jobs_dir, job, page, OUTPUTS_PER_PAGE,
        platform.settings.max_output_files + len(outputs.LOGS),
    )  # fmt: skip
    previews = await platform.work.listings.call(
        user_id, outputs.previews, platform.settings.jobs_dir, job, found.items
    )
    pages = max(1, -(-found.total // OUTPUTS_PER_PAGE))
    status = JobStatus(detail.status)
    return {
        "job": job,
        "detail": detail,
        "can_kill": status in KILLABLE_STATES,
        "can_reschedule": status.is_final and status in RESCHEDULABLE_STATES,
        "can_delete": status.is_final,
        "files": found.items,
        "outputs": {"page": page, "pages": pages, "total": found.total, "more": found.more},
        "previews": previews,
        "lake_files": await datalake_views.job_files(platform.db, user_id, job_id),
    }


@router.post("/jobs/{job_id:int}/{action}")
async def job_action(
    job_id: RowId, action: str, request: Request, platform: PlatformDep, user: PageUser
) -> RedirectResponse:
    await read_form(request)
    chosen = next((a for a in ACTIONS if a == action), None)
    if chosen is None:
        raise Invalid("action", f"must be one of {', '.join(ACTIONS)}", location="path")
    outcome = await job_actions.bulk_action(platform, user.user_id, chosen, [job_id])
    request.session[FLASH] = flash_of(outcome, 1)
    gone = chosen == "delete" and outcome.succeeded  # its page is gone with it
    return RedirectResponse("/jobs" if gone else f"/jobs/{job_id}", status_code=303)
