"""Images for real: built with mmdebstrap, selected when they exist, built once, run in."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import shutil
import signal
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from concordia.core.build_progress import BuildProgress
from concordia.images import steps
from concordia.logic import image_selection
from concordia.settings import SHIPPED_APPLICATIONS, Settings
from tests.conftest import LiveServer, free_port, make_settings, running_app

pytestmark = [pytest.mark.real, pytest.mark.slow]

BUSYBOX = """
image:
  variant: extract
  packages: [busybox-static]
  shell: /bin/busybox sh
  steps:
    - /bin/busybox --install -s /bin
"""
PROOF_YAML = f"""
name: proof
title: Proof
command: "cat /etc/concordia-proof"
cpu_time: 30
batch: {{count: jobs}}
build_args:
  flavour: {{type: enum, choices: [vanilla, chocolate], default: vanilla}}
parameters:
  jobs: {{type: int, default: 1, min: 1, max: 10}}
{BUSYBOX}    - 'echo "made in the image:" {{flavour}} > /etc/concordia-proof'
  files: {{proof.txt: /opt/proof/proof.txt}}
"""
BROKEN_YAML = f"""
name: broken
title: Broken
command: "true"
{BUSYBOX}    - echo about to fail; exit 3
"""
SPIN_YAML = f"""
name: spin
title: Spin
command: "sh -c 'while :; do :; done'"
cpu_time: 1
{BUSYBOX}"""
SOURCE_YAML = """
name: licensed
title: Licensed code
command: "true"
image:
  sources: {tarball: {dest: /opt/src.tar, help: Ask the operator.}}
"""


@pytest.fixture
def apps(tmp_path: Path) -> Path:
    apps = tmp_path / "apps"
    apps.mkdir()
    for name, text in [
        ("proof", PROOF_YAML), ("broken", BROKEN_YAML), ("spin", SPIN_YAML),
        ("licensed", SOURCE_YAML),
    ]:  # fmt: skip
        (apps / f"{name}.yaml").write_text(text)
    (apps / "proof.txt").write_text("copied in\n")
    return apps


@pytest.fixture
def image_settings(tmp_path: Path, apps: Path) -> Settings:
    return make_settings(tmp_path / "var", applications_dir=apps)


async def wait_built(client: httpx.AsyncClient, image_id: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while (image := (await client.get(f"/api/v1/images/{image_id}")).json())[
        "status"
    ] == "building":
        assert time.monotonic() < deadline, "the build took too long"
        await asyncio.sleep(0.2)
    return image


async def wait_jobs_final(client: httpx.AsyncClient, submission: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 120
    while True:
        page = (await client.get(f"/api/v1/jobs?submission={submission}")).json()
        if page["items"] and all(j["status"] in ("Done", "Failed") for j in page["items"]):
            return list(page["items"])
        assert time.monotonic() < deadline, page
        await asyncio.sleep(0.2)


async def test_an_image_is_built_once_then_selected(image_settings: Settings) -> None:
    async with running_app(image_settings) as app:
        client = app.client
        first = await client.post("/api/v1/images", json={"application": "proof"})
        assert first.status_code == 202 and first.json()["selected"] is False
        image_id = first.json()["image"]["id"]
        # The log streams live (SSE) until the build ends.
        text, end, phases = "", None, []
        async with client.stream("GET", f"/api/v1/images/{image_id}/log/events") as stream:
            event = ""
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "log":
                    text += json.loads(line[5:])["text"]
                elif line.startswith("data:") and event == "progress":
                    phases.append(BuildProgress.model_validate_json(line[5:]).text)
                elif line.startswith("data:") and event == "end":
                    end = json.loads(line[5:])
                    break
        assert end == {"status": "ready", "error": ""}
        assert "### step 2/2" in text and "built in" in text
        # Where the build is, as it goes (at each chunk of log the phase it has reached).
        assert len(set(phases)) >= 2 and phases[-1] == "done", phases
        # apt's own lines (mmdebstrap --verbose): what the phase and n of N are read from.
        assert re.search(r"\d+ newly installed", text) and re.search(r"\] Get:1 ", text)
        image = await wait_built(client, image_id)
        rootfs = app.platform.images.store.path(image_id) / "rootfs"
        assert (rootfs / "opt" / "proof" / "proof.txt").read_text() == "copied in\n"
        assert image["build_args"] == {"flavour": "vanilla"} and image["builder"].startswith(
            "mmdebstrap"
        )
        # Both formats exist with the size and sha256 the catalogue gives.
        for fmt, magic in (("squashfs", b"hsqs"), ("oci", None)):
            download = await client.get(f"/api/v1/images/{image_id}/download/{fmt}")
            assert download.status_code == 200
            body = download.content
            assert len(body) == image["formats"][fmt]["size"]
            assert hashlib.sha256(body).hexdigest() == image["formats"][fmt]["sha256"]
            if magic:
                assert body[:4] == magic
            else:
                names = tarfile.open(fileobj=io.BytesIO(body)).getnames()
                assert "./oci-layout" in names and "./index.json" in names
        # Asked again: selected at once, no second build; another configuration is another id.
        again = await client.post("/api/v1/images", json={"application": "proof"})
        assert again.status_code == 200 and again.json()["selected"] is True
        assert again.json()["image"]["id"] == image_id
        assert app.platform.images.started == 1
        other = await client.post(
            "/api/v1/images", json={"application": "proof", "build_args": {"flavour": "chocolate"}}
        )
        assert other.json()["image"]["id"] != image_id
        await wait_built(client, other.json()["image"]["id"])
        listed = (await client.get("/api/v1/images?application=proof")).json()
        assert {i["id"] for i in listed} == {image_id, other.json()["image"]["id"]}


async def test_concurrent_requests_build_once(image_settings: Settings) -> None:
    async with running_app(image_settings) as app:
        answers = await asyncio.gather(
            *(app.client.post("/api/v1/images", json={"application": "proof"}) for _ in range(8))
        )
        ids = {a.json()["image"]["id"] for a in answers}
        assert len(ids) == 1 and all(a.status_code == 202 for a in answers)
        assert (await wait_built(app.client, ids.pop()))["status"] == "ready"
        assert app.platform.images.started == 1


class _OneCloseEach:
    """The os module as images/steps.py sees it, whose close() lets another file take each
    number it frees at once (as another thread of the server may: the database's), and
    records a number it is asked to close again."""

    def __init__(self) -> None:
        self.taken: set[int] = set()
        self.twice: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def close(self, fd: int) -> None:
        if fd in self.taken:
            self.twice.append(fd)
        os.close(fd)
        other = os.open(os.devnull, os.O_RDONLY)
        os.dup2(other, fd)  # that very number
        os.close(other)
        self.taken.add(fd)


async def test_a_build_step_closes_each_descriptor_once(
    image_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A descriptor closed twice may by then be another thread's file: the database's read
    then fails with "disk I/O error" (SQLITE_IOERR_READ, seen in two CI runs)."""
    seen = _OneCloseEach()
    monkeypatch.setattr(steps, "os", seen)
    try:
        async with running_app(image_settings) as app:
            started = await app.client.post("/api/v1/images", json={"application": "proof"})
            image = await wait_built(app.client, started.json()["image"]["id"])
            assert image["status"] == "ready"
    finally:
        for fd in seen.taken - set(seen.twice):
            os.close(fd)
    assert seen.taken and not seen.twice


async def test_a_failing_step_fails_the_build_and_its_jobs(image_settings: Settings) -> None:
    async with running_app(image_settings) as app:
        client = app.client
        submitted = await client.post("/api/v1/submissions", json={"application": "broken"})
        assert submitted.status_code == 201, submitted.text
        image_id = submitted.json()["image_id"]
        image = await wait_built(client, image_id)
        assert image["status"] == "failed" and "exit code 3" in image["error"]
        log = (await client.get(f"/api/v1/images/{image_id}/log")).text
        assert "about to fail" in log and "BUILD FAILED" in log
        assert not app.platform.images.store.complete(image_id)  # no half image left
        assert not list((image_settings.images_dir / ".tmp").iterdir())
        jobs = await wait_jobs_final(client, submitted.json()["id"])
        assert [(j["status"], j["minor_status"]) for j in jobs] == [
            ("Failed", "Image build failed")
        ]
        detail = (await client.get(f"/api/v1/jobs/{jobs[0]['id']}")).json()
        assert detail["image_id"] == image_id  # the job leads to the build log

        # Asked again, it builds again, with a log of its own from its first byte: a build
        # waiting for a slot has written none yet (a follower saw the failed one's, then
        # this one's from where that one ended).
        slots, held = app.platform.images.slots, 0
        while not slots.locked():  # every build slot taken: the build waits for one
            await slots.acquire()
            held += 1
        again = await client.post("/api/v1/images", json={"application": "broken"})
        assert again.json()["image"]["status"] == "building"
        waiting = await client.get(f"/api/v1/images/{image_id}/log")
        assert waiting.headers["X-Image-Status"] == "building"
        assert waiting.text == "" and waiting.headers["X-Log-Offset"] == "0"
        for _ in range(held):
            slots.release()
        assert (await wait_built(client, image_id))["status"] == "failed"
        log = (await client.get(f"/api/v1/images/{image_id}/log")).text
        assert log.count("BUILD FAILED") == 1, log


async def test_jobs_wait_for_their_image_then_run_in_it(image_settings: Settings) -> None:
    async with running_app(image_settings) as app:
        client = app.client
        body = {
            "application": "proof",
            "parameters": {"jobs": 2},
            "build_args": {"flavour": "chocolate"},
        }
        submitted = (await client.post("/api/v1/submissions", json=body)).json()
        jobs = await wait_jobs_final(client, submitted["id"])
        assert [j["status"] for j in jobs] == ["Done", "Done"]
        for job in jobs:
            out = (await client.get(f"/api/v1/jobs/{job['id']}/logs")).json()
            assert out["data"] == "made in the image: chocolate\n"  # a file only the image has
            history = (await client.get(f"/api/v1/jobs/{job['id']}")).json()["history"]
            assert "Waiting for image" in [h["minor_status"] for h in history]


async def test_limits_hold_in_an_image(image_settings: Settings) -> None:
    # Wall time ten times its CPU time: on a busy machine the spinning job reaches its CPU
    # bound (1 s) before its wall-clock one, as it would alone.
    settings = image_settings.model_copy(update={"local_wall_time_factor": 10.0})
    async with running_app(settings) as app:
        submitted = (
            await app.client.post("/api/v1/submissions", json={"application": "spin"})
        ).json()
        [job] = await wait_jobs_final(app.client, submitted["id"])
        assert (job["status"], job["minor_status"]) == ("Failed", "CPU time limit exceeded")


async def test_a_build_interrupted_by_a_restart_resumes(image_settings: Settings) -> None:
    async with running_app(image_settings) as app:
        started = await app.client.post("/api/v1/images", json={"application": "proof"})
        image_id = started.json()["image"]["id"]
    assert not (image_settings.images_dir / image_id).exists()
    async with running_app(image_settings) as app:
        assert (await wait_built(app.client, image_id))["status"] == "ready"
        assert app.platform.images.started == 1  # the resumed build


async def test_bad_requests_change_nothing(image_settings: Settings) -> None:
    async with running_app(image_settings) as app:
        client = app.client
        unknown = await client.post("/api/v1/images", json={"application": "nope"})
        assert unknown.status_code == 404
        bad = await client.post(
            "/api/v1/images", json={"application": "proof", "build_args": {"flavour": "mint"}}
        )
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "build_args", "flavour"]
        extra = await client.post(
            "/api/v1/images", json={"application": "proof", "build_args": {"x": 1}}
        )
        assert extra.status_code == 422
        assert extra.json()["detail"][0]["loc"] == ["body", "build_args", "x"]
        licensed = await client.post("/api/v1/images", json={"application": "licensed"})
        assert licensed.status_code == 409 and "Ask the operator." in licensed.text
        view = (await client.get("/api/v1/applications/licensed")).json()
        assert "tarball" in view["unavailable"]
        for path in ("../../etc/passwd", "a" * 64, "A" * 64):
            assert (await client.get(f"/api/v1/images/{path}")).status_code == 404
        assert app.platform.images.started == 0
        assert (await client.get("/api/v1/images")).json() == []


async def test_delete_is_refused_while_jobs_use_the_image(image_settings: Settings) -> None:
    async with running_app(image_settings) as app:
        client = app.client
        body = {"application": "proof", "parameters": {"jobs": 1}}
        submitted = (await client.post("/api/v1/submissions", json=body)).json()
        image_id = submitted["image_id"]
        refused = await client.delete(f"/api/v1/images/{image_id}")
        assert refused.status_code == 409  # building, then used by a job not yet finished
        await wait_jobs_final(client, submitted["id"])
        image = (await client.get(f"/api/v1/images/{image_id}")).json()
        assert image["jobs"] == 1
        assert (await client.delete(f"/api/v1/images/{image_id}")).status_code == 204
        assert (await client.get(f"/api/v1/images/{image_id}")).status_code == 404
        assert not (image_settings.images_dir / image_id).exists()
        # Asked for again, it is built again.
        again = await client.post("/api/v1/images", json={"application": "proof"})
        assert again.status_code == 202 and again.json()["image"]["id"] == image_id
        assert (await wait_built(client, image_id))["status"] == "ready"


async def test_the_hello_image_is_tiny_and_quick(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    shutil.copytree(SHIPPED_APPLICATIONS, apps)
    settings = make_settings(tmp_path / "var", applications_dir=apps, image_formats=["squashfs"])
    async with running_app(settings) as app:
        started = (await app.client.post("/api/v1/images", json={"application": "hello"})).json()
        image = await wait_built(app.client, started["image"]["id"], timeout=120)
        assert image["status"] == "ready", image["error"]
        assert image["rootfs_size"] < 5_000_000 and list(image["formats"]) == ["squashfs"]


SLOW_YAML = f"""
name: slow
title: Slow to build
command: "cat /etc/slow"
{BUSYBOX}    - sleep 3; echo built slowly > /etc/slow
"""


def test_a_killed_server_leaves_no_half_image_and_builds_again(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "slow.yaml").write_text(SLOW_YAML)
    data_dir = tmp_path / "var"

    def start() -> tuple[LiveServer, httpx.Client]:
        port = free_port()
        env = {
            **os.environ,
            "CONCORDIA_DATA_DIR": str(data_dir),
            "CONCORDIA_APPLICATIONS_DIR": str(apps),
            "CONCORDIA_PORT": str(port),
            "CONCORDIA_IMAGE_FORMATS": "[]",
        }
        server = LiveServer(data_dir=data_dir, port=port, env=env)
        server.start()
        headers = {"Authorization": f"Bearer {server.token}"}
        return server, httpx.Client(base_url=server.url, headers=headers, timeout=30)

    server, client = start()
    try:
        image_id = client.post("/api/v1/images", json={"application": "slow"}).json()["image"]["id"]
        deadline = time.monotonic() + 120
        while "### step 2/2" not in client.get(f"/api/v1/images/{image_id}/log").text:
            assert time.monotonic() < deadline, "the build never reached its slow step"
            time.sleep(0.1)
        server.kill(signal.SIGKILL)
        assert not (data_dir / "images" / image_id).exists()  # half-made: not published
        assert [p.name[:64] for p in (data_dir / "images" / ".tmp").iterdir()] == [image_id]
    finally:
        client.close()
        if server.process is not None and server.process.poll() is None:
            server.kill(signal.SIGKILL)
    server, client = start()
    try:
        deadline = time.monotonic() + 120
        while (image := client.get(f"/api/v1/images/{image_id}").json())["status"] == "building":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert image["status"] == "ready", image["error"]
        assert (data_dir / "images" / image_id / "rootfs" / "etc" / "slow").read_text() == (
            "built slowly\n"
        )
        assert list((data_dir / "images" / ".tmp").iterdir()) == []
    finally:
        client.close()
        server.kill(signal.SIGTERM)


async def test_corsika_is_unavailable_until_its_source_is_configured(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path / "a")) as app:
        view = (await app.client.get("/api/v1/applications/corsika")).json()
        assert "its build needs the file 'corsika'" in view["unavailable"]
        refused = await app.client.post("/api/v1/images", json={"application": "corsika"})
        assert refused.status_code == 409 and "corsika" in refused.json()["detail"]
    tarball = tmp_path / "corsika.tar.gz"
    tarball.write_bytes(b"not really CORSIKA")
    source = {"url": str(tarball), "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest()}
    async with running_app(make_settings(tmp_path / "b", sources={"corsika": source})) as app:
        view = (await app.client.get("/api/v1/applications/corsika")).json()
        assert view["unavailable"] is None
        state = await image_selection.image_state(app.platform, "corsika", {"he_model": "epos-lhc"})
        other = await image_selection.image_state(app.platform, "corsika", {})
        assert state.problem is None and state.status is None  # buildable, not built yet
        assert state.id and other.id and state.id != other.id


SLEEPY_YAML = f"""
name: sleepy
title: Sleepy
command: "sleep 60"
cpu_time: 120
batch: {{count: jobs}}
parameters:
  jobs: {{type: int, default: 2, min: 1, max: 10}}
{BUSYBOX}"""


async def test_jobs_never_run_without_their_image(tmp_path: Path, apps: Path) -> None:
    (apps / "sleepy.yaml").write_text(SLEEPY_YAML)
    settings = make_settings(tmp_path / "var", applications_dir=apps, local_slots=1)
    async with running_app(settings) as app:
        submitted = (
            await app.client.post("/api/v1/submissions", json={"application": "sleepy"})
        ).json()
        deadline = time.monotonic() + 120
        while True:  # one job running, the other waiting for the slot
            page = (await app.client.get(f"/api/v1/jobs?submission={submitted['id']}")).json()
            if sorted(j["status"] for j in page["items"]) == ["Running", "Waiting"]:
                break
            assert time.monotonic() < deadline, page
            await asyncio.sleep(0.1)
    # While the server is down, the image's files are removed by hand.
    shutil.rmtree(settings.images_dir / submitted["image_id"])
    async with running_app(settings) as app:
        jobs = await wait_jobs_final(app.client, submitted["id"])
        assert [(j["status"], j["minor_status"]) for j in jobs] == [
            ("Failed", "Image files missing from the store: rebuild the image")
        ] * 2
