"""Concordia's diracx backend against a real DiracX 0.7.0, with the test site playing the grid:
submit, follow the status history, kill, get outputs and logs; idempotent resubmission."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from concordia.backends.base import JobSpec
from concordia.settings import Settings
from tests.conftest import Running, make_settings, running_app
from tests.diracx.fixtures import JANE, USER_GROUP, DiracX
from tests.diracx.site import Site

JOB_SH = """#!/bin/sh
echo "out-$1 run $2"
echo "err-$1" >&2
echo "$1" > result.txt
exit "$3"
"""

APP = """name: gridhello
title: Grid hello
vos: [cta]
input_files: [job.sh]
command: "sh job.sh {message} {run} {exit_code}"
job_name: "gridhello_{run}"
outputs: ["result.txt"]
cpu_time: 60
batch:
  count: jobs
  sequences:
    run: first_run
parameters:
  jobs: {type: int, default: 1, min: 1, max: 100}
  first_run: {type: int, default: 1, min: 0}
  message: {type: str, default: hi}
  exit_code: {type: int, default: 0, min: 0, max: 255}
"""


def grid_server_env(tmp_path: Path, diracx: DiracX, max_jobs: int = 100) -> dict[str, str]:
    """A live server's environment: the grid application, Concordia acting as jane."""
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "gridhello.yaml").write_text(APP.replace("max: 100", f"max: {max_jobs}"))
    (apps / "job.sh").write_text(JOB_SH)
    return {
        "CONCORDIA_APPLICATIONS_DIR": str(apps),
        "CONCORDIA_LOCAL_USER": JANE,
        "CONCORDIA_DIRACX_URL": diracx.url,
        "CONCORDIA_DIRACX_LEGACY_SECRET": diracx.legacy_secret,
        "CONCORDIA_DIRACX_POLL_INTERVAL": "0.5",
    }


def grid_settings(tmp_path: Path, diracx: DiracX, **overrides: object) -> Settings:
    apps = tmp_path / "apps"
    apps.mkdir(exist_ok=True)
    (apps / "gridhello.yaml").write_text(APP)
    (apps / "job.sh").write_text(JOB_SH)
    values: dict[str, object] = {
        "applications_dir": apps,
        "local_user": JANE,  # DiracX knows jane: Concordia acts as her
        "diracx_url": diracx.url,
        "diracx_legacy_secret": diracx.legacy_secret,
        "default_backend": "diracx",
        "diracx_poll_interval": 0.5,
    }
    values.update(overrides)
    return make_settings(tmp_path / "var", **values)


@pytest.fixture
async def grid(tmp_path: Path, diracx: DiracX) -> AsyncIterator[Running]:
    async with running_app(grid_settings(tmp_path, diracx)) as running:
        yield running


def refs_of(jobs: list[dict[str, Any]]) -> list[int]:
    """The DiracX ids of these Concordia jobs."""
    return [int(j["backend_ref"]) for j in jobs]


async def wait_jobs(
    client: httpx.AsyncClient, ids: list[int], *statuses: str, timeout: float = 60
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [(await client.get(f"/api/v1/jobs/{i}")).json() for i in ids]
        if all(j["status"] in statuses for j in jobs):
            return jobs
        assert time.monotonic() < deadline, [
            (j["id"], j["status"], j["minor_status"]) for j in jobs
        ]
        await asyncio.sleep(0.2)


async def handed_over(
    client: httpx.AsyncClient, ids: list[int], timeout: float = 60
) -> list[dict[str, Any]]:
    """The jobs once each has its DiracX JobID."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = [(await client.get(f"/api/v1/jobs/{i}")).json() for i in ids]
        if all(j["backend_ref"] for j in jobs):
            return jobs
        assert time.monotonic() < deadline, jobs
        await asyncio.sleep(0.2)


async def test_a_batch_runs_on_the_grid_with_history_outputs_and_logs(
    grid: Running, site: Site, diracx: DiracX
) -> None:
    client = grid.client
    made = await client.post(
        "/api/v1/submissions",
        json={"application": "gridhello", "parameters": {"jobs": 3, "first_run": 7}},
    )
    assert made.status_code == 201, made.text
    view = made.json()
    assert view["backend"] == "diracx" and (view["vo"], view["group"]) == ("cta", "cta_user")
    ids = view["job_ids"]
    await handed_over(client, ids)  # a DiracX JobID each, submitted as Concordia's jane
    with site.running():
        done = await wait_jobs(client, ids, "Done", "Failed")
    assert [j["status"] for j in done] == ["Done"] * 3, done
    history = [h["status"] for h in done[0]["history"]]
    assert history[:3] == ["Received", "Checking", "Waiting"]
    for later in ("Matched", "Running", "Completing", "Done"):
        assert later in history, history
    assert {h["source"] for h in done[0]["history"]} >= {"diracx backend"}
    refs = [j["backend_ref"] for j in done]
    assert len(set(refs)) == 3 and all(r.isdigit() for r in refs)

    outputs = await client.get(f"/api/v1/jobs/{ids[1]}/outputs")
    assert [o["path"] for o in outputs.json()] == ["result.txt"]
    result = await client.get(f"/api/v1/jobs/{ids[1]}/outputs/result.txt")
    assert result.text == "hi\n"
    out = await client.get(f"/api/v1/jobs/{ids[1]}/logs?stream=stdout")
    assert "out-hi run 8" in out.json()["data"]
    err = await client.get(f"/api/v1/jobs/{ids[1]}/logs?stream=stderr")
    assert "err-hi" in err.json()["data"]

    # One input sandbox for the whole submission, uploaded once.
    found = diracx.rows(refs_of(done), "JobName")
    assert sorted(r["JobName"] for r in found) == sorted(f"{j['uuid']}.0" for j in done)


async def test_a_failing_job_fails_with_its_reason(grid: Running, site: Site) -> None:
    made = await grid.client.post(
        "/api/v1/submissions",
        json={"application": "gridhello", "parameters": {"exit_code": 3}},
    )
    [job_id] = made.json()["job_ids"]
    await handed_over(grid.client, [job_id])
    with site.running():
        [failed] = await wait_jobs(grid.client, [job_id], "Done", "Failed")
    assert failed["status"] == "Failed"
    assert "3" in failed["minor_status"], failed["minor_status"]


async def test_kill_from_concordia_reaches_diracx(
    grid: Running, site: Site, diracx: DiracX
) -> None:
    made = await grid.client.post("/api/v1/submissions", json={"application": "gridhello"})
    [job_id] = made.json()["job_ids"]
    [job] = await handed_over(grid.client, [job_id])
    killed = await grid.client.post(f"/api/v1/jobs/{job_id}/kill")
    assert killed.status_code == 200 and killed.json()["status"] == "Killed"
    assert [row["Status"] for row in diracx.rows(refs_of([job]), "Status")] == ["Killed"]


async def test_delete_reaches_diracx_and_with_diracx_down_nothing_changes(
    grid: Running, site: Site, diracx: DiracX
) -> None:
    made = await grid.client.post(
        "/api/v1/submissions", json={"application": "gridhello", "parameters": {"jobs": 2}}
    )
    waiting, done = made.json()["job_ids"]
    jobs = await handed_over(grid.client, [waiting, done])
    with diracx.stopped():
        kill = await grid.client.post(f"/api/v1/jobs/{waiting}/kill")
        delete = await grid.client.delete(f"/api/v1/jobs/{waiting}")
        for refused, word in [(kill, "killed"), (delete, "deleted")]:
            assert refused.status_code == 503, refused.text
            assert f"was not {word}" in refused.json()["detail"]
            job = (await grid.client.get(f"/api/v1/jobs/{waiting}")).json()
            assert job["status"] == "Waiting"  # nothing changed: the user may try again
    deleted = await grid.client.delete(f"/api/v1/jobs/{waiting}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "Deleted"
    with site.running():
        await wait_jobs(grid.client, [done], "Done", timeout=90)
    assert (await grid.client.delete(f"/api/v1/jobs/{done}")).status_code == 200
    # In DiracX too: the waiting job leaves the task queue, the finished one is cleaned up.
    assert {row["Status"] for row in diracx.rows(refs_of(jobs), "Status")} == {"Deleted"}


async def test_submitting_again_adopts_what_diracx_has_and_a_rerun_is_new(grid: Running) -> None:
    """Concordia killed after DiracX accepted jobs but before it recorded their ids: the next
    submission of the same jobs finds them by JobName instead of submitting them twice."""
    backend = grid.platform.backends["diracx"]
    spec = JobSpec(
        uuid=str(uuid.uuid4()), job_id=1, name="again", argv=["true"], cpu_time=60,
        owner=JANE, vo="cta", group=USER_GROUP, job_group="adopt.1",
    )  # fmt: skip
    first = await backend.submit([spec])
    again = await backend.submit([spec])
    assert [r.ref for r in again] == [r.ref for r in first]
    rerun = await backend.submit([spec.model_copy(update={"attempt": 1})])
    assert rerun[0].ref != first[0].ref  # a rescheduled job is a new DiracX job


async def test_rescheduling_runs_the_job_again_as_a_new_diracx_job(
    grid: Running, site: Site
) -> None:
    made = await grid.client.post(
        "/api/v1/submissions", json={"application": "gridhello", "parameters": {"exit_code": 1}}
    )
    [job_id] = made.json()["job_ids"]
    [first] = await handed_over(grid.client, [job_id])
    with site.running():
        await wait_jobs(grid.client, [job_id], "Failed")
        again = await grid.client.post(f"/api/v1/jobs/{job_id}/reschedule")
        assert again.status_code == 200, again.text
        [second] = await wait_jobs(grid.client, [job_id], "Failed", timeout=90)
    assert second["reschedule_count"] == 1
    assert second["backend_ref"] != first["backend_ref"]


async def test_while_diracx_is_down_jobs_keep_their_state_and_the_platform_says_so(
    grid: Running, site: Site, diracx: DiracX
) -> None:
    made = await grid.client.post(
        "/api/v1/submissions", json={"application": "gridhello", "parameters": {"jobs": 2}}
    )
    ids = made.json()["job_ids"]
    await handed_over(grid.client, ids)
    with diracx.stopped():
        await asyncio.sleep(2 * grid.settings.diracx_poll_interval + 1)
        jobs = [(await grid.client.get(f"/api/v1/jobs/{i}")).json() for i in ids]
        assert [j["status"] for j in jobs] == ["Waiting", "Waiting"]
        me = (await grid.client.get("/api/v1/me")).json()
        [dx] = [b for b in me["backends"] if b["name"] == "diracx"]
        assert dx["unreachable"] and "did not answer" in dx["unreachable"]
        # A submission meanwhile is kept, and its page says none is handed over yet.
        later = await grid.client.post("/api/v1/submissions", json={"application": "gridhello"})
        assert later.status_code == 201
        later_id = later.json()["id"]
        await asyncio.sleep(1)
        view = (await grid.client.get(f"/api/v1/submissions/{later_id}")).json()
        assert (view["handed_over"], view["job_count"]) == (0, 1)
        async with httpx.AsyncClient(
            transport=grid.client._transport, base_url="http://testserver"
        ) as browser:
            login = urlsplit(grid.login_url)
            assert (await browser.get(f"{login.path}?{login.query}")).status_code == 303
            page = await browser.get(f"/submissions/{later_id}")
        assert "Handed to diracx: <strong>0</strong> of 1 jobs." in page.text
    ids += later.json()["job_ids"]
    with site.running():
        done = await wait_jobs(grid.client, ids, "Done", "Failed", timeout=90)
    view = (await grid.client.get(f"/api/v1/submissions/{later_id}")).json()
    assert view["handed_over"] == 1 and view["progress"]["done"] == 1
    assert [j["status"] for j in done] == ["Done", "Done", "Done"]
    me = (await grid.client.get("/api/v1/me")).json()
    assert [b["unreachable"] for b in me["backends"] if b["name"] == "diracx"] == [None]
    # Nothing applied twice nor lost: Concordia's history is DiracX's from its Waiting on.
    rows = diracx.rows(refs_of(done), "LoggingInfo")
    theirs = {
        str(r["JobID"]): [e["Status"] for e in r["LoggingInfo"]][2:] for r in rows
    }  # after Received, Checking: Concordia's own steps
    for job in done:
        ours = [h["status"] for h in job["history"]]
        assert ours[:3] == ["Received", "Checking", "Waiting"]
        assert ours[3:] == theirs[job["backend_ref"]], (ours, theirs[job["backend_ref"]])
