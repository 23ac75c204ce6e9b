"""The local backend: a pool of slots running jobs on this machine, each in its image (Apptainer,
bubblewrap or podman), a job without one under bubblewrap if it can."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from concordia.backends import isolation, job_exit, job_process, runtimes, sandbox
from concordia.backends.base import (
    BackendError,
    BackendRef,
    JobSpec,
    Owner,
    StatusUpdate,
    Token,
    UserTokenSource,
)
from concordia.backends.cgroup import Counters, SlotCgroup, slot_cgroup
from concordia.backends.forkserver import ForkServer
from concordia.backends.network import NetworkError, OutboundNetwork
from concordia.backends.outputs import collect_outputs, copy_outputs
from concordia.backends.runtimes import ContainerCgroup, RuntimeChoice
from concordia.core.jdl import job_jdl
from concordia.core.limits import JobLimits, exceeded
from concordia.core.states import JobStatus
from concordia.settings import Settings

log = logging.getLogger(__name__)

_UUID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: The proxy of a job that needs one, in its work directory; removed before outputs are taken.
PROXY_FILE = ".x509up"
#: Seconds between two looks at a running job's CPU time and processes; its work directory
#: is measured every WORK_EVERY looks (a walk of its files).
WATCH_SECONDS = 1.0
WORK_EVERY = 2


@dataclass(eq=False)
class _Job:
    spec: JobSpec
    dir: Path
    phase: Literal["queued", "preparing", "running", "ended"] = "queued"
    killed: bool = False  # by kill() or close(): no more updates
    timed_out: bool = False
    #: The bound it went over (its minor status), when the backend ended it for that.
    over: str | None = None
    limits: JobLimits = field(default_factory=JobLimits)
    proc: job_process.JobProcess | None = None
    #: What runs it: "apptainer", "bwrap" or "podman"; None: a plain process.
    runtime: str | None = None
    #: Its podman container's name.
    container: str | None = None
    #: Its own network (slirp4netns), for a sandboxed job that asks for one.
    net: OutboundNetwork | None = None
    exited: asyncio.Future[Any] | None = None
    terminating: asyncio.Task[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    #: The output bound collection stopped at (a minor status), if any.
    outputs_exceeded: str | None = None


class _CannotStart(Exception):
    pass


@dataclass(eq=False)
class _Slot:
    """What one slot runs its jobs with: its cgroup, the thread that starts them, its fork
    server, and the parent cgroup of its podman containers (rootful podman only)."""

    cgroup: SlotCgroup
    launcher: ThreadPoolExecutor
    forkserver: ForkServer
    containers: ContainerCgroup | None = None

    def close(self) -> None:
        self.launcher.shutdown()
        self.forkserver.close()


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

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.isolated = False  # decided by start()
        self.isolation_problem: str | None = "not started"
        self.runtime: str | None = None  # decided by start()
        self.runtime_problem: str | None = "not started"
        self.runtime_problems: dict[str, str] = {}
        self.runtime_summary = "not started"
        self._runtime_command: str | None = None
        self._podman: runtimes.Podman | None = None
        self._containers: list[ContainerCgroup] = []
        self.changed = asyncio.Event()  # set whenever updates are pending
        self._jobs: dict[str, _Job] = {}  # queued or running; of ended jobs nothing is kept
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._pending: list[StatusUpdate] = []
        self._last: dict[str, datetime] = {}
        self._runners: list[asyncio.Task[None]] = []
        self._slots: list[_Slot] = []
        self._cgroups: list[SlotCgroup] = []  # until they are removed
        self._etc: Path | None = None  # the /etc of jobs without an image
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
        mode = self.settings.local_isolation
        problem = await asyncio.to_thread(isolation.isolation_problem, mode, jobs_dir)
        self._etc = await asyncio.to_thread(sandbox.minimal_etc, jobs_dir)
        choice = await asyncio.to_thread(self._choose_runtime, problem)
        self._decided(problem, choice)
        self.limits_summary = await asyncio.to_thread(self._bounds_summary)

    async def start(self) -> None:
        """Probe, then start the slots."""
        if self._runners:
            return
        await self.probe()
        slots, memory_mb = self.settings.local_slots, self.settings.local_memory_mb
        self._cgroups = await asyncio.to_thread(lambda: [slot_cgroup() for _ in range(slots)])
        if self._podman is not None and not self._podman.rootless:
            self._containers = await asyncio.to_thread(
                lambda: [ContainerCgroup(memory_mb) for _ in range(slots)]
            )
        # Each slot's jobs are started by a thread of its own (the event loop answers requests
        # meanwhile), through the slot's fork server (started at the first job).
        self._slots = [
            _Slot(
                cgroup,
                ThreadPoolExecutor(1, f"local-slot-{i}"),
                job_process.fork_server(cgroup),
                self._containers[i] if self._containers else None,
            )
            for i, cgroup in enumerate(self._cgroups)
        ]
        self._runners = [
            asyncio.create_task(self._runner(slot), name=f"local-slot-{i}")
            for i, slot in enumerate(self._slots)
        ]

    def _choose_runtime(self, bwrap_problem: str | None) -> RuntimeChoice:
        podman: list[runtimes.Podman] = []

        def probe_podman(executable: str) -> str | None:
            settings = self.settings
            podman.append(
                runtimes.Podman(executable, settings.data_dir / "podman", settings.jobs_dir)
            )
            return podman[-1].probe(settings.jobs_dir, settings.local_memory_mb)

        choice = runtimes.choose_runtime(
            self.settings.local_runtime, isolation=self.settings.local_isolation,
            bwrap_problem=bwrap_problem, probe_podman=probe_podman,
        )  # fmt: skip
        if choice.name == "podman":
            self._podman = podman[-1]
            left = self._podman.remove_leftovers()
            if left:
                log.warning("removed %d podman containers of an earlier run", len(left))
        return choice

    def _bounds_summary(self) -> str:
        """What bounds a job, and by which mechanism: for /me and the start banner."""
        probe = slot_cgroup()
        have = probe.bounds
        probe.remove()
        how = [f"cgroup v{probe.version} ({', '.join(have)})" if have else "no writable cgroup"]
        if "pids" not in have:
            how.append("processes by RLIMIT_NPROC of the job's user")
        if "memory" not in have:
            how.append("no memory bound")
        if not {"cpuacct", "cpu"} & set(have):  # v1's and v2's names
            how.append("CPU time per process only (RLIMIT_CPU)")
        if self.isolated and sandbox.bwrap_supports("--size"):
            how.append("tmpfs sizes")
        how.append("/work measured while the job runs, RLIMIT_FSIZE")
        return f"{self.defaults.describe()}; by {', '.join(how)}"

    def _decided(self, bwrap_problem: str | None, choice: RuntimeChoice) -> None:
        self.isolated = bwrap_problem is None
        self.runtime, self._runtime_command = choice.name, choice.command
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
                self._signal(job, signal.SIGKILL)
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
                self._jobs[spec.uuid] = job = _Job(spec, jd)
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

    async def _runner(self, slot: _Slot) -> None:
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

    def _end(self, job: _Job) -> None:
        job.phase = "ended"
        job.finished.set()
        if self._jobs.get(job.spec.uuid) is job:
            del self._jobs[job.spec.uuid]
            self._last.pop(job.spec.uuid, None)

    async def _run(self, job: _Job, slot: _Slot) -> None:
        spec, uuid = job.spec, job.spec.uuid
        cgroup, containers = slot.cgroup, slot.containers
        job.limits = spec.limits.over(self.defaults)
        job.phase = "preparing"
        self._emit(uuid, JobStatus.MATCHED, "Assigned to local slot")
        try:
            out, err = await asyncio.to_thread(_prepare, job)
        except _CannotStart as exc:
            if not job.killed:
                self._emit(uuid, JobStatus.FAILED, f"Cannot start application: {exc}")
            return
        meter: SlotCgroup | ContainerCgroup | None = cgroup
        if spec.image is not None and self.runtime == "podman":
            meter = containers  # its containers' cgroups are below it, not in the slot's
            if containers is not None:
                containers.begin()
        before = _counters(meter)
        error = ""
        try:
            if spec.image is not None and self.runtime is None:
                why = self.runtime_problem
                error = f"Cannot start application: its image needs a container runtime ({why})"
            elif not job.killed:
                # In a thread: a launch returns once the job has exec'd, a millisecond or
                # far more on a busy machine, and the event loop answers requests meanwhile.
                job.proc = await asyncio.get_running_loop().run_in_executor(
                    slot.launcher, self._launch, job, out, err, slot
                )
                if job.killed:  # while it started: the kill found no process to signal
                    self._signal(job, signal.SIGKILL)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv or env
            error = f"Cannot start application: {exc}"
        finally:
            os.close(out)
            os.close(err)
        if job.proc is None:  # killed while preparing, or could not start
            await self._finish(job, cgroup)
            if error and not job.killed:
                self._emit(uuid, JobStatus.FAILED, error)
            return
        job.phase = "running"
        memory_limit = None
        if job.limits.memory_mb:  # podman without a cgroup of ours: its --memory
            memory_limit = (meter is not None and meter.memory_limited) or job.runtime == "podman"
        isolated = job.runtime is not None
        state: dict[str, Any] = {"pid": job.proc.pid, "isolated": isolated}
        state["memory_limit"] = memory_limit
        if spec.image is not None:
            state["runtime"] = job.runtime
        if not job.killed:
            self._emit(uuid, JobStatus.RUNNING, "Application", state=state)
        started = time.monotonic()
        status, rusage_cpu = await self._wait(job, meter, before)
        wall = time.monotonic() - started
        if not job.killed:
            self._emit(uuid, JobStatus.COMPLETING, "Collecting outputs")
        after = await self._finish(job, cgroup, meter)
        if job.killed:
            return
        # wait4 on bwrap (or podman's client) misses the sandbox's processes: only the cgroup
        # knows their CPU time.
        cpu = rusage_cpu if not isolated else None
        if before.cpu is not None and after.cpu is not None:
            cpu = after.cpu - before.cpu
        oom = after.ooms > before.ooms
        if job.runtime == "podman":  # a peak at the limit, then the OOM killer's SIGKILL
            oom = oom and os.waitstatus_to_exitcode(status) == 128 + signal.SIGKILL
        minor, code = job_exit.exit_reason(
            status, cpu, spec.cpu_time, isolated=isolated, oom=oom, stderr=job.dir / "std.err",
            runtime=job.runtime, program=spec.argv[0] if spec.argv else "",
            file_mb=job.limits.work_mb or 0,
        )  # fmt: skip
        if job.timed_out:
            minor = "Wall time limit exceeded"
        if minor is not None and after.refused > before.refused:  # a fork refused, then failed
            minor = exceeded(job.limits, spec.cpu_time, forks_refused=1)
        if job.over is not None:
            minor = job.over
        minor = minor or job.outputs_exceeded
        usage = {"cpu_seconds": cpu and round(cpu, 3), "wall_seconds": round(wall, 3)}
        final = JobStatus.DONE if minor is None else JobStatus.FAILED
        self._emit(uuid, final, minor or "Execution Complete", exit_code=code, state=usage)

    async def _finish(
        self, job: _Job, cgroup: SlotCgroup, meter: SlotCgroup | ContainerCgroup | None = None
    ) -> Counters:
        """After the process: kill what it left, collect outputs, remove work/; the counters
        of the cgroup its processes were in (``meter``)."""
        if job.runtime is None:  # nothing outlives a sandbox; a plain job may have left some
            for pid in cgroup.pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        counters = _counters(meter)
        job.outputs_exceeded = await asyncio.to_thread(_tidy, job, self.settings)
        return counters

    async def _wait(
        self, job: _Job, meter: SlotCgroup | ContainerCgroup | None, before: Counters
    ) -> tuple[int, float]:
        """Wait for the process to end, enforcing the wall-clock limit and the job's bounds;
        reap it. A podman client killed (or that lost its race with a kill) leaves its
        container: removed."""
        assert job.proc is not None
        limit = self._wall_seconds(job.spec)
        with job_exit.exit_watch(job.proc.pid) as job.exited:
            timer = asyncio.get_running_loop().call_later(limit, self._wall_limit, job)
            watch = asyncio.create_task(self._watch_bounds(job, meter, before))
            try:
                await job.exited
            finally:
                timer.cancel()
                watch.cancel()
        status, cpu = job.proc.reap()
        if job.net is not None:
            await asyncio.to_thread(job.net.close)
        if job.container is not None and self._podman is not None:
            if os.WIFSIGNALED(status) or job.killed or job.timed_out:
                await self._podman.remove(job.container)
        return status, cpu

    async def _watch_bounds(
        self, job: _Job, meter: SlotCgroup | ContainerCgroup | None, before: Counters
    ) -> None:
        """End the job (SIGKILL) once it is over a bound of the whole job: its CPU time, its
        process bound (a fork refused), the bytes in its work directory."""
        loop = asyncio.get_running_loop()
        work, work_mb = job.dir / "work", job.limits.work_mb or 0
        looks = 0
        while job.over is None and not job.killed:
            await asyncio.sleep(WATCH_SECONDS)
            now = _counters(meter)
            used = None if now.cpu is None or before.cpu is None else now.cpu - before.cpu
            looks += 1
            size = None
            if work_mb and looks % WORK_EVERY == 0:
                size = await loop.run_in_executor(self._measure, _allocated, work, work_mb)
            job.over = exceeded(
                job.limits, job.spec.cpu_time, cpu_used=used,
                forks_refused=now.refused - before.refused, work_bytes=size,
            )  # fmt: skip
        if job.over is not None and not job.killed:
            log.info("local job %s: %s", job.spec.uuid, job.over)
            self._signal(job, signal.SIGKILL)

    def _wall_seconds(self, spec: JobSpec) -> float:
        return max(1, spec.cpu_time) * self.settings.local_wall_time_factor

    def _launch(self, job: _Job, out: int, err: int, slot: _Slot) -> job_process.JobProcess:
        """Start the job; a job with a network of its own is held until it is connected."""
        proc = self._start(job, out, err, slot)
        if job.net is not None:
            try:
                job.net.started()
                job.net.connect()
            except NetworkError as exc:
                job_exit.signal_job(proc.pid, signal.SIGKILL, isolated=True)  # still held
                proc.reap()
                job.net.close()
                job.net = None
                raise OSError(f"its network: {exc}") from exc
        return proc

    def _start(self, job: _Job, out: int, err: int, slot: _Slot) -> job_process.JobProcess:
        """Start the job: in its image with the runtime, or without one as before."""
        spec, image, work = job.spec, job.spec.image, job.dir / "work"
        cgroup, containers = slot.cgroup, slot.containers
        under_bwrap = self.isolated if image is None else self.runtime == "bwrap"
        if spec.network and under_bwrap:
            job.net = job_process.own_network()
        if image is None or self.runtime != "podman":  # podman's containers have their own
            cgroup.configure(job.limits)
        if image is None:
            job.runtime = "bwrap" if self.isolated else None
            inside = "/work" if self.isolated else str(work)
            return job_process.launch(
                spec.argv, work, forkserver=slot.forkserver, stdout=out, stderr=err,
                cpu_time=spec.cpu_time, isolated=self.isolated, network=job.net, cgroup=cgroup,
                env={**spec.env, **_proxy_env(spec, inside)}, etc=self._etc, limits=job.limits,
            )  # fmt: skip
        job.runtime = self.runtime
        env = {**image.env, **spec.env, **_proxy_env(spec, image.workdir)}
        if self.runtime == "podman":
            assert self._podman is not None
            job.container = f"{runtimes.CONTAINER_PREFIX}{spec.uuid}"
            cmd = self._podman.command(
                job.container, spec.argv, image, work, env, network=spec.network,
                cpu_time=spec.cpu_time, wall_seconds=self._wall_seconds(spec), cgroup=containers,
                memory_mb=job.limits.memory_mb or 0, processes=job.limits.processes or 0,
            )  # fmt: skip
            # No launcher: the container's limits are podman's; its client is not the job.
            return job_process.spawn(cmd, work, out, err, self._podman.env)
        container = None
        if self.runtime == "apptainer":
            assert self._runtime_command is not None
            container = runtimes.apptainer_command(
                self._runtime_command, spec.argv, image, work, env, network=spec.network
            )
        return job_process.launch(
            spec.argv, work, forkserver=slot.forkserver, stdout=out, stderr=err,
            cpu_time=spec.cpu_time, isolated=True,
            network=job.net, cgroup=cgroup, env=env, rootfs=image.rootfs, etc=self._etc,
            mount=image.workdir, container=container, limits=job.limits,
        )  # fmt: skip

    def _wall_limit(self, job: _Job) -> None:
        if not job.killed:
            job.timed_out = True
            job.terminating = asyncio.create_task(self._terminate(job))

    async def _stop(self, job: _Job) -> None:
        await self._terminate(job)
        await job.finished.wait()

    async def _terminate(self, job: _Job) -> None:
        """SIGTERM, then SIGKILL after the grace period."""
        if job.exited is not None and not job.exited.done():
            self._signal(job, signal.SIGTERM)
            done, _ = await asyncio.wait({job.exited}, timeout=self.settings.kill_grace_seconds)
            if not done:
                self._signal(job, signal.SIGKILL)

    def _signal(self, job: _Job, sig: int) -> None:
        if job.proc is not None and job.proc.returncode is None:  # not reaped: pid still ours
            # podman's client passes SIGTERM on to its container; SIGKILL ends only the client
            # (_wait then removes the container).
            sandboxed = job.runtime is not None and job.runtime != "podman"
            job_exit.signal_job(job.proc.pid, sig, isolated=sandboxed)

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


def _counters(meter: SlotCgroup | ContainerCgroup | None) -> Counters:
    return Counters() if meter is None else meter.counters()


def _allocated(root: Path, stop_mb: int) -> int:
    """Bytes of disk the files under ``root`` take (a sparse file only what it holds), the
    walk ending once past ``stop_mb``."""
    total, stop, todo = 0, stop_mb * 1024 * 1024, [root]
    while todo and total <= stop:
        with contextlib.suppress(OSError), os.scandir(todo.pop()) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(Path(entry.path))
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


def _proxy_env(spec: JobSpec, workdir: str) -> dict[str, str]:
    """Where grid tools in the job find the proxy (the work directory, as the job sees it)."""
    return {"X509_USER_PROXY": f"{workdir}/{PROXY_FILE}"} if spec.proxy is not None else {}


# File work, in threads: even a bare directory's few calls take a millisecond or two on a
# slow filesystem, time the event loop (the web requests' too) would wait (bench/load.py).
def _prepare(job: _Job) -> tuple[int, int]:
    """A clean job directory with the inputs in work/; the opened logs."""
    jd, work = job.dir, job.dir / "work"
    try:
        jd.mkdir()
        jd.chmod(0o711)  # whatever the server's umask (077): the sandbox's uid passes to work/
    except FileExistsError:  # a rescheduled job starts from a clean directory
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(jd / "outputs", ignore_errors=True)
    work.mkdir(mode=0o700)
    try:
        for src in job.spec.input_files:
            if src.is_dir():
                shutil.copytree(src, work / src.name, symlinks=True)
            else:
                shutil.copyfile(src, work / src.name)
    except OSError as exc:
        raise _CannotStart(f"input file {exc.filename}: {exc.strerror or exc}") from exc
    if job.spec.proxy is not None:
        fd = os.open(work / PROXY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(job.spec.proxy)
    sandbox.hand_over(work)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    out = os.open(jd / "std.out", flags, 0o600)  # the child's stdout: it streams to disk
    err = os.open(jd / "std.err", flags, 0o600)
    return out, err


def _tidy(job: _Job, settings: Settings) -> str | None:
    """After the process: the proxy gone (never an output), the outputs collected, work/
    removed unless kept; the output bound collection stopped at, if any."""
    (job.dir / "work" / PROXY_FILE).unlink(missing_ok=True)
    limits = settings.max_output_files, settings.max_output_bytes
    exceeded = collect_outputs(job.dir, job.spec.outputs, *limits).exceeded
    if settings.local_keep_workdir:
        return exceeded
    try:
        (job.dir / "work").rmdir()  # the usual case: the job left nothing
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(job.dir / "work", ignore_errors=True)
    return exceeded


def queue_depth(slots: int) -> int:
    """Jobs a worker keeps queued behind its running ones: two per slot, and at least 16."""
    return max(2 * slots, 16)
