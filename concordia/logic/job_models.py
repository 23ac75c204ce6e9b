"""What the API and pages say of jobs: one job, its history, the outcome of an action."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

BulkAction = Literal["kill", "reschedule", "delete"]


class HistoryEntry(BaseModel):
    status: str
    minor_status: str
    application_status: str
    source: str
    timestamp: datetime


class JobSummary(BaseModel):
    id: int
    name: str
    application: str
    submission_id: int
    status: str
    minor_status: str
    backend: str
    created_at: datetime
    updated_at: datetime


class DeletedJob(JobSummary):
    #: What the user must know: files of the job that stay in the data lake.
    notice: str = ""


class JobDetail(JobSummary):
    uuid: str
    index: int
    parameters: dict[str, Any]
    argv: list[str]
    jdl: str
    application_status: str
    backend_ref: str | None
    isolated: bool | None
    reschedule_count: int
    exit_code: int | None
    started_at: datetime | None
    ended_at: datetime | None
    history: list[HistoryEntry]
    #: The container image the job runs in (its build log explains an "Image build failed").
    image_id: str | None
    #: Where the grid ran it (DIRAC's site name), once known; None on this machine.
    site: str | None = None


class BulkOutcome(BaseModel):
    action: BulkAction
    succeeded: list[int]
    refused: list[str]
    #: What the user must know: the deleted jobs' files that stay in the data lake.
    notice: str = ""
