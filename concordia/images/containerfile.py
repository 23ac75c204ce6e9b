"""The Containerfile of a recipe, as the podman builder builds it."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping

from concordia.images.builders import DPKG_EXCLUDES, HOST_CA, BuildError
from concordia.images.plan import BuildPlan, steps_script

#: Where the extract variant's packages are unpacked in the podman build's first stage.
_EXTRACT_DIR = "/.concordia-extract"


def podman_containerfile(
    plan: BuildPlan,
    base: str,
    copies: Mapping[str, str],
    *,
    scratch: str | None = None,
    lend_ca: bool = False,
) -> str:
    """The Containerfile of a recipe: FROM its base image, its packages installed (minbase) or
    only unpacked into ``scratch`` (extract), its files (destination -> file in the build
    context) copied in, its environment, its steps in one shell (as the other builders run
    them: set -eu, each announced), its working directory."""
    recipe = plan.recipe
    if recipe.variant == "extract":
        if scratch is None:
            raise ValueError("the extract variant starts from an empty image")
        lines = _extracted_packages(recipe.packages, base, scratch)
    else:
        lines = _installed_packages(recipe.packages, base)
    for dest, name in sorted(copies.items()):
        lines.append(f"COPY {json.dumps([name, _literal(dest)])}")
    for key, value in recipe.rendered_env(plan.build_args).items():
        if "\n" in value:
            raise BuildError(f"podman cannot set {key}: a Containerfile holds no newline in ENV")
        lines.append(f"ENV {key}={_quoted(value)}")
    if plan.steps():
        mount = ""
        if lend_ca:  # the host's trust store for the steps (pip behind a TLS proxy)
            mount = f"--mount=type=bind,source=host-ca.crt,target={HOST_CA},ro=true "
        argv = [*shlex.split(recipe.shell), "-c", steps_script(plan)]
        lines.append(f"RUN {mount}{json.dumps(argv)}")
    lines.append(f"WORKDIR {_quoted(recipe.workdir)}")
    return "\n".join(lines) + "\n"


def _extracted_packages(packages: list[str], base: str, scratch: str) -> list[str]:
    """The extract variant's start: ``scratch`` with the packages only unpacked into it."""
    # What mmdebstrap's extract variant does: the packages and their dependencies (none
    # counted as installed), unpacked, not configured; no apt, no dpkg in the image.
    lines = [f"FROM {base} AS packages", "ARG DEBIAN_FRONTEND=noninteractive"]
    if packages:
        lines.append(
            _continued(
                "RUN set -eu",
                "apt-get update",
                f"mkdir -p {_EXTRACT_DIR}/archives/partial {_EXTRACT_DIR}/rootfs",
                f": > {_EXTRACT_DIR}/status",
                "apt-get install -y --download-only --no-install-recommends "
                f"-o Dir::State::status={_EXTRACT_DIR}/status "
                f"-o Dir::Cache::archives={_EXTRACT_DIR}/archives/ {_words(packages)}",
                f"for deb in {_EXTRACT_DIR}/archives/*.deb; do "
                f'dpkg-deb --extract "$deb" {_EXTRACT_DIR}/rootfs; done',
                joiner=";",
            )
        )
    else:
        lines.append(f"RUN mkdir -p {_EXTRACT_DIR}/rootfs")
    lines += [f"FROM {scratch}", f"COPY --from=packages {_EXTRACT_DIR}/rootfs/ /"]
    lines.append("ARG DEBIAN_FRONTEND=noninteractive")
    return lines


def _installed_packages(packages: list[str], base: str) -> list[str]:
    """The other variants' start: ``base`` with the packages installed (no docs, no lists)."""
    lines = [f"FROM {base}", "ARG DEBIAN_FRONTEND=noninteractive"]
    if packages:
        excludes = " ".join(shlex.quote(f"path-exclude={p}") for p in DPKG_EXCLUDES)
        lines.append(
            _continued(
                f"RUN printf '%s\\n' {excludes} > /etc/dpkg/dpkg.cfg.d/99concordia",
                "apt-get update",
                f"apt-get install -y --no-install-recommends {_words(packages)}",
                "apt-get clean",
                "rm -rf /var/lib/apt/lists/*",
                joiner=" &&",
            )
        )
    return lines


def _words(packages: list[str]) -> str:
    """The package names as shell words."""
    return " ".join(shlex.quote(p) for p in packages)


def _continued(*parts: str, joiner: str) -> str:
    """Shell commands joined, one a line (continued lines: a readable Containerfile)."""
    return f"{joiner} \\\n    ".join(parts)


def _literal(text: str) -> str:
    """``text`` safe from a Containerfile's variable substitution (ENV, COPY, WORKDIR)."""
    return text.replace("\\", "\\\\").replace("$", "\\$")


def _quoted(text: str) -> str:
    return '"' + _literal(text).replace('"', '\\"') + '"'
