"""A submission handled as a whole: its unfinished jobs killed, its failed ones rescheduled,
all its outputs in one zip, deleted; its page a page of jobs at a time; in the API, the
pages and the CLI, and never for another user."""

from __future__ import annotations

import io
import re
import zipfile
from html import unescape

import httpx
import pytest

from tests.conftest import Running
from tests.integration.web.test_api import FINAL, submit, wait_status, wait_submission
from tests.integration.web.test_pages_jobs import csrf_of

pytestmark = pytest.mark.sql


async def test_kill_reschedule_download_and_delete_a_whole_submission(app: Running) -> None:
    client = app.client
    failing = await submit(client, jobs=3, exit_code=2, message="from-the-batch")
    done = await wait_submission(client, failing["id"])
    assert done["progress"]["failed"] == 3
    sleeping = await submit(client, jobs=2, sleep=60)
    await wait_status(client, sleeping["job_ids"][0], {"Running"})

    async with app.new_client("eve") as eve:  # another user's submission does not exist
        for method, path in [
            ("POST", f"/api/v1/submissions/{failing['id']}/kill"),
            ("POST", f"/api/v1/submissions/{failing['id']}/reschedule"),
            ("GET", f"/api/v1/submissions/{failing['id']}/outputs.zip"),
            ("DELETE", f"/api/v1/submissions/{failing['id']}"),
        ]:
            assert (await eve.request(method, path)).status_code == 404, path
    assert (await client.get(f"/api/v1/jobs/{failing['job_ids'][0]}")).json()["status"] == "Failed"

    archive = await client.get(f"/api/v1/submissions/{failing['id']}/outputs.zip")
    assert archive.status_code == 200
    assert "submission-" in archive.headers["content-disposition"]
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    assert {f"job-{j}/std.out" for j in failing["job_ids"]} <= set(names)
    first = zipfile.ZipFile(io.BytesIO(archive.content)).read(
        f"job-{failing['job_ids'][0]}/std.out"
    )
    assert b"from-the-batch" in first

    killed = (await client.post(f"/api/v1/submissions/{sleeping['id']}/kill")).json()
    assert sorted(killed["succeeded"]) == sorted(sleeping["job_ids"]) and killed["refused"] == []
    again = (await client.post(f"/api/v1/submissions/{sleeping['id']}/kill")).json()
    assert again["succeeded"] == []  # nothing unfinished is left

    rescheduled = (await client.post(f"/api/v1/submissions/{failing['id']}/reschedule")).json()
    assert sorted(rescheduled["succeeded"]) == sorted(failing["job_ids"])
    for job_id in failing["job_ids"]:
        rerun = await wait_status(client, job_id, FINAL)
        assert rerun["reschedule_count"] == 1
    killed_ids = sleeping["job_ids"]  # Killed, not Failed: not taken by a reschedule
    assert (await client.get(f"/api/v1/jobs/{killed_ids[0]}")).json()["reschedule_count"] == 0

    deleted = (await client.delete(f"/api/v1/submissions/{failing['id']}")).json()
    assert sorted(deleted["succeeded"]) == sorted(failing["job_ids"])
    assert (await client.get(f"/api/v1/submissions/{failing['id']}")).status_code == 404
    for job_id in failing["job_ids"]:
        gone = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        assert gone["status"] == "Deleted" and not (app.settings.jobs_dir / gone["uuid"]).exists()
    # The other submission is left alone.
    assert all((app.settings.jobs_dir / u).exists() for u in await _uuids(client, killed_ids))
    assert (await client.get(f"/api/v1/submissions/{sleeping['id']}")).status_code == 200


async def _uuids(client: httpx.AsyncClient, ids: list[int]) -> list[str]:
    return [(await client.get(f"/api/v1/jobs/{i}")).json()["uuid"] for i in ids]


async def test_deleting_a_running_submission_kills_then_deletes_it(app: Running) -> None:
    client = app.client
    sub = await submit(client, jobs=2, sleep=60)
    await wait_status(client, sub["job_ids"][0], {"Running"})
    uuids = await _uuids(client, sub["job_ids"])
    outcome = (await client.delete(f"/api/v1/submissions/{sub['id']}")).json()
    assert sorted(outcome["succeeded"]) == sorted(sub["job_ids"]) and outcome["refused"] == []
    assert not any((app.settings.jobs_dir / u).exists() for u in uuids)
    assert (await client.get(f"/api/v1/submissions/{sub['id']}")).status_code == 404


async def test_the_submission_page_pages_its_jobs_and_acts_on_the_whole(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    sub = await submit(app.client, jobs=230, exit_code=1)
    await wait_submission(app.client, sub["id"], timeout=120)
    page = (await signed_in.get(f"/submissions/{sub['id']}")).text
    rows = re.findall(r'<tr id="job-(\d+)"', page)
    assert [int(r) for r in rows] == sub["job_ids"][:100]  # the first page, in index order
    assert "Page 1 of 3 (230 jobs)" in page
    assert "Reschedule failed (230)" in page and "Kill unfinished (0)" in page
    third = (await signed_in.get(f"/submissions/{sub['id']}?page=3")).text
    assert [int(r) for r in re.findall(r'<tr id="job-(\d+)"', third)] == sub["job_ids"][200:]
    rows3 = (await signed_in.get(f"/submissions/{sub['id']}/rows?page=3")).text
    assert rows3.count("<tr id=") == 30
    assert (await signed_in.get(f"/submissions/{sub['id']}?page=x")).status_code == 422
    # A destructive button says what is lost before it acts (the browser asks).
    assert re.search(
        r'data-confirm="Delete submission \d+: kill its 0 unfinished jobs, then '
        r"delete all 230 jobs with their logs and outputs",
        unescape(page),
    )

    forged = await signed_in.post(f"/submissions/{sub['id']}/kill", data={})
    assert forged.status_code == 403
    bad = await signed_in.post(f"/submissions/{sub['id']}/explode", data={"csrf": csrf_of(page)})
    assert bad.status_code == 422
    deleted = await signed_in.post(f"/submissions/{sub['id']}/delete", data={"csrf": csrf_of(page)})
    assert deleted.status_code == 303 and deleted.headers["location"] == "/jobs"
    report = unescape((await signed_in.get("/jobs")).text)
    assert "Deleted 230 of 230 jobs." in report
    assert (await signed_in.get(f"/submissions/{sub['id']}")).status_code == 404
