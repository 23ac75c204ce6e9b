"""Starting a local job's process: the privilege drop and rlimits it starts with, through a
slot's fork server or as the server's own child (a container runtime's client)."""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from concordia.backends.cgroup import SlotCgroup
from concordia.backends.forkserver import ForkedJob, ForkServer
from concordia.backends.network import OutboundNetwork
from concordia.backends.sandbox import (
    JOB_GID,
    JOB_TMP,
    JOB_UID,
    SANDBOX_PATH,
    build_command,
    drops_privileges,
)
from concordia.core.limits import JobLimits

#: The hard RLIMIT_CPU is this many seconds above the soft one (SIGXCPU first, SIGKILL after).
CPU_HARD_MARGIN = 5


@functools.cache
def _setpriv() -> str:
    return shutil.which("setpriv") or "setpriv"


def privilege_drop() -> list[str]:
    """The setpriv prefix that runs a command as JOB_UID, with no group, capability or way to
    regain them, dying with its parent, for a server running as root; empty otherwise."""
    if not drops_privileges():
        return []
    drop = [_setpriv(), f"--reuid={JOB_UID}", f"--regid={JOB_GID}", "--clear-groups"]
    drop += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--pdeathsig=KILL"]
    return [*drop, "--"]


def fork_server(cgroup: SlotCgroup | None = None) -> ForkServer:
    """A fork server for jobs (a slot's, in its ``cgroup``): the job's user, as jobs are."""
    return ForkServer(privilege_drop(), cgroup)


def job_rlimits(
    cpu_time: int, *, file_mb: int = 0, processes: int = 0
) -> list[tuple[int, int, int]]:
    """The rlimits a job starts with, (resource, soft, hard). RLIMIT_CPU is per process (the
    whole job's CPU time is the backend's to watch): SIGXCPU, then SIGKILL CPU_HARD_MARGIN
    seconds later. No file may exceed ``file_mb``. ``processes`` is RLIMIT_NPROC, for where no
    pids cgroup bounds them (it counts every process of the job's user). 0: no bound."""
    soft = max(1, cpu_time)
    return [
        _within_hard(resource.RLIMIT_CPU, soft, soft + CPU_HARD_MARGIN),
        _within_hard(resource.RLIMIT_FSIZE, file_mb * 1024 * 1024),
        _within_hard(resource.RLIMIT_NPROC, processes),
    ]


def _within_hard(which: int, soft: int, hard: int | None = None) -> tuple[int, int, int]:
    """An rlimit (0: none), no higher than the server's hard limit: raising it takes a
    capability even root may lack."""
    ceiling, unbounded = resource.getrlimit(which)[1], resource.RLIM_INFINITY
    values = [soft or unbounded, (soft if hard is None else hard) or unbounded]
    if ceiling != unbounded:
        values = [ceiling if v == unbounded else min(v, ceiling) for v in values]
    return which, values[0], values[1]


def launch(
    argv: Sequence[str],
    workdir: Path,
    *,
    forkserver: ForkServer,
    stdout: int,
    stderr: int,
    cpu_time: int,
    isolated: bool,
    network: OutboundNetwork | None = None,
    env: Mapping[str, str] | None = None,
    cgroup: SlotCgroup | None = None,
    rootfs: Path | None = None,
    mount: str = "/work",
    container: Sequence[str] | None = None,
    etc: Path | None = None,
    limits: JobLimits | None = None,
) -> ForkedJob:
    """Start a job's process in its own session, through ``forkserver`` (the slot's: in
    ``cgroup``, whose bounds of ``limits`` the caller wrote); it returns once it has exec'd.

    The job never gets the server's environment (settings, tokens): under bwrap it gets
    PATH, HOME, TMPDIR and its own variables; without it, the same with HOME=workdir.
    ``container``: the command of another runtime that runs the job (argv, env included), in
    place of the bwrap line. ``limits``: the job's bounds, all filled in. ``network``: the
    job's own (the caller connects it once the process is started), else none. Each job dies
    with the fork server (which dies with the server).
    """
    limits = limits or JobLimits()
    counted = cgroup is not None and "pids" in cgroup.dirs
    rlimits = job_rlimits(
        cpu_time, file_mb=limits.work_mb or 0, processes=0 if counted else limits.processes or 0
    )
    if container is not None:
        cmd = list(container)
    else:
        cmd = build_command(
            argv, workdir, isolated=isolated, network=network.bwrap_args() if network else (),
            env=env, rootfs=rootfs,
            mount=mount, etc=etc, tmp_mb=limits.tmp_mb or 0,
        )  # fmt: skip
    if not isolated or container is not None:  # bwrap's die with theirs (--die-with-parent)
        cmd = [_setpriv(), "--pdeathsig=KILL", "--", *cmd]
    plain_env = {"HOME": str(workdir), "TMPDIR": JOB_TMP, **(env or {})}
    fds = {1: stdout, 2: stderr, **{fd: fd for fd in (network.pass_fds if network else ())}}
    return forkserver.spawn(
        cmd, workdir, {"PATH": SANDBOX_PATH, **({} if isolated else plain_env)}, fds, rlimits
    )


class JobProcess(Protocol):
    """A started job's process: its pid (and process group), its exit code once reaped."""

    pid: int
    returncode: int | None

    def reap(self, meanwhile: Callable[[], object] | None = None) -> tuple[int, float]:
        """Kill what it left in its process group, reap it: (wait status, CPU seconds).
        ``meanwhile`` runs once the group is killed, as early as the reaping lets it."""
        ...


class SpawnedJob:
    """A job process that is the server's own child (a container runtime's client)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.pid, self._proc = proc.pid, proc
        self.returncode: int | None = None

    def reap(self, meanwhile: Callable[[], object] | None = None) -> tuple[int, float]:
        """Reaping it ourselves, not through asyncio's child watcher, gives its CPU time and
        keeps its process group from being reused while we may still signal it."""
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        _, status, usage = os.wait4(self.pid, 0)
        self.returncode = self._proc.returncode = os.waitstatus_to_exitcode(status)
        if meanwhile is not None:
            meanwhile()
        return status, usage.ru_utime + usage.ru_stime


def spawn(
    cmd: Sequence[str],
    cwd: Path,
    stdout: int,
    stderr: int,
    env: Mapping[str, str],
) -> SpawnedJob:
    """Start a command as the server's child in its own session (its process group is the
    job's), no stdin."""
    proc = subprocess.Popen(
        list(cmd), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=cwd,
        env=dict(env), start_new_session=True,
    )  # fmt: skip
    return SpawnedJob(proc)


def own_network() -> OutboundNetwork:
    """A network for one job's sandbox. Its slirp4netns runs as the server's user: the job's
    user namespace maps only the job's uid, none a tool entering it could act as."""
    return OutboundNetwork()
