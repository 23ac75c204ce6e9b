"""The stage cache for real: a second configuration reuses the first's base system, safely."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import tarfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from concordia.logic.image_builds import STAGES_DIR
from tests.conftest import make_settings, running_app
from tests.integration.images.test_images import BUSYBOX, wait_built, wait_jobs_final

pytestmark = pytest.mark.real

HOOK = "usr/share/initramfs-tools/hooks/zz-busybox"
CONF = "usr/share/initramfs-tools/conf-hooks.d/busybox"
# Its last steps change a file of the base system in place and remove another: neither
# may reach the cached base, and the OCI form must show both.
MODELS_YAML = f"""
name: models
title: Models
command: "cat /etc/model"
build_args:
  model: {{type: enum, choices: [qgsjet, epos], default: qgsjet}}
{BUSYBOX}    - echo {{model}} > /etc/model
    - echo {{model}} >> /{HOOK}
    - rm /{CONF}
"""


@pytest.fixture
def models_settings(tmp_path: Path) -> object:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "models.yaml").write_text(MODELS_YAML)
    return make_settings(tmp_path / "var", applications_dir=apps)


def oci_layers(archive: Path) -> list[str]:
    """The layer digests of the OCI archive's one image, lowest first."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> dict[str, object]:
            member = tar.extractfile(f"./blobs/sha256/{digest.split(':')[1]}")
            assert member is not None
            return dict(json.load(member))

        index = json.load(tar.extractfile("./index.json"))  # type: ignore[arg-type]
        manifest = blob(index["manifests"][0]["digest"])
        return [layer["digest"] for layer in manifest["layers"]]  # type: ignore[attr-defined]


def unpacked(archive: Path, into: Path) -> Path:
    """The OCI archive's image, its layers applied in order by umoci."""
    layout = into / "layout"
    layout.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(layout), "-xf", str(archive)], check=True)
    bundle = into / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)],
        check=True, capture_output=True,
    )  # fmt: skip
    return bundle / "rootfs"


async def test_a_second_configuration_reuses_the_base_stage(
    models_settings: object, tmp_path: Path
) -> None:
    async with running_app(models_settings) as app:  # type: ignore[arg-type]
        client = app.client
        images, store = [], app.platform.images.store
        for model in ("qgsjet", "epos"):
            body = {"application": "models", "build_args": {"model": model}}
            started = (await client.post("/api/v1/images", json=body)).json()
            image = await wait_built(client, started["image"]["id"])
            assert image["status"] == "ready", image["error"]
            images.append(image)
        first_log, second_log = [
            (await client.get(f"/api/v1/images/{i['id']}/log")).text for i in images
        ]
    assert "stage base: cached as" in first_log
    # Every line says when in the build it was written, commands' output included.
    lines = first_log.splitlines()
    assert all(re.match(r"\[ *\d+:\d\d\] ", line) for line in lines if line), first_log
    assert any(re.match(r"\[ *\d+:\d\d\] I: extracting archives", line) for line in lines)
    # The second build copies the base out of the cache: mmdebstrap does not run again.
    assert "stage base: cached (" in second_log and "$ mmdebstrap" not in second_log
    first, second = (store.path(i["id"]) / "rootfs" for i in images)
    assert (second / "etc" / "model").read_text() == "epos\n"
    assert (first / HOOK).read_text().endswith("\nqgsjet\n")
    assert (second / HOOK).read_text().endswith("\nepos\n")
    assert "qgsjet" not in (second / HOOK).read_text()
    # The cached base is as mmdebstrap made it: the steps' in-place change and removal
    # happened to copies, never to a file the cache shares (no hard link between them).
    [stage] = [p for p in (store.root / STAGES_DIR).iterdir() if not p.name.startswith(".")]
    cached = stage / "rootfs"
    assert "qgsjet" not in (cached / HOOK).read_text() and "epos" not in (cached / HOOK).read_text()
    assert (cached / CONF).is_file() and not (cached / "etc" / "model").exists()
    cached_inodes = {os.lstat(p).st_ino for p in cached.rglob("*")}
    assert not cached_inodes & {os.lstat(p).st_ino for p in second.rglob("*")}
    # The OCI forms share the base layer (a registry stores it once); the layers of each,
    # applied in order, give exactly its rootfs: the change, the removal (a whiteout).
    first_layers, second_layers = (
        oci_layers(store.path(i["id"]) / "image.oci.tar") for i in images
    )
    assert len(second_layers) == 2 and first_layers[0] == second_layers[0]
    tree = unpacked(store.path(images[1]["id"]) / "image.oci.tar", tmp_path / "oci")
    assert (tree / HOOK).read_text() == (second / HOOK).read_text()
    assert not (tree / CONF).exists() and (tree / "etc" / "model").read_text() == "epos\n"
    listing = sorted(str(p.relative_to(second)) for p in second.rglob("*"))
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*")) == listing


#: The slow step's sleep, its own in each test process: the suite's two passes run side by
#: side, and a test looks for its build's processes by their command line.
SLEEP = str(4242 + os.getpid() % 10000)
SLOW_YAML = f"""
name: slow
title: Slow
command: "true"
{BUSYBOX}    - echo start; sleep {SLEEP}
"""


def processes_with(*argv: str) -> list[int]:
    """Processes whose command line is ``argv``."""
    marker = "\0".join(argv) + "\0"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


async def test_a_build_is_cancelled_then_retried(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "slow.yaml").write_text(SLOW_YAML)
    settings = make_settings(tmp_path / "var", applications_dir=apps, image_formats=[])
    async with running_app(settings) as app:
        client = app.client
        submitted = (await client.post("/api/v1/submissions", json={"application": "slow"})).json()
        image_id = submitted["image_id"]
        deadline = time.monotonic() + 120
        while not processes_with("sleep", SLEEP):
            assert time.monotonic() < deadline, "the build never reached its slow step"
            await asyncio.sleep(0.1)
        cancelled = await client.post(f"/api/v1/images/{image_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["error"].startswith("cancelled by ")
        # The job that waited for it fails, saying why; the build's commands are stopped
        # and its workspace removed.
        [job] = await wait_jobs_final(client, submitted["id"])
        assert (job["status"], job["minor_status"]) == ("Failed", "Image build cancelled")
        while app.platform.images.tasks:
            assert time.monotonic() < deadline, "the cancelled build did not stop"
            await asyncio.sleep(0.1)
        assert processes_with("sleep", SLEEP) == []
        assert list((settings.images_dir / ".tmp").iterdir()) == []
        log = (await client.get(f"/api/v1/images/{image_id}/log")).text
        assert "BUILD CANCELLED" in log
        again = await client.post(f"/api/v1/images/{image_id}/cancel")
        assert again.status_code == 409  # nothing to cancel now
        # Retry: one action builds the same configuration again.
        retried = await client.post(f"/api/v1/images/{image_id}/retry")
        assert retried.status_code == 202 and retried.json()["image"]["id"] == image_id
        assert (await client.get(f"/api/v1/images/{image_id}")).json()["status"] == "building"
        assert (await client.post(f"/api/v1/images/{image_id}/retry")).status_code == 409
        assert (await client.post(f"/api/v1/images/{image_id}/cancel")).status_code == 200
        while app.platform.images.tasks:
            assert time.monotonic() < deadline, "the cancelled build did not stop"
            await asyncio.sleep(0.1)
        assert app.platform.images.started == 2


async def test_the_image_page_cancels_and_retries_a_build(tmp_path: Path) -> None:
    """The page's Cancel build and Retry buttons, behind the session's CSRF token; a Retry
    right after a Cancel builds again (it waits for the cancelled build to stop)."""
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "slow.yaml").write_text(SLOW_YAML)
    settings = make_settings(tmp_path / "var", applications_dir=apps, image_formats=[])
    async with running_app(settings) as app:
        image = (await app.client.post("/api/v1/images", json={"application": "slow"})).json()
        url = f"/images/{image['image']['id']}"
        async with httpx.AsyncClient(
            transport=app.client._transport, base_url="http://testserver"
        ) as browser:
            login = urlsplit(app.login_url)
            assert (await browser.get(f"{login.path}?{login.query}")).status_code == 303
            page = (await browser.get(url)).text
            assert "Cancel build</button>" in page and "Retry</button>" not in page
            csrf = re.search(r'name="csrf" value="([^"]+)"', page)
            assert csrf
            forged = await browser.post(f"{url}/cancel", data={})
            assert forged.status_code == 403
            cancelled = await browser.post(f"{url}/cancel", data={"csrf": csrf.group(1)})
            assert cancelled.status_code == 303 and cancelled.headers["location"] == url
            page = (await browser.get(url)).text
            assert "The build was cancelled; Retry builds it again." in page
            assert "Retry</button>" in page and "Cancel build</button>" not in page
            retried = await browser.post(f"{url}/retry", data={"csrf": csrf.group(1)})
            assert retried.status_code == 303 and retried.headers["location"] == url
            # At once, as a user clicks: the cancelled build may still be stopping.
            page = (await browser.get(url)).text
            assert "The image is being built again" in page and "Cancel build</button>" in page
            await browser.post(f"{url}/cancel", data={"csrf": csrf.group(1)})
        deadline = time.monotonic() + 120
        while app.platform.images.tasks:
            assert time.monotonic() < deadline, "the cancelled build did not stop"
            await asyncio.sleep(0.1)
