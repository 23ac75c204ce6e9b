"""How one local job process is launched, limited, watched, signalled and judged."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from concordia.backends.cgroup import SlotCgroup
from concordia.backends.forkserver import ForkedJob, ForkServer
from concordia.backends.network import RESOLV_CONF, OutboundNetwork
from concordia.core.limits import JobLimits, disk_exceeded

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
#: The job's shared memory: a tmpfs of its own, bounded as /tmp is.
JOB_SHM = "/dev/shm"  # noqa: S108
#: The hard RLIMIT_CPU is this many seconds above the soft one (SIGXCPU first, SIGKILL after).
CPU_HARD_MARGIN = 5
#: What a job without an image gets of the host's /etc (a copy): public files its programs
#: read (the loader's cache, command alternatives, CA certificates, time zone, service
#: names), never the rest (the server's configuration, its secrets).
ETC_LENT = (
    "ld.so.cache",
    "alternatives",
    "ssl/certs",
    "localtime",
    "protocols",
    "services",
    "mime.types",
)
#: The accounts a job sees: its own uid (SANDBOX_UID), root and nobody.
ETC_STUBS = {
    "passwd": (
        "root:x:0:0:root:/root:/bin/sh\n"
        f"job:x:{SANDBOX_UID}:{SANDBOX_GID}:job:/work:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ),
    "group": f"root:x:0:\njob:x:{SANDBOX_GID}:\nnogroup:x:65534:\n",
    "nsswitch.conf": (
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
        "protocols: files\nservices: files\n"
    ),
    "hosts": "127.0.0.1 localhost job\n::1 localhost ip6-localhost ip6-loopback\n",
    "hostname": "job\n",
    "resolv.conf": RESOLV_CONF,  # a job with a network of its own asks its slirp4netns
}
MERGED_DIRS = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
_START_ERROR = re.compile(r"^bwrap: ")
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


def _bwrap_base(rootfs: Path | None, mount: str, etc: Path | None) -> list[str]:
    if rootfs is not None:  # an image: the mount point is made by its builder (read-only root)
        return [_bwrap(), "--ro-bind", str(rootfs), "/"]
    if etc is None:
        raise ValueError("a job without an image needs the minimal /etc (minimal_etc)")
    return [*_host_root(), "--ro-bind", str(etc), "/etc", "--dir", mount]


@functools.cache
def _bwrap() -> str:
    return shutil.which("bwrap") or "bwrap"


@functools.cache
def bwrap_supports(option: str) -> bool:
    """Whether this bubblewrap knows ``option`` (--disable-userns and --size are 0.8's)."""
    try:
        done = subprocess.run([_bwrap(), "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return option in done.stdout


@functools.cache
def _host_root() -> tuple[str, ...]:
    # The system directories only: the host root would expose the data dir and /root.
    args = [_bwrap(), "--ro-bind", "/usr", "/usr"]
    for path in MERGED_DIRS:
        if os.path.islink(path):  # merged /usr
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return tuple(args)


def minimal_etc(parent: Path) -> Path:
    """The /etc of jobs without an image, made once in ``parent`` (the jobs directory): the
    account and resolver stubs and a copy of the host's ETC_LENT. Readable by the jobs' uid;
    named by its content and the lent files' times, so that processes starting together share
    it and a host that changed makes a new one. One bind mount in the job: a copy costs a job
    less than a mount per lent file."""
    lent = [name for name in ETC_LENT if os.path.lexists(f"/etc/{name}")]
    stamps = [(name, os.lstat(f"/etc/{name}").st_mtime_ns) for name in lent]
    digest = hashlib.sha256(repr((sorted(ETC_STUBS.items()), stamps)).encode())
    target = parent / f".etc-{digest.hexdigest()[:16]}"
    if target.is_dir():
        return target
    made = Path(tempfile.mkdtemp(prefix=".etc-new-", dir=parent))
    try:
        for name, text in ETC_STUBS.items():
            (made / name).write_text(text)
        for name in lent:
            host, place = Path("/etc", name), made / name
            place.parent.mkdir(parents=True, exist_ok=True)
            if host.is_symlink():
                place.symlink_to(host.readlink())
            elif host.is_dir():
                shutil.copytree(host, place, symlinks=True)
            else:
                shutil.copyfile(host, place)
        for path in [made, *made.rglob("*")]:  # whatever the umask: readable by the job's uid
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        made.rename(target)
    except OSError:
        shutil.rmtree(made, ignore_errors=True)
        if not target.is_dir():  # not another process's, made meanwhile
            raise
    return target


def build_command(
    argv: Sequence[str],
    workdir: Path,
    *,
    isolated: bool,
    network: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    rootfs: Path | None = None,
    mount: str = "/work",
    etc: Path | None = None,
    tmp_mb: int = 0,
) -> list[str]:
    """The command that runs ``argv`` in ``workdir`` (mounted at ``mount``, HOME and the
    current directory): a bwrap line, or argv as-is (cwd=workdir).

    The job's root is ``rootfs`` (its image, read-only) or, without one, the host's /usr with
    ``etc`` (minimal_etc) as /etc. /tmp and /dev/shm are tmpfs of ``tmp_mb`` each (0: no size
    of their own). bwrap itself runs unprivileged, in a user namespace mapping the job's
    SANDBOX_UID to the server's user or, for a server running as root, to JOB_UID: the slot's
    fork server, already that user, starts bwrap, so no part of the sandbox ever holds root's
    rights (the data dir's parents must then be traversable by JOB_UID; the isolation probe
    checks it).
    The job cannot make user namespaces of its own (where bwrap can forbid it). It has no
    network but its own loopback, or with ``network`` (OutboundNetwork.bwrap_args) a network
    namespace of its own with outbound access only, asking slirp4netns for names (``etc``'s
    resolv.conf, over the image's own).
    """
    if not isolated:
        return list(argv)
    cmd = _bwrap_base(rootfs, mount, etc)
    cmd += ["--bind", str(workdir), mount, "--proc", "/proc", "--dev", "/dev"]
    size = ["--size", str(tmp_mb * 1024 * 1024)] if tmp_mb and bwrap_supports("--size") else []
    for tmpfs in (JOB_TMP, JOB_SHM):
        cmd += ["--perms", "1777", *size, "--tmpfs", tmpfs]
    cmd += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID)]
    if bwrap_supports("--disable-userns"):
        cmd.append("--disable-userns")
    cmd += ["--unshare-all", *network]
    if network and rootfs is not None and etc is not None and _regular(rootfs / "etc/resolv.conf"):
        cmd += ["--ro-bind", str(etc / "resolv.conf"), "/etc/resolv.conf"]
    cmd += ["--die-with-parent", "--new-session", "--clearenv"]
    variables = {"PATH": SANDBOX_PATH, "HOME": mount, "TMPDIR": JOB_TMP, **(env or {})}
    for key, value in variables.items():
        cmd += ["--setenv", key, value]
    cmd += ["--chdir", mount, "--hostname", "job", "--remount-ro", "/", "--"]
    return cmd + list(argv)


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

    def reap(self) -> tuple[int, float]:
        """Kill what it left in its process group, reap it: (wait status, CPU seconds)."""
        ...


class SpawnedJob:
    """A job process that is the server's own child (a container runtime's client)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.pid, self._proc = proc.pid, proc
        self.returncode: int | None = None

    def reap(self) -> tuple[int, float]:
        """Reaping it ourselves, not through asyncio's child watcher, gives its CPU time and
        keeps its process group from being reused while we may still signal it."""
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        _, status, usage = os.wait4(self.pid, 0)
        self.returncode = self._proc.returncode = os.waitstatus_to_exitcode(status)
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


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


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
    server = fork_server()
    try:
        hand_over(workdir)
        with tempfile.TemporaryFile() as stderr:
            try:
                proc = launch(
                    ["true"], workdir, forkserver=server, stdout=stderr.fileno(),
                    stderr=stderr.fileno(), cpu_time=10, isolated=True,
                    etc=minimal_etc(workdir.parent), limits=JobLimits(tmp_mb=1, work_mb=1),
                )  # fmt: skip
            except OSError as exc:
                return f"the probe failed: {exc}"
            ended = until_ended(proc.pid, timeout=30)
            proc.reap()
            if not ended:
                return "the probe failed: it did not end within 30 s"
            stderr.seek(0)
            output = stderr.read().decode(errors="replace").strip()
        if proc.returncode == 0:
            return None
        error = output or f"exit code {proc.returncode}"
        if drops_privileges() and "Permission denied" in error:
            error += (
                f" (jobs of a server running as root run as uid {JOB_UID}: every parent"
                " directory of the data dir must be traversable by it, chmod o+x)"
            )
        return error
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
