"""The compute backend protocol (the JupyterHub Spawner habit) and the data it exchanges."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field, field_validator

from concordia.core.limits import JobLimits
from concordia.core.states import JobStatus, status_text


class BackendError(Exception):
    """A backend refused or could not do what was asked; the message says why."""


class BackendUnreachable(BackendError):
    """The backend does not answer now: nothing was decided, the same call may be tried
    again later."""


class SignInEnded(BackendError):
    """The backend's sign-in service ended a user's sign-in (revoked, expired or replayed, or
    the user is no longer in the group): nothing more is done with it, they sign in again."""


class JobRefused(BackendError):
    """The backend would refuse the job: each problem names the rule it breaks."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Owner:
    """Whom a job runs as in its backend: its owner's username, the VO and the DIRAC group
    of its submission (a grid backend acts as them, with a token for each)."""

    user: str
    vo: str
    group: str


#: Where a backend that ``needs_user_token`` gets an owner's own access token and when it
#: expires (seconds since the epoch). Raises BackendError, saying why, for an owner without
#: a usable sign-in: that owner's calls are refused, not the others'.
UserTokenSource = Callable[[Owner], Awaitable[tuple[str, float]]]


@dataclass(frozen=True, slots=True)
class SignIn:
    """Whom the tokens of a user's sign-in at a backend's own service name."""

    vo: str
    group: str
    #: The user as the service names them (shown on their account page).
    user: str
    #: Their subject at the IAM the service signed them in with ("" where it does not say).
    iam_subject: str
    #: When the sign-in lapses (its refresh token expires; seconds since the epoch), None if
    #: the service does not say.
    usable_until: float | None


class Token(BaseModel):
    """The tokens a sign-in service answers with (OAuth's token endpoint), at sign-in or
    at a refresh."""

    access_token: str
    expires_in: int = 3600
    refresh_token: str | None = None


class JobImage(BaseModel):
    """The image a job runs in: its id, the rootfs for local runtimes, the SquashFS for
    Apptainer, and what the recipe sets (environment, working directory)."""

    id: str
    rootfs: Path
    squashfs: Path | None = None
    squashfs_sha256: str | None = None
    #: The OCI layout tar registries are sent (None: the image was built without it).
    oci_archive: Path | None = None
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = "/work"
    application: str = ""
    #: Built from public inputs only: it may be published where anyone reads (CVMFS). An
    #: image with an operator-provided source (CORSIKA's licence) reaches only its jobs.
    redistributable: bool = False


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
    #: DIRAC's job priority among the owner's jobs (0-10) and the tags a grid site must offer.
    priority: int = 1
    tags: list[str] = Field(default_factory=list)
    network: bool = False
    #: What the application asks for; a local backend fills in its defaults.
    limits: JobLimits = Field(default_factory=JobLimits)
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
    #: Where a grid job's wrapper stores its data outputs (concordia_job.py's "datalake"
    #: settings, the same for a submission's jobs but for "names", the job's own prefix);
    #: None: everything comes back in the output sandbox. May hold a token: not in reprs.
    datalake: dict[str, Any] | None = Field(default=None, repr=False)
    #: How many times it was rescheduled: each run is a new job in a grid backend.
    attempt: int = 0
    #: It may already be in the backend (handed over by a process that died before
    #: recording it): the backend looks before it submits.
    maybe_submitted: bool = False

    @property
    def run_as(self) -> Owner:
        """Whom the job runs as: its owner, VO and DIRAC group."""
        return Owner(self.owner, self.vo, self.group)


class BackendRef(BaseModel):
    """Where a job lives in its backend; stored in the database with the job."""

    uuid: str
    ref: str
    state: dict[str, Any] = Field(default_factory=dict)
    #: Set when the backend refused the job (it is not there): the job fails with this.
    error: str | None = None
    #: The description the backend was given (describe() with what only the hand-over
    #: knows filled in): recorded as the job's JDL. None: the recorded one is it.
    jdl: str | None = None


class StatusUpdate(BaseModel):
    """A change a backend observed. The reconciler stores it as one status-history row."""

    uuid: str
    status: JobStatus
    minor_status: str = ""
    application_status: str = ""
    timestamp: datetime
    #: Who set it in the backend (a grid's JobWrapper, Matcher...); empty: the backend itself.
    source: str = ""
    exit_code: int | None = None
    #: Backend state to merge into the job's stored state (e.g. the pid of a local job).
    state: dict[str, Any] = Field(default_factory=dict)

    @field_validator("minor_status", "application_status")
    @classmethod
    def _stored_whole(cls, text: str) -> str:
        return status_text(text)


class Backend(Protocol):
    """Everything the worker, the logic and the pages use of a compute backend (nothing
    above backends/ reaches for more, or asks which backend it is).

    A job is named by its uuid. What a backend must know of a job to find it again is in
    the BackendRef it returned (``ref`` and ``state``, with the ``state`` of each update
    merged in): stored with the job, and given back to poll, kill, delete and fetch_outputs
    by any later process. After a restart, a backend that ``survives_restart``
    re-attaches to its jobs from those refs alone; one that does not lost them with the
    process (the worker stalls them, then reschedules).

    A call raises BackendUnreachable when the backend does not answer (nothing was decided:
    the same call may be tried again later) and BackendError when it refuses, with why.
    """

    #: Its key in the platform's backends and in each job's row ("local", "diracx").
    name: str
    #: How the submission form names it, for people.
    title: str
    #: False where jobs run without isolation (the UI and CLI say so).
    isolated: bool
    #: Why jobs are not isolated (what to install or change); None where they are.
    isolation_problem: str | None
    #: What runs jobs in their images, and why not the other runtimes (for people).
    runtime_summary: str
    #: How each job's resources are bounded and by what (cgroup, rlimits), for people.
    limits_summary: str
    #: False where a job's process dies with the server (then a restart marks it Stalled).
    survives_restart: bool
    #: True where a job stores its own data outputs in the data lake (a grid's wrapper, on
    #: the worker node); False: Concordia uploads them from the job's outputs/ once its
    #: process has ended, before the job is Done.
    uploads_data: bool
    #: True where jobs act as their owners with the owners' own sign-ins (a grid in per-user
    #: mode): a submission is refused until its owner has one for its VO and group, and the
    #: platform gives the backend where they come from (use_user_tokens) as it starts.
    needs_user_token: bool

    @property
    def unreachable(self) -> str | None:
        """Why the backend cannot be reached now (its jobs keep their last known state);
        None when it answers."""
        ...

    @property
    def changed(self) -> asyncio.Event | None:
        """Set when poll() has news to tell (a backend whose jobs run in this process says
        so at once); poll() clears it. None: news come only by polling, at the worker's
        poll interval."""
        ...

    def capacity(self) -> int | None:
        """How many more jobs it takes now (None: no limit). Jobs beyond stay in the queue
        all workers share, for whichever has room: a worker runs no more than it can."""
        ...

    def describe(self, spec: JobSpec) -> str:
        """The job's description (a JDL) as this backend is given it: recorded as the job's
        JDL when it is submitted and shown in the form's preview. What only the hand-over
        knows (a grid's input sandbox address) is a placeholder in <angle brackets> until
        submit() says what was sent. Raises JobRefused naming every rule of the backend the
        job breaks; submit() refuses such a job too."""
        ...

    async def submit(self, jobs: list[JobSpec]) -> list[BackendRef]:
        """Hand the jobs over. Returns a ref for each job it took (stored with the job: the
        job is then the backend's), or with ``error`` set for each it refused (the job
        fails with why, and is not in the backend). A job left out of the answer stays
        Waiting and is handed over again in a later round.

        Idempotent per job uuid: a job it holds already (``maybe_submitted``: handed over by
        a process that died before recording the ref) is adopted, never run twice; a job
        whose ``attempt`` is new is a new run. The ``state`` of a new run's ref is merged
        into what the job kept of its earlier runs: what counts per run (how much of its
        history was told) must be given again, reset. Raises BackendUnreachable when the
        backend does not answer: the jobs stay Waiting without a ref and the round is tried
        again."""
        ...

    async def poll(self, refs: list[BackendRef]) -> list[StatusUpdate]:
        """What changed since it was last told, oldest first: one update per new entry of
        a job's status history. It may tell of jobs not in ``refs`` too (the worker keeps
        the news of those it watches).

        Each update's ``state`` is what the backend must find in the job's ref next time
        (what it has told already): stored with the job, it spares a restarted process the
        same news again. Never raises for a backend that does not answer: it returns what
        it has, and ``unreachable`` says why."""
        ...

    async def kill(self, refs: list[BackendRef]) -> list[StatusUpdate]:
        """Stop the jobs, and every earlier run of a rescheduled one still going. Returns the
        jobs the kill came too late for, as the backend has them: they ended on their own,
        were not killed, and keep that state (the next poll brings their news). A job it
        does not hold (lost in a restart) is nothing to stop. The caller records Killed
        itself."""
        ...

    async def delete(self, refs: list[BackendRef]) -> None:
        """Their user deleted these jobs (waiting or over): the backend forgets them, and
        every earlier run of a rescheduled one."""
        ...

    async def fetch_outputs(self, ref: BackendRef, dest: Path) -> list[Path]:
        """Bring the job's outputs into ``dest`` (its outputs/ directory), its std.out and
        std.err where its logs are read. Called whenever a user asks for them, before the
        job is over too, and by any process after a restart: what is in place already is
        not fetched again. Returns the output files in ``dest`` that it brought there, by
        this call or an earlier one; an empty list where there is nothing yet (the job is
        not over) or where ``dest`` is where the backend keeps them (nothing to bring).
        Raises BackendError when they cannot be brought now."""
        ...

    def use_user_tokens(self, source: UserTokenSource) -> None:
        """Where owners' own access tokens come from: given once as the platform starts,
        before any job is handed over, to a backend that ``needs_user_token`` (another
        ignores it). Without it, such a backend refuses to act for anyone."""
        ...

    def forget_token(self, owner: Owner) -> None:
        """The owner's sign-in changed or ended: an access token kept for them goes, and the
        next call for them gets one anew. Nothing for an owner it keeps none of."""
        ...

    async def refresh_user_token(self, refresh_token: str) -> Token:
        """New tokens for a user's refresh token, from the backend's sign-in service. The
        service may rotate them: the old refresh token is then dead, and using it again may
        end all the user's sign-ins. Raises SignInEnded when the service ended the sign-in,
        BackendUnreachable when it does not answer, and BackendError where the backend takes
        no sign-ins (not ``needs_user_token``) or the service refuses Concordia itself."""
        ...

    def sign_in_of(self, token: Token) -> SignIn:
        """Whom the tokens its sign-in service just gave at the end of a user's sign-in name
        (read from them: the service checks them on every call). Raises BackendError where
        the backend takes no sign-ins."""
        ...

    async def close(self) -> None:
        """The process stops: the backend lets go of what it holds here (connections,
        threads, processes). Jobs of a backend that ``survives_restart`` go on; the others
        are killed, with no update told (the next process stalls them)."""
        ...
