"""The end of a local job's process: waiting for it, signalling the job's processes, and why
it ended."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from concordia.core.limits import disk_exceeded

_START_ERROR = re.compile(r"^bwrap: ")
#: A container runtime's own error, with the exit codes it uses for it: podman's (125: its
#: error, 126: cannot run the command, 127: no such command), its init's (catatonit: the
#: job's program cannot be run) and Apptainer's.
_RUNTIME_ERRORS = (
    ("podman", re.compile(r"^Error: "), (125, 126, 127)),
    ("podman", re.compile(r"^ERROR \(catatonit:\d+\): failed to exec pid1: "), (1,)),
    ("apptainer", re.compile(r"^FATAL: +"), (255,)),
)


@contextlib.contextmanager
def exit_watch(pid: int) -> Iterator[asyncio.Future[Any]]:
    """A future resolved when the process ends, leaving it unreaped (JobProcess.reap)."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # kernel < 5.3: a thread looks (the ended process stays a zombie)
        yield asyncio.ensure_future(asyncio.to_thread(until_ended, pid))
        return
    exited: asyncio.Future[Any] = loop.create_future()

    def ended() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, ended)
    try:
        yield exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def until_ended(pid: int, timeout: float | None = None) -> bool:
    """Wait until the process has ended (a zombie or gone); False at ``timeout``."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # kernel < 5.3: look at its state
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            except (OSError, IndexError):
                return True
            if state in ("Z", "X"):
                return True
            time.sleep(0.05)
        return False
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def signal_job(pid: int, sig: int, *, isolated: bool) -> None:
    """Signal a job's processes. Under bwrap the job runs in its own session below bwrap:
    signal the sandbox's processes, and bwrap only with SIGKILL (its death ends them all)."""
    targets = descendants(pid)
    if not isolated or sig == signal.SIGKILL:
        with contextlib.suppress(OSError):
            os.killpg(pid, sig)
    for target in targets:
        with contextlib.suppress(OSError):
            os.kill(target, sig)


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, from /proc's lists of children."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{parent}/task"):
                with contextlib.suppress(OSError, ValueError):
                    children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
                    found += map(int, children)
                    todo += map(int, children)
    return found


def exit_reason(
    status: int,
    cpu: float | None,
    cpu_time: int,
    *,
    isolated: bool,
    oom: bool,
    stderr: Path,
    runtime: str | None = None,
    program: str = "",
    file_mb: int = 0,
) -> tuple[str | None, int]:
    """(None, 0) for a success, else (why the job failed, its exit code; 128+N for signal N).
    ``runtime``: the container runtime that ran the job, whose own errors are recognised;
    ``program``: the job's argv[0], named where such an error does not say it; ``file_mb``:
    the size no file may exceed (the bound of /work)."""
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    code = 128 + sig if sig else os.WEXITSTATUS(status)
    if isolated and 128 < code < 128 + 65:  # bwrap reports a job killed by N as 128+N
        sig = code - 128
    if oom and code != 0:
        return "Memory limit exceeded", code
    cpu_out = cpu is not None and cpu >= max(1, cpu_time)  # SIGKILL at the hard limit
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_out):
        return "CPU time limit exceeded", code
    if sig == signal.SIGXFSZ and file_mb:
        return disk_exceeded(file_mb), code
    if sig:
        return f"Application killed by signal {sig}", code
    if code == 0:
        return None, 0
    error = start_error(_tail(stderr), code, runtime=runtime, program=program)
    if error:
        return f"Cannot start application: {error}", code
    return f"Application exited with code {code}", code


def start_error(
    stderr_tail: str, code: int | None = None, *, runtime: str | None = None, program: str = ""
) -> str | None:
    """The launcher's, bwrap's or the container runtime's own error (the job never ran), from
    the end of std.err; a runtime's only with the exit code it gives for it."""
    lines = [line for line in stderr_tail.splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1].strip()
    if _START_ERROR.match(last):
        return last
    for name, pattern, codes in _RUNTIME_ERRORS:
        if name == runtime and code in codes and pattern.match(last):
            why = pattern.sub("", last, count=1).strip()
            if "catatonit" in pattern.pattern:  # its "pid1" is the job's program
                why = f"cannot run {program or 'the program'}: {why}"
            return f"{name}: {why}"
    return None


def _tail(path: Path, size: int = 2048) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
