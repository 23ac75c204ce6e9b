"""How one local job process is launched, limited, watched, signalled and judged."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from concordia.backends.cgroup import SlotCgroup

log = logging.getLogger(__name__)

#: The uid/gid jobs run as when the server runs as root ("nobody").
JOB_UID = 65534
JOB_GID = 65534
#: The uid/gid a job of a server not running as root sees in its sandbox (a user namespace
#: maps them to the server's own user).
SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: TMPDIR of a job: a fresh tmpfs in the sandbox, the host's (sticky) /tmp without one.
JOB_TMP = "/tmp"  # noqa: S108
#: The hard RLIMIT_CPU is this many seconds above the soft one (SIGXCPU first, SIGKILL after).
CPU_HARD_MARGIN = 5
#: $0 of the launcher shell: its error messages start with this name.
LAUNCHER_NAME = "concordia-job"

# The launcher runs as the server's user (as root it may join cgroups): it sets RLIMIT_CPU,
# joins the slot's cgroups, then execs the rest of the chain (bwrap or setpriv, the job).
# Shell builtins cost one small exec, less than prlimit + cgexec; no preexec_fn (no fork).
_LAUNCHER = (
    'ulimit -S -t "$1" && ulimit -H -t "$2" || exit 125; n=$3; shift 3; '
    'while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; n=$((n - 1)); shift; done; '
    'exec "$@"'
)
_HOST_DIRS = ("/usr", "/etc", "/opt")
MERGED_DIRS = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
_START_ERROR = re.compile(rf"^(bwrap|setpriv|{LAUNCHER_NAME}): ")
#: A container runtime's own error, with the exit codes it uses for it: podman's (125: its
#: error, 126: cannot run the command, 127: no such command), its init's (catatonit: the
#: job's program cannot be run) and Apptainer's.
_RUNTIME_ERRORS = (
    ("podman", re.compile(r"^Error: "), (125, 126, 127)),
    ("podman", re.compile(r"^ERROR \(catatonit:\d+\): failed to exec pid1: "), (1,)),
    ("apptainer", re.compile(r"^FATAL: +"), (255,)),
)


def drops_privileges() -> bool:
    """Jobs of a server running as root run as JOB_UID; otherwise as the server's own user."""
    return os.geteuid() == 0


def hand_over(path: Path) -> None:
    """Give a job's work directory (and what is in it) to the uid the job runs as."""
    if not drops_privileges():
        return
    os.chown(path, JOB_UID, JOB_GID, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), JOB_UID, JOB_GID, follow_symlinks=False)


def _bwrap_base(rootfs: Path | None, mount: str) -> list[str]:
    if rootfs is not None:  # an image: the mount point is made by its builder (read-only root)
        return [_bwrap(), "--ro-bind", str(rootfs), "/"]
    return [*_host_root(), "--dir", mount]


@functools.cache
def _bwrap() -> str:
    return shutil.which("bwrap") or "bwrap"


@functools.cache
def _host_root() -> tuple[str, ...]:
    # The system directories only: the host root would expose the data dir and /root.
    args = [_bwrap()]
    for path in _HOST_DIRS:
        if os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in MERGED_DIRS:
        if os.path.islink(path):  # merged /usr
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return tuple(args)


def build_command(
    argv: Sequence[str],
    workdir: Path,
    *,
    isolated: bool,
    network: bool,
    env: Mapping[str, str] | None = None,
    rootfs: Path | None = None,
    mount: str = "/work",
) -> list[str]:
    """The command that runs ``argv`` in ``workdir`` (mounted at ``mount``, HOME and the
    current directory): a bwrap line, or argv as-is (cwd=workdir).

    The job's root is ``rootfs`` (its image, read-only) or, without one, the host's /usr, /etc
    and /opt. bwrap itself runs unprivileged, in a user namespace mapping the job's
    SANDBOX_UID to the server's user or, for a server running as root, to JOB_UID: setpriv
    drops to it before bwrap starts, so no part of the sandbox ever holds root's rights (the
    data dir's parents must then be traversable by JOB_UID; the isolation probe checks it).
    """
    if not isolated:
        return list(argv)
    cmd = [*_drop_privileges(isolated=True), *_bwrap_base(rootfs, mount)]
    cmd += ["--bind", str(workdir), mount]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", JOB_TMP]
    cmd += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID)]
    cmd += ["--unshare-all", *(["--share-net"] if network else [])]
    cmd += ["--die-with-parent", "--new-session", "--clearenv"]
    variables = {"PATH": SANDBOX_PATH, "HOME": mount, "TMPDIR": JOB_TMP, **(env or {})}
    for key, value in variables.items():
        cmd += ["--setenv", key, value]
    cmd += ["--chdir", mount, "--hostname", "job", "--remount-ro", "/", "--"]
    return cmd + list(argv)


@functools.cache
def _setpriv() -> str:
    return shutil.which("setpriv") or "setpriv"


def _drop_privileges(*, isolated: bool) -> list[str]:
    if not drops_privileges():
        return []
    drop = [_setpriv(), f"--reuid={JOB_UID}", f"--regid={JOB_GID}"]
    drop += ["--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    # A plain job dies with the server (bwrap jobs have --die-with-parent).
    return [*drop, *([] if isolated else ["--pdeathsig=KILL"]), "--"]


def privilege_drop() -> list[str]:
    """The setpriv prefix that runs a command as JOB_UID (dying with its parent), for a server
    running as root; empty otherwise."""
    return _drop_privileges(isolated=False)


def launch_prefix(cpu_time: int, cgroup_procs: Sequence[Path], *, isolated: bool) -> list[str]:
    """What runs before the command: the limits shell, then for a plain job of root, setpriv."""
    soft = max(1, cpu_time)
    prefix = ["/bin/sh", "-c", _LAUNCHER, LAUNCHER_NAME, str(soft), str(soft + CPU_HARD_MARGIN)]
    prefix += [str(len(cgroup_procs)), *map(str, cgroup_procs)]
    return prefix if isolated else prefix + _drop_privileges(isolated=False)


def launch(
    argv: Sequence[str],
    workdir: Path,
    *,
    stdout: int,
    stderr: int,
    cpu_time: int,
    isolated: bool,
    network: bool = False,
    env: Mapping[str, str] | None = None,
    cgroup: SlotCgroup | None = None,
    rootfs: Path | None = None,
    mount: str = "/work",
    container: Sequence[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a job's process in its own session; Popen returns once the launcher has exec'd.

    The launcher never gets the server's environment (settings, tokens): under bwrap the job
    gets PATH, HOME, TMPDIR and its own variables; without it, the same with HOME=workdir.
    ``container``: the command of another runtime that runs the job (argv, env included), in
    place of the bwrap line.
    """
    cmd = launch_prefix(cpu_time, cgroup.procs if cgroup else [], isolated=isolated)
    if container is not None:
        cmd += container
    else:
        cmd += build_command(
            argv, workdir, isolated=isolated, network=network, env=env, rootfs=rootfs, mount=mount
        )
    plain_env = {"HOME": str(workdir), "TMPDIR": JOB_TMP, **(env or {})}
    return spawn(
        cmd, workdir, stdout, stderr, {"PATH": SANDBOX_PATH, **({} if isolated else plain_env)}
    )


def spawn(
    cmd: Sequence[str], cwd: Path, stdout: int, stderr: int, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start a command in its own session (its process group is the job's), no stdin."""
    return subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
    )


@contextlib.contextmanager
def exit_watch(pid: int) -> Iterator[asyncio.Future[Any]]:
    """A future resolved when the process ends, leaving it unreaped for reap()."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # kernel < 5.3: a thread waits instead (WNOWAIT: it does not reap)
        yield asyncio.ensure_future(
            asyncio.to_thread(os.waitid, os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        )
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


def reap(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Reap an ended process: (wait status, CPU seconds of it and of the children it reaped).

    Reaping it ourselves, not through asyncio's child watcher, gives its CPU time and keeps
    its process group from being reused while we may still signal it.
    """
    with contextlib.suppress(OSError):  # what the job left behind in its process group
        os.killpg(proc.pid, signal.SIGKILL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return status, usage.ru_utime + usage.ru_stime


def signal_job(pid: int, sig: int, *, isolated: bool) -> None:
    """Signal a job's processes. Under bwrap the job runs in its own session below bwrap:
    signal the sandbox's processes, and bwrap only with SIGKILL (its death ends them all)."""
    targets = _descendants(pid)
    if not isolated or sig == signal.SIGKILL:
        with contextlib.suppress(OSError):
            os.killpg(pid, sig)
    for target in targets:
        with contextlib.suppress(OSError):
            os.kill(target, sig)


def _descendants(pid: int) -> list[int]:
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
) -> tuple[str | None, int]:
    """(None, 0) for a success, else (why the job failed, its exit code; 128+N for signal N).
    ``runtime``: the container runtime that ran the job, whose own errors are recognised;
    ``program``: the job's argv[0], named where such an error does not say it."""
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    code = 128 + sig if sig else os.WEXITSTATUS(status)
    if isolated and 128 < code < 128 + 65:  # bwrap reports a job killed by N as 128+N
        sig = code - 128
    if oom and code != 0:
        return "Memory limit exceeded", code
    cpu_out = cpu is not None and cpu >= max(1, cpu_time)  # SIGKILL at the hard limit
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_out):
        return "CPU time limit exceeded", code
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


def isolation_problem(mode: str, probe_dir: Path | None = None) -> str | None:
    """None where jobs run under bubblewrap, else why not: "none" never, "bwrap" always (or
    raise), "auto" if usable.

    The probe runs ``true`` exactly as a job runs: same flags, privilege drop and limits, in a
    work directory under ``probe_dir`` (the jobs directory).
    """
    if mode == "none":
        return "isolation is turned off (local_isolation = none)"
    if mode not in ("auto", "bwrap"):
        raise ValueError(f"unknown isolation mode {mode!r} (auto, bwrap or none)")
    error = _probe(str(probe_dir) if probe_dir else None)
    if error is None:
        return None
    if mode == "bwrap":
        raise RuntimeError(f"local_isolation is 'bwrap' but bubblewrap cannot run jobs: {error}")
    log.warning("local jobs run without isolation: bubblewrap cannot run them: %s", error)
    return error


def detect_isolation(mode: str, probe_dir: Path | None = None) -> bool:
    return isolation_problem(mode, probe_dir) is None


@functools.cache
def _probe(probe_dir: str | None) -> str | None:
    """Run ``true`` in the sandbox; None if it worked, else why not. Cached per process."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (Debian: apt-get install bubblewrap)"
    if probe_dir:
        os.makedirs(probe_dir, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".probe-", dir=probe_dir))
    try:
        hand_over(workdir)
        try:
            proc = launch(
                ["true"], workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                cpu_time=10, isolated=True,
            )  # fmt: skip
            _, stderr = proc.communicate(timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"the probe failed: {exc}"
        if proc.returncode == 0:
            return None
        error = stderr.decode(errors="replace").strip() or f"exit code {proc.returncode}"
        if drops_privileges() and "Permission denied" in error:
            error += (
                f" (jobs of a server running as root run as uid {JOB_UID}: every parent"
                " directory of the data dir must be traversable by it, chmod o+x)"
            )
        return error
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
