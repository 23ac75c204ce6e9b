"""/jobs: the job monitor's queries, logs, outputs, and kill / reschedule / delete."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, StreamingResponse

from concordia.logic import datalake_views, job_actions, monitor, outputs
from concordia.logic import jobs as job_logic
from concordia.logic.datalake_views import DatalakeFileView
from concordia.logic.job_models import DeletedJob, JobDetail, JobSummary
from concordia.logic.monitor import JobFilter, JobPage, SortKey
from concordia.logic.outputs import LogChunk, OutputPage, Stream
from concordia.web.api.media import ANY_FILE, RAW, raw
from concordia.web.deps import MAX_ROW_ID, CurrentUser, PlatformDep, RowId
from concordia.web.errors import AUTHENTICATED, CHANGES, documented

router = APIRouter(tags=["jobs"], responses=AUTHENTICATED)
# Reading outputs may fetch them from the backend first, which can refuse (409).
OUTPUTS = documented(404, 409)
SAFE_DOWNLOAD_HEADERS = {
    "Content-Security-Policy": (
        "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
    ),
    "X-Content-Type-Options": "nosniff",
}


@router.get("/jobs")
async def list_jobs(
    platform: PlatformDep,
    user: CurrentUser,
    status: Annotated[list[str] | None, Query(description="Repeat or comma-separate")] = None,
    submission: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    application: str | None = None,
    q: Annotated[str | None, Query(description="Part of the job name")] = None,
    created_from: Annotated[date | None, Query(description="Created on or after (UTC)")] = None,
    created_to: Annotated[date | None, Query(description="Created on or before (UTC)")] = None,
    page: Annotated[int, Query(ge=1, le=MAX_ROW_ID)] = 1,
    per_page: Annotated[int, Query(ge=1, le=500)] = 50,
    sort: SortKey = "-updated",
) -> JobPage:
    statuses = [s for item in status or [] for s in item.split(",") if s]
    async with platform.reading() as session:
        where = JobFilter(
            statuses=statuses,
            submission=submission,
            application=application,
            text=q,
            created_from=created_from,
            created_to=created_to,
        )
        return await monitor.list_jobs(
            session, user.user_id, where, page=page, per_page=per_page, sort=sort
        )


@router.get("/jobs/{job_id}", responses=documented(404))
async def get_job(job_id: RowId, platform: PlatformDep, user: CurrentUser) -> JobDetail:
    async with platform.reading() as session:
        job = await job_logic.get_owned_job(session, user.user_id, job_id)
        return await job_logic.job_detail(session, job)


@router.get("/jobs/{job_id}/logs", responses=OUTPUTS)
async def get_logs(
    job_id: RowId,
    platform: PlatformDep,
    user: CurrentUser,
    stream: Stream = "stdout",
    offset: int = 0,
) -> LogChunk:
    async with platform.reading() as session:
        job = await job_logic.get_owned_job(session, user.user_id, job_id)
    return await outputs.job_log(
        platform.settings, platform.backends, job, stream, offset, platform.settings.max_log_chunk
    )


@router.get("/jobs/{job_id}/outputs", responses=OUTPUTS | documented(429))
async def list_outputs(
    job_id: RowId,
    platform: PlatformDep,
    user: CurrentUser,
    page: Annotated[int, Query(ge=1, le=MAX_ROW_ID)] = 1,
    per_page: Annotated[int, Query(ge=1, le=outputs.MAX_PER_PAGE)] = 100,
) -> OutputPage:
    async with platform.reading() as session:
        job = await job_logic.get_owned_job(session, user.user_id, job_id)
    return await outputs.output_page(
        platform.settings, platform.backends, platform.work, user.user_id, job, page, per_page
    )


@router.get(
    "/jobs/{job_id}/outputs.zip",
    response_class=RAW,
    responses=raw("The job's outputs", "application/zip") | OUTPUTS | documented(413, 429),
)
async def download_zip(
    job_id: RowId, platform: PlatformDep, user: CurrentUser
) -> StreamingResponse:
    async with platform.reading() as session:
        job = await job_logic.get_owned_job(session, user.user_id, job_id)
    stream = await outputs.zip_outputs(
        platform.settings, platform.backends, platform.work, user.user_id, [job]
    )
    disposition = f'attachment; filename="job-{job.id}-outputs.zip"'
    return StreamingResponse(
        stream, media_type="application/zip", headers={"Content-Disposition": disposition}
    )


@router.get(
    "/jobs/{job_id}/outputs/{path:path}",
    response_class=RAW,
    responses=raw("The file, typed by its name", ANY_FILE) | OUTPUTS,
)
async def download_output(
    job_id: RowId, path: str, platform: PlatformDep, user: CurrentUser
) -> FileResponse:
    async with platform.reading() as session:
        job = await job_logic.get_owned_job(session, user.user_id, job_id)
    await outputs.fetch_outputs(platform.settings, platform.backends, job)
    file = outputs.output_path(platform.settings.jobs_dir, job, path)
    # Opened in the browser, a job's SVG or HTML must not run script in Concordia's origin.
    return FileResponse(file, filename=file.name, headers=SAFE_DOWNLOAD_HEADERS)


@router.get("/jobs/{job_id}/datalake", responses=documented(404))
async def list_datalake_files(
    job_id: RowId, platform: PlatformDep, user: CurrentUser
) -> list[DatalakeFileView]:
    """The job's data outputs stored in the data lake (Rucio)."""
    return await datalake_views.job_files(platform.db, user.user_id, job_id)


@router.get(
    "/jobs/{job_id}/datalake/{name}",
    response_class=RAW,
    responses=raw("The file, from the data lake", "application/octet-stream")
    | documented(404, 503),
)
async def download_datalake_file(
    job_id: RowId, name: str, platform: PlatformDep, user: CurrentUser
) -> StreamingResponse:
    """One of the job's files in the data lake, streamed from its RSE through Concordia."""
    view, stream = await datalake_views.open_file(platform, user.user_id, job_id, name)
    headers = {
        "Content-Disposition": f'attachment; filename="{view.name}"',
        "Content-Length": str(view.bytes),
        **SAFE_DOWNLOAD_HEADERS,
    }
    return StreamingResponse(stream, media_type="application/octet-stream", headers=headers)


@router.post("/jobs/{job_id}/kill", responses=CHANGES | documented(404, 409))
async def kill_job(job_id: RowId, platform: PlatformDep, user: CurrentUser) -> JobSummary:
    return await job_actions.kill_job(platform, user.user_id, job_id)


@router.post("/jobs/{job_id}/reschedule", responses=CHANGES | documented(404, 409))
async def reschedule_job(job_id: RowId, platform: PlatformDep, user: CurrentUser) -> JobSummary:
    return await job_actions.reschedule_job(
        platform.db, platform.bus, platform.process, user.user_id, job_id
    )


@router.delete("/jobs/{job_id}", responses=CHANGES | documented(404, 409))
async def delete_job(job_id: RowId, platform: PlatformDep, user: CurrentUser) -> DeletedJob:
    return await job_actions.delete_job(platform, user.user_id, job_id)
