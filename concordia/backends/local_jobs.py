"""The local backend's record of a job, the slots that run them, and what bounds a job."""

from __future__ import annotations

import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from concordia.backends import sandbox
from concordia.backends.base import JobSpec
from concordia.backends.cgroup import Counters, SlotCgroup, slot_cgroup
from concordia.backends.forkserver import ForkServer
from concordia.backends.job_exit import signal_job
from concordia.backends.job_process import JobProcess
from concordia.backends.network import OutboundNetwork
from concordia.backends.runtimes import ContainerCgroup
from concordia.backends.spares import Spares
from concordia.core.limits import JobLimits

#: The cgroup that counts a job's processes: its slot's, or (rootful podman) the parent of
#: the slot's containers; None: none does.
Meter = SlotCgroup | ContainerCgroup | None


@dataclass(eq=False)
class LocalJob:
    """A job the backend holds, from its submission until it has ended."""

    spec: JobSpec
    dir: Path
    phase: Literal["queued", "preparing", "running", "ended"] = "queued"
    killed: bool = False  # by kill() or close(): no more updates
    timed_out: bool = False
    #: The bound it went over (its minor status), when the backend ended it for that.
    over: str | None = None
    limits: JobLimits = field(default_factory=JobLimits)
    proc: JobProcess | None = None
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

    def signal(self, sig: int) -> None:
        """Signal the job's processes."""
        if self.proc is not None and self.proc.returncode is None:  # not reaped: pid still ours
            # podman's client passes SIGTERM on to its container; SIGKILL ends only the client
            # (wait_for_exit then removes the container).
            sandboxed = self.runtime is not None and self.runtime != "podman"
            signal_job(self.proc.pid, sig, isolated=sandboxed)

    async def terminate(self, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after the grace period."""
        if self.exited is not None and not self.exited.done():
            self.signal(signal.SIGTERM)
            done, _ = await asyncio.wait({self.exited}, timeout=grace_seconds)
            if not done:
                self.signal(signal.SIGKILL)


@dataclass(eq=False)
class Slot:
    """What one slot runs its jobs with: its cgroup, the thread that starts and reaps them,
    its fork server, the parent cgroup of its podman containers (rootful podman only), and
    where it makes its next job's directory ahead (None: each job makes its own)."""

    cgroup: SlotCgroup
    launcher: ThreadPoolExecutor
    forkserver: ForkServer
    containers: ContainerCgroup | None = None
    spares: Spares | None = None
    #: The next job's directory, made (spares.take renames it into place); only the slot's
    #: thread uses it.
    spare: Path | None = None

    def restock(self) -> None:
        """Make the next job's directory if none is (in the slot's thread)."""
        if self.spares is not None and self.spare is None:
            self.spare = self.spares.make()

    def close(self) -> None:
        """Stop its thread and its fork server; its spare goes with the backend's spares."""
        self.launcher.shutdown()
        self.forkserver.close()
        self.spare = None


def counters(meter: Meter) -> Counters:
    return Counters() if meter is None else meter.counters()


def bounds_summary(defaults: JobLimits, isolated: bool) -> str:
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
    if isolated and sandbox.bwrap_supports("--size"):
        how.append("tmpfs sizes")
    how.append("/work measured while the job runs, RLIMIT_FSIZE")
    return f"{defaults.describe()}; by {', '.join(how)}"


def queue_depth(slots: int) -> int:
    """Jobs a worker keeps queued behind its running ones: two per slot, and at least 16."""
    return max(2 * slots, 16)
