"""The recipe's files and steps put into a root filesystem: the files copied in, the steps
run in a bubblewrap sandbox like jobs; and the mount points every image needs."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from pathlib import Path
from typing import IO

from concordia.backends import network
from concordia.images.builders import BUILD_PATH, HOST_CA, BuildError, run_logged
from concordia.images.plan import BuildPlan, steps_script
from concordia.images.sources import fetch_targets
from concordia.images.stepids import (
    STEP_ID_BASE,
    let_steps_through,
    map_ids,
    shift_ids,
    step_privileges,
)

#: Directories every image has: bwrap cannot create a mount point in a read-only root.
IMAGE_DIRS = ("work", "tmp", "proc", "dev", "sys", "run")
_RESOLV_CONF = "/etc/resolv.conf"


def customize(
    plan: BuildPlan, context: Path, rootfs: Path, log: IO[str], first_step: int = 0
) -> None:
    """Copy the files in, then run the steps (from index ``first_step``) in the image."""
    for dest, src in sorted({**plan.files, **fetch_targets(plan, context)}.items()):
        target = rootfs / dest.lstrip("/")
        _make_dirs(rootfs, os.path.dirname("/" + dest.lstrip("/")))
        shutil.copyfile(src, target)
        target.chmod(0o755 if os.access(src, os.X_OK) else 0o644)
    if plan.steps()[first_step:]:
        run_steps(plan, rootfs, log, steps_script(plan, first_step))


def run_steps(plan: BuildPlan, rootfs: Path, log: IO[str], script: str) -> None:
    """Run a steps script inside the image with bubblewrap, sandboxed like jobs: their own
    user, PID, IPC, UTS and network namespaces (outbound access only, see
    backends/network.py), root in the image but unprivileged outside it."""
    if hint := network.missing():
        raise BuildError(f"build steps run in a network namespace of their own: {hint}")
    build_dir = rootfs / ".concordia-build"
    mounts = _write_build_files(build_dir, script)
    # Mount points bwrap makes in the image, removed after the steps.
    made = [part for dest in mounts for part in _missing_parts(rootfs, dest)]
    as_root = os.geteuid() == 0
    prefix = step_privileges() if as_root else []
    net = network.OutboundNetwork(prefix)
    userns_r, userns_w = os.pipe()
    # Each closed once: a descriptor closed twice may by then be another thread's file (the
    # database's, whose next read then fails with "disk I/O error").
    still_open = [userns_r, userns_w]
    # As root the id map is ours to write (release): the whole range, not one uid.
    bwrap = _bwrap_command(plan, rootfs, mounts, net, userns_r if as_root else None)

    def release() -> None:
        net.started()
        still_open.remove(userns_r)
        os.close(userns_r)
        if as_root:
            map_ids(net.child_pid())
        os.write(userns_w, b"1")
        net.connect()

    shifted = False
    try:
        if as_root:
            _let_steps_in(rootfs)
            shifted = True
        shell = shlex.split(plan.recipe.shell)
        run_logged(
            [*prefix, *bwrap, *shell, "/.concordia-build/steps.sh"], log, timeout=plan.timeout,
            name="bwrap", pass_fds=[*net.pass_fds, userns_r], started=release,
        )  # fmt: skip
    finally:
        net.close()
        for fd in still_open:
            os.close(fd)
        if shifted:
            shift_ids(rootfs, -STEP_ID_BASE)
        _remove_build_files(build_dir, made)


def _write_build_files(build_dir: Path, script: str) -> dict[str, str]:
    """The steps script and the sandbox's resolv.conf written in the image; the files lent
    to the steps (destination -> file on this machine)."""
    build_dir.mkdir(exist_ok=True)
    (build_dir / "steps.sh").write_text(script)
    (build_dir / "resolv.conf").write_text(network.RESOLV_CONF)
    mounts = {_RESOLV_CONF: str(build_dir / "resolv.conf")}
    if os.path.isfile(HOST_CA):
        mounts[HOST_CA] = HOST_CA
    return mounts


def _bwrap_command(
    plan: BuildPlan,
    rootfs: Path,
    mounts: dict[str, str],
    net: network.OutboundNetwork,
    userns_block_fd: int | None,
) -> list[str]:
    """The bwrap command the steps run under: root in a user namespace of its own (waiting
    on ``userns_block_fd`` for its id map, if given), the image as its root."""
    cmd = [shutil.which("bwrap") or "bwrap", "--unshare-user", "--uid", "0", "--gid", "0"]
    if userns_block_fd is not None:
        cmd += ["--userns-block-fd", str(userns_block_fd)]
    # Root in the namespace keeps its capabilities there (apt, dpkg), except the one that
    # would let a step undo the network's blocked routes.
    cmd += ["--cap-add", "ALL", "--cap-drop", "CAP_NET_ADMIN"]
    cmd += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    cmd += [*net.bwrap_args(), "--bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev"]
    cmd += ["--tmpfs", "/tmp", "--chdir", "/", "--hostname", "build"]  # noqa: S108
    cmd += ["--die-with-parent", "--new-session", "--clearenv"]
    for dest, source in mounts.items():
        cmd += ["--ro-bind", source, dest]
    variables = {"HOME": "/root", "PATH": BUILD_PATH, "DEBIAN_FRONTEND": "noninteractive"}
    variables |= plan.recipe.rendered_env(plan.build_args)
    for key, value in variables.items():
        cmd += ["--setenv", key, value]
    return cmd


def _let_steps_in(rootfs: Path) -> None:
    """As root: the image's files moved to the steps' id range (stepids)."""
    try:
        let_steps_through(rootfs.parent)
    except PermissionError as exc:
        raise BuildError(str(exc)) from exc
    shift_ids(rootfs, STEP_ID_BASE)


def _remove_build_files(build_dir: Path, made: list[Path]) -> None:
    """What the steps were given removed from the image: the build files, the mount points."""
    shutil.rmtree(build_dir, ignore_errors=True)
    for path in reversed(made):
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() else path.unlink()


def _make_dirs(rootfs: Path, path: str) -> None:
    """The missing directories of ``path`` in the image, 0755 whatever the server's umask
    (077): jobs read the image as another uid."""
    for part in _missing_parts(rootfs, path):
        part.mkdir()
        part.chmod(0o755)


def _missing_parts(rootfs: Path, path: str) -> list[Path]:
    """The components of ``path`` that do not exist in the image yet, outermost first."""
    missing, current = [], rootfs
    for part in Path(path).relative_to("/").parts:
        current = current / part
        if not current.exists() and not current.is_symlink():
            missing.append(current)
    return missing


def finish_rootfs(rootfs: Path, workdir: str) -> None:
    """The mount points every job needs (a read-only root cannot get them later)."""
    for name in (*IMAGE_DIRS, workdir.strip("/")):
        _make_dirs(rootfs, f"/{name}")
    (rootfs / "tmp").chmod(0o1777)
