"""The local backend: a pool of slots running jobs on this machine, each in its image (Apptainer,
bubblewrap or podman), a job without one under bubblewrap if it can."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from concordia.backends import sandbox
from concordia.backends.base import (
    BackendError,
    BackendRef,
    JobSpec,
    Owner,
    SignIn,
    StatusUpdate,
    Token,
    UserTokenSource,
)
from concordia.backends.cgroup import SlotCgroup, slot_cgroup
from concordia.backends.isolation import isolation_problem
from concordia.backends.job_process import fork_server
from concordia.backends.local_jobs import LocalJob, Meter, Slot, bounds_summary, queue_depth
from concordia.backends.local_start import CannotStart, JobStarter, choose_runtime
from concordia.backends.local_watch import (
    collect,
    end_job,
    outcome,
    running_state,
    wait_for_exit,
)
from concordia.backends.outputs import copy_outputs
from concordia.backends.runtimes import ContainerCgroup, RuntimeChoice
from concordia.backends.spares import Spares
from concordia.backends.spread import spread_subdirectories
from concordia.core.jdl import job_jdl
from concordia.core.limits import JobLimits
from concordia.core.states import JobStatus
from concordia.settings import LocalBackendSettings

log = logging.getLogger(__name__)

_UUID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class LocalBackend:
    """Runs jobs in ``settings.local_slots`` slots, first come first served.

    ``poll`` returns the pending updates of every job, not only those of ``refs``. A job
    killed by signal N reports exit code 128 + N. Jobs die with the server (bwrap's
    --die-with-parent; podman's containers are removed when it starts again): after a restart
    the reconciler stalls them.

    ``isolated`` is False where some job would run without isolation (a job without an image
    runs under bubblewrap or not at all isolated; a job in an image never runs unisolated: it
    fails without a runtime). ``runtime`` is what runs jobs in images, ``runtime_problem`` why
    none does, ``runtime_summary`` the choice and why not the others, for people.
    """

    name = "local"
    title = "This machine"
    survives_restart = False
    uploads_data = False
    unreachable: str | None = None  # it runs here
    needs_user_token = False  # jobs run as the server's user, whoever owns them

    def __init__(self, settings: LocalBackendSettings) -> None:
        self.settings = settings
        self.isolated = False  # decided by start()
        self.isolation_problem: str | None = "not started"
        self.runtime: str | None = None  # decided by start()
        self.runtime_problem: str | None = "not started"
        self.runtime_problems: dict[str, str] = {}
        self.runtime_summary = "not started"
        self._starter = JobStarter(  # decided by start(): until then no job can start
            isolated=False, choice=RuntimeChoice(None, problem="not started"), etc=None,
            wall_time_factor=settings.local_wall_time_factor,
        )  # fmt: skip
        self._containers: list[ContainerCgroup] = []
        self.changed = asyncio.Event()  # set whenever updates are pending
        self._jobs: dict[str, LocalJob] = {}  # queued or running; of ended jobs nothing is kept
        self._queue: asyncio.Queue[LocalJob] = asyncio.Queue()
        self._pending: list[StatusUpdate] = []
        self._last: dict[str, datetime] = {}
        self._runners: list[asyncio.Task[None]] = []
        self._slots: list[Slot] = []
        self._cgroups: list[SlotCgroup] = []  # until they are removed
        self._spares: Spares | None = None  # made by start()
        s = settings
        self.defaults = JobLimits(
            processes=s.local_max_processes, memory_mb=s.local_memory_mb,
            tmp_mb=s.local_tmp_mb, work_mb=s.local_work_mb,
        )  # fmt: skip
        self.limits_summary = "not started"
        # Measuring work directories: a thread or two of their own, never the shared pool.
        self._measure = ThreadPoolExecutor(max_workers=2, thread_name_prefix="work-size")

    async def probe(self) -> None:
        """Decide on isolation and the runtime of jobs in images (probe runs): what a web
        process shows of the backend whose jobs the worker runs."""
        self.settings.make_data_dir()  # also opens one made 0700 by an older version
        jobs_dir = self.settings.jobs_dir
        jobs_dir.mkdir(exist_ok=True)
        await asyncio.to_thread(spread_subdirectories, jobs_dir)
        mode = self.settings.local_isolation
        problem = await asyncio.to_thread(isolation_problem, mode, jobs_dir)
        etc = await asyncio.to_thread(sandbox.minimal_etc, jobs_dir)
        choice, podman = await asyncio.to_thread(choose_runtime, self.settings, problem)
        self._starter = JobStarter(
            isolated=problem is None, choice=choice, etc=etc, podman=podman,
            wall_time_factor=self.settings.local_wall_time_factor,
        )  # fmt: skip
        self._decided(problem, choice)
        self.limits_summary = await asyncio.to_thread(bounds_summary, self.defaults, self.isolated)

    async def start(self) -> None:
        """Probe, then start the slots."""
        if self._runners:
            return
        await self.probe()
        slots, memory_mb = self.settings.local_slots, self.settings.local_memory_mb
        self._cgroups = await asyncio.to_thread(lambda: [slot_cgroup() for _ in range(slots)])
        try:
            self._spares = await asyncio.to_thread(Spares, self.settings.jobs_dir)
        except OSError as exc:  # each job makes its own directory (and says why it cannot)
            log.warning("no spare job directories: %s", exc)
        podman = self._starter.podman
        if podman is not None and not podman.rootless:
            self._containers = await asyncio.to_thread(
                lambda: [ContainerCgroup(memory_mb) for _ in range(slots)]
            )
        # Each slot's jobs are started by a thread of its own (the event loop answers requests
        # meanwhile), through the slot's fork server (started at the first job).
        self._slots = [
            Slot(
                cgroup,
                ThreadPoolExecutor(1, f"local-slot-{i}"),
                fork_server(cgroup),
                self._containers[i] if self._containers else None,
                self._spares,
            )
            for i, cgroup in enumerate(self._cgroups)
        ]
        for slot in self._slots:
            slot.launcher.submit(slot.restock)
        self._runners = [
            asyncio.create_task(self._runner(slot), name=f"local-slot-{i}")
            for i, slot in enumerate(self._slots)
        ]

    def _decided(self, bwrap_problem: str | None, choice: RuntimeChoice) -> None:
        self.isolated = bwrap_problem is None
        self.runtime = choice.name
        self.runtime_problem, self.runtime_problems = choice.problem, choice.problems
        self.runtime_summary = choice.summary
        if bwrap_problem is None or choice.name is None:
            self.isolation_problem = bwrap_problem
        else:
            self.isolation_problem = (
                f"jobs without an image run without isolation: {bwrap_problem}"
                f" (jobs in images run in {choice.name})"
            )
        if choice.name is None:
            log.warning("local jobs in images cannot run: %s", choice.problem)
        else:
            log.info("local jobs in images run in %s", choice.summary)

    async def close(self) -> None:
        """Kill every job (SIGKILL), collect their logs, stop the slots. No update is emitted."""
        busy = []
        for job in list(self._jobs.values()):
            job.killed = True
            if job.phase == "queued":
                self._end(job)
            else:
                job.signal(signal.SIGKILL)
                busy.append(asyncio.ensure_future(job.finished.wait()))
        if busy:
            await asyncio.wait(busy, timeout=10)
        for task in self._runners:
            task.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        self._runners = []
        self._measure.shutdown(wait=False, cancel_futures=True)
        for slot in self._slots:  # their fork servers leave the slots' cgroups
            await asyncio.to_thread(slot.close)
        self._slots = []
        if self._spares is not None:
            await asyncio.to_thread(self._spares.close)
            self._spares = None
        for _ in range(40):  # the last sandboxes' processes may take a moment to be reaped
            self._cgroups = [cg for cg in self._cgroups if not cg.remove()]
            self._containers = [cg for cg in self._containers if not cg.remove()]
            if not self._cgroups and not self._containers:
                break
            await asyncio.sleep(0.05)

    def use_user_tokens(self, source: UserTokenSource) -> None:
        """Nothing to do: jobs here run as the server's user, not as their owners."""

    def forget_token(self, owner: Owner) -> None:
        """Nothing to do: no token is kept here."""

    async def refresh_user_token(self, refresh_token: str) -> Token:
        raise BackendError("jobs on this machine take no sign-ins: there is nothing to refresh")

    def sign_in_of(self, token: Token) -> SignIn:
        raise BackendError("jobs on this machine take no sign-ins")

    def job_dir(self, uuid: str) -> Path:
        if not _UUID.match(uuid):
            raise ValueError(f"invalid job uuid {uuid!r}")
        return self.settings.jobs_dir / uuid

    def running(self, uuid: str) -> bool:
        job = self._jobs.get(uuid)
        return job is not None and job.phase == "running"

    def describe(self, spec: JobSpec) -> str:
        """The job as DIRAC would read it were it run by hand: its own command, its input
        files by name, its outputs and logs (nothing reads it here: it is for people)."""
        return job_jdl(
            executable=spec.argv[0],
            arguments=spec.argv[1:],
            job_name=spec.name,
            job_group=spec.job_group,
            input_sandbox=[path.name for path in spec.input_files],
            output_sandbox=[*spec.outputs, "std.out", "std.err"],
            std_output="std.out",
            std_error="std.err",
            cpu_time=spec.cpu_time,
            priority=spec.priority,
            tags=spec.tags,
        )

    def capacity(self) -> int:
        """Room for half a queue or more, else none. A worker holds its slots' jobs and a queue
        behind them (a slot that frees starts the next at once); the rest wait in the shared
        queue, where another worker may have room. Taken half a queue at a time: a hand-over
        is a round of its own, too many for one per job that ends."""
        queue = queue_depth(self.settings.local_slots)
        room = self.settings.local_slots + queue - len(self._jobs)
        return room if room >= queue // 2 else 0

    async def submit(self, jobs: list[JobSpec]) -> list[BackendRef]:
        """Queue the jobs; a job already queued or running is left alone, an ended one reruns.

        Raises ValueError, queueing none, if a uuid cannot name a directory.
        """
        dirs = [self.job_dir(spec.uuid) for spec in jobs]
        for spec, jd in zip(jobs, dirs, strict=True):
            if spec.uuid not in self._jobs:
                self._jobs[spec.uuid] = job = LocalJob(spec, jd)
                self._queue.put_nowait(job)
        return [
            BackendRef(uuid=s.uuid, ref=s.uuid, state={"dir": str(d)})
            for s, d in zip(jobs, dirs, strict=True)
        ]

    async def poll(self, refs: list[BackendRef]) -> list[StatusUpdate]:
        return await self.drain()

    async def drain(self) -> list[StatusUpdate]:
        """Every pending update, oldest first."""
        updates, self._pending = self._pending, []
        self.changed.clear()
        return updates

    async def kill(self, refs: list[BackendRef]) -> list[StatusUpdate]:
        """Dequeue or terminate the jobs; return once they are gone and their logs collected.

        No update is emitted for them afterwards (pending ones are dropped): the caller
        records Killed itself. A job here never ends unseen: none is too late (an empty list).
        """
        waits = []
        for ref in refs:
            self._pending = [u for u in self._pending if u.uuid != ref.uuid]
            job = self._jobs.get(ref.uuid)
            if job is None:
                continue
            job.killed = True
            if job.phase == "queued":  # the slot that dequeues it skips it
                self._end(job)
            else:
                waits.append(self._stop(job))
        await asyncio.gather(*waits)
        return []

    async def delete(self, refs: list[BackendRef]) -> None:
        """A waiting job leaves the queue; a finished one is already gone (its files go with
        its directory)."""
        await self.kill(refs)

    async def fetch_outputs(self, ref: BackendRef, dest: Path) -> list[Path]:
        """Copy the job's outputs/ (results and std.out, std.err) to dest; list the files
        copied (none when dest is outputs/ itself)."""
        return await asyncio.to_thread(copy_outputs, self.job_dir(ref.uuid) / "outputs", dest)

    async def _runner(self, slot: Slot) -> None:
        while True:
            job = await self._queue.get()
            if job.phase != "queued":
                continue
            try:
                await self._run(job, slot)
            except Exception as exc:  # a bug must not take the slot down with it
                log.exception("local job %s", job.spec.uuid)
                if not job.killed:
                    self._emit(job.spec.uuid, JobStatus.FAILED, f"Internal error: {exc}")
            finally:
                self._end(job)

    def _end(self, job: LocalJob) -> None:
        job.phase = "ended"
        job.finished.set()
        if self._jobs.get(job.spec.uuid) is job:
            del self._jobs[job.spec.uuid]
            self._last.pop(job.spec.uuid, None)

    async def _run(self, job: LocalJob, slot: Slot) -> None:
        """Run one job in the slot: prepare and start it, watch it, collect its outputs and
        tell how it ended."""
        spec, uuid, starter = job.spec, job.spec.uuid, self._starter
        job.limits = spec.limits.over(self.defaults)
        job.phase = "preparing"
        self._emit(uuid, JobStatus.MATCHED, "Assigned to local slot")
        meter: Meter = slot.cgroup
        if spec.image is not None and starter.choice.name == "podman":
            meter = slot.containers  # its containers' cgroups are below it, not in the slot's
        try:
            before, error = await starter.start(job, slot, meter)
        except CannotStart as exc:
            if not job.killed:
                self._emit(uuid, JobStatus.FAILED, f"Cannot start application: {exc}")
            return
        loop = asyncio.get_running_loop()
        if job.proc is None:  # killed while preparing, or could not start
            await loop.run_in_executor(slot.launcher, collect, job, slot.cgroup, self.settings)
            if error and not job.killed:
                self._emit(uuid, JobStatus.FAILED, error)
            return
        job.phase = "running"
        state = running_state(job, meter)
        if not job.killed:
            self._emit(uuid, JobStatus.RUNNING, "Application", state=state)
        started = time.monotonic()
        await wait_for_exit(
            job, meter, before, wall_seconds=starter.wall_seconds(spec),
            grace_seconds=self.settings.kill_grace_seconds, measure=self._measure,
        )  # fmt: skip
        wall = time.monotonic() - started
        if not job.killed:
            self._emit(uuid, JobStatus.COMPLETING, "Collecting outputs")
        status, rusage_cpu, after = await end_job(
            job, slot.cgroup, self.settings, meter, reaper=slot.launcher, podman=starter.podman
        )
        if job.killed:
            return
        minor, code, cpu = outcome(job, status, rusage_cpu, before, after)
        usage = {"cpu_seconds": cpu and round(cpu, 3), "wall_seconds": round(wall, 3)}
        final = JobStatus.DONE if minor is None else JobStatus.FAILED
        self._emit(uuid, final, minor or "Execution Complete", exit_code=code, state=usage)

    async def _stop(self, job: LocalJob) -> None:
        await job.terminate(self.settings.kill_grace_seconds)
        await job.finished.wait()

    def _update(self, uuid: str, status: JobStatus, minor: str, **kw: Any) -> StatusUpdate:
        now = datetime.now(UTC)
        last = self._last.get(uuid)
        if last is not None and now <= last:  # strictly increasing per job
            now = last + timedelta(microseconds=1)
        self._last[uuid] = now
        return StatusUpdate(uuid=uuid, status=status, minor_status=minor, timestamp=now, **kw)

    def _emit(self, uuid: str, status: JobStatus, minor: str, **kw: Any) -> None:
        self._pending.append(self._update(uuid, status, minor, **kw))
        self.changed.set()
