"""The mmdebstrap image builder: a Debian root filesystem from the host's apt sources, in
stages cached by their content (the base system, then pip)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import IO, Any

from concordia.images.builders import DPKG_EXCLUDES, NoLeftovers, run_logged
from concordia.images.plan import BuildPlan, steps_script
from concordia.images.sources import fetch_sources
from concordia.images.stages import BuildStages
from concordia.images.steps import customize, run_steps

#: Bump when what a cached stage holds changes: older stages then no longer match.
STAGE_FORMAT = 1


class MmdebstrapBuilder(NoLeftovers):
    """A Debian root filesystem from the host's apt sources (root mode as root, a user
    namespace otherwise), then files and steps (with the network: pip works)."""

    name = "mmdebstrap"

    def __init__(self, version: str) -> None:
        self.version = version

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
