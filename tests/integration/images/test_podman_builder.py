"""The podman image builder for real: a base image made here (mmdebstrap + podman import: no
registry is reachable), recipes built through the platform, jobs run in them, nothing left in
podman's storage; the probe (what it says, what it cleans up)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from concordia.backends.runtimes import Podman
from concordia.core.recipe import Recipe
from concordia.images.build import BuilderChoice, PodmanSetup, choose_builder, run_build
from concordia.images.builders import BuildError, stop_running_builds
from concordia.images.plan import BuildPlan, Source
from concordia.images.podman import PodmanBuilder
from concordia.images.store import ImageStore
from concordia.logic.image_builds import clear_build_leftovers
from concordia.logic.platform import ImageBuilds
from concordia.settings import Settings
from tests.conftest import make_settings, running_app
from tests.integration.images.test_images import BUSYBOX, wait_built, wait_jobs_final

# The podman builder: its builds and what they leave.
pytestmark = [
    pytest.mark.real,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("podman") is None or shutil.which("mmdebstrap") is None or os.geteuid() != 0,
        reason="needs podman, runc and mmdebstrap, as root (make test-deps)",
    ),
]

BASE = "localhost/concordia-test-base:bookworm"
TOOLED_YAML = """
name: tooled
title: Tooled
command: "sh -c 'cat /etc/proof; echo greeting: $GREETING; file -b /usr/bin/file'"
cpu_time: 30
build_args:
  flavour: {type: enum, choices: [vanilla, chocolate], default: vanilla}
image:
  packages: [file]
  env: {GREETING: "hello {flavour}"}
  workdir: /data
  steps:
    - cd /opt
    - echo "made by a step:" {flavour} "in $(pwd)" > /etc/proof
"""
BROKEN_YAML = """
name: broken
title: Broken
command: "true"
image:
  steps:
    - echo about to fail; exit 3
"""
TINY_YAML = f"""
name: tiny
title: Tiny
command: "cat /etc/tiny"
{BUSYBOX}    - echo tiny and extracted > /etc/tiny
"""


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """podman's environment with Concordia's configuration (runc, cgroupfs, ulimits)."""
    podman = Podman("podman", tmp_path_factory.mktemp("podman-conf"), Path("/nonexistent"))
    podman.write_config()
    return podman.env


def podman(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    return done.stdout


def concordia_leftovers(env: dict[str, str]) -> list[str]:
    """Containers (buildah's included) and image names of Concordia builds in podman's storage."""
    names = podman(env, "ps", "--all", "--external", "--format", "{{.Names}}").split()
    refs = podman(env, "images", "--all", "--format", "{{.Repository}}:{{.Tag}}").split()
    return [n for n in names + refs if "concordia-build" in n]


@pytest.fixture(scope="module")
def base_image(
    tmp_path_factory: pytest.TempPathFactory, podman_env: dict[str, str]
) -> Iterator[str]:
    """A debian:bookworm base image made here, imported into podman's storage; removed after."""
    out = tmp_path_factory.mktemp("podman-base") / "bookworm.tar"
    started = time.monotonic()
    subprocess.run(
        ["mmdebstrap", "--variant=minbase", "--quiet", "bookworm", str(out)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    podman(podman_env, "import", "--quiet", str(out), BASE)
    out.unlink()
    print(f"base image made and imported in {time.monotonic() - started:.1f} s")
    yield BASE
    podman(podman_env, "rmi", "--ignore", BASE)
    assert BASE not in podman(podman_env, "images", "--format", "{{.Repository}}:{{.Tag}}")


@pytest.fixture
def podman_settings(tmp_path: Path, base_image: str) -> Settings:
    apps = tmp_path / "apps"
    apps.mkdir()
    for name, text in [("tooled", TOOLED_YAML), ("broken", BROKEN_YAML), ("tiny", TINY_YAML)]:
        (apps / f"{name}.yaml").write_text(text)
    return make_settings(
        tmp_path / "var",
        applications_dir=apps,
        image_builders=["podman"],
        image_podman_bases={"bookworm": base_image},
    )


async def test_podman_builds_an_image_jobs_run_in(
    podman_settings: Settings, podman_env: dict[str, str]
) -> None:
    async with running_app(podman_settings) as app:
        choice = app.platform.images.choice
        assert choice.builder is not None and choice.builder.name == "podman", choice.problems
        assert choice.builder.version.startswith("podman version ")
        assert BASE in choice.builder.version  # the base (and its image id) is in every id
        client = app.client
        body = {"application": "tooled", "build_args": {"flavour": "chocolate"}}
        answer = await client.post("/api/v1/submissions", json=body)
        assert answer.status_code == 201, answer.text
        submitted = answer.json()
        image = await wait_built(client, submitted["image_id"])
        assert image["status"] == "ready", image["error"]
        assert image["builder"] == choice.builder.version
        log = (await client.get(f"/api/v1/images/{image['id']}/log")).text
        assert "FROM localhost/concordia-build-" in log and "apt-get install" in log
        assert "### step 2/2" in log
        stored = app.platform.images.store.get(image["id"])
        assert stored is not None
        rootfs = stored.rootfs
        assert (rootfs / "etc/proof").read_text() == "made by a step: chocolate in /opt\n"
        assert (rootfs / "usr/bin/file").is_file() and (rootfs / "data").is_dir()
        assert not (rootfs / "usr/share/doc/file").exists()  # the same excludes as mmdebstrap
        assert not list((rootfs / "var/lib/apt/lists").glob("*_Packages"))
        assert (rootfs / "etc/shadow").stat().st_gid != 0  # owners kept (group shadow)
        assert stored.meta["env"] == {"GREETING": "hello chocolate"}
        for fmt in ("squashfs", "oci"):
            assert stored.format_path(fmt).stat().st_size == image["formats"][fmt]["size"]
        [job] = await wait_jobs_final(client, submitted["id"])
        assert job["status"] == "Done", job
        out = (await client.get(f"/api/v1/jobs/{job['id']}/logs")).json()["data"]
        proof, greeting, kind = out.splitlines()
        assert (proof, greeting) == (
            "made by a step: chocolate in /opt",
            "greeting: hello chocolate",
        )
        assert kind.startswith("ELF 64-bit LSB")  # file, installed from a package, ran
        print(f"podman build of 'tooled': {stored.meta['seconds']} s")
    assert concordia_leftovers(podman_env) == []


async def test_the_extract_variant_is_emulated(
    podman_settings: Settings, podman_env: dict[str, str]
) -> None:
    async with running_app(podman_settings) as app:
        submitted = await app.client.post("/api/v1/submissions", json={"application": "tiny"})
        image = await wait_built(app.client, submitted.json()["image_id"])
        assert image["status"] == "ready", image["error"]
        stored = app.platform.images.store.get(image["id"])
        assert stored is not None
        assert image["rootfs_size"] < 5_000_000  # busybox, no apt, no dpkg
        assert not (stored.rootfs / "usr/bin/apt-get").exists()
        assert (stored.rootfs / "bin/busybox").is_file()
        [job] = await wait_jobs_final(app.client, submitted.json()["id"])
        out = (await app.client.get(f"/api/v1/jobs/{job['id']}/logs")).json()["data"]
        assert (job["status"], out) == ("Done", "tiny and extracted\n")
        print(f"podman build of the extract variant: {stored.meta['seconds']} s")
    assert concordia_leftovers(podman_env) == []


async def test_a_failing_step_fails_the_podman_build(
    podman_settings: Settings, podman_env: dict[str, str]
) -> None:
    async with running_app(podman_settings) as app:
        started = await app.client.post("/api/v1/images", json={"application": "broken"})
        image = await wait_built(app.client, started.json()["image"]["id"])
        assert image["status"] == "failed" and "podman build failed" in image["error"]
        log = (await app.client.get(f"/api/v1/images/{image['id']}/log")).text
        assert "about to fail" in log and "BUILD FAILED" in log
        assert not app.platform.images.store.complete(image["id"])
        assert not list((podman_settings.images_dir / ".tmp").iterdir())
    assert concordia_leftovers(podman_env) == []
    assert BASE in podman(podman_env, "images", "--format", "{{.Repository}}:{{.Tag}}")


def test_a_stopped_build_leaves_no_process_and_nothing_in_storage(
    tmp_path: Path, base_image: str, podman_env: dict[str, str]
) -> None:
    builder = PodmanBuilder.probe("podman", tmp_path / "podman", {"bookworm": base_image})
    assert isinstance(builder, PodmanBuilder), builder
    store = ImageStore(tmp_path / "images")
    store.prepare()
    recipe = Recipe(steps=["echo $((6 * 7)) sleeping; sleep 987"])
    plan = BuildPlan(image_id="2" * 64, application="sleepy", recipe=recipe, build_args={})
    errors: list[BaseException] = []

    def build() -> None:
        try:
            run_build(plan, builder, store, [])
        except BuildError as exc:
            errors.append(exc)

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    try:
        deadline, log = time.monotonic() + 120, store.log_path(plan.image_id)
        while not log.is_file() or "42 sleeping" not in log.read_text():  # the step's output
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.1)
    finally:
        stop_running_builds()  # as the server does when it stops
        thread.join(60)
    assert errors and not store.complete(plan.image_id)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert "sleep 987" not in ps.stdout  # the step died with podman build (its pid namespace)
    assert concordia_leftovers(podman_env) == []


def test_what_a_killed_server_left_is_removed(
    tmp_path: Path, base_image: str, podman_env: dict[str, str]
) -> None:
    config_dir = tmp_path / "podman"
    first = PodmanBuilder.probe("podman", config_dir, {"bookworm": base_image})
    assert isinstance(first, PodmanBuilder), first
    # What a build killed with its server leaves: a tag of the base, an image, a container.
    name = f"{first.prefix}-{'3' * 12}-abcdef"
    podman(podman_env, "tag", base_image, f"localhost/{name}-base")
    podman(podman_env, "tag", base_image, f"localhost/{name}-image")
    podman(podman_env, "create", "--name", name, f"localhost/{name}-base", "true")
    other = "concordia-build-00000000-not-ours"  # another data dir's: left alone
    podman(podman_env, "create", "--name", other, base_image, "true")
    try:
        again = PodmanBuilder.probe("podman", config_dir, {"bookworm": base_image})
        assert isinstance(again, PodmanBuilder) and again.version == first.version
        # The probe leaves them (another process of this data dir may be building)...
        assert name in concordia_leftovers(podman_env)
        # ...the process that builds removes them as it starts to.
        store = ImageStore(tmp_path / "images")
        store.prepare()
        clear_build_leftovers(ImageBuilds(store, BuilderChoice(again)))
        assert concordia_leftovers(podman_env) == [other]
        assert BASE in podman(podman_env, "images", "--format", "{{.Repository}}:{{.Tag}}")
    finally:
        podman(podman_env, "rm", "--force", "--ignore", other)


def test_the_probe_says_why_podman_cannot_build(tmp_path: Path, base_image: str) -> None:
    config_dir = tmp_path / "podman"
    unset = choose_builder(["podman"], [], PodmanSetup({}, config_dir))
    assert unset.builder is None and "image_podman_bases" in unset.problems["podman"]
    missing = choose_builder(
        ["podman"], [], PodmanSetup({"bookworm": "localhost/concordia-no-such:image"}, config_dir)
    )
    assert "podman pull localhost/concordia-no-such:image" in missing.problems["podman"]
    works = choose_builder(
        ["mmdebstrap", "podman"], ["squashfs"], PodmanSetup({"bookworm": base_image}, config_dir)
    )
    assert works.builder is not None and works.builder.name == "mmdebstrap"
    assert works.problems["podman"] == "usable, but mmdebstrap comes first in image_builders"


async def test_a_suite_without_a_base_image_fails_its_build(
    tmp_path: Path, base_image: str
) -> None:
    builder = PodmanBuilder.probe("podman", tmp_path / "podman", {"bookworm": base_image})
    assert isinstance(builder, PodmanBuilder)
    store = ImageStore(tmp_path / "images")
    store.prepare()
    plan = BuildPlan(
        image_id="4" * 64, application="x", recipe=Recipe(base="debian:trixie"), build_args={}
    )
    with pytest.raises(BuildError, match="no base image for debian:trixie"):
        await asyncio.to_thread(run_build, plan, builder, store, [])


def test_recipe_files_and_operator_sources_are_copied_in(
    tmp_path: Path, base_image: str, podman_env: dict[str, str]
) -> None:
    builder = PodmanBuilder.probe("podman", tmp_path / "podman", {"bookworm": base_image})
    assert isinstance(builder, PodmanBuilder), builder
    script, data = tmp_path / "tool.sh", tmp_path / "source.dat"
    script.write_text("#!/bin/sh\necho tool ran\n")
    script.chmod(0o755)
    data.write_bytes(b"operator data\n")
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    recipe = Recipe(steps=["/opt/tools/tool.sh > /opt/ran", "cat '/srv/odd $dir/source.dat'"])
    plan = BuildPlan(
        image_id="5" * 64, application="copies", recipe=recipe, build_args={},
        files={"/opt/tools/tool.sh": script},
        sources={"/srv/odd $dir/source.dat": Source(str(data), digest)},
    )  # fmt: skip
    store = ImageStore(tmp_path / "images")
    store.prepare()
    built = run_build(plan, builder, store, [])
    assert (built.rootfs / "opt/ran").read_text() == "tool ran\n"
    assert os.access(built.rootfs / "opt/tools/tool.sh", os.X_OK)
    copied = built.rootfs / "srv/odd $dir/source.dat"
    assert copied.read_bytes() == b"operator data\n" and copied.stat().st_mode & 0o777 == 0o644
    assert "operator data" in store.log_path(plan.image_id).read_text()
    assert concordia_leftovers(podman_env) == []
