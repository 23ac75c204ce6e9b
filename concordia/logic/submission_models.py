"""What a submission is asked with and shown as: its request, preview, dry-run plan, view."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from concordia.core.image_status import ImageStatus
from concordia.logic.datalake_choice import DatalakeChoice, DatalakeRequest


class SubmissionRequest(BaseModel):
    # A misspelt key ("paramters") would otherwise be dropped and the defaults submitted.
    model_config = ConfigDict(extra="forbid")
    application: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    build_args: dict[str, Any] = Field(default_factory=dict)
    backend: str | None = None
    #: The VO to submit under; default: the first of the application's VOs the user is in.
    vo: str | None = None
    #: Where its data outputs go in the data lake; absent: the application's default;
    #: null: not to the data lake.
    datalake: DatalakeRequest | None = None


class PlannedJob(BaseModel):
    index: int
    uuid: str
    name: str
    parameters: dict[str, Any]
    argv: list[str]
    jdl: str


class Progress(BaseModel):
    waiting: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    killed: int = 0
    deleted: int = 0


class SequenceRange(BaseModel):
    """The values a batch sequence takes across the jobs (e.g. runs 7 to 9)."""

    name: str
    first: int
    last: int


class CpuEstimate(BaseModel):
    """CPU time by the application's estimate: one job's, the batch's, and the job limit."""

    per_job_seconds: float
    total_seconds: float
    limit_seconds: int
    #: Said when a job may not finish within its limit (a job over it is refused).
    warning: str | None = None


class SubmissionPreview(BaseModel):
    """What a submission would create, before anything is stored."""

    count: int
    names: list[str]
    ranges: list[SequenceRange]
    #: The backend the jobs would go to, and the JDL it would be given for the first (a
    #: value in <angle brackets> is known only at submission or hand-over).
    backend: str
    first_jdl: str
    cpu: CpuEstimate | None = None


class SubmissionPlan(BaseModel):
    """A dry run: what a submission would create and where, every check passed; nothing stored."""

    dry_run: bool = True
    application: str
    backend: str
    vo: str
    group: str
    parameters: dict[str, Any]
    build_args: dict[str, Any]
    #: The image jobs would run in; None for an application without one.
    image_id: str | None
    #: ready, building, failed; None: a submission would build it first.
    image_status: ImageStatus | None
    job_count: int
    cpu: CpuEstimate | None
    #: Where its data outputs would go (a dataset named after the submission when
    #: none is given); None: not to the data lake.
    datalake: DatalakeChoice | None = None
    #: Every job with its JDL (its JobGroup gets the submission's number when submitted).
    jobs: list[PlannedJob]


class SubmissionJob(BaseModel):
    """One row of a submission's job table."""

    id: int
    index: int
    name: str
    status: str
    minor_status: str


class SubmissionView(BaseModel):
    id: int
    application: str
    image_id: str | None
    parameters: dict[str, Any]
    build_args: dict[str, Any]
    backend: str
    vo: str
    group: str
    job_count: int
    created_at: datetime
    counts: dict[str, int]
    progress: Progress
    #: Jobs the backend has taken (a grid: accepted, with its id); the rest are on their way.
    handed_over: int = 0
    finished: bool
    job_ids: list[int]
    #: Where its data outputs go in the data lake (its dataset's DID); None: not there.
    datalake: DatalakeChoice | None = None
