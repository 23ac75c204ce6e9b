"""The data lake through Concordia, against a fake of the Rucio client (tests/fakes): the
submission's choice, a local job's data stored before it is Done, listing and download,
failures, a restart in the middle of an upload, other users kept out."""

from __future__ import annotations

import asyncio
import re
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from concordia.datalake.store import DataLake
from concordia.settings import Settings
from tests.conftest import make_settings, running_app
from tests.fakes.datalake import FakeLake
from tests.integration.web.test_api import wait_status
from tests.integration.web.test_pages_concordia import csrf_of

pytestmark = pytest.mark.sql

APP = """\
name: lake
title: Data lake test
command: "sh lake.sh {run} {kb}"
input_files: [lake.sh]
outputs: ["result-*.txt", "data-*.bin"]
datalake:
  default: true
  data: ["data-*.bin"]
batch:
  count: jobs
  sequences:
    run: first_run
parameters:
  jobs: {type: int, default: 1, min: 1, max: 10}
  first_run: {type: int, default: 1, min: 0, max: 1000}
  kb: {type: int, default: 64, min: 1, max: 4096}
"""
SCRIPT = """\
#!/bin/sh
run=$1 kb=$2
echo "run $run"
echo "small result $run" > "result-$run.txt"
head -c "${kb}k" /dev/urandom > "data-$run.bin"
"""
RSE, OTHER_RSE = "TEST_DISK", "OTHER_DISK"
FINAL = {"Done", "Failed", "Killed"}


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLake]:
    fake = FakeLake(tmp_path / "lake", rses=(RSE, OTHER_RSE))
    checked: DataLake = fake  # the fake has the client's interface
    monkeypatch.setattr("concordia.service.connect_datalake", lambda *_args: checked)
    yield fake


def settings_with_app(
    tmp_path: Path, name: str, app: str, script: str, **overrides: Any
) -> Settings:
    """Settings of a server with the data lake (its service account, RSE) and the
    applications ``name`` (``app``, running ``script``) and hello."""
    apps = tmp_path / "apps"
    apps.mkdir(exist_ok=True)
    (apps / f"{name}.yaml").write_text(app)
    (apps / f"{name}.sh").write_text(script)
    shutil.copy(Path("applications/hello.yaml"), apps / "hello.yaml")
    shutil.copy(Path("applications/hello.sh"), apps / "hello.sh")
    values: dict[str, Any] = {
        "applications_dir": apps,
        "datalake_url": "https://rucio.invalid",
        "datalake_account": "concordia",
        "datalake_password": "service-pw",
        "datalake_rse": RSE,
    }
    return make_settings(tmp_path / "var", **(values | overrides))


def lake_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return settings_with_app(
        tmp_path, "lake", APP, SCRIPT, **({"datalake_rses": [RSE, OTHER_RSE]} | overrides)
    )


async def submit(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/api/v1/submissions", json={"application": "lake", **body})


def fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [".".join(str(p) for p in e["loc"][1:]) for e in response.json()["detail"]]


async def test_the_choice_is_checked_and_defaults_per_application(
    tmp_path: Path, lake: FakeLake
) -> None:
    async with running_app(lake_settings(tmp_path)) as app:
        client = app.client
        assert fields(await submit(client, datalake={"rse": "NOWHERE"})) == ["datalake.rse"]
        bad_names = ["a/b", "x" * 251, "", "name with space"]
        for name in bad_names:
            answer = await submit(client, datalake={"dataset": name})
            assert fields(answer) == ["datalake.dataset"], name
        # Nothing of the refused ones was stored.
        assert (await client.get("/api/v1/jobs")).json()["total"] == 0

        plan = await client.post("/api/v1/submissions?dry_run=true", json={"application": "lake"})
        assert plan.status_code == 200, plan.text
        assert plan.json()["datalake"] == {
            "scope": "user.local", "rse": RSE, "dataset": None, "did": None,
        }  # fmt: skip

        on = (await submit(client)).json()  # the application's default: on
        assert re.fullmatch(rf"user\.local:lake\.{on['id']}\.[0-9a-f]{{8}}", on["datalake"]["did"])
        assert on["datalake"]["rse"] == RSE
        named = (await submit(client, datalake={"rse": OTHER_RSE, "dataset": "my.set-1"})).json()
        assert named["datalake"]["did"] == "user.local:my.set-1"
        assert named["datalake"]["rse"] == OTHER_RSE
        off = (await submit(client, datalake=None)).json()
        assert off["datalake"] is None
        hello = await client.post("/api/v1/submissions", json={"application": "hello"})
        assert hello.json()["datalake"] is None  # hello's default: off (it says nothing)


async def test_without_a_data_lake_the_option_is_refused(tmp_path: Path, lake: FakeLake) -> None:
    async with running_app(lake_settings(tmp_path, datalake_url="")) as app:
        assert fields(await submit(app.client, datalake={})) == ["datalake"]
        plain = await submit(app.client)  # the default needs a data lake: off without one
        assert plain.status_code == 201 and plain.json()["datalake"] is None


async def test_a_local_job_is_done_with_its_data_in_the_lake(
    tmp_path: Path, lake: FakeLake
) -> None:
    async with running_app(lake_settings(tmp_path)) as app:
        sub = (await submit(app.client, parameters={"jobs": 2, "first_run": 5})).json()
        jobs = [await wait_status(app.client, j, FINAL) for j in sub["job_ids"]]
        assert [j["status"] for j in jobs] == ["Done", "Done"], jobs
        history = [h["minor_status"] for h in jobs[0]["history"]]
        assert "Uploading data to the data lake" in history
        # Named after the submission, and random: unique where installations share a scope.
        assert re.fullmatch(rf"lake\.{sub['id']}\.[0-9a-f]{{8}}", sub["datalake"]["dataset"])
        dataset = ("user.local", sub["datalake"]["dataset"])
        assert sorted(lake.datasets[dataset]) == [
            ("user.local", f"lake.{sub['id']}.0.{jobs[0]['uuid'][:8]}.data-5.bin"),
            ("user.local", f"lake.{sub['id']}.1.{jobs[1]['uuid'][:8]}.data-6.bin"),
        ]
        assert lake.meta[dataset] == {
            "application": "lake", "submission_id": sub["id"], "user": "local",
        }  # fmt: skip
        meta = lake.meta[("user.local", f"lake.{sub['id']}.1.{jobs[1]['uuid'][:8]}.data-6.bin")]
        assert meta["run"] == 6 and meta["job_id"] == jobs[1]["id"]
        assert meta["site"] == "local" and meta["backend"] == "local"
        assert '"run": 6' in str(meta["parameters"]) and len(str(meta["jdl_digest"])) == 64

        job = jobs[1]
        listed = (await app.client.get(f"/api/v1/jobs/{job['id']}/datalake")).json()
        assert [f["name"] for f in listed] == [
            f"lake.{sub['id']}.1.{jobs[1]['uuid'][:8]}.data-6.bin"
        ]
        [file] = listed
        assert file["did"] == f"user.local:{file['name']}" and file["rse"] == RSE
        assert file["bytes"] == 64 * 1024 and file["state"] == "A"

        got = await app.client.get(f"/api/v1/jobs/{job['id']}/datalake/{file['name']}")
        assert got.status_code == 200
        assert len(got.content) == file["bytes"]
        assert f"{zlib.adler32(got.content):08x}" == file["adler32"]

        # The data went to the lake, not the sandbox; the small result stayed.
        outputs = (await app.client.get(f"/api/v1/jobs/{job['id']}/outputs")).json()
        paths = {o["path"] for o in outputs["items"]}
        assert "result-6.txt" in paths and "data-6.bin" not in paths

        # Another user sees neither the list nor the file.
        async with app.new_client("mallory") as other:
            assert (await other.get(f"/api/v1/jobs/{job['id']}/datalake")).status_code == 404
            url = f"/api/v1/jobs/{job['id']}/datalake/{file['name']}"
            assert (await other.get(url)).status_code == 404

        # Deleting the job says the files stay, and leaves them there.
        deleted = await app.client.delete(f"/api/v1/jobs/{job['id']}")
        assert deleted.status_code == 200
        assert "stay in the data lake" in deleted.json()["notice"]
        assert ("user.local", file["name"]) in lake.files_
        whole = await app.client.delete(f"/api/v1/submissions/{sub['id']}")
        assert whole.json()["succeeded"] == [jobs[0]["id"]]
        assert whole.json()["notice"].startswith("1 file(s) of the deleted job(s) stay")
        assert len(lake.files_) == 2


async def test_a_refused_upload_fails_the_job_with_the_reason(
    tmp_path: Path, lake: FakeLake
) -> None:
    lake.refuse = "RSE TEST_DISK is full"
    async with running_app(lake_settings(tmp_path)) as app:
        sub = (await submit(app.client)).json()
        job = await wait_status(app.client, sub["job_ids"][0], FINAL)
        assert job["status"] == "Failed"
        assert job["minor_status"] == "data lake: RSE TEST_DISK is full"
        assert (await app.client.get(f"/api/v1/jobs/{job['id']}/datalake")).json() == []
        # Nothing is lost: the data output is still among the job's outputs.
        outputs = (await app.client.get(f"/api/v1/jobs/{job['id']}/outputs")).json()
        assert "data-1.bin" in {o["path"] for o in outputs["items"]}

        # Rescheduled once the RSE takes files again: its new run's data, named apart.
        lake.refuse = None
        again = await app.client.post(f"/api/v1/jobs/{job['id']}/reschedule")
        assert again.json()["status"] == "Received", again.text
        job = await wait_status(app.client, job["id"], FINAL)
        assert job["status"] == "Done", job
        listed = (await app.client.get(f"/api/v1/jobs/{job['id']}/datalake")).json()
        assert [f["name"] for f in listed] == [f"lake.{sub['id']}.0r1.{job['uuid'][:8]}.data-1.bin"]


async def test_a_stop_in_the_middle_of_an_upload_resumes_it_once(
    tmp_path: Path, lake: FakeLake
) -> None:
    settings = lake_settings(tmp_path)
    lake.gate = asyncio.Event()  # the file stored, Concordia not yet told
    async with running_app(settings) as app:
        sub = (await submit(app.client)).json()
        job_id = sub["job_ids"][0]
        await asyncio.wait_for(lake.waiting.wait(), 30)
        job = (await app.client.get(f"/api/v1/jobs/{job_id}")).json()
        assert (job["status"], job["minor_status"]) == (
            "Completing", "Uploading data to the data lake",
        )  # fmt: skip
    assert lake.writes == 1
    lake.gate = None
    async with running_app(settings) as app:  # a new process: it resumes the upload
        job = await wait_status(app.client, job_id, FINAL)
        assert job["status"] == "Done", job
        listed = (await app.client.get(f"/api/v1/jobs/{job_id}/datalake")).json()
        assert len(listed) == 1
    assert lake.writes == 1  # stored once; the resumed upload found it
    assert len(lake.datasets[("user.local", sub["datalake"]["dataset"])]) == 1


async def test_the_pages_offer_the_choice_and_show_the_files(
    tmp_path: Path, lake: FakeLake
) -> None:
    async with (
        running_app(lake_settings(tmp_path)) as app,
        httpx.AsyncClient(transport=app.client._transport, base_url="http://testserver") as web,
    ):
        login = urlsplit(app.login_url)
        assert (await web.get(f"{login.path}?{login.query}")).status_code == 303
        form = (await web.get("/concordia/lake")).text
        assert "Store data outputs in the data lake" in form
        assert re.search(r'name="datalake" value="on"\s+checked', form)  # lake's default
        assert f'<option value="{OTHER_RSE}"' in form
        hello_form = (await web.get("/concordia/hello")).text
        assert not re.search(r'name="datalake" value="on"\s+checked', hello_form)

        # Unticked, the submission keeps its data with its outputs.
        csrf = csrf_of(form)
        base = {"csrf": csrf, "datalake_shown": "1", "datalake.rse": RSE}
        off = await web.post("/concordia/lake", data=base)
        assert off.status_code == 303
        off_id = int(off.headers["location"].rsplit("/", 1)[1])
        assert (await app.client.get(f"/api/v1/submissions/{off_id}")).json()["datalake"] is None

        ticked = base | {"datalake": "on", "datalake.dataset": "from-the-form"}
        on = await web.post("/concordia/lake", data=ticked)
        assert on.status_code == 303
        page = (await web.get(on.headers["location"])).text
        assert "user.local:from-the-form" in page
        sub_id = int(on.headers["location"].rsplit("/", 1)[1])
        sub = (await app.client.get(f"/api/v1/submissions/{sub_id}")).json()
        job = await wait_status(app.client, sub["job_ids"][0], FINAL)
        assert job["status"] == "Done"
        job_page = (await web.get(f"/jobs/{job['id']}")).text
        name = f"lake.{sub_id}.0.{job['uuid'][:8]}.data-1.bin"
        assert f"rucio download user.local:{name}" in job_page
        assert f'href="/api/v1/jobs/{job["id"]}/datalake/{name}"' in job_page
        adler = lake.files_[("user.local", name)].adler32
        assert adler in job_page


async def test_the_form_says_what_is_wrong_with_the_choice(tmp_path: Path, lake: FakeLake) -> None:
    async with (
        running_app(lake_settings(tmp_path)) as app,
        httpx.AsyncClient(transport=app.client._transport, base_url="http://testserver") as web,
    ):
        login = urlsplit(app.login_url)
        assert (await web.get(f"{login.path}?{login.query}")).status_code == 303
        csrf = csrf_of((await web.get("/concordia/lake")).text)
        data = {"csrf": csrf, "datalake_shown": "1", "datalake": "on"}
        refused = await web.post(
            "/concordia/lake", data=data | {"datalake.rse": RSE, "datalake.dataset": "a b"}
        )
        assert refused.status_code == 422
        assert "data lake dataset: a dataset name is 1 to 250 letters" in refused.text
        assert (await app.client.get("/api/v1/jobs")).json()["total"] == 0
