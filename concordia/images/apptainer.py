"""The Apptainer image builder: ``apptainer build --sandbox`` from a definition file."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import IO

from concordia.images.builders import BuildError, NoLeftovers, run_logged
from concordia.images.plan import BuildPlan
from concordia.images.sources import fetch_sources, fetch_targets
from concordia.images.stages import BuildStages


class ApptainerBuilder(NoLeftovers):
    """``apptainer build --sandbox`` from a definition file (debootstrap from the host's first
    Debian mirror), as on grid sites; chosen first where apptainer or singularity exists."""

    name = "apptainer"

    def __init__(self, command: str, version: str) -> None:
        self.command = command
        self.version = version

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
