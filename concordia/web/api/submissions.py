"""/submissions: create a batch of jobs, follow its progress."""

from __future__ import annotations

from fastapi import APIRouter

from concordia.logic import submissions
from concordia.logic.submissions import SubmissionRequest, SubmissionView
from concordia.web.deps import CurrentUser, PlatformDep, RowId
from concordia.web.errors import AUTHENTICATED, BODY, CHANGES, documented

router = APIRouter(tags=["submissions"], responses=AUTHENTICATED)


@router.post("/submissions", status_code=201, responses=CHANGES | documented(404, 409) | BODY)
async def create_submission(
    request: SubmissionRequest, platform: PlatformDep, user: CurrentUser
) -> SubmissionView:
    return await submissions.submit_batch(platform, user, request)


@router.get("/submissions/{submission_id}", responses=documented(404))
async def get_submission(
    submission_id: RowId, platform: PlatformDep, user: CurrentUser
) -> SubmissionView:
    return await submissions.get_submission(platform, user.user_id, submission_id)
