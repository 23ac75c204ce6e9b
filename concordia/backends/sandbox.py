"""The bubblewrap sandbox of a local job: its command line, its /etc, the users it runs as."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from concordia.backends.network import RESOLV_CONF

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


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()
