"""The job monitor and a job's page in a real browser: live rows, logs, downloads, kill."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, Route, expect

from tests.conftest import LiveServer
from tests.e2e.conftest import shot, sign_in


def submit(server: LiveServer, **parameters: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/api/v1/submissions",
        json={"application": "hello", "parameters": parameters},
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def running(server: LiveServer, job_id: int) -> None:
    url, headers = f"{server.url}/api/v1/jobs/{job_id}", {"Authorization": f"Bearer {server.token}"}
    deadline = time.monotonic() + 30
    while httpx.get(url, headers=headers).json()["status"] != "Running":
        assert time.monotonic() < deadline, f"job {job_id} never ran"
        time.sleep(0.2)


def row(page: Page, job_id: int) -> Any:
    return page.locator(f'tr[data-job-id="{job_id}"]')


def test_the_table_goes_live_and_a_job_shows_its_results(
    page: Page, live_server: LiveServer, tmp_path: Path
) -> None:
    sign_in(page, live_server)
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.locator("h1")).to_have_text("Jobs")
    expect(page.locator(".jobs-empty")).to_be_visible()
    page.evaluate("window.__stillTheSamePage = true")

    sub = submit(live_server, jobs=3, sleep=1, first_run=10, message="from the browser")
    statuses = page.locator('tr[data-job-id] [data-field="status"]')
    expect(statuses).to_have_count(3)
    expect(statuses).to_have_text(["Done"] * 3, timeout=60_000)
    expect(page.locator("#jobs-counts")).to_contain_text("Done 3")
    assert page.evaluate("window.__stillTheSamePage") is True, "the page was reloaded"
    shot(page, "jobs")

    job_id = sub["job_ids"][0]
    row(page, job_id).get_by_role("link", name=f"Job {job_id}").click()
    expect(page.locator("h1")).to_have_text(f"Job {job_id}: hello_10")
    expect(page.locator('pre[data-stream="stdout"]')).to_contain_text("run 10: from the browser")
    expect(page.locator("#job-history")).to_contain_text("Completing")
    shot(page, "job")

    with page.expect_download() as one:
        page.get_by_role("link", name="Download result-10.txt").click()
    assert one.value.suggested_filename == "result-10.txt"
    saved = tmp_path / "result.txt"
    one.value.save_as(saved)
    assert saved.read_text().startswith("run=10")
    with page.expect_download() as everything:
        page.get_by_role("link", name="Download all (zip)").click()
    archive = tmp_path / "all.zip"
    everything.value.save_as(archive)
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
    assert f"job-{job_id}/result-10.txt" in names, names


def test_a_long_job_is_killed_from_the_table(page: Page, live_server: LiveServer) -> None:
    sign_in(page, live_server)
    long = submit(live_server, sleep=60)["job_ids"][0]
    page.goto(f"{live_server.url}/jobs")
    status = row(page, long).locator('[data-field="status"]')
    expect(status).to_have_text("Running", timeout=30_000)
    expect(page.get_by_role("button", name="Kill")).to_be_disabled()
    row(page, long).get_by_role("checkbox").check()
    expect(page.locator("#jobs-selected")).to_have_text("1 selected:")
    page.get_by_role("button", name="Kill").click()
    expect(page.locator(".jobs-flash")).to_contain_text("Killed 1 of 1 job.")
    expect(status).to_have_text("Killed")

    page.set_viewport_size({"width": 375, "height": 700})
    page.reload()
    expect(status).to_have_text("Killed")
    shot(page, "jobs-phone")


def test_the_job_page_tails_the_log_while_the_job_runs(page: Page, live_server: LiveServer) -> None:
    sign_in(page, live_server)
    job_id = submit(live_server, sleep=60, first_run=5, message="still going")["job_ids"][0]
    page.goto(f"{live_server.url}/jobs/{job_id}")
    stdout = page.locator('pre[data-stream="stdout"]')
    expect(stdout).to_contain_text("run 5: still going", timeout=30_000)
    stderr = page.locator('pre[data-stream="stderr"]')
    expect(stderr).to_contain_text("hello from stderr (run 5)")
    expect(page.locator('.job-head [data-field="status"]')).to_have_text("Running")
    expect(stdout).not_to_contain_text("finished")
    expect(page.locator("#job-history")).to_contain_text("Running")  # refreshed in place
    shot(page, "job-live-tail")

    page.get_by_role("button", name="Kill").click()
    expect(page.locator('.job-head [data-field="status"]')).to_have_text("Killed")
    expect(page.locator("#job-history")).to_contain_text("Killed by user")


def test_an_answer_older_than_what_the_page_shows_is_not_shown(
    page: Page, live_server: LiveServer
) -> None:
    """Once its event stream is ready the job page reads the job, to catch up; news may reach
    it while that answer is on its way. Here the answer is made older than the page (the job
    as it was when created), as one read just before the job started would be."""
    sign_in(page, live_server)
    [job_id] = submit(live_server, sleep=60)["job_ids"]
    running(live_server, job_id)
    answered: list[bool] = []

    def as_it_was(route: Route) -> None:
        job = route.fetch().json()
        earlier = {"status": "Waiting", "minor_status": "Pilot Agent Submission"}
        route.fulfill(json={**job, **earlier, "updated_at": job["created_at"]})
        answered.append(True)

    page.route(f"**/api/v1/jobs/{job_id}", as_it_was)
    page.goto(f"{live_server.url}/jobs/{job_id}")
    status = page.locator('.job-head [data-field="status"]')
    expect(status).to_have_text("Running")  # as rendered
    deadline = time.monotonic() + 30
    while not answered:  # the catch-up read happened (and its answer was handed over)
        assert time.monotonic() < deadline, "the page never caught up"
        page.wait_for_timeout(100)
    page.wait_for_timeout(500)  # the answer handled
    expect(status).to_have_text("Running", timeout=100)
