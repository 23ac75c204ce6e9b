"""Starting a local job: its directory with its inputs and proxy, then its process, in its
image with the runtime chosen at start or, without one, under bubblewrap if it can."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from concordia.backends import job_process, runtimes, sandbox, spares
from concordia.backends.base import JobSpec
from concordia.backends.cgroup import Counters
from concordia.backends.job_exit import signal_job
from concordia.backends.job_process import JobProcess
from concordia.backends.local_jobs import LocalJob, Meter, Slot, counters
from concordia.backends.network import NetworkError
from concordia.backends.runtimes import RuntimeChoice
from concordia.settings import LocalBackendSettings

log = logging.getLogger(__name__)

#: The proxy of a job that needs one, in its work directory; removed before outputs are taken.
PROXY_FILE = ".x509up"


class CannotStart(Exception):
    pass


def choose_runtime(
    settings: LocalBackendSettings, bwrap_problem: str | None
) -> tuple[RuntimeChoice, runtimes.Podman | None]:
    """The runtime of jobs in images, and its podman (left over containers removed) where
    that is it."""
    podman: list[runtimes.Podman] = []

    def probe_podman(executable: str) -> str | None:
        podman.append(runtimes.Podman(executable, settings.data_dir / "podman", settings.jobs_dir))
        return podman[-1].probe(settings.jobs_dir, settings.local_memory_mb)

    choice = runtimes.choose_runtime(
        settings.local_runtime, isolation=settings.local_isolation,
        bwrap_problem=bwrap_problem, probe_podman=probe_podman,
    )  # fmt: skip
    if choice.name != "podman":
        return choice, None
    left = podman[-1].remove_leftovers()
    if left:
        log.warning("removed %d podman containers of an earlier run", len(left))
    return choice, podman[-1]


# File work, in the slot's thread (JobStarter.start): even a bare directory's few calls take a
# millisecond or two on a slow filesystem, time the event loop (the web requests' too) would
# wait (bench/load.py).
def prepare(job: LocalJob, made: bool = False) -> tuple[int, int]:
    """A clean job directory with the inputs in work/; the opened logs. ``made``: it is a
    spare just renamed into place (spares.take), clean and whole."""
    jd, work = job.dir, job.dir / "work"
    if not made:
        try:
            spares.make_job_dir(jd)
        except FileExistsError:  # a rescheduled job starts from a clean directory
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(jd / "outputs", ignore_errors=True)
            # Also where a crash came between its mkdir and its chmod.
            jd.chmod(0o711)
            work.mkdir(mode=0o700)
    try:
        for src in job.spec.input_files:
            if src.is_dir():
                shutil.copytree(src, work / src.name, symlinks=True)
            else:
                shutil.copyfile(src, work / src.name)
    except OSError as exc:
        raise CannotStart(f"input file {exc.filename}: {exc.strerror or exc}") from exc
    if job.spec.proxy is not None:
        fd = os.open(work / PROXY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(job.spec.proxy)
    sandbox.hand_over(work)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    out = os.open(jd / "std.out", flags, 0o600)  # the child's stdout: it streams to disk
    err = os.open(jd / "std.err", flags, 0o600)
    return out, err


def _proxy_env(spec: JobSpec, workdir: str) -> dict[str, str]:
    """Where grid tools in the job find the proxy (the work directory, as the job sees it)."""
    return {"X509_USER_PROXY": f"{workdir}/{PROXY_FILE}"} if spec.proxy is not None else {}


@dataclass(frozen=True)
class JobStarter:
    """How the backend starts its jobs, as its probe decided: without an image under
    bubblewrap (``isolated``) or as plain processes; in an image with ``choice``'s runtime
    (none: they cannot start), ``podman`` where that is it; ``etc``: the /etc of jobs without
    an image."""

    isolated: bool
    choice: RuntimeChoice
    etc: Path | None
    wall_time_factor: float
    podman: runtimes.Podman | None = None

    def wall_seconds(self, spec: JobSpec) -> float:
        return max(1, spec.cpu_time) * self.wall_time_factor

    async def start(self, job: LocalJob, slot: Slot, meter: Meter) -> tuple[Counters, str]:
        """Prepare the job's directory and start its process (``job.proc``) unless it was
        killed meanwhile: ``meter``'s counters just before the start, and why it cannot
        start, if so. Raises CannotStart if its directory cannot be prepared.
        Both in the slot's thread, in one hand-over: file work takes a millisecond or two on
        a slow filesystem, a launch returns once the job has exec'd (far more on a busy
        machine), and the event loop answers requests meanwhile."""
        loop = asyncio.get_running_loop()
        try:
            before, job.proc, error = await loop.run_in_executor(
                slot.launcher, self._prepare_and_launch, job, slot, meter
            )
        finally:
            slot.launcher.submit(slot.restock)  # the next job's directory, while this one runs
        if job.proc is not None and job.killed:  # while it started: the kill found no process
            job.signal(signal.SIGKILL)
        return before, error

    def _prepare_and_launch(
        self, job: LocalJob, slot: Slot, meter: Meter
    ) -> tuple[Counters, JobProcess | None, str]:
        made = spares.take(slot.spare, job.dir)
        if made:
            slot.spare = None
        out, err = prepare(job, made)
        if isinstance(meter, runtimes.ContainerCgroup):
            meter.begin()
        before = counters(meter)
        proc, error = None, ""
        try:
            if job.spec.image is not None and self.choice.name is None:
                why = self.choice.problem
                error = f"Cannot start application: its image needs a container runtime ({why})"
            elif not job.killed:
                proc = self._launch(job, out, err, slot)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv or env
            error = f"Cannot start application: {exc}"
        finally:
            os.close(out)  # the process has its own
            os.close(err)
        return before, proc, error

    def _launch(self, job: LocalJob, out: int, err: int, slot: Slot) -> JobProcess:
        """Start the job; a job with a network of its own is held until it is connected."""
        proc = self._start(job, out, err, slot)
        if job.net is not None:
            try:
                job.net.started()
                job.net.connect()
            except NetworkError as exc:
                signal_job(proc.pid, signal.SIGKILL, isolated=True)  # still held
                proc.reap()
                job.net.close()
                job.net = None
                raise OSError(f"its network: {exc}") from exc
        return proc

    def _start(self, job: LocalJob, out: int, err: int, slot: Slot) -> JobProcess:
        """Start the job: in its image with the runtime, or without one as before."""
        spec, image, work = job.spec, job.spec.image, job.dir / "work"
        cgroup, containers, runtime = slot.cgroup, slot.containers, self.choice.name
        under_bwrap = self.isolated if image is None else runtime == "bwrap"
        if spec.network and under_bwrap:
            job.net = job_process.own_network()
        if image is None or runtime != "podman":  # podman's containers have their own
            cgroup.configure(job.limits)
        if image is None:
            job.runtime = "bwrap" if self.isolated else None
            inside = "/work" if self.isolated else str(work)
            return job_process.launch(
                spec.argv, work, forkserver=slot.forkserver, stdout=out, stderr=err,
                cpu_time=spec.cpu_time, isolated=self.isolated, network=job.net, cgroup=cgroup,
                env={**spec.env, **_proxy_env(spec, inside)}, etc=self.etc, limits=job.limits,
            )  # fmt: skip
        job.runtime = runtime
        env = {**image.env, **spec.env, **_proxy_env(spec, image.workdir)}
        if runtime == "podman":
            assert self.podman is not None
            job.container = f"{runtimes.CONTAINER_PREFIX}{spec.uuid}"
            cmd = self.podman.command(
                job.container, spec.argv, image, work, env, network=spec.network,
                cpu_time=spec.cpu_time, wall_seconds=self.wall_seconds(spec), cgroup=containers,
                memory_mb=job.limits.memory_mb or 0, processes=job.limits.processes or 0,
            )  # fmt: skip
            # No launcher: the container's limits are podman's; its client is not the job.
            return job_process.spawn(cmd, work, out, err, self.podman.env)
        container = None
        if runtime == "apptainer":
            assert self.choice.command is not None
            container = runtimes.apptainer_command(
                self.choice.command, spec.argv, image, work, env, network=spec.network
            )
        return job_process.launch(
            spec.argv, work, forkserver=slot.forkserver, stdout=out, stderr=err,
            cpu_time=spec.cpu_time, isolated=True,
            network=job.net, cgroup=cgroup, env=env, rootfs=image.rootfs, etc=self.etc,
            mount=image.workdir, container=container, limits=job.limits,
        )  # fmt: skip
