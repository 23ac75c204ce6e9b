"""/submissions: create a batch of jobs, follow its progress."""

from __future__ import annotations

from fastapi import APIRouter

from concordia.logic import submissions
from concordia.logic.submissions import SubmissionRequest, SubmissionView
from concordia.web.deps import CurrentUser, PlatformDep

router = APIRouter(tags=["submissions"])


@router.post("/submissions", status_code=201)
async def create_submission(
    request: SubmissionRequest, platform: PlatformDep, user: CurrentUser
) -> SubmissionView:
    return await submissions.submit_batch(platform, user, request)


@router.get("/submissions/{submission_id}")
async def get_submission(
    submission_id: int, platform: PlatformDep, user: CurrentUser
) -> SubmissionView:
    return await submissions.get_submission(platform, user.user_id, submission_id)
