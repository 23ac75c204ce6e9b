"""The REST API against the app in-process (SQLite; PostgreSQL in the second pass)."""

from __future__ import annotations

import asyncio
import io
import os
import zipfile
from typing import Any

import httpx
import pytest

from concordia.core.jdl import parse_jdl
from tests.conftest import Running

pytestmark = pytest.mark.sql

FINAL = {"Done", "Failed", "Killed", "Deleted"}


async def submit(client: httpx.AsyncClient, **parameters: Any) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/submissions", json={"application": "hello", "parameters": parameters}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_submission(
    client: httpx.AsyncClient, sid: int, timeout: float = 30
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            body: dict[str, Any] = (await client.get(f"/api/v1/submissions/{sid}")).json()
            if body["finished"]:
                return body
            await asyncio.sleep(0.05)


async def wait_status(
    client: httpx.AsyncClient, job_id: int, statuses: set[str], timeout: float = 30
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            job: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job_id}")).json()
            if job["status"] in statuses:
                return job
            await asyncio.sleep(0.05)


async def test_health_needs_no_token_but_the_api_does(app: Running) -> None:
    assert (await app.client.get("/healthz")).json()["status"] == "ok"
    async with httpx.AsyncClient(transport=app.client._transport, base_url="http://t") as anon:
        assert (await anon.get("/api/v1/jobs")).status_code == 401
        bad = await anon.get("/api/v1/jobs", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        assert bad.headers["www-authenticate"] == "Bearer"


async def test_a_batch_runs_to_done_with_history_jdl_logs_and_outputs(app: Running) -> None:
    client = app.client
    sub = await submit(client, jobs=3, message="hi", first_run=7)
    assert sub["job_count"] == 3 and len(sub["job_ids"]) == 3
    done = await wait_submission(client, sub["id"])
    assert done["counts"] == {"Done": 3}
    assert done["progress"]["done"] == 3

    job = (await client.get(f"/api/v1/jobs/{sub['job_ids'][1]}")).json()
    assert job["parameters"]["run"] == 8
    assert job["exit_code"] == 0 and job["minor_status"] == "Execution Complete"
    assert [h["status"] for h in job["history"]] == [
        "Received",
        "Checking",
        "Waiting",
        "Matched",
        "Running",
        "Completing",
        "Done",
    ]
    jdl = parse_jdl(job["jdl"])
    assert jdl["JobName"] == "hello_8"
    assert jdl["Executable"] == "sh"
    assert jdl["InputSandbox"] == ["hello.sh"]
    assert "std.out" in jdl["OutputSandbox"]  # type: ignore[operator]

    log = (await client.get(f"/api/v1/jobs/{job['id']}/logs")).json()
    assert "run 8: hi" in log["data"] and log["final"] is True
    err = (await client.get(f"/api/v1/jobs/{job['id']}/logs", params={"stream": "stderr"})).json()
    assert "hello from stderr (run 8)" in err["data"]

    outputs = {
        o["path"]: o["size"]
        for o in (await client.get(f"/api/v1/jobs/{job['id']}/outputs")).json()["items"]
    }
    assert {"result-8.txt", "std.out", "std.err"} <= set(outputs)
    result = await client.get(f"/api/v1/jobs/{job['id']}/outputs/result-8.txt")
    assert result.text == "run=8\nmessage=hi\n"
    assert outputs["result-8.txt"] == len(result.content)

    archive = await client.get(f"/api/v1/jobs/{job['id']}/outputs.zip")
    assert archive.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    assert f"job-{job['id']}/result-8.txt" in names


async def test_a_failing_job_says_why(app: Running) -> None:
    sub = await submit(app.client, exit_code=3)
    job = await wait_status(app.client, sub["job_ids"][0], FINAL)
    assert job["status"] == "Failed"
    assert job["minor_status"] == "Application exited with code 3"
    assert job["exit_code"] == 3


@pytest.mark.parametrize(
    ("body", "loc", "rule"),
    [
        (
            {"application": "hello", "parameters": {"jobs": 0}},
            ["body", "parameters", "jobs"],
            ">= 1",
        ),
        (
            {"application": "hello", "parameters": {"jobs": "x"}},
            ["body", "parameters", "jobs"],
            "integer",
        ),
        (
            {"application": "hello", "parameters": {"message": "a\nb"}},
            ["body", "parameters", "message"],
            "control",
        ),
        (
            {"application": "hello", "parameters": {"nope": 1}},
            ["body", "parameters", "nope"],
            "not a parameter",
        ),
        ({"application": "hello", "backend": "grid"}, ["body", "backend"], "unknown backend"),
        ({"parameters": {}}, ["body", "application"], "Field required"),
    ],
)
async def test_bad_submissions_get_422_naming_the_field_and_change_nothing(
    app: Running, body: dict[str, Any], loc: list[str], rule: str
) -> None:
    response = await app.client.post("/api/v1/submissions", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc and rule in detail["msg"]
    assert (await app.client.get("/api/v1/jobs")).json()["total"] == 0


async def test_an_application_says_which_outputs_are_data_for_the_data_lake(
    app: Running,
) -> None:
    views = {
        name: (await app.client.get(f"/api/v1/applications/{name}")).json()
        for name in ("corsika", "showermodel", "hello")
    }
    assert views["corsika"]["datalake"] == {"default": True, "data": ["*.corsika.zst"]}
    assert views["showermodel"]["datalake"] == {"default": False, "data": ["photons_run*.npy"]}
    assert "photons_run*.npy" in views["showermodel"]["outputs"]
    assert views["hello"]["datalake"] is None


async def test_unknown_things_are_404(app: Running) -> None:
    client = app.client
    unknown_app = await client.post("/api/v1/submissions", json={"application": "corsika9"})
    assert unknown_app.status_code == 404 and "corsika9" in unknown_app.json()["detail"]
    assert (await client.get("/api/v1/applications/corsika9")).status_code == 404
    assert (await client.get("/api/v1/jobs/999")).status_code == 404
    assert (await client.post("/api/v1/jobs/999/kill")).status_code == 404
    assert (await client.get("/api/v1/submissions/999")).status_code == 404


async def test_another_users_things_do_not_exist_for_them(app: Running) -> None:
    sub = await submit(app.client, message="mine")
    job_id = sub["job_ids"][0]
    await wait_status(app.client, job_id, FINAL)
    async with app.new_client("eve") as eve:
        for method, url in [
            ("GET", f"/api/v1/jobs/{job_id}"),
            ("GET", f"/api/v1/jobs/{job_id}/logs"),
            ("GET", f"/api/v1/jobs/{job_id}/outputs"),
            ("GET", f"/api/v1/jobs/{job_id}/outputs/std.out"),
            ("GET", f"/api/v1/jobs/{job_id}/outputs.zip"),
            ("POST", f"/api/v1/jobs/{job_id}/kill"),
            ("POST", f"/api/v1/jobs/{job_id}/reschedule"),
            ("DELETE", f"/api/v1/jobs/{job_id}"),
            ("GET", f"/api/v1/submissions/{sub['id']}"),
        ]:
            assert (await eve.request(method, url)).status_code == 404, url
        assert (await eve.get("/api/v1/jobs")).json()["total"] == 0
    mine = (await app.client.get(f"/api/v1/jobs/{job_id}")).json()
    assert mine["status"] == "Done"


async def test_output_paths_cannot_escape_the_job(app: Running) -> None:
    sub = await submit(app.client)
    job = await wait_status(app.client, sub["job_ids"][0], FINAL)
    base = f"/api/v1/jobs/{job['id']}/outputs/"
    outputs_dir = app.settings.jobs_dir / job["uuid"] / "outputs"
    os.symlink("/etc/passwd", outputs_dir / "passwd")
    os.symlink(app.settings.data_dir, outputs_dir / "data")
    for path in [
        "%2e%2e/%2e%2e/encryption-key",
        "..%2F..%2Fapi-token",
        "%2Fetc%2Fpasswd",
        "passwd",
        "data/api-token",
    ]:
        response = await app.client.get(base + path)
        assert response.status_code in (404, 422), path
        assert "root:" not in response.text
    listing = [o["path"] for o in (await app.client.get(base.rstrip("/"))).json()["items"]]
    assert "passwd" not in listing and not any(p.startswith("data/") for p in listing)
    archive = await app.client.get(f"/api/v1/jobs/{job['id']}/outputs.zip")
    assert not any("passwd" in n for n in zipfile.ZipFile(io.BytesIO(archive.content)).namelist())


async def test_kill_reschedule_and_delete(app: Running) -> None:
    client = app.client
    sub = await submit(client, sleep=60)
    job_id = sub["job_ids"][0]
    await wait_status(client, job_id, {"Running"})
    killed = await client.post(f"/api/v1/jobs/{job_id}/kill")
    assert killed.json()["status"] == "Killed"
    assert killed.json()["minor_status"] == "Killed by user"
    again = await client.post(f"/api/v1/jobs/{job_id}/kill")
    assert again.status_code == 409 and "Killed" in again.json()["detail"]

    failing = await submit(client, exit_code=2)
    fid = failing["job_ids"][0]
    await wait_status(client, fid, FINAL)
    assert (await client.post(f"/api/v1/jobs/{fid}/reschedule")).json()["status"] == "Received"
    rerun = await wait_status(client, fid, FINAL)
    assert rerun["status"] == "Failed" and rerun["reschedule_count"] == 1
    statuses = [h["status"] for h in rerun["history"]]
    assert statuses.count("Running") == 2 and "Rescheduled" in statuses

    running_delete = await submit(client, sleep=60)
    rid = running_delete["job_ids"][0]
    await wait_status(client, rid, {"Running"})
    assert (await client.delete(f"/api/v1/jobs/{rid}")).status_code == 409
    await client.post(f"/api/v1/jobs/{rid}/kill")

    assert (await client.delete(f"/api/v1/jobs/{fid}")).json()["status"] == "Deleted"
    assert not (app.settings.jobs_dir / rerun["uuid"]).exists()
    assert (await client.delete(f"/api/v1/jobs/{fid}")).status_code == 404
    listed = [j["id"] for j in (await client.get("/api/v1/jobs")).json()["items"]]
    assert fid not in listed and job_id in listed
    deleted = (await client.get("/api/v1/jobs", params={"status": "Deleted"})).json()
    assert [j["id"] for j in deleted["items"]] == [fid]


async def test_job_listing_filters_sorts_and_pages(app: Running) -> None:
    client = app.client
    first = await submit(client, jobs=4)
    second = await submit(client, jobs=2, exit_code=1)
    await wait_submission(client, first["id"])
    await wait_submission(client, second["id"])
    page = (
        await client.get("/api/v1/jobs", params={"per_page": 3, "page": 2, "sort": "id"})
    ).json()
    assert page["total"] == 6
    assert [j["id"] for j in page["items"]] == sorted(first["job_ids"] + second["job_ids"])[3:]
    # a short last page gives the total without counting; a page past the end counts
    for number, shown in ((2, 2), (3, 0)):
        params = {"per_page": 4, "page": number}
        beyond = (await client.get("/api/v1/jobs", params=params)).json()
        assert (beyond["total"], len(beyond["items"])) == (6, shown)
    failed = (await client.get("/api/v1/jobs", params={"status": "Failed"})).json()
    assert sorted(j["id"] for j in failed["items"]) == second["job_ids"]
    both = (await client.get("/api/v1/jobs", params={"status": "Failed,Done"})).json()
    assert both["total"] == 6
    by_sub = (await client.get("/api/v1/jobs", params={"submission": first["id"]})).json()
    assert by_sub["total"] == 4
    assert (await client.get("/api/v1/jobs", params={"application": "other"})).json()["total"] == 0
    bad = await client.get("/api/v1/jobs", params={"status": "Finished"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "status"]
    assert (await client.get("/api/v1/jobs", params={"per_page": 0})).status_code == 422


async def test_logs_are_read_by_offset(app: Running) -> None:
    sub = await submit(app.client, message="offset")
    job = await wait_status(app.client, sub["job_ids"][0], FINAL)
    url = f"/api/v1/jobs/{job['id']}/logs"
    whole = (await app.client.get(url)).json()
    tail = (await app.client.get(url, params={"offset": 6})).json()
    assert tail["data"] == whole["data"][6:]
    assert tail["next_offset"] == whole["next_offset"] == whole["size"]
    assert (await app.client.get(url, params={"offset": -1})).status_code == 422


async def test_me_says_whether_jobs_are_isolated(app: Running) -> None:
    me = (await app.client.get("/api/v1/me")).json()
    assert me["username"] == "local" and me["mode"] == "local"
    [local] = me["backends"]
    assert (local["name"], local["isolated"], local["isolation_problem"]) == ("local", True, None)
    assert local["runtime"].startswith("bwrap (not apptainer:")


async def test_openapi_is_served(app: Running) -> None:
    spec = (await app.client.get("/api/openapi.json")).json()
    assert "/api/v1/submissions" in spec["paths"]
    assert "/api/v1/jobs/{job_id}/outputs.zip" in spec["paths"]


async def test_the_login_link_works_once_and_state_changes_need_csrf(app: Running) -> None:
    path = app.login_url.removeprefix(app.settings.public_url)
    async with httpx.AsyncClient(transport=app.client._transport, base_url="http://t") as browser:
        first = await browser.get(path)
        assert first.status_code == 303
        me = await browser.get("/api/v1/me")
        assert me.status_code == 200 and me.json()["auth"] == "session"
        sub = await browser.post("/api/v1/submissions", json={"application": "hello"})
        assert sub.status_code == 403 and "X-CSRF-Token" in sub.json()["detail"]
        assert (await browser.get("/api/v1/jobs")).json()["total"] == 0
    async with httpx.AsyncClient(transport=app.client._transport, base_url="http://t") as other:
        again = await other.get(path)
        assert again.status_code == 401
        assert (await other.get("/api/v1/me")).status_code == 401


async def test_every_bad_parameter_is_named_at_once(app: Running) -> None:
    response = await app.client.post(
        "/api/v1/submissions",
        json={"application": "hello", "parameters": {"jobs": 0, "sleep": "soon", "x": 1}},
    )
    assert response.status_code == 422
    named = {tuple(d["loc"]): d["msg"] for d in response.json()["detail"]}
    assert set(named) == {
        ("body", "parameters", "jobs"),
        ("body", "parameters", "sleep"),
        ("body", "parameters", "x"),
    }
    assert "number" in named[("body", "parameters", "sleep")]


async def test_a_value_cannot_inject_into_the_jdl_or_the_command(app: Running) -> None:
    evil = 'x"; Executable = "/bin/evil"; Arguments = "$(id) `id`'
    sub = await submit(app.client, message=evil)
    job = await wait_status(app.client, sub["job_ids"][0], FINAL)
    jdl = parse_jdl(job["jdl"])
    assert jdl["Executable"] == "sh"
    assert "/bin/evil" not in [v for k, v in jdl.items() if k != "Arguments"]
    assert job["argv"][2] == evil  # one argument, as given
    log = (await app.client.get(f"/api/v1/jobs/{job['id']}/logs")).json()
    assert f"run 1: {evil}" in log["data"]  # the shell printed it, it did not run it
