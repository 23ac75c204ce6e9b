"""A submission's page: its parameters, progress and jobs, followed live."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from concordia.logic import submissions
from concordia.web.deps import PlatformDep, RowId
from concordia.web.pages.common import PageUser, render

router = APIRouter()

#: The buckets of the progress numbers and the status bar, in the order shown.
BUCKETS = ("done", "running", "waiting", "failed", "killed")


@router.get("/submissions/{submission_id}", response_class=HTMLResponse)
async def submission_page(
    request: Request, submission_id: RowId, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    view = await submissions.get_submission(platform, user.user_id, submission_id)
    jobs = await submissions.submission_jobs(platform, user.user_id, submission_id)
    app = platform.catalog.apps.get(view.application)
    return render(request, "submission.html", s=view, jobs=jobs, app=app, buckets=BUCKETS)


@router.get("/submissions/{submission_id}/progress", response_class=HTMLResponse)
async def submission_progress(
    request: Request, submission_id: RowId, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    view = await submissions.get_submission(platform, user.user_id, submission_id)
    return render(request, "submission_progress.html", s=view, buckets=BUCKETS)


@router.get("/submissions/{submission_id}/rows", response_class=HTMLResponse)
async def submission_rows(
    request: Request, submission_id: RowId, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    jobs = await submissions.submission_jobs(platform, user.user_id, submission_id)
    return render(request, "submission_rows.html", jobs=jobs)
