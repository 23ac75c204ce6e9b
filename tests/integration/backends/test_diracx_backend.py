"""Concordia's diracx backend against a real DiracX 0.7.0, with the test site playing the grid:
submit, follow the status history, kill, get outputs and logs; idempotent resubmission."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from concordia.backends.base import JobSpec
from concordia.backends.diracx.jobs import PENDING_SANDBOX
from concordia.core.jdl import parse_jdl
from concordia.datalake.rucio import Rucio
from concordia.logic import submission_plans
from concordia.logic.submission_models import SubmissionRequest
from concordia.settings import Settings
from tests.conftest import Running, make_settings, running_app
from tests.diracx.fixtures import JANE, USER_GROUP, DiracX
from tests.diracx.jdl import as_list
from tests.diracx.site import Site
from tests.rucio import RucioServer

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
cpu_time: 600
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
    return as_jane(diracx, apps)


def as_jane(diracx: DiracX, apps: Path) -> dict[str, str]:
    """A live server's environment: ``apps``' applications, Concordia acting as jane on
    the test's DiracX."""
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
    assert {h["source"] for h in done[0]["history"]} >= {"JobManager", "TestSite"}
    refs = [j["backend_ref"] for j in done]
    assert len(set(refs)) == 3 and all(r.isdigit() for r in refs)

    outputs = await client.get(f"/api/v1/jobs/{ids[1]}/outputs")
    assert [o["path"] for o in outputs.json()["items"]] == ["result.txt"]
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
        uuid=str(uuid.uuid4()), job_id=1, name="again", argv=["true"], cpu_time=600,
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
    # Nothing applied twice nor lost: Concordia's history is DiracX's after its own three
    # steps (DiracX's Received and Checking are steps of Concordia's Waiting; an entry that
    # only sets the application status, the wrapper's exit code, is no step).
    rows = diracx.rows(refs_of(done), "LoggingInfo")
    theirs = {str(r["JobID"]): [step[:2] for step in diracx_steps(r["LoggingInfo"])] for r in rows}
    for job in done:
        ours = [(h["status"], h["minor_status"]) for h in job["history"]]
        assert [status for status, _ in ours[:3]] == ["Received", "Checking", "Waiting"]
        assert ours[3:] == theirs[job["backend_ref"]], (ours, theirs[job["backend_ref"]])


# --- the JDL DIRAC runs is the JDL Concordia shows


async def test_the_jdl_a_grid_job_shows_is_the_jdl_diracx_was_sent(
    tmp_path: Path, diracx: DiracX
) -> None:
    settings = grid_settings(tmp_path, diracx)
    app_file = settings.applications_dir / "gridhello.yaml"
    app_file.write_text(APP + "priority: 4\ntags: [cta-test, 2Processors]\n")
    async with running_app(settings) as grid:
        app = grid.platform.catalog.get("gridhello")
        request = SubmissionRequest(
            application="gridhello", parameters={"jobs": 2}, backend="diracx"
        )
        preview = parse_jdl((await submission_plans.preview(grid.platform, app, request)).first_jdl)
        made = await grid.client.post("/api/v1/submissions", json=request.model_dump())
        assert made.status_code == 201, made.text
        jobs = await handed_over(grid.client, made.json()["job_ids"])
    for job in jobs:
        shown = parse_jdl(job["jdl"])
        stored = parse_jdl(diracx.job_jdl(int(job["backend_ref"])))
        # Every attribute Concordia shows is in DiracX's JobDB with the same value (DIRAC
        # keeps a list of one as its item).
        kept = {
            k: as_list(stored.get(k)) if isinstance(v, list) else stored.get(k)
            for k, v in shown.items()
        }
        assert kept == shown
        assert shown["Priority"] == 4 and shown["Tags"] == ["cta-test", "2Processors"]
        assert shown["Executable"] == "concordia-job.sh"
        assert shown["JobName"] == f"{job['uuid']}.0"
        [sandbox] = shown["InputSandbox"]
        assert isinstance(sandbox, str) and sandbox.startswith("SB:")
    # The preview said the same, but for what only submitting and handing over know.
    first = parse_jdl(jobs[0]["jdl"])
    assert preview["JobName"] == "<job uuid>.0" and preview["InputSandbox"] == [PENDING_SANDBOX]
    known_later = {"JobName", "InputSandbox"}
    assert {k: v for k, v in preview.items() if k not in known_later} == {
        k: v for k, v in first.items() if k not in known_later
    }


async def test_what_dirac_would_refuse_is_refused_at_submission_naming_the_rule(
    tmp_path: Path, diracx: DiracX
) -> None:
    settings = grid_settings(tmp_path, diracx)
    (settings.applications_dir / "quick.yaml").write_text(
        APP.replace("name: gridhello", "name: quick").replace("cpu_time: 600", "cpu_time: 60")
    )
    long_name = "an-even-longer-application-name"  # its JobGroup is over 32 characters
    (settings.applications_dir / f"{long_name}.yaml").write_text(
        APP.replace("name: gridhello", f"name: {long_name}")
    )
    async with running_app(settings) as grid:
        quick = await grid.client.post(
            "/api/v1/submissions", json={"application": "quick", "backend": "diracx"}
        )
        assert quick.status_code == 422, quick.text
        [problem] = quick.json()["detail"]
        assert problem["loc"] == ["body", "application"]
        assert problem["msg"].startswith("CPUTime 60 s is outside DIRAC's 100-500000 s")
        named = await grid.client.post(
            "/api/v1/submissions", json={"application": long_name, "backend": "diracx"}
        )
        assert named.status_code == 422, named.text
        assert "more than the 32 DiracX holds" in named.json()["detail"][0]["msg"]
        # Nothing was stored; on this machine the same jobs run.
        assert (await grid.client.get("/api/v1/jobs")).json()["total"] == 0
        local = await grid.client.post(
            "/api/v1/submissions", json={"application": "quick", "backend": "local"}
        )
        assert local.status_code == 201, local.text


# --- DiracX correctness


async def test_a_kill_after_the_job_ended_on_the_grid_is_refused_and_diracx_state_kept(
    tmp_path: Path, diracx: DiracX, site: Site
) -> None:
    # Concordia reads DiracX once after the hand-over and then not for an hour: the grid ends
    # the job before Concordia knows.
    async with running_app(grid_settings(tmp_path, diracx, diracx_poll_interval=3600)) as grid:
        made = await grid.client.post("/api/v1/submissions", json={"application": "gridhello"})
        [job_id] = made.json()["job_ids"]
        [job] = await handed_over(grid.client, [job_id])
        ref = int(job["backend_ref"])
        site.run_once()
        assert diracx.rows([ref], "Status")[0]["Status"] == "Done"
        killed = await grid.client.post(f"/api/v1/jobs/{job_id}/kill")
        assert killed.status_code == 409, killed.text
        assert "the kill came too late, it had ended on diracx (Done" in killed.json()["detail"]
        # Concordia keeps DiracX's state, and its history, rather than a kill that never was.
        [done] = await wait_jobs(grid.client, [job_id], "Done", "Killed")
    assert done["status"] == "Done"
    assert "Killed" not in [h["status"] for h in done["history"]]
    assert diracx.rows([ref], "Status") == [{"JobID": ref, "Status": "Done"}]


async def test_diracx_down_with_no_job_followed_is_said_at_once_in_one_line_a_retry(
    tmp_path: Path, diracx: DiracX, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="concordia")
    async with running_app(grid_settings(tmp_path, diracx, poll_interval=0.5)) as grid:
        with diracx.stopped():
            made = await grid.client.post("/api/v1/submissions", json={"application": "gridhello"})
            assert made.status_code == 201, made.text
            deadline = time.monotonic() + 60
            while True:  # no job in DiracX to follow: the failed hand-over says it
                me = (await grid.client.get("/api/v1/me")).json()
                [dx] = [b for b in me["backends"] if b["name"] == "diracx"]
                if dx["unreachable"] and len(_hand_over_lines(caplog)) >= 2:
                    break
                assert time.monotonic() < deadline, (dx, caplog.text)
                await asyncio.sleep(0.2)
            assert "did not answer" in dx["unreachable"]
        lines = _hand_over_lines(caplog)
        assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines), lines
        assert not [r for r in caplog.records if r.exc_info], caplog.text  # no traceback
        await handed_over(grid.client, made.json()["job_ids"])
        me = (await grid.client.get("/api/v1/me")).json()
        assert [b["unreachable"] for b in me["backends"] if b["name"] == "diracx"] == [None]


def _hand_over_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "concordia.worker" and "diracx" in r.getMessage()
    ]


async def test_a_job_in_diracx_shows_its_minor_status_and_sources(
    grid: Running, site: Site, diracx: DiracX
) -> None:
    made = await grid.client.post("/api/v1/submissions", json={"application": "gridhello"})
    [job_id] = made.json()["job_ids"]
    await handed_over(grid.client, [job_id])
    deadline = time.monotonic() + 60
    while (job := (await grid.client.get(f"/api/v1/jobs/{job_id}")).json())["minor_status"] != (
        "Job accepted"
    ):  # DiracX's, not "Waiting for a diracx slot" any more
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.2)
    assert job["status"] == "Waiting"
    with site.running():
        [done] = await wait_jobs(grid.client, [job_id], "Done")
    [row] = diracx.rows([int(done["backend_ref"])], "LoggingInfo")
    theirs = diracx_steps(row["LoggingInfo"])
    ours = [(h["status"], h["minor_status"], h["source"]) for h in done["history"]]
    assert ours[:3] == [
        ("Received", "Job accepted", "User"),
        ("Checking", "JobSanity", "JobSanity"),
        ("Waiting", "Waiting for a diracx slot", "JobScheduling"),
    ]
    assert ours[3:] == theirs  # DiracX's own history, its Received and Checking as Waiting
    assert ("Waiting", "Job accepted", "JobManager") in ours
    assert ("Done", "Execution Complete", "TestSite") in ours


def diracx_steps(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """DiracX's history as Concordia shows it, (status, minor status, source): Received and
    Checking as Waiting; an entry that only sets the application status (the wrapper's exit
    code) is no step."""
    steps = []
    for i, e in enumerate(entries):
        if i and (e["Status"], e["MinorStatus"]) == (
            entries[i - 1]["Status"], entries[i - 1]["MinorStatus"]
        ):  # fmt: skip
            continue
        status = "Waiting" if e["Status"] in ("Received", "Checking") else e["Status"]
        steps.append((status, e["MinorStatus"], e["Source"]))
    return steps


async def failed_once(grid: Running, site: Site) -> tuple[int, dict[str, Any]]:
    """A job whose first run failed on the grid, and that run."""
    made = await grid.client.post(
        "/api/v1/submissions", json={"application": "gridhello", "parameters": {"exit_code": 1}}
    )
    [job_id] = made.json()["job_ids"]
    await handed_over(grid.client, [job_id])
    with site.running():
        [first] = await wait_jobs(grid.client, [job_id], "Failed")
    return job_id, first


async def test_delete_of_a_rescheduled_job_reaches_every_diracx_job_it_had(
    grid: Running, site: Site, diracx: DiracX
) -> None:
    job_id, first = await failed_once(grid, site)
    with site.running():
        assert (await grid.client.post(f"/api/v1/jobs/{job_id}/reschedule")).status_code == 200
        [second] = await wait_jobs(grid.client, [job_id], "Failed", timeout=90)
    refs = refs_of([first, second])
    assert refs[0] != refs[1]
    deleted = await grid.client.delete(f"/api/v1/jobs/{job_id}")
    assert deleted.status_code == 200, deleted.text
    assert {r["JobID"]: r["Status"] for r in diracx.rows(refs, "Status")} == {
        ref: "Deleted" for ref in refs
    }


async def test_kill_of_a_rescheduled_job_reaches_every_diracx_job_it_had(
    grid: Running, site: Site, diracx: DiracX
) -> None:
    job_id, first = await failed_once(grid, site)
    # Its first run goes on in DIRAC all the same (a grid operator revives it): a job may
    # have more than one DiracX job going.
    revived = site.client.patch(
        "/api/jobs/status",
        params={"force": True},
        json={first["backend_ref"]: {datetime.now(UTC).isoformat(): {"Status": "Running"}}},
    )
    assert revived.status_code == 200, revived.text
    assert diracx.rows(refs_of([first]), "Status")[0]["Status"] == "Running"
    assert (await grid.client.post(f"/api/v1/jobs/{job_id}/reschedule")).status_code == 200
    deadline = time.monotonic() + 60
    while (second := (await grid.client.get(f"/api/v1/jobs/{job_id}")).json())["backend_ref"] in (
        None,
        first["backend_ref"],
    ):
        assert time.monotonic() < deadline, second
        await asyncio.sleep(0.2)
    killed = await grid.client.post(f"/api/v1/jobs/{job_id}/kill")
    assert killed.status_code == 200 and killed.json()["status"] == "Killed", killed.text
    refs = refs_of([first, second])
    assert {r["JobID"]: r["Status"] for r in diracx.rows(refs, "Status")} == {
        ref: "Killed" for ref in refs
    }


async def test_a_grid_job_s_data_goes_to_the_data_lake_and_its_manifest_comes_back(
    grid: Running, site: Site, diracx: DiracX, rucio_server: RucioServer, tmp_path: Path
) -> None:
    backend = grid.platform.backends["diracx"]
    names = f"grid-{uuid.uuid4().hex[:10]}."
    lake = {
        "url": rucio_server.webdav_url,
        "scope": "user.jane",
        "data": ["*.zst", "*.readonly"],
        "sandbox_max_bytes": 1 << 20,
        "ca": Path(rucio_server.ca).read_text(),
    }
    script = (
        "head -c 3000000 /dev/urandom > shower.zst; head -c 2000000 /dev/urandom > big.root;"
        ' echo ok > result.txt; [ -z "$1" ] || echo no > "$1"'
    )

    def spec(index: int, *extra: str) -> JobSpec:
        return JobSpec(
            uuid=str(uuid.uuid4()), job_id=index, name=f"lake_{index}", cpu_time=600,
            argv=["sh", "-c", script, "sh", *extra], outputs=["result.txt", "*.root"],
            owner=JANE, vo="cta", group=USER_GROUP, job_group="lake.1",
            datalake={**lake, "names": f"{names}{index:06d}."},
        )  # fmt: skip

    stored, refused = await backend.submit([spec(1), spec(2, "out.readonly")])
    runs = {r.job_id: r for r in site.run_once()}
    assert runs[int(stored.ref)].status == "Done", runs[int(stored.ref)]
    assert runs[int(refused.ref)].status == "Failed"
    [row] = diracx.rows([int(refused.ref)], "ApplicationStatus")
    assert row["ApplicationStatus"] == (
        "data lake: upload of out.readonly refused: HTTP 403 Forbidden"
    )

    # The output sandbox: the small output and the manifest, not the data.
    dest = tmp_path / "job" / "outputs"
    files = await backend.fetch_outputs(stored, dest)
    assert sorted(f.name for f in files) == ["concordia-datalake.json", "result.txt"]
    entries = json.loads((dest / "concordia-datalake.json").read_text())
    assert [(e["name"], e["bytes"]) for e in entries] == [
        (f"{names}000001.big.root", 2000000),
        (f"{names}000001.shower.zst", 3000000),
    ]
    rucio = Rucio(
        rucio_server.url,
        rucio_server.service,
        password=rucio_server.password(rucio_server.service),
        verify=rucio_server.ca,
    )
    try:
        await rucio.ensure_scope("user.jane", "jane")
        for entry in entries:
            found = await rucio.register(
                "user.jane",
                entry["name"],
                rucio_server.webdav_rse,
                bytes=entry["bytes"],
                adler32=entry["adler32"],
            )
            assert (found.adler32, found.state) == (entry["adler32"], "A")
    finally:
        await rucio.aclose()


LAKE_APP = """name: gridlake
title: Grid data lake
vos: [cta]
input_files: [lake.sh]
command: "sh lake.sh {run}"
outputs: ["result.txt", "data-*.bin"]
datalake:
  default: true
  data: ["data-*.bin"]
cpu_time: 600
parameters:
  run: {type: int, default: 1, min: 0}
"""
LAKE_SH = """#!/bin/sh
yes "run-$1" | head -c 3000000 > "data-$1.bin"
echo small > result.txt
"""


async def test_a_grid_submission_s_data_reach_the_data_lake_through_concordia(
    tmp_path: Path, diracx: DiracX, site: Site, rucio_server: RucioServer
) -> None:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "gridlake.yaml").write_text(LAKE_APP)
    (tmp_path / "apps" / "lake.sh").write_text(LAKE_SH)
    settings = grid_settings(
        tmp_path, diracx,
        datalake_url=rucio_server.url,
        datalake_account=rucio_server.service,
        datalake_password=rucio_server.password(rucio_server.service),
        datalake_verify=rucio_server.ca,
        datalake_rse=rucio_server.webdav_rse,
    )  # fmt: skip
    written = b"".join(f"run-{5}\n".encode() for _ in range(3000000 // 6 + 1))[:3000000]
    async with running_app(settings) as grid:
        lake = grid.platform.datalake
        assert lake is not None  # where the wrapper writes is where Rucio says the file is
        assert await lake.rse_url(rucio_server.webdav_rse) == rucio_server.webdav_url.rstrip("/")
        made = await grid.client.post(
            "/api/v1/submissions",
            json={"application": "gridlake", "parameters": {"run": 5}},
        )
        assert made.status_code == 201, made.text
        view = made.json()
        assert view["datalake"]["scope"] == "user.jane", view
        [job_id] = view["job_ids"]
        await handed_over(grid.client, [job_id])
        with site.running():
            [job] = await wait_jobs(grid.client, [job_id], "Done", "Failed", timeout=120)
        assert (job["status"], job["minor_status"]) == ("Done", "Execution Complete"), job
        assert "Completing" in [h["status"] for h in job["history"]]
        assert job["site"] == site.name  # where DIRAC ran it, as its matcher set it

        listed = await grid.client.get(f"/api/v1/jobs/{job_id}/datalake")
        assert listed.status_code == 200, listed.text
        [stored] = listed.json()
        assert stored["name"] == f"gridlake.{view['id']}.0.{job['uuid'][:8]}.data-5.bin"
        assert (stored["bytes"], stored["adler32"]) == (3000000, f"{zlib.adler32(written):08x}")
        assert (stored["scope"], stored["rse"], stored["state"]) == (
            "user.jane", rucio_server.webdav_rse, "A",
        )  # fmt: skip
        got = await grid.client.get(f"/api/v1/jobs/{job_id}/datalake/{stored['name']}")
        assert got.status_code == 200 and got.content == written
        files = await lake.files("user.jane", view["datalake"]["dataset"])
        assert [f.name for f in files] == [stored["name"]]
        meta = await lake.metadata("user.jane", stored["name"])
        assert (meta["application"], meta["job_id"], meta["backend"], meta["site"]) == (
            "gridlake", job_id, "diracx", site.name,
        )  # fmt: skip

        # The sandbox brought back the small output and the manifest, not the data.
        outputs = await grid.client.get(f"/api/v1/jobs/{job_id}/outputs")
        paths = sorted(o["path"] for o in outputs.json()["items"])
        assert paths == ["concordia-datalake.json", "result.txt"], paths
        out = await grid.client.get(f"/api/v1/jobs/{job_id}/logs?stream=stdout")
        assert "stored as user.jane:" in out.json()["data"]
