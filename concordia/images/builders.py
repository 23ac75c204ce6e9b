"""Image builders: a flattened recipe becomes a root filesystem (mmdebstrap, Apptainer, podman)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import httpx

from concordia.core.recipe import Recipe

#: Directories every image has: bwrap cannot create a mount point in a read-only root.
IMAGE_DIRS = ("work", "tmp", "proc", "dev", "sys", "run")
_BUILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The host's resolver and trust store, lent to the build steps (pip behind a TLS proxy).
_HOST_FILES = ("/etc/resolv.conf", "/etc/ssl/certs/ca-certificates.crt")
#: Docs, man pages and translations are never needed by a batch job and weigh a lot.
DPKG_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
)


#: Build processes running now (their process groups), stopped when the server stops.
_RUNNING: set[subprocess.Popen[bytes]] = set()


def stop_running_builds() -> None:
    """Kill every build process: their builds are left unpublished, to start again later."""
    for proc in list(_RUNNING):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


class BuildError(Exception):
    """A build failed; the message says why (its log has the details)."""


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

    def build(self, plan: BuildPlan, context: Path, rootfs: Path, log: IO[str]) -> None: ...

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
) -> None:
    """Run a build command with its output in the log; BuildError if it fails or overruns.
    ``env`` adds to the build environment; ``name`` is what the error names (its program)."""
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    name = name or Path(cmd[0]).name
    variables = {"PATH": _BUILD_PATH, "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    variables.update(env or {})
    # Killed with the server (SIGKILL included): its restart builds again, from scratch.
    guarded = [shutil.which("setpriv") or "setpriv", "--pdeathsig=KILL", "--", *cmd]
    proc = subprocess.Popen(
        guarded, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
        env=variables, start_new_session=True,
    )  # fmt: skip
    _RUNNING.add(proc)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise BuildError(f"{name} took longer than {timeout:.0f} s") from None
    finally:
        _RUNNING.discard(proc)
        if proc.returncode is None:  # interrupted: leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if code != 0:
        raise BuildError(f"{name} failed with exit code {code}")


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


def steps_script(plan: BuildPlan) -> str:
    """The build steps as one shell script, each announced in the log before it runs."""
    steps = plan.steps()
    script = ["set -eu"]
    for number, step in enumerate(steps, 1):
        script.append(f"echo {shlex.quote(f'### step {number}/{len(steps)}: {step}')}")
        script.append(step)
    return "\n".join(script) + "\n"


def customize(plan: BuildPlan, context: Path, rootfs: Path, log: IO[str]) -> None:
    """Copy the files in, then run the steps inside the image with bubblewrap: /proc, /dev
    and the network as a chroot would need, the host's resolver for pip, root in the image."""
    for dest, src in sorted({**plan.files, **fetch_targets(plan, context)}.items()):
        target = rootfs / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        target.chmod(0o755 if os.access(src, os.X_OK) else 0o644)
    if not plan.steps():
        return
    build_dir = rootfs / ".concordia-build"
    build_dir.mkdir(exist_ok=True)
    (build_dir / "steps.sh").write_text(steps_script(plan))
    cmd = ["bwrap", "--bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev"]
    cmd += ["--tmpfs", "/tmp", "--chdir", "/", "--die-with-parent", "--clearenv"]  # noqa: S108
    made: list[Path] = []  # mount points bwrap makes in the image, removed after the steps
    for host_file in _HOST_FILES:
        if os.path.isfile(host_file):
            made += _missing_parts(rootfs, host_file)
            cmd += ["--ro-bind", host_file, host_file]
    variables = {"HOME": "/root", "PATH": _BUILD_PATH, "DEBIAN_FRONTEND": "noninteractive"}
    variables |= plan.recipe.rendered_env(plan.build_args)
    for key, value in variables.items():
        cmd += ["--setenv", key, value]
    try:
        shell = shlex.split(plan.recipe.shell)
        run_logged([*cmd, *shell, "/.concordia-build/steps.sh"], log, timeout=plan.timeout)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()


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

    def build(self, plan: BuildPlan, context: Path, rootfs: Path, log: IO[str]) -> None:
        fetch_sources(plan, context, log)
        recipe = plan.recipe
        cmd = ["mmdebstrap", f"--variant={recipe.variant}"]
        if recipe.packages:
            cmd.append(f"--include={','.join(recipe.packages)}")
        cmd += [f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES]
        run_logged([*cmd, recipe.suite, str(rootfs)], log, timeout=plan.timeout)
        # Not as an mmdebstrap hook: the extract variant runs none.
        customize(plan, context, rootfs, log)


class ApptainerBuilder:
    """``apptainer build --sandbox`` from a definition file (debootstrap from the host's first
    Debian mirror), as on grid sites; chosen first where apptainer or singularity exists."""

    name = "apptainer"

    def __init__(self, command: str, version: str) -> None:
        self.command = command
        self.version = version

    def remove_leftovers(self) -> list[str]:
        return []  # a build leaves nothing outside the store's workspace

    def build(self, plan: BuildPlan, context: Path, rootfs: Path, log: IO[str]) -> None:
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
        path = rootfs / name
        if not path.is_symlink():
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
