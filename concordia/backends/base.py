"""The compute backend protocol (the JupyterHub Spawner habit) and the data it exchanges."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from concordia.core.states import JobStatus


class BackendError(Exception):
    """A backend refused or could not do what was asked; the message says why."""


class BackendUnreachable(BackendError):
    """The backend does not answer now: nothing was decided, the same call may be tried
    again later."""


class JobImage(BaseModel):
    """The image a job runs in: its id, the rootfs for local runtimes, the SquashFS for
    Apptainer, and what the recipe sets (environment, working directory)."""

    id: str
    rootfs: Path
    squashfs: Path | None = None
    squashfs_sha256: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = "/work"


class JobSpec(BaseModel):
    """What a backend needs to run one job. ``uuid`` makes submit idempotent."""

    uuid: str
    job_id: int
    name: str
    argv: list[str]
    #: Files copied into the work directory before the job starts (the InputSandbox).
    input_files: list[Path] = Field(default_factory=list)
    #: OutputSandbox globs, relative to the work directory.
    outputs: list[str] = Field(default_factory=list)
    cpu_time: int
    network: bool = False
    env: dict[str, str] = Field(default_factory=dict)
    jdl: str = ""
    #: None: the job runs on the host's system directories.
    image: JobImage | None = None
    #: The owner's X.509 proxy (PEM) for jobs that need one: a 0600 file while the job runs.
    proxy: bytes | None = Field(default=None, repr=False, exclude=True)
    #: Who runs it, under which VO and DIRAC group (a grid backend acts as that user).
    owner: str = ""
    vo: str = ""
    group: str = ""
    #: The submission it belongs to (DIRAC's JobGroup).
    job_group: str = ""
    #: How many times it was rescheduled: each run is a new job in a grid backend.
    attempt: int = 0
    #: It may already be in the backend (handed over by a process that died before
    #: recording it): the backend looks before it submits.
    maybe_submitted: bool = False


class BackendRef(BaseModel):
    """Where a job lives in its backend; stored in the database with the job."""

    uuid: str
    ref: str
    state: dict[str, Any] = Field(default_factory=dict)
    #: Set when the backend refused the job (it is not there): the job fails with this.
    error: str | None = None


class StatusUpdate(BaseModel):
    """A change a backend observed. The reconciler stores it as one status-history row."""

    uuid: str
    status: JobStatus
    minor_status: str = ""
    application_status: str = ""
    timestamp: datetime
    exit_code: int | None = None
    #: Backend state to merge into the job's stored state (e.g. the pid of a local job).
    state: dict[str, Any] = Field(default_factory=dict)


class Backend(Protocol):
    name: str
    #: False where jobs run without isolation (the UI and CLI say so).
    isolated: bool
    #: Why jobs are not isolated (what to install or change); None where they are.
    isolation_problem: str | None
    #: What runs jobs in their images, and why not the other runtimes (for people).
    runtime_summary: str
    #: False where a job's process dies with the server (then a restart marks it Stalled).
    survives_restart: bool
    #: Why the backend cannot be reached now (its jobs keep their last known state); None
    #: when it answers.
    unreachable: str | None

    def capacity(self) -> int | None:
        """How many more jobs it takes now (None: no limit). Jobs beyond stay in the queue
        all workers share, for whichever has room: a worker runs no more than it can."""
        ...

    async def submit(self, jobs: list[JobSpec]) -> list[BackendRef]: ...

    async def poll(self, refs: list[BackendRef]) -> list[StatusUpdate]: ...

    async def kill(self, refs: list[BackendRef]) -> None: ...

    async def delete(self, refs: list[BackendRef]) -> None:
        """Their user deleted these jobs (waiting or over): the backend forgets them."""
        ...

    async def fetch_outputs(self, ref: BackendRef, dest: Path) -> list[Path]: ...
