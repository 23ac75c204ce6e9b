"""A build's plan: the flattened recipe with its files and sources, and the steps it runs."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from concordia.core.recipe import Recipe


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


def steps_script(plan: BuildPlan, first: int = 0, last: int | None = None) -> str:
    """The build steps (those from index ``first`` to ``last``) as one shell script, each
    announced in the log before it runs, numbered among all the plan's steps."""
    steps = plan.steps()
    script = ["set -eu"]
    for number, step in enumerate(steps[first:last], first + 1):
        script.append(f"echo {shlex.quote(f'### step {number}/{len(steps)}: {step}')}")
        script.append(step)
    return "\n".join(script) + "\n"
