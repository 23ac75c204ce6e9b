"""The program of a slot's fork server: it starts each job of the slot with one posix_spawn.

It runs as the job's user (setpriv started it, for a server running as root) inside the
slot's cgroups, so a job's process needs no launcher of its own: its rlimits set here, then a
posix_spawn of this small process with the job's descriptors and session (bwrap, or the job's
program). It uses the standard library only and is run with ``python -I -S -c``: nothing of
the server (its modules, settings, environment) is in it.

Requests come on the SOCK_SEQPACKET socket whose descriptor is argv[1], one JSON object each,
the descriptors a job gets attached (SCM_RIGHTS); one JSON reply each:
- ``{"argv", "env", "cwd", "fds", "rlimits"}`` with len(fds) descriptors, each given to the
  job as the number in ``fds``: ``{"pid", "used"}``, or ``{"errno", "error", "filename"}``
  (an OSError's parts) if it could not start (nothing is left running);
- ``{"reap": pid}``: waits for that job, ``{"status", "cpu", "used"}`` (its wait status, its
  CPU seconds and those of the children it reaped). Until then an ended job stays a zombie, so
  its pid (and process group) cannot be reused while the server may signal it.
``used``: the fork server's own CPU seconds. It ends when the server closes the socket, or
dies (PR_SET_PDEATHSIG), and kills the processes of the jobs it has not reaped as it ends.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import resource
import signal
import socket
import sys

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
#: Bytes of the largest request: a job's command line and environment.
MAX_REQUEST = 1 << 20
#: Descriptors one request carries at most.
MAX_FDS = 16

_libc = ctypes.CDLL(None, use_errno=True)
#: What a job gets as default that Python ignores here (an ignored signal stays ignored across
#: exec): SIGXCPU is ignored here, as this process shares its jobs' RLIMIT_CPU.
_DEFAULT = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGXCPU)
#: The jobs started and not yet reaped.
_started: set[int] = set()


def _die_with(parent: int) -> None:
    signal.signal(signal.SIGTERM, _end)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above
        _end()


def _end(*_: object) -> None:
    """Kill every process of the jobs not reaped, then exit. A job's sandbox dies with its
    parent only once bwrap has asked for it (--die-with-parent), some milliseconds after its
    start: a job started just before the server died would outlive it."""
    tree, todo = list(_started), list(_started)
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as children:
                    found = [int(pid) for pid in children.read().split()]
            except (OSError, ValueError):
                continue
            tree += found
            todo += found
    for pid in reversed(tree):  # the deepest first: none is reparented before its turn
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)


def _start(request: dict, fds: list[int]) -> dict:  # type: ignore[type-arg]
    """posix_spawn (a vfork, far cheaper than a fork of Python) the job with the rlimits set on
    this process first: the child inherits them. Their hard values only ever go down here (the
    server starts another fork server for a job that needs higher ones)."""
    targets: list[int] = request["fds"]
    if len(targets) != len(fds):
        return {"errno": 0, "error": f"{len(fds)} descriptors came, {len(targets)} expected"}
    # Above every target, so placing one never overwrites another still to be placed.
    floor = max([*targets, 2]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in fds]
    actions: list[tuple] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]  # type: ignore[type-arg]
    actions += [(os.POSIX_SPAWN_DUP2, fd, to) for fd, to in zip(moved, targets, strict=True)]
    try:
        for which, soft, hard in request["rlimits"]:
            resource.setrlimit(which, (soft, hard))
        os.chdir(request["cwd"])
        argv: list[str] = request["argv"]
        # Not ended between the start and the line that records it; the job unblocks it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = os.posix_spawnp(
            argv[0], argv, request["env"], file_actions=actions, setsid=True,
            setsigdef=_DEFAULT, setsigmask=(),
        )  # fmt: skip
        _started.add(pid)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.chdir("/")
        for fd in moved:
            os.close(fd)
    return {"pid": pid, "used": _cpu_used()}


def _cpu_used() -> float:
    """This process's own CPU seconds: it runs under its last job's RLIMIT_CPU too."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reap(pid: int) -> dict:  # type: ignore[type-arg]
    _, status, usage = os.wait4(pid, 0)
    _started.discard(pid)
    return {"status": status, "cpu": usage.ru_utime + usage.ru_stime, "used": _cpu_used()}


def serve(sock: socket.socket) -> None:
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, MAX_FDS)
        except ConnectionError:
            return
        if not message:  # the server closed its end
            return
        for fd in fds:  # the job gets the copies it asked for, and no others
            os.set_inheritable(fd, False)
        try:
            request = json.loads(message)
            if "reap" in request:
                reply = _reap(int(request["reap"]))
            else:
                reply = _start(request, fds)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # An OSError's parts, not its str(): the server raises it again from them.
            reply = {
                "errno": getattr(exc, "errno", None) or 0,
                "error": getattr(exc, "strerror", None) or str(exc),
                "filename": getattr(exc, "filename", None),
            }
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps(reply).encode())


def main() -> None:
    _die_with(int(sys.argv[2]))
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no process of its user may ptrace it
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)  # the server retires it before its hard limit
    sock = socket.socket(fileno=int(sys.argv[1]))
    sock.set_inheritable(False)  # a job that held it could start anything outside its sandbox
    serve(sock)
    _end()


if __name__ == "__main__":
    main()
