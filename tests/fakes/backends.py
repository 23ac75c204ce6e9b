"""In-memory backends whose jobs move through DIRAC's states when the test says (the
model is JupyterHub's tests/mocking.py): the reconciler's rules tested without processes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from concordia.backends.base import (
    BackendError,
    BackendRef,
    BackendUnreachable,
    JobSpec,
    Owner,
    SignIn,
    StatusUpdate,
    Token,
    UserTokenSource,
)
from concordia.core.jdl import job_jdl
from concordia.core.states import JobStatus

S = JobStatus
#: Where a job that runs to its end goes, after the Waiting the reconciler recorded.
TO_THE_END = (S.MATCHED, S.RUNNING, S.COMPLETING, S.DONE)


@dataclass
class FakeRun:
    """One run of a job in the backend (a rescheduled job's next run is another)."""

    spec: JobSpec
    ref: str
    #: Every status it went through here, oldest first; poll tells those not told yet.
    history: list[StatusUpdate] = field(default_factory=list)
    #: Stopped by a kill (the caller records Killed: nothing more is told).
    killed: bool = False

    @property
    def over(self) -> bool:
        return self.killed or (bool(self.history) and self.history[-1].status.is_final)


class FakeBackend:
    """A grid of the test's own: it takes every job, polled for news (``changed`` is set as
    a job moves, so that the reconciler need not wait its poll interval), and moves a job
    only when the test calls ``advance`` (or a helper). Its jobs survive a restart when the
    test hands the same instance to the next start.

    What it was asked is kept for the test to read: ``handed`` (each uuid taken, once per
    run), ``kills`` and ``deletes`` (each uuid, per call)."""

    title = "A fake grid"
    isolated = True
    isolation_problem: str | None = None
    runtime_summary = "nothing runs: the test moves the jobs"
    limits_summary = "none"
    survives_restart = True
    uploads_data = False
    needs_user_token = False

    def __init__(self, name: str = "diracx", *, room: int | None = None) -> None:
        # In the grid's place by default: default_backend names a backend Concordia has.
        self.name = name
        #: How many jobs it holds at once (not ended); None: no limit.
        self.room = room
        self.unreachable: str | None = None
        self.runs: dict[str, FakeRun] = {}
        self.handed: list[str] = []
        #: Calls of submit, answered or not.
        self.attempts = 0
        self.kills: list[str] = []
        self.deletes: list[str] = []
        #: Jobs that end on their own (Done) just as a kill reaches them: it comes too late.
        self.ending_at_kill: set[str] = set()
        #: The most jobs it held at once.
        self.most_held = 0
        self.closed = False
        self._changed = asyncio.Event()
        self._last = datetime.now(UTC)

    @property
    def changed(self) -> asyncio.Event | None:
        return self._changed

    def capacity(self) -> int | None:
        if self.room is None:
            return None
        return max(0, self.room - len(self.held()))

    def describe(self, spec: JobSpec) -> str:
        return job_jdl(
            executable=spec.argv[0], arguments=spec.argv[1:], job_name=spec.name,
            job_group=spec.job_group, cpu_time=spec.cpu_time, priority=spec.priority,
        )  # fmt: skip

    async def submit(self, jobs: list[JobSpec]) -> list[BackendRef]:
        self.attempts += 1
        if self.unreachable is not None:
            raise BackendUnreachable(self.unreachable)
        refs = []
        for spec in jobs:
            if (reason := self.refuses(spec)) is not None:  # not taken: it fails with why
                refs.append(BackendRef(uuid=spec.uuid, ref="", error=reason))
                continue
            ref = f"{spec.uuid}/{spec.attempt}"  # a new run of a rescheduled job: a new id
            if ref not in self.runs:  # one it holds already (maybe_submitted) is adopted
                self.runs[ref] = FakeRun(spec, ref)
                self.handed.append(spec.uuid)
                self.taken(self.runs[ref])
            # Nothing told of this run yet (the job's stored state has an earlier run's count).
            refs.append(BackendRef(uuid=spec.uuid, ref=ref, state={"told": 0}))
        self.most_held = max(self.most_held, len(self.held()))
        return refs

    def refuses(self, spec: JobSpec) -> str | None:
        """Why it would not take the job; None: it takes it."""
        return None

    def taken(self, run: FakeRun) -> None:
        """What a job does as it is handed over: here, nothing until the test moves it."""

    async def poll(self, refs: list[BackendRef]) -> list[StatusUpdate]:
        self._changed.clear()
        if self.unreachable is not None:  # no news until it answers again
            return []
        news = []
        for ref in refs:
            run = self.runs.get(ref.ref)
            if run is not None:
                told = int(ref.state.get("told", 0))
                news += run.history[told:]
        return sorted(news, key=lambda update: update.timestamp)

    async def kill(self, refs: list[BackendRef]) -> list[StatusUpdate]:
        if self.unreachable is not None:
            raise BackendUnreachable(self.unreachable)
        too_late = []
        for ref in refs:
            self.kills.append(ref.uuid)
            run = self.runs.get(ref.ref)
            if run is None:  # lost, or never here: nothing to stop
                continue
            if ref.uuid in self.ending_at_kill and not run.over:
                self.end(ref.uuid, quietly=True)
            if run.over and not run.killed:  # it ended on its own before the kill came
                too_late.append(run.history[-1])
            else:
                run.killed = True
        return too_late

    async def delete(self, refs: list[BackendRef]) -> None:
        if self.unreachable is not None:
            raise BackendUnreachable(self.unreachable)
        for ref in refs:
            self.deletes.append(ref.uuid)
            self.runs = {key: run for key, run in self.runs.items() if run.spec.uuid != ref.uuid}

    async def fetch_outputs(self, ref: BackendRef, dest: Path) -> list[Path]:
        return []  # nothing runs: no outputs

    def use_user_tokens(self, source: UserTokenSource) -> None:
        """Nothing to do: its jobs act as nobody."""

    def forget_token(self, owner: Owner) -> None:
        """Nothing to do: no token is kept."""

    async def refresh_user_token(self, refresh_token: str) -> Token:
        raise BackendError("a fake grid takes no sign-ins")

    def sign_in_of(self, token: Token) -> SignIn:
        raise BackendError("a fake grid takes no sign-ins")

    async def close(self) -> None:
        self.closed = True

    # What the test calls to move jobs.

    def run_of(self, uuid: str) -> FakeRun:
        """The job's latest run here."""
        runs = [run for run in self.runs.values() if run.spec.uuid == uuid]
        if not runs:
            raise KeyError(f"job {uuid} was never handed over")
        return max(runs, key=lambda run: run.spec.attempt)

    def held(self) -> list[FakeRun]:
        """The runs not ended."""
        return [run for run in self.runs.values() if not run.over]

    def advance(
        self, uuid: str, *statuses: JobStatus, minor: str = "", exit_code: int | None = None
    ) -> None:
        """The job's latest run goes through ``statuses``; the last carries ``exit_code``."""
        run = self.run_of(uuid)
        for n, status in enumerate(statuses, 1):
            self._tell(run, status, minor, exit_code=exit_code if n == len(statuses) else None)

    def start(self, uuid: str) -> None:
        self.advance(uuid, S.MATCHED, S.RUNNING, minor="Application")

    def end(self, uuid: str, exit_code: int = 0, *, quietly: bool = False) -> None:
        """The running job ends, Done or Failed by its exit code; ``quietly``: the reconciler
        hears of it at its next poll only, not at once."""
        run = self.run_of(uuid)
        if exit_code == 0:
            self._tell(run, S.COMPLETING, "Uploading output sandbox", quietly=quietly)
            self._tell(run, S.DONE, "Execution Complete", exit_code=0, quietly=quietly)
        else:
            minor = f"Application exited with status {exit_code}"
            self._tell(run, S.FAILED, minor, exit_code=exit_code, quietly=quietly)

    def _tell(
        self,
        run: FakeRun,
        status: JobStatus,
        minor: str,
        *,
        exit_code: int | None = None,
        quietly: bool = False,
    ) -> None:
        # Strictly increasing, and never before what the platform recorded of the job.
        self._last = max(datetime.now(UTC), self._last + timedelta(microseconds=1))
        told = {"told": len(run.history) + 1}
        run.history.append(
            StatusUpdate(
                uuid=run.spec.uuid, status=status, minor_status=minor, timestamp=self._last,
                exit_code=exit_code, state=told,
            )
        )  # fmt: skip
        if not quietly:
            self._changed.set()


class FastBackend(FakeBackend):
    """Every job it takes runs to Done at once."""

    def taken(self, run: FakeRun) -> None:
        for status in TO_THE_END:
            self._tell(run, status, "", exit_code=0 if status is S.DONE else None)


class NeverStartingBackend(FakeBackend):
    """It takes jobs and keeps them waiting for a site, for ever."""

    def taken(self, run: FakeRun) -> None:
        self._tell(run, S.WAITING, "Pilot Agent Submission")


class StartingBackend(FakeBackend):
    """Every job it takes starts at once and runs until the test ends it."""

    def taken(self, run: FakeRun) -> None:
        self._tell(run, S.MATCHED, "Assigned")
        self._tell(run, S.RUNNING, "Application")


class SlowBackend(StartingBackend):
    """A far grid: a hand-over is answered only once the test opens ``gate`` (``waiting`` is
    set while one waits there); its jobs then start at once."""

    def __init__(self, name: str = "diracx") -> None:
        super().__init__(name)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def submit(self, jobs: list[JobSpec]) -> list[BackendRef]:
        self.waiting.set()
        await self.gate.wait()
        return await super().submit(jobs)


class FailingBackend(FakeBackend):
    """It refuses every job with ``reason``, or runs each to Failed with ``exit_code``."""

    def __init__(
        self, name: str = "diracx", *, reason: str | None = None, exit_code: int = 1
    ) -> None:
        super().__init__(name)
        self.reason = reason
        self.exit_code = exit_code

    def refuses(self, spec: JobSpec) -> str | None:
        return self.reason

    def taken(self, run: FakeRun) -> None:
        self._tell(run, S.MATCHED, "Assigned")
        self._tell(run, S.RUNNING, "Application")
        self.end(run.spec.uuid, self.exit_code)


class LosingBackend(StartingBackend):
    """Its jobs run in the server's process (as this machine's do): they are lost with it.
    A restart needs a new instance, which holds none of them."""

    survives_restart = False

    async def close(self) -> None:
        await super().close()
        self.runs.clear()


#: Every fake, for the tests that hold for all backends.
FAMILY: tuple[type[FakeBackend], ...] = (
    FakeBackend, FastBackend, NeverStartingBackend, StartingBackend, SlowBackend, FailingBackend,
    LosingBackend,
)  # fmt: skip
