"""The jobs pages in-process: the monitor's filters, counts, sorting, paging and bulk
actions, and a job's page with its history, JDL, outputs and previews."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape

import httpx
import pytest

from concordia.logic import monitor
from tests.conftest import Running
from tests.integration.web.test_api import FINAL, submit, wait_status, wait_submission

pytestmark = pytest.mark.sql


def job_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-job-id="(\d+)"', html)]


def csrf_of(html: str) -> str:
    found = re.search(r'data-csrf="([^"]+)"', html)
    assert found
    return found.group(1)


def count_of(html: str, status: str) -> int:
    found = re.search(rf"status-{status}\" href=[^>]*>{status} <span class=\"n\">(\d+)<", html)
    return int(found.group(1)) if found else 0


async def test_the_monitor_filters_sorts_and_pages(
    app: Running, signed_in: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await submit(app.client, jobs=3, first_run=1)
    second = await submit(app.client, jobs=2, first_run=20, exit_code=3)
    await wait_submission(app.client, first["id"])
    await wait_submission(app.client, second["id"])

    page = (await signed_in.get("/jobs")).text
    assert sorted(job_ids(page)) == sorted(first["job_ids"] + second["job_ids"])
    assert count_of(page, "Done") == 3 and count_of(page, "Failed") == 2
    assert "Page 1 of 1, 5 jobs" in page

    async def ids(**params: object) -> list[int]:
        response = await signed_in.get("/jobs", params=params)  # type: ignore[arg-type]
        assert response.status_code == 200, response.text
        return job_ids(response.text)

    assert sorted(await ids(status="Failed")) == sorted(second["job_ids"])
    assert len(await ids(status=["Failed", "Done"])) == 5
    assert sorted(await ids(submission=first["id"])) == sorted(first["job_ids"])
    assert await ids(application="hello") != [] and await ids(application="corsika") == []
    assert await ids(q="_20") == [second["job_ids"][0]]
    assert len(await ids(q="LO_2")) == 3  # hello_2, hello_20, hello_21, any case
    assert await ids(q="%") == []  # a wildcard is a character like any other
    today = datetime.now(UTC).date()
    assert len(await ids(created_from=today.isoformat(), created_to=today.isoformat())) == 5
    assert await ids(created_to=(today - timedelta(days=1)).isoformat()) == []
    assert await ids(created_from=(today + timedelta(days=1)).isoformat()) == []
    # Empty fields, as a submitted filter form sends them, mean "any".
    assert len(await ids(status="", application="", submission="", q="", created_from="")) == 5

    everything = sorted(first["job_ids"] + second["job_ids"])
    assert await ids(sort="id") == everything
    assert await ids(sort="-id") == everything[::-1]
    f, s = first["job_ids"], second["job_ids"]
    assert await ids(sort="name") == [f[0], f[1], s[0], s[1], f[2]]  # hello_1, _2, _20, _21, _3
    assert await ids(sort="-status", q="hello_2") == [s[1], s[0], f[1]]  # Failed, Done
    assert (await signed_in.get("/jobs", params={"sort": "bogus"})).status_code == 422
    assert (await signed_in.get("/jobs", params={"per_page": 7})).status_code == 422
    bad_date = await signed_in.get("/jobs", params={"created_from": "yesterday"})
    assert bad_date.status_code == 422 and "YYYY-MM-DD" in bad_date.text

    # Paging: 60 jobs at 50 a page.
    more = await submit(app.client, jobs=55)
    second_page = await signed_in.get("/jobs", params={"sort": "id", "page": 2})
    assert "Page 2 of 2, 60 jobs" in second_page.text
    assert job_ids(second_page.text) == sorted(more["job_ids"])[-10:]
    assert len(await ids(per_page=100)) == 60

    counts = (await signed_in.get("/jobs/counts", params={"submission": more["id"]})).text
    assert 'All <span class="n">55</span>' in counts and "Failed" not in counts
    table = await signed_in.get("/jobs/table", params={"submission": more["id"]})
    assert len(job_ids(table.text)) == 50 and "<html" not in table.text

    # Counted up to a bound (a collaboration's million jobs are not counted for each page):
    # beyond it the monitor, the API and the counts say "more than".
    await wait_submission(app.client, more["id"])
    monkeypatch.setattr(monitor, "COUNTED", 20)
    listed = (await app.client.get("/api/v1/jobs", params={"per_page": 5})).json()
    assert (listed["total"], listed["more"], len(listed["items"])) == (20, True, 5)
    exact = (await app.client.get("/api/v1/jobs", params={"status": "Failed"})).json()
    assert (exact["total"], exact["more"]) == (2, False)
    last = (await app.client.get("/api/v1/jobs", params={"per_page": 50, "page": 2})).json()
    assert (last["total"], last["more"]) == (60, False)  # a last page knows its total
    bounded = (await signed_in.get("/jobs")).text
    assert "Page 1 of 1+, 22+ jobs" in bounded and count_of(bounded, "Failed") == 2
    assert re.search(r'Done <span class="n">20\+<', bounded)
    assert 'rel="next"' in bounded and ">Last<" not in bounded  # where the last is, unknown


async def test_bulk_kill_reports_each_refusal(app: Running, signed_in: httpx.AsyncClient) -> None:
    done = await submit(app.client)
    await wait_status(app.client, done["job_ids"][0], FINAL)
    long = await submit(app.client, sleep=60)
    await wait_status(app.client, long["job_ids"][0], {"Running"})
    done_id, long_id = done["job_ids"][0], long["job_ids"][0]
    page = (await signed_in.get("/jobs")).text

    forged = await signed_in.post(
        "/jobs/bulk", data={"action": "kill", "job": [str(long_id)], "back": ""}
    )
    assert forged.status_code == 403 and "Not allowed" in forged.text
    assert (await app.client.get(f"/api/v1/jobs/{long_id}")).json()["status"] == "Running"

    response = await signed_in.post(
        "/jobs/bulk",
        data={
            "csrf": csrf_of(page),
            "action": "kill",
            "job": [str(long_id), str(done_id)],
            "back": "status=Running&status=Done&evil=https://x",
        },
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith("/jobs?status=Running&status=Done")
    report = unescape((await signed_in.get(response.headers["location"])).text)
    assert "Killed 1 of 2 jobs." in report
    assert f"job {done_id} is Done: it cannot be killed" in report
    assert (await app.client.get(f"/api/v1/jobs/{long_id}")).json()["status"] == "Killed"
    # The report is shown once.
    assert "Killed 1 of 2" not in (await signed_in.get("/jobs")).text

    deleted = await signed_in.post(
        "/jobs/bulk", data={"csrf": csrf_of(page), "action": "delete", "job": [str(done_id)]}
    )
    assert deleted.status_code == 303
    assert done_id not in job_ids((await signed_in.get("/jobs")).text)
    assert job_ids((await signed_in.get("/jobs?status=Deleted")).text) == [done_id]


async def test_the_job_page(app: Running, signed_in: httpx.AsyncClient) -> None:
    sub = await submit(app.client, message="<b>hi</b>", first_run=4)
    job = await wait_status(app.client, sub["job_ids"][0], FINAL)
    outputs_dir = app.settings.jobs_dir / job["uuid"] / "outputs"
    (outputs_dir / "table.csv").write_text(
        'energy,note\n1.5,"<script>alert(1)</script>"\n2.5,plain\n'
    )
    (outputs_dir / "plot.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    )

    page = await signed_in.get(f"/jobs/{job['id']}")
    assert page.status_code == 200
    html = page.text
    for status in ("Received", "Checking", "Waiting", "Matched", "Running", "Done"):
        assert f'status-{status}">{status}</td>' in html
    assert "JobName" in html and "Executable" in html  # the JDL
    assert "run 4: &lt;b&gt;hi&lt;/b&gt;" in html  # stdout, escaped
    assert "result-4.txt" in html and "Download all (zip)" in html
    assert f'href="/submissions/{sub["id"]}"' in html
    # The CSV preview is a table; markup in a cell comes out as text.
    assert '<th scope="col">energy</th>' in html and "<td>1.5</td>" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert f'<img src="/api/v1/jobs/{job["id"]}/outputs/plot.svg"' in html
    assert "run=4" in html  # the text preview of result-4.txt

    svg = await signed_in.get(f"/api/v1/jobs/{job['id']}/outputs/plot.svg")
    assert svg.status_code == 200
    assert svg.headers["content-security-policy"].startswith("sandbox;")
    assert svg.headers["x-content-type-options"] == "nosniff"

    parts = await signed_in.get(f"/jobs/{job['id']}/parts")
    assert parts.text.count('hx-swap-oob="true"') == 3  # its head (actions), outputs, history
    assert 'id="job-head"' in parts.text and "Exit code" in parts.text

    # A Done job can be neither killed nor rescheduled: no buttons, and a forced POST is refused.
    assert f"/jobs/{job['id']}/reschedule" not in html and f"/jobs/{job['id']}/kill" not in html
    assert f'action="/jobs/{job["id"]}/delete"' in html  # but deleted, from its page
    killed = await signed_in.post(f"/jobs/{job['id']}/kill", data={"csrf": csrf_of(html)})
    assert "cannot be killed" in unescape((await signed_in.get(killed.headers["location"])).text)


async def test_another_users_job_is_not_found(app: Running, signed_in: httpx.AsyncClient) -> None:
    async with app.new_client("eve") as eve:
        theirs = await submit(eve)
    response = await signed_in.get(f"/jobs/{theirs['job_ids'][0]}")
    assert response.status_code == 404 and "Not found" in response.text
    assert theirs["job_ids"][0] not in job_ids((await signed_in.get("/jobs")).text)
    page = (await signed_in.get("/jobs")).text
    refused = await signed_in.post(
        "/jobs/bulk",
        data={"csrf": csrf_of(page), "action": "kill", "job": [str(theirs["job_ids"][0])]},
    )
    report = unescape((await signed_in.get(refused.headers["location"])).text)
    assert f"no job {theirs['job_ids'][0]}" in report


async def test_the_pages_need_a_session(app: Running) -> None:
    async with httpx.AsyncClient(transport=app.client._transport, base_url="http://t") as anon:
        assert (await anon.get("/jobs")).status_code == 401
        assert (await anon.get("/jobs/1")).status_code == 401
