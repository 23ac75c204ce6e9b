"""Image builders: a flattened recipe becomes a root filesystem (mmdebstrap, Apptainer, podman)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import httpx

from concordia.backends import network
from concordia.core.recipe import Recipe
from concordia.images.stepids import (
    STEP_ID_BASE,
    let_steps_through,
    map_ids,
    shift_ids,
    step_privileges,
)

if TYPE_CHECKING:
    from concordia.images.stages import BuildStages

#: Bump when what a cached stage holds changes: older stages then no longer match.
STAGE_FORMAT = 1
#: Directories every image has: bwrap cannot create a mount point in a read-only root.
IMAGE_DIRS = ("work", "tmp", "proc", "dev", "sys", "run")
_BUILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The host's trust store, lent to the build steps (pip behind a TLS proxy).
_HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
_RESOLV_CONF = "/etc/resolv.conf"
#: Docs, man pages and translations are never needed by a batch job and weigh a lot.
DPKG_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
)


#: Build processes running now (their process groups), stopped when the server stops.
_RUNNING: set[subprocess.Popen[bytes]] = set()
#: The image id of the build a thread works for (asyncio.to_thread passes it on): what
#: cancel_build looks for.
CURRENT_BUILD: ContextVar[str | None] = ContextVar("concordia_current_build", default=None)
#: Builds asked to stop: their commands are stopped and none starts again.
_CANCELLED: set[str] = set()
#: How often a running build command looks whether its build was cancelled (seconds), and
#: how long it has to clean up (mmdebstrap unmounts what it mounted) before it is killed.
_CANCEL_POLL = 0.5
_CANCEL_GRACE = 10.0


class TimedLog(io.TextIOWrapper):
    """A build log whose every line starts with the time since the build started (minutes
    and seconds): a quiet phase shows as a gap, not as nothing. Its commands' output passes
    through it line by line (run_logged)."""

    def __init__(self, path: Path) -> None:
        super().__init__(open(path, "wb"), encoding="utf-8", errors="replace", line_buffering=True)
        self._started = time.monotonic()
        self._line_start = True
        self._lock = threading.Lock()  # a command's output and the build's own lines

    def write(self, text: str) -> int:
        with self._lock:
            pieces = []
            for piece in text.splitlines(keepends=True):
                if self._line_start:
                    minutes, seconds = divmod(int(time.monotonic() - self._started), 60)
                    pieces.append(f"[{minutes:3d}:{seconds:02d}] ")
                pieces.append(piece)
                self._line_start = piece.endswith(("\n", "\r"))
            return super().write("".join(pieces))


def _copy_lines(output: IO[bytes], log: IO[str]) -> None:
    """A command's output into the build log as it comes, line by line."""
    for line in iter(output.readline, b""):
        log.write(line.decode("utf-8", errors="replace"))
    output.close()


def stop_running_builds() -> None:
    """Kill every build process: their builds are left unpublished, to start again later."""
    for proc in list(_RUNNING):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def cancel_build(image_id: str) -> None:
    """Stop the build of ``image_id`` (its running command within a second; none after)."""
    _CANCELLED.add(image_id)


def forget_cancel(image_id: str) -> None:
    """The build has ended: a later build of the same image runs."""
    _CANCELLED.discard(image_id)


def check_cancelled() -> None:
    """Raise BuildCancelled if the build of this thread was cancelled."""
    build = CURRENT_BUILD.get()
    if build is not None and build in _CANCELLED:
        raise BuildCancelled("cancelled")


class BuildError(Exception):
    """A build failed; the message says why (its log has the details)."""


class BuildCancelled(BuildError):
    """The build was cancelled: its commands were stopped."""


@dataclass(frozen=True)
class Source:
    url: str
    sha256: str


@dataclass(frozen=True)
class BuildPlan:
    """Everything one build needs, resolved: the id is computed from these."""

    image_id: str
    application: str
    recipe: Recipe  # flattened: its base is a Debian suite
    build_args: dict[str, Any]
    #: Destination in the image -> file on this machine (the recipe's files).
    files: dict[str, Path] = field(default_factory=dict)
    #: Destination in the image -> operator-provided file (Settings.sources).
    sources: dict[str, Source] = field(default_factory=dict)
    timeout: float = 3600
    #: A rebuild asked for (to pick up newer packages): cached stages are made afresh.
    fresh: bool = False

    def steps(self) -> list[str]:
        """The shell commands run in the image: pip first (steps may use what it brings)."""
        pip = []
        if self.recipe.pip:
            reqs = " ".join(shlex.quote(r) for r in self.recipe.pip)
            pip = [
                "python3 -m pip install --no-cache-dir --break-system-packages "
                f"--root-user-action=ignore --disable-pip-version-check {reqs}"
            ]
        return pip + self.recipe.rendered_steps(self.build_args)


class Builder(Protocol):
    name: str
    #: Part of every image id: another builder (or version) makes another image.
    version: str

    def build(
        self, plan: BuildPlan, context: Path, rootfs: Path, log: IO[str],
        stages: BuildStages | None = None,
    ) -> None:  # fmt: skip
        """Make the image's rootfs; ``stages``: the cache of stages, for a builder that has
        stages of its own to reuse."""
        ...

    def remove_leftovers(self) -> list[str]:
        """Remove what builds of a killed process left outside the store; what was removed."""
        ...


def run_logged(
    cmd: Sequence[str],
    log: IO[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    pass_fds: Sequence[int] = (),
    started: Callable[[], None] | None = None,
) -> None:
    """Run a build command with its output in the log; BuildError if it fails or overruns.
    ``env`` adds to the build environment; ``name`` is what the error names (its program);
    ``started`` runs once the command is started (its failure kills the command)."""
    check_cancelled()
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    name = name or Path(cmd[0]).name
    variables = {"PATH": _BUILD_PATH, "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    variables.update(env or {})
    # Killed with the server (SIGKILL included): its restart builds again, from scratch.
    guarded = [shutil.which("setpriv") or "setpriv", "--pdeathsig=KILL", "--", *cmd]
    proc = subprocess.Popen(
        guarded, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=cwd, env=variables, start_new_session=True, pass_fds=tuple(pass_fds),
        umask=0o022,  # not the server's 077: jobs read the image as another uid
    )  # fmt: skip
    _RUNNING.add(proc)
    assert proc.stdout is not None
    copier = threading.Thread(target=_copy_lines, args=(proc.stdout, log), daemon=True)
    copier.start()
    try:
        if started is not None:
            started()
        code = _wait(proc, timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise BuildError(f"{name} took longer than {timeout:.0f} s") from None
    except network.NetworkError as exc:
        raise BuildError(f"{name}: {exc}") from exc
    finally:
        _RUNNING.discard(proc)
        if proc.returncode is None:  # interrupted: leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # What it wrote last; not forever if something it started still holds the pipe.
        copier.join(timeout=5)
    if code != 0:
        raise BuildError(f"{name} failed with exit code {code}")


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """The command's exit code; stopped (TERM, then KILL after a grace) if its build is
    cancelled meanwhile. Raises subprocess.TimeoutExpired after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return proc.wait(timeout=min(_CANCEL_POLL, max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
        try:
            check_cancelled()
        except BuildCancelled:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=_CANCEL_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise


def fetch_sources(plan: BuildPlan, context: Path, log: IO[str]) -> dict[str, Path]:
    """Copy or download each operator-provided file and check its sha256: dest -> local file."""
    found = {}
    for index, (dest, source) in enumerate(sorted(plan.sources.items())):
        target = context / f"source-{index}"
        log.write(f"fetching {source.url} for {dest}\n")
        log.flush()
        digest = hashlib.sha256()
        try:
            with open(target, "wb") as out:
                if source.url.startswith(("http://", "https://")):
                    with httpx.stream("GET", source.url, follow_redirects=True, timeout=60) as r:
                        r.raise_for_status()
                        for chunk in r.iter_bytes(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
                else:
                    with open(source.url.removeprefix("file://"), "rb") as src:
                        while chunk := src.read(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
        except (OSError, httpx.HTTPError) as exc:
            raise BuildError(f"cannot fetch {source.url}: {exc}") from exc
        if digest.hexdigest() != source.sha256:
            raise BuildError(f"{source.url} has sha256 {digest.hexdigest()}, not {source.sha256}")
        found[dest] = target
    return found


def steps_script(plan: BuildPlan, first: int = 0, last: int | None = None) -> str:
    """The build steps (those from index ``first`` to ``last``) as one shell script, each
    announced in the log before it runs, numbered among all the plan's steps."""
    steps = plan.steps()
    script = ["set -eu"]
    for number, step in enumerate(steps[first:last], first + 1):
        script.append(f"echo {shlex.quote(f'### step {number}/{len(steps)}: {step}')}")
        script.append(step)
    return "\n".join(script) + "\n"


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
    build_dir.mkdir(exist_ok=True)
    (build_dir / "steps.sh").write_text(script)
    (build_dir / "resolv.conf").write_text(network.RESOLV_CONF)
    mounts = {_RESOLV_CONF: str(build_dir / "resolv.conf")}
    if os.path.isfile(_HOST_CA):
        mounts[_HOST_CA] = _HOST_CA
    made: list[Path] = []  # mount points bwrap makes in the image, removed after the steps
    for dest in mounts:
        made += _missing_parts(rootfs, dest)
    as_root = os.geteuid() == 0
    prefix = step_privileges() if as_root else []
    net = network.OutboundNetwork(prefix)
    userns_r, userns_w = os.pipe()
    cmd = [*prefix, shutil.which("bwrap") or "bwrap", "--unshare-user", "--uid", "0", "--gid", "0"]
    if as_root:  # the id map is ours to write (below): the whole range, not one uid
        cmd += ["--userns-block-fd", str(userns_r)]
    # Root in the namespace keeps its capabilities there (apt, dpkg), except the one that
    # would let a step undo the network's blocked routes.
    cmd += ["--cap-add", "ALL", "--cap-drop", "CAP_NET_ADMIN"]
    cmd += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    cmd += [*net.bwrap_args(), "--bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev"]
    cmd += ["--tmpfs", "/tmp", "--chdir", "/", "--hostname", "build"]  # noqa: S108
    cmd += ["--die-with-parent", "--new-session", "--clearenv"]
    for dest, source in mounts.items():
        cmd += ["--ro-bind", source, dest]
    variables = {"HOME": "/root", "PATH": _BUILD_PATH, "DEBIAN_FRONTEND": "noninteractive"}
    variables |= plan.recipe.rendered_env(plan.build_args)
    for key, value in variables.items():
        cmd += ["--setenv", key, value]

    def release() -> None:
        net.started()
        os.close(userns_r)
        if as_root:
            map_ids(net.child_pid())
        os.write(userns_w, b"1")
        net.connect()

    shifted = False
    try:
        if as_root:
            try:
                let_steps_through(rootfs.parent)
            except PermissionError as exc:
                raise BuildError(str(exc)) from exc
            shift_ids(rootfs, STEP_ID_BASE)
            shifted = True
        shell = shlex.split(plan.recipe.shell)
        run_logged(
            [*cmd, *shell, "/.concordia-build/steps.sh"], log, timeout=plan.timeout,
            name="bwrap", pass_fds=[*net.pass_fds, userns_r], started=release,
        )  # fmt: skip
    finally:
        net.close()
        for fd in (userns_r, userns_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if shifted:
            shift_ids(rootfs, -STEP_ID_BASE)
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


def fetch_targets(plan: BuildPlan, context: Path) -> dict[str, Path]:
    """Where fetch_sources puts each source (dest -> file in the context)."""
    return {dest: context / f"source-{i}" for i, dest in enumerate(sorted(plan.sources))}


class MmdebstrapBuilder:
    """A Debian root filesystem from the host's apt sources (root mode as root, a user
    namespace otherwise), then files and steps (with the network: pip works)."""

    name = "mmdebstrap"

    def __init__(self, version: str) -> None:
        self.version = version

    def remove_leftovers(self) -> list[str]:
        return []  # a build leaves nothing outside the store's workspace

    def build(
        self, plan: BuildPlan, context: Path, rootfs: Path, log: IO[str],
        stages: BuildStages | None = None,
    ) -> None:  # fmt: skip
        """Stages, each cached by its content: the base system (suite, packages), then pip,
        then the files and steps (the image's own, never cached: the image is)."""
        fetch_sources(plan, context, log)
        recipe = plan.recipe
        cmd = ["mmdebstrap", f"--variant={recipe.variant}"]
        if recipe.packages:
            cmd.append(f"--include={','.join(recipe.packages)}")
        cmd += [f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES]

        def base() -> None:
            # --verbose: apt's and dpkg's own lines (what it fetches, n of N) in the log, for
            # the build's progress, in place of progress bars nobody sees.
            run_logged([*cmd, "--verbose", recipe.suite, str(rootfs)], log, timeout=plan.timeout)

        def pip() -> None:
            run_steps(plan, rootfs, log, steps_script(plan, 0, 1))

        key = self.base_key(plan)
        if stages is None:
            base()
        else:
            stages.stage("base", key, rootfs, base)
        pip_steps = 1 if recipe.pip else 0
        if pip_steps and stages is not None:
            stages.stage("pip", pip_key(plan, key), rootfs, pip)
        elif pip_steps:
            pip()
        # Not as an mmdebstrap hook: the extract variant runs none.
        customize(plan, context, rootfs, log, first_step=pip_steps)

    def base_key(self, plan: BuildPlan) -> str:
        """What makes the base system: the builder, the suite and packages, and where the
        packages come from (this machine's apt sources)."""
        recipe = plan.recipe
        return stage_key({
            "stage": "base", "builder": self.version, "suite": recipe.suite,
            "variant": recipe.variant, "packages": sorted(recipe.packages),
            "dpkg_excludes": list(DPKG_EXCLUDES), "apt_sources": apt_sources_digest(),
        })  # fmt: skip


def pip_key(plan: BuildPlan, below: str) -> str:
    """What makes the pip stage: the stage below, the command, and the shell and environment
    it runs with."""
    return stage_key({
        "stage": "pip", "below": below, "command": plan.steps()[0], "shell": plan.recipe.shell,
        "env": plan.recipe.rendered_env(plan.build_args),
    })  # fmt: skip


def stage_key(parts: dict[str, Any]) -> str:
    """The content key of a stage: sha256 of everything that determines it (the stage below
    it included, by its key)."""
    blob = json.dumps({"format": STAGE_FORMAT, **parts}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def apt_sources_digest() -> str:
    """sha256 of this machine's apt sources: another mirror or suite list, other packages."""
    digest = hashlib.sha256()
    paths = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in paths:
        with contextlib.suppress(OSError):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class ApptainerBuilder:
    """``apptainer build --sandbox`` from a definition file (debootstrap from the host's first
    Debian mirror), as on grid sites; chosen first where apptainer or singularity exists."""

    name = "apptainer"

    def __init__(self, command: str, version: str) -> None:
        self.command = command
        self.version = version

    def remove_leftovers(self) -> list[str]:
        return []  # a build leaves nothing outside the store's workspace

    def build(
        self, plan: BuildPlan, context: Path, rootfs: Path, log: IO[str],
        stages: BuildStages | None = None,
    ) -> None:  # fmt: skip
        fetch_sources(plan, context, log)
        definition = context / "image.def"
        definition.write_text(apptainer_definition(plan, context, host_mirror()))
        log.write(definition.read_text())
        run_logged(
            [self.command, "build", "--force", "--sandbox", str(rootfs), str(definition)],
            log,
            timeout=plan.timeout,
        )


def apptainer_definition(plan: BuildPlan, context: Path, mirror: str) -> str:
    """An Apptainer definition file equivalent to the recipe."""
    recipe = plan.recipe
    lines = ["Bootstrap: debootstrap", f"OSVersion: {recipe.suite}", f"MirrorURL: {mirror}"]
    if recipe.packages:
        lines.append(f"Include: {','.join(recipe.packages)}")
    copies = {**plan.files, **fetch_targets(plan, context)}
    if copies:
        lines += ["", "%files"] + [f"    {src} {dest}" for dest, src in sorted(copies.items())]
    lines += ["", "%post", "    set -eu", "    export DEBIAN_FRONTEND=noninteractive"]
    lines += [f"    {step}" for step in plan.steps()]
    env = plan.recipe.rendered_env(plan.build_args)
    if env:
        lines += ["", "%environment"] + [f"    export {k}={shlex.quote(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def host_mirror() -> str:
    """The first Debian mirror of this machine's apt sources (deb822 or one-line format)."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            if line.startswith("URIs:") and len(words) > 1 and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"] and len(words) > 2 and "security" not in line:
                return next(w for w in words[1:] if "://" in w)
    raise BuildError("no Debian mirror in this machine's apt sources")


def finish_rootfs(rootfs: Path, workdir: str) -> None:
    """The mount points every job needs (a read-only root cannot get them later)."""
    for name in (*IMAGE_DIRS, workdir.strip("/")):
        _make_dirs(rootfs, f"/{name}")
    (rootfs / "tmp").chmod(0o1777)
