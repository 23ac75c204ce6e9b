"""/submissions: create a batch of jobs (or see what it would create), follow its progress,
act on it as a whole."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from concordia.logic import submission_actions, submission_views, submissions
from concordia.logic.job_models import BulkOutcome
from concordia.logic.submission_models import SubmissionPlan, SubmissionRequest, SubmissionView
from concordia.web.api.media import RAW, raw
from concordia.web.deps import CurrentUser, PlatformDep, RowId
from concordia.web.errors import AUTHENTICATED, BODY, CHANGES, documented

router = APIRouter(tags=["submissions"], responses=AUTHENTICATED)


DRY_RUN: dict[int | str, dict[str, Any]] = {
    200: {
        "model": SubmissionPlan,
        "description": "dry_run=true: every check passed; the jobs and JDLs it would create. "
        "Nothing was stored and no image is built.",
    }
}
DryRun = Annotated[
    bool, Query(description="Check everything and return the jobs it would create; store nothing.")
]


@router.post(
    "/submissions",
    status_code=201,
    responses=CHANGES | documented(404, 409, 429) | BODY | DRY_RUN,
)
async def create_submission(
    request: SubmissionRequest,
    platform: PlatformDep,
    user: CurrentUser,
    response: Response,
    dry_run: DryRun = False,
) -> SubmissionView | SubmissionPlan:
    if dry_run:
        response.status_code = 200
        return await submissions.dry_run(platform, user, request)
    return await submissions.submit_batch(platform, user, request)


@router.get("/submissions/{submission_id}", responses=documented(404))
async def get_submission(
    submission_id: RowId, platform: PlatformDep, user: CurrentUser
) -> SubmissionView:
    return await submission_views.get_submission(platform.db, user.user_id, submission_id)


@router.post("/submissions/{submission_id}/kill", responses=CHANGES | documented(404))
async def kill_submission(
    submission_id: RowId, platform: PlatformDep, user: CurrentUser
) -> BulkOutcome:
    """Kill every unfinished job of the submission."""
    return await submission_actions.act(platform, user.user_id, submission_id, "kill")


@router.post("/submissions/{submission_id}/reschedule", responses=CHANGES | documented(404))
async def reschedule_submission(
    submission_id: RowId, platform: PlatformDep, user: CurrentUser
) -> BulkOutcome:
    """Reschedule every failed job of the submission."""
    return await submission_actions.act(platform, user.user_id, submission_id, "reschedule")


@router.delete("/submissions/{submission_id}", responses=CHANGES | documented(404))
async def delete_submission(
    submission_id: RowId, platform: PlatformDep, user: CurrentUser
) -> BulkOutcome:
    """Kill the unfinished jobs, then delete every job and its files: the submission is
    gone once none is left."""
    return await submission_actions.act(platform, user.user_id, submission_id, "delete")


@router.get(
    "/submissions/{submission_id}/outputs.zip",
    response_class=RAW,
    responses=raw("Every job's outputs", "application/zip") | documented(404, 409, 413, 429),
)
async def download_submission_zip(
    submission_id: RowId, platform: PlatformDep, user: CurrentUser
) -> StreamingResponse:
    stream = await submission_actions.zip_outputs(platform, user.user_id, submission_id)
    disposition = f'attachment; filename="submission-{submission_id}-outputs.zip"'
    return StreamingResponse(
        stream, media_type="application/zip", headers={"Content-Disposition": disposition}
    )
