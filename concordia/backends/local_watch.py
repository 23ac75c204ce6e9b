"""Watching a started local job to its end: its wall-clock limit and whole-job bounds, then
its outputs collected and why it ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from concordia.backends import job_exit, runtimes
from concordia.backends.cgroup import Counters, SlotCgroup
from concordia.backends.local_jobs import LocalJob, Meter, counters
from concordia.backends.local_start import PROXY_FILE
from concordia.backends.outputs import collect_outputs
from concordia.core.limits import exceeded
from concordia.settings import LocalBackendSettings

log = logging.getLogger(__name__)

#: Seconds between two looks at a running job's CPU time and processes; its work directory
#: is measured every WORK_EVERY looks (a walk of its files).
WATCH_SECONDS = 1.0
WORK_EVERY = 2


def running_state(job: LocalJob, meter: Meter) -> dict[str, Any]:
    """What its Running update tells of a started job: its pid, isolation, memory bound and
    (in an image) runtime."""
    assert job.proc is not None
    memory_limit = None
    if job.limits.memory_mb:  # podman without a cgroup of ours: its --memory
        memory_limit = (meter is not None and meter.memory_limited) or job.runtime == "podman"
    isolated = job.runtime is not None
    state: dict[str, Any] = {"pid": job.proc.pid, "isolated": isolated}
    state["memory_limit"] = memory_limit
    if job.spec.image is not None:
        state["runtime"] = job.runtime
    return state


async def wait_for_exit(
    job: LocalJob, meter: Meter, before: Counters, *, wall_seconds: float,
    grace_seconds: float, measure: Executor,
) -> None:  # fmt: skip
    """Wait for the process to end, enforcing the wall-clock limit and the job's bounds
    (its work directory measured in ``measure``'s threads). It is left unreaped (end_job)."""
    assert job.proc is not None
    loop = asyncio.get_running_loop()
    with job_exit.exit_watch(job.proc.pid) as job.exited:
        timer = loop.call_later(wall_seconds, _wall_limit, job, grace_seconds)
        watch = asyncio.create_task(_watch_bounds(job, meter, before, measure))
        try:
            await job.exited
        finally:
            timer.cancel()
            watch.cancel()


async def end_job(
    job: LocalJob, cgroup: SlotCgroup, settings: LocalBackendSettings, meter: Meter, *,
    reaper: Executor, podman: runtimes.Podman | None,
) -> tuple[int, float, Counters]:  # fmt: skip
    """Reap the ended process, then collect what it left (``collect``): its wait status, its
    CPU seconds by wait4 and ``meter``'s counters once it ended. Both in ``reaper``'s thread
    (the slot's): a job of a fork server is reaped by asking it, a round trip to another
    process that takes half a millisecond, or far more on a busy machine. In one hand-over,
    but for a podman client: killed (or having lost its race with a kill), it leaves its
    container, still writing in the work directory until it is removed."""
    assert job.proc is not None
    loop = asyncio.get_running_loop()
    if job.container is None:
        status, cpu, after = await loop.run_in_executor(
            reaper, _reap_and_collect, job, cgroup, settings, meter
        )
    else:
        status, cpu = await loop.run_in_executor(reaper, job.proc.reap)
        if podman is not None and (os.WIFSIGNALED(status) or job.killed or job.timed_out):
            await podman.remove(job.container)
        after = await loop.run_in_executor(reaper, collect, job, cgroup, settings, meter)
    if job.net is not None:
        await asyncio.to_thread(job.net.close)
    return status, cpu, after


def _reap_and_collect(
    job: LocalJob, cgroup: SlotCgroup, settings: LocalBackendSettings, meter: Meter
) -> tuple[int, float, Counters]:
    assert job.proc is not None
    after: list[Counters] = []
    status, cpu = job.proc.reap(lambda: after.append(collect(job, cgroup, settings, meter)))
    return status, cpu, after[0]


def _wall_limit(job: LocalJob, grace_seconds: float) -> None:
    if not job.killed:
        job.timed_out = True
        job.terminating = asyncio.create_task(job.terminate(grace_seconds))


async def _watch_bounds(job: LocalJob, meter: Meter, before: Counters, measure: Executor) -> None:
    """End the job (SIGKILL) once it is over a bound of the whole job: its CPU time, its
    process bound (a fork refused), the bytes in its work directory."""
    loop = asyncio.get_running_loop()
    work, work_mb = job.dir / "work", job.limits.work_mb or 0
    looks = 0
    while job.over is None and not job.killed:
        await asyncio.sleep(WATCH_SECONDS)
        now = counters(meter)
        used = None if now.cpu is None or before.cpu is None else now.cpu - before.cpu
        looks += 1
        size = None
        if work_mb and looks % WORK_EVERY == 0:
            size = await loop.run_in_executor(measure, _allocated, work, work_mb)
        job.over = exceeded(
            job.limits, job.spec.cpu_time, cpu_used=used,
            forks_refused=now.refused - before.refused, work_bytes=size,
        )  # fmt: skip
    if job.over is not None and not job.killed:
        log.info("local job %s: %s", job.spec.uuid, job.over)
        job.signal(signal.SIGKILL)


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


def collect(
    job: LocalJob, cgroup: SlotCgroup, settings: LocalBackendSettings, meter: Meter = None
) -> Counters:
    """After the process (in a thread: file work): kill what it left, collect outputs,
    remove work/; the counters of the cgroup its processes were in (``meter``)."""
    if job.runtime is None:  # nothing outlives a sandbox; a plain job may have left some
        for pid in cgroup.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    ended = counters(meter)
    job.outputs_exceeded = _tidy(job, settings)
    return ended


def _tidy(job: LocalJob, settings: LocalBackendSettings) -> str | None:
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


def outcome(
    job: LocalJob, status: int, rusage_cpu: float, before: Counters, after: Counters
) -> tuple[str | None, int, float | None]:
    """How the reaped job ended: why it failed (None: it succeeded), its exit code, and the
    CPU seconds of its processes (None where unknown). ``before`` and ``after``: its meter's
    counters as it started and once it ended."""
    spec, isolated = job.spec, job.runtime is not None
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
    return minor or job.outputs_exceeded, code, cpu
