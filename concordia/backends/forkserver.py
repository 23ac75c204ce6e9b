"""A slot's fork server seen from the server: started once per slot, it starts the slot's jobs.

Starting a job from the server itself took a launcher shell (rlimits, cgroup) and, as root,
setpriv before bwrap: two more execs per job. The fork server is already the job's user, in
the slot's cgroups: each job is one posix_spawn of a small process (forkserver_child), with the
job's rlimits set on the fork server first. Hard rlimits only go down in a process: a job that
needs higher ones than the last gets a new fork server, as does one whose RLIMIT_CPU the fork
server's own CPU time nears.
Its jobs are its children, not the server's: it reaps them when asked (``ForkedJob.reap``);
the server watches them by pidfd and signals them by pid as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from concordia.backends.cgroup import SlotCgroup

log = logging.getLogger(__name__)
_PROGRAM = (Path(__file__).parent / "forkserver_child.py").read_bytes()
#: Socket buffers: room for a request of a long command line and environment.
_BUFFER = 1 << 20
#: What reaping reports of a job whose fork server died: killed (its jobs die with it).
_KILLED = signal.SIGKILL
#: A fork server retires when its own CPU time is this close to its jobs' RLIMIT_CPU.
_CPU_MARGIN = 1.0


class ForkedJob:
    """A job process started by a fork server: its pid (and process group), and its exit code
    once reaped."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._server = server

    def reap(self, meanwhile: Callable[[], object] | None = None) -> tuple[int, float]:
        """Kill what the job left in its process group and reap it: (wait status, CPU seconds
        of it and of the children it reaped). Blocks until it has ended. ``meanwhile`` runs
        once its group is killed, while the fork server reaps it."""
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        status, cpu = self._server.reap(self.pid, meanwhile)
        self.returncode = os.waitstatus_to_exitcode(status)
        return status, cpu


class ForkServer:
    """One slot's fork server: ``prefix`` runs it (setpriv as the job's user, for a server
    running as root), ``cgroup`` (the slot's) takes it in before it starts any job. Started on
    first use, started again if it died. Thread-safe: one request at a time."""

    def __init__(self, prefix: Sequence[str] = (), cgroup: SlotCgroup | None = None) -> None:
        self._prefix = list(prefix)
        self._cgroup = cgroup
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._hard: dict[int, int] = {}  # the fork server's hard rlimits that are lowered
        self._used = 0.0  # its own CPU seconds

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def spawn(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        fds: Mapping[int, int],
        rlimits: Sequence[tuple[int, int, int]] = (),
    ) -> ForkedJob:
        """Start ``argv`` in ``cwd`` in a session of its own with only ``env``, stdin from
        /dev/null, each descriptor of ``fds`` (the number the job gets it as: the descriptor)
        and no other, with ``rlimits`` (resource, soft, hard). Raises OSError (its errno) if
        it cannot start. A slot's fork server starts its next job only once the last is
        reaped: none of its jobs runs when it is replaced."""
        request = {
            "argv": list(argv), "env": dict(env), "cwd": str(cwd), "fds": list(fds),
            "rlimits": [list(limit) for limit in rlimits],
        }  # fmt: skip
        with self._lock:
            if not self._can_take(rlimits):
                self._stop()
            reply = self._ask(request, list(fds.values()), start=True)
            if "pid" not in reply:
                raise _error(reply, "cannot start")
            self._hard.update((which, hard) for which, _, hard in rlimits)
        return ForkedJob(self, int(reply["pid"]))

    def _can_take(self, rlimits: Sequence[tuple[int, int, int]]) -> bool:
        """Whether the running fork server can set these rlimits (no hard one raised) and stay
        below their RLIMIT_CPU itself."""
        for which, soft, hard in rlimits:
            if which in self._hard and _above(hard, self._hard[which]):
                return False
            if which == resource.RLIMIT_CPU and not _above(soft, self._used + _CPU_MARGIN):
                return False
        return True

    def reap(self, pid: int, meanwhile: Callable[[], object] | None = None) -> tuple[int, float]:
        """Wait for one of its jobs to end: (wait status, CPU seconds). ``meanwhile`` (the work
        that follows the job's end) runs once, whatever happens, while the fork server reaps:
        its round trip overlaps that work instead of coming before it."""
        reply = None
        with self._lock:
            try:
                self._send({"reap": pid}, [], start=False)
                sent = True
            except OSError as exc:
                sent = False
                _ended(pid, exc)
            try:
                if meanwhile is not None:
                    meanwhile()
            finally:
                if sent:
                    try:
                        reply = self._receive()
                    except OSError as exc:
                        _ended(pid, exc)
        if reply is None:  # it died, and its jobs with it
            return _KILLED, 0.0
        if "status" not in reply:
            raise _error(reply, "cannot reap")
        return int(reply["status"]), float(reply["cpu"])

    def close(self) -> None:
        """End the fork server (its jobs' processes, if any, die with it)."""
        with self._lock:
            self._stop()

    def _ask(self, request: dict[str, Any], fds: list[int], *, start: bool) -> dict[str, Any]:
        self._send(request, fds, start=start)
        return self._receive()

    def _send(self, request: dict[str, Any], fds: list[int], *, start: bool) -> None:
        if self._sock is None or (self._proc is not None and self._proc.poll() is not None):
            if not start:
                raise OSError("the fork server is not running")
            self._start()
        assert self._sock is not None
        try:
            socket.send_fds(self._sock, [json.dumps(request).encode()], fds)
        except OSError:
            self._stop()
            raise

    def _receive(self) -> dict[str, Any]:
        assert self._sock is not None
        try:
            reply = self._sock.recv(_BUFFER)
        except OSError:
            self._stop()
            raise
        if not reply:
            self._stop()
            raise OSError("the fork server ended")
        answer: dict[str, Any] = json.loads(reply)
        self._used = float(answer.get("used", self._used))
        return answer

    def _start(self) -> None:
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
        # The interpreter itself, not a venv's launcher: the venv may be unreadable to the job's
        # user, and -I -S needs nothing of it.
        python = os.path.realpath(sys.executable)
        cmd = [*self._prefix, python, "-I", "-S", "-", str(theirs.fileno()), str(os.getpid())]
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env={}, cwd="/",
                pass_fds=(theirs.fileno(),), start_new_session=True,
            )  # fmt: skip
            assert self._proc.stdin is not None
            with self._proc.stdin as program:  # read to its end, then run
                program.write(_PROGRAM)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        if self._cgroup is not None:
            self._cgroup.adopt(self._proc.pid)

    def _stop(self) -> None:
        self._hard, self._used = {}, 0.0  # a new one starts with the server's
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)  # it ends at EOF
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


def _ended(pid: int, exc: OSError) -> None:
    log.warning("the fork server of job process %d ended: %s", pid, exc)


def _error(reply: dict[str, Any], default: str) -> OSError:
    """The fork server's failure as the OSError it had (its str() names the errno once)."""
    return OSError(reply.get("errno") or 0, reply.get("error") or default, reply.get("filename"))


def _above(value: int, other: float) -> bool:
    """value > other, for rlimits (RLIM_INFINITY above all)."""
    if value == resource.RLIM_INFINITY:
        return other != resource.RLIM_INFINITY
    return other != resource.RLIM_INFINITY and value > other
