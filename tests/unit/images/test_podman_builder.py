"""The podman builder without podman: the Containerfile made from a recipe, and what the probe
says when podman is there but cannot build (a stand-in podman that fails as a broken one)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from concordia.core.recipe import Recipe
from concordia.images.build import PodmanSetup, choose_builder
from concordia.images.builders import BuildError
from concordia.images.containerfile import podman_containerfile
from concordia.images.plan import BuildPlan


def plan_of(recipe: Recipe, **build_args: object) -> BuildPlan:
    return BuildPlan(image_id="1" * 64, application="a", recipe=recipe, build_args=build_args)


def instructions(text: str) -> list[str]:
    """The Containerfile's instructions, continued lines joined."""
    return text.replace("\\\n", "").splitlines()


def run_argv(line: str) -> list[str]:
    """The exec-form argv of a RUN instruction (its JSON array)."""
    return list(json.loads(line[line.index("[") :]))


def test_a_minbase_recipe_becomes_a_containerfile() -> None:
    recipe = Recipe(  # noqa: S604 (shell names the image's shell; nothing runs here)
        packages=["file", "python3-pip"],
        pip=["numpy==2.0"],
        env={"GREETING": 'hello "{flavour}" $HOME \\ {flavour}'},
        steps=["cd /opt", "echo {flavour} > /etc/proof"],
        shell="/bin/bash -e",
        workdir="/data dir",
    )
    copies = {"/opt/tool.sh": "copy-0", "/srv/odd $dir/x": "copy-1"}
    text = podman_containerfile(
        plan_of(recipe, flavour="it's"), "localhost/base", copies, lend_ca=True
    )
    lines = instructions(text)
    assert lines[:2] == ["FROM localhost/base", "ARG DEBIAN_FRONTEND=noninteractive"]
    apt = lines[2]
    assert apt.startswith("RUN printf '%s\\n' 'path-exclude=/usr/share/doc/*'")
    assert "> /etc/dpkg/dpkg.cfg.d/99concordia" in apt
    assert "apt-get update && " in apt
    assert "apt-get install -y --no-install-recommends file python3-pip && " in apt
    assert apt.endswith("apt-get clean &&     rm -rf /var/lib/apt/lists/*")
    # Files from the build context, destinations safe from variable substitution.
    assert lines[3:5] == [
        'COPY ["copy-0", "/opt/tool.sh"]',
        'COPY ["copy-1", "/srv/odd \\\\$dir/x"]',
    ]
    # The rendered environment: build arguments in, quotes, $ and \ kept as they are.
    assert lines[5] == 'ENV GREETING="hello \\"it\'s\\" \\$HOME \\\\ it\'s"'
    # One RUN in the recipe's shell: pip first, every step announced, set -eu, the host's CA
    # bundle lent for its duration.
    steps = lines[6]
    mount = "--mount=type=bind,source=host-ca.crt,target=/etc/ssl/certs/ca-certificates.crt"
    assert steps.startswith(f"RUN {mount},ro=true [")
    argv = run_argv(steps)
    assert argv[:3] == ["/bin/bash", "-e", "-c"]
    script = argv[3].splitlines()
    assert script[0] == "set -eu"
    assert script[2].startswith("python3 -m pip install") and script[2].endswith("numpy==2.0")
    assert script[3:5] == ["echo '### step 2/3: cd /opt'", "cd /opt"]
    assert script[6] == "echo 'it'\"'\"'s' > /etc/proof"  # the build argument, shell-quoted
    assert lines[7:] == ['WORKDIR "/data dir"']


def test_a_recipe_without_packages_or_steps_is_its_base() -> None:
    text = podman_containerfile(plan_of(Recipe()), "localhost/base", {})
    assert text == 'FROM localhost/base\nARG DEBIAN_FRONTEND=noninteractive\nWORKDIR "/work"\n'


def test_the_extract_variant_unpacks_packages_into_an_empty_image() -> None:
    recipe = Recipe(  # noqa: S604
        variant="extract",
        packages=["busybox-static"],
        shell="/bin/busybox sh",
        steps=["/bin/busybox --install -s /bin"],
    )
    lines = instructions(
        podman_containerfile(plan_of(recipe), "localhost/base", {}, scratch="localhost/empty")
    )
    assert lines[0] == "FROM localhost/base AS packages"
    unpack = lines[2]
    # Dependencies resolved against an empty status (none counted as installed), only
    # downloaded, then unpacked: what mmdebstrap's extract variant does.
    assert "-o Dir::State::status=/.concordia-extract/status" in unpack
    assert "apt-get install -y --download-only --no-install-recommends" in unpack
    unpacked = 'do dpkg-deb --extract "$deb" /.concordia-extract/rootfs; done'
    assert unpack.endswith(
        f"busybox-static;     for deb in /.concordia-extract/archives/*.deb; {unpacked}"
    )
    assert lines[3:6] == [
        "FROM localhost/empty",
        "COPY --from=packages /.concordia-extract/rootfs/ /",
        "ARG DEBIAN_FRONTEND=noninteractive",
    ]
    assert run_argv(lines[6])[:3] == ["/bin/busybox", "sh", "-c"]
    with pytest.raises(ValueError, match="starts from an empty image"):
        podman_containerfile(plan_of(recipe), "localhost/base", {})


def test_an_env_value_a_containerfile_cannot_hold_fails_the_build() -> None:
    recipe = Recipe(env={"TWO_LINES": "one\ntwo"})
    with pytest.raises(BuildError, match="cannot set TWO_LINES"):
        podman_containerfile(plan_of(recipe), "localhost/base", {})


FAKE_PODMAN = """#!/bin/sh
# A podman whose storage works but whose builds cannot run a container (as with crun on a
# cgroup v1 hybrid machine).
case "$1 $2" in
  "image inspect") echo sha256:0123456789abcdef0123456789abcdef; exit 0 ;;
  "--version ") echo "podman version 9.9.9"; exit 0 ;;
esac
if [ "$1" = build ]; then
  echo "STEP 3/3: RUN [\\"/usr/bin/cat\\", \\"/probe.txt\\"]"
  echo "Error: building at STEP: crun: cgroups in hybrid mode are not supported" >&2
  exit 125
fi
exit 0
"""


def test_a_podman_that_cannot_build_is_passed_over_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "podman").write_text(FAKE_PODMAN)
    (bin_dir / "podman").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin")
    setup = PodmanSetup({"bookworm": "localhost/base:bookworm"}, tmp_path / "podman")
    choice = choose_builder(["podman"], [], setup)
    assert choice.builder is None
    problem = choice.problems["podman"]
    assert problem.startswith("a probe build failed: podman build failed with exit code 125")
    assert "cgroups in hybrid mode" in problem
    # Concordia's podman configuration was written, and the probe left nothing behind.
    conf = (tmp_path / "podman" / "containers.conf").read_text()
    assert re.search(r'runtime = "runc"', conf)
    assert [p.name for p in (tmp_path / "podman").iterdir()] == ["containers.conf"]
