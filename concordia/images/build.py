"""One image build from plan to published image, and the choice of builder (probed at start)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from concordia.images.apptainer import ApptainerBuilder
from concordia.images.builders import BuildCancelled, Builder, BuildError, TimedLog, check_cancelled
from concordia.images.formats import make_formats, missing_tools
from concordia.images.mmdebstrap import MmdebstrapBuilder
from concordia.images.plan import BuildPlan
from concordia.images.podman import PodmanBuilder
from concordia.images.stages import BuildStages, StageCache
from concordia.images.steps import finish_rootfs
from concordia.images.store import ROOTFS, ImageStore, StoredImage, unmount_below

#: What to install for each builder (Debian package names), shown when none is usable.
INSTALL_HINTS = {
    "apptainer": "Apptainer (not in Debian 12: see apptainer.org)",
    "mmdebstrap": "apt-get install mmdebstrap",
    "podman": "apt-get install podman runc",
}


@dataclass
class BuilderChoice:
    """The builder in use (None: images cannot be built) and why the others were passed over."""

    builder: Builder | None
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        if self.builder is not None:
            return self.builder.version
        hints = "; ".join(f"{name}: {why}" for name, why in self.problems.items())
        return f"no image builder can run ({hints})"


@dataclass(frozen=True)
class PodmanSetup:
    """What the podman builder needs from the settings."""

    #: Debian suite -> base image reference in podman's storage (Settings.image_podman_bases).
    bases: Mapping[str, str] = field(default_factory=dict)
    #: Where Concordia's containers.conf for podman lives (the runtime of jobs shares it).
    config_dir: Path | None = None


def choose_builder(
    order: list[str], formats: list[str], podman: PodmanSetup | None = None
) -> BuilderChoice:
    """The first builder of ``order`` that is installed (podman: whose probe build works),
    with the tools the formats need."""
    problems: dict[str, str] = {}
    chosen: Builder | None = None
    missing = missing_tools(formats)
    for name in order:  # every one is probed, so that each can say why it is not used
        builder = _probe(name, podman or PodmanSetup())
        if isinstance(builder, str):
            problems[name] = builder
        elif missing:
            problems[name] = f"the image formats need: apt-get install {' '.join(missing)}"
        elif chosen is None:
            chosen = builder
        else:
            problems[name] = f"usable, but {chosen.name} comes first in image_builders"
    return BuilderChoice(chosen, problems)


def _probe(name: str, podman: PodmanSetup) -> Builder | str:
    if name == "podman":
        command = shutil.which("podman")
        if command is None:
            return f"not installed ({INSTALL_HINTS['podman']})"
        if podman.config_dir is None:
            return "no data directory for its configuration was given"
        return PodmanBuilder.probe(command, podman.config_dir, podman.bases)
    if name == "apptainer":
        command = shutil.which("apptainer") or shutil.which("singularity")
        if command is None:
            return f"not installed ({INSTALL_HINTS['apptainer']})"
        return ApptainerBuilder(command, _version(command))
    command = shutil.which("mmdebstrap")
    if command is None:
        return f"not installed ({INSTALL_HINTS['mmdebstrap']})"
    return MmdebstrapBuilder(f"mmdebstrap {_version(command).split()[-1]}")


def _version(program: str) -> str:
    """The first line `program --version` prints, asked again only once the program's file has
    changed: `mmdebstrap --version` costs 0.1 s of CPU, and a process that starts platforms one
    after the other (the tests do) would ask it at each start."""
    try:
        found = os.stat(program)
    except OSError:
        return _asked_version(program, None)
    return _asked_version(program, (found.st_ino, found.st_mtime_ns, found.st_size))


@functools.lru_cache(maxsize=8)
def _asked_version(program: str, same_file: tuple[int, int, int] | None) -> str:
    cmd = [program, "--version"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return f"{Path(program).name} (unknown version)"
    return out.strip().splitlines()[0] if out.strip() else Path(program).name


def run_build(
    plan: BuildPlan,
    builder: Builder,
    store: ImageStore,
    formats: list[str],
    cache: StageCache | None = None,
) -> StoredImage:
    """Build into a private workspace, then publish by rename: a crash at any point leaves
    no image that looks complete. ``cache``: stages to reuse and to keep. Raises BuildError
    (the log says why)."""
    work = store.workspace(plan.image_id)
    context, rootfs = work / ".context", work / ROOTFS
    context.mkdir(mode=0o700)
    started = datetime.now(UTC)
    with TimedLog(store.log_path(plan.image_id)) as log:
        args = ", ".join(f"{k}={v}" for k, v in plan.build_args.items()) or "none"
        log.write(f"building image {plan.image_id} of {plan.application} with {builder.version}\n")
        log.write(f"build arguments: {args}\n")
        stages = BuildStages(cache, log, reuse=not plan.fresh, oci="oci" in formats)
        try:
            check_cancelled()  # cancelled while it waited for a slot
            builder.build(plan, context, rootfs, log, stages)
            finish_rootfs(rootfs, plan.recipe.workdir)
            env = plan.recipe.rendered_env(plan.build_args)
            top = stages.top
            below = (top.rootfs, top.oci) if top is not None and top.oci is not None else None
            made = make_formats(
                rootfs, work, formats, env, plan.recipe.workdir, log, plan.timeout, below
            )
            shutil.rmtree(context)
            meta = _image_meta(plan, builder, env, made, rootfs, started)
            image = store.publish(plan.image_id, work, meta)
        except BaseException as exc:
            reason = _abandon(work, log, exc)
            if isinstance(exc, OSError):
                raise BuildError(reason) from exc
            raise
        finally:
            stages.release()
        log.write(f"\nbuilt in {meta['seconds']} s: {', '.join(made) or 'rootfs only'}\n")
    return image


def _image_meta(
    plan: BuildPlan,
    builder: Builder,
    env: dict[str, str],
    made: dict[str, Any],
    rootfs: Path,
    started: datetime,
) -> dict[str, Any]:
    """What the image's catalogue entry says of it."""
    return {
        "id": plan.image_id,
        "application": plan.application,
        "build_args": plan.build_args,
        "builder": builder.version,
        "env": env,
        "workdir": plan.recipe.workdir,
        # Operator-provided sources may be licensed to registered users only.
        "redistributable": not plan.sources,
        "formats": made,
        "rootfs_size": _tree_size(rootfs),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
    }


def _abandon(work: Path, log: IO[str], exc: BaseException) -> str:
    """The end of a failed or cancelled build in its log, its workspace removed; why it
    failed."""
    reason = str(exc) if isinstance(exc, BuildError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, BuildCancelled):
        log.write("\nBUILD CANCELLED: its commands were stopped, its workspace removed\n")
    else:
        log.write(f"\nBUILD FAILED: {reason}\n")
    unmount_below(work)
    shutil.rmtree(work, ignore_errors=True)
    return reason


def _tree_size(path: Path) -> int:
    total = 0
    for entry in path.rglob("*"):
        if entry.is_file() and not entry.is_symlink():
            total += entry.stat().st_size
    return total
