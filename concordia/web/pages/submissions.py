"""A submission's page: its parameters, progress and jobs (a page at a time), followed live,
and what can be done to it as a whole."""

from __future__ import annotations

from typing import get_args

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from concordia.logic import submission_actions, submission_views
from concordia.logic.errors import Invalid
from concordia.logic.submission_actions import PAGE_SIZE, SubmissionAction
from concordia.web.deps import PlatformDep, RowId
from concordia.web.pages.common import PageUser, page_number, read_form, render
from concordia.web.pages.jobs import flash_of

router = APIRouter()

#: The buckets of the progress numbers and the status bar, in the order shown.
BUCKETS = ("done", "running", "waiting", "failed", "killed")
ACTIONS: tuple[SubmissionAction, ...] = get_args(SubmissionAction)
FLASH = "submission_flash"


@router.get("/submissions/{submission_id:int}", response_class=HTMLResponse)
async def submission_page(
    request: Request, submission_id: RowId, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    page = page_number(request)
    view = await submission_views.get_submission(platform.db, user.user_id, submission_id)
    jobs = await submission_actions.jobs_page(platform.db, user.user_id, submission_id, page)
    app = platform.catalog.apps.get(view.application)
    pages = max(1, -(-view.job_count // PAGE_SIZE))
    takes = submission_actions.taken(view.counts)
    return render(
        request, "submission.html", s=view, jobs=jobs, app=app, buckets=BUCKETS, page=page,
        pages=pages, takes=takes, flash=request.session.pop(FLASH, None),
    )  # fmt: skip


@router.get("/submissions/{submission_id:int}/progress", response_class=HTMLResponse)
async def submission_progress(
    request: Request, submission_id: RowId, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    view = await submission_views.get_submission(platform.db, user.user_id, submission_id)
    return render(request, "submission_progress.html", s=view, buckets=BUCKETS)


@router.get("/submissions/{submission_id:int}/rows", response_class=HTMLResponse)
async def submission_rows(
    request: Request, submission_id: RowId, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    page = page_number(request)
    jobs = await submission_actions.jobs_page(platform.db, user.user_id, submission_id, page)
    return render(request, "submission_rows.html", jobs=jobs)


@router.post("/submissions/{submission_id:int}/{action}")
async def submission_action(
    submission_id: RowId, action: str, request: Request, platform: PlatformDep, user: PageUser
) -> RedirectResponse:
    await read_form(request)
    chosen = next((a for a in ACTIONS if a == action), None)
    if chosen is None:
        raise Invalid("action", f"must be one of {', '.join(ACTIONS)}", location="path")
    view = await submission_views.get_submission(platform.db, user.user_id, submission_id)
    asked = submission_actions.taken(view.counts)[chosen]
    outcome = await submission_actions.act(platform, user.user_id, submission_id, chosen)
    flash = flash_of(outcome, asked, scope="submission")
    if chosen == "delete" and not outcome.refused:  # nothing is left to show
        request.session["jobs_flash"] = flash
        return RedirectResponse("/jobs", status_code=303)
    request.session[FLASH] = flash
    return RedirectResponse(f"/submissions/{submission_id}", status_code=303)
