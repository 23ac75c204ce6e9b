"""The job monitor and a job's page in a real browser: live rows, logs, downloads, kill."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from tests.conftest import LiveServer
from tests.e2e.conftest import shot, sign_in

pytestmark = pytest.mark.slow


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
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.get_by_role("button", name="Kill").click()  # asked first: no, nothing happens
    assert asked == ["Kill 1 job(s)? What they have not written yet is lost."]
    page.wait_for_timeout(500)
    expect(status).to_have_text("Running")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Kill").click()
    expect(page.locator(".jobs-flash")).to_contain_text("Killed 1 of 1 job.")
    expect(status).to_have_text("Killed")

    page.set_viewport_size({"width": 375, "height": 700})
    page.reload()
    expect(status).to_have_text("Killed")
    # On a phone the jobs come first: the filters are folded into one line above them.
    expect(page.locator("#jobs-filter-panel")).not_to_have_attribute("open", "")
    expect(page.get_by_role("search", name="Filter jobs")).to_be_hidden()
    first_row = row(page, long).bounding_box()
    assert first_row is not None and first_row["y"] < 700, "the jobs are below the fold"
    page.get_by_text("Filters", exact=True).click()
    expect(page.get_by_role("search", name="Filter jobs")).to_be_visible()
    shot(page, "jobs-phone")
    page.goto(f"{live_server.url}/jobs?status=Killed")  # a filter set: shown, even here
    expect(page.get_by_role("search", name="Filter jobs")).to_be_visible()
    page.set_viewport_size({"width": 1200, "height": 800})
    page.goto(f"{live_server.url}/jobs")  # wide: the filters are open
    expect(page.get_by_role("search", name="Filter jobs")).to_be_visible()


def test_a_box_checked_while_the_rows_are_fetched_stays_checked(
    page: Page, live_server: LiveServer
) -> None:
    """The rows are fetched again as jobs change; a job selected meanwhile is still selected
    once the new rows are in, and the bulk action acts on it."""
    sign_in(page, live_server)
    long = submit(live_server, sleep=60)["job_ids"][0]
    running(live_server, long)
    held: list[Route] = []

    def hold(route: Route) -> None:  # the page's catch-up fetch waits here
        held.append(route)

    page.route("**/jobs/table?*", hold)
    page.goto(f"{live_server.url}/jobs")
    deadline = time.monotonic() + 30
    while not held:
        assert time.monotonic() < deadline, "the page never fetched its rows again"
        page.wait_for_timeout(100)
    row(page, long).get_by_role("checkbox").check()
    expect(page.locator("#jobs-selected")).to_have_text("1 selected:")
    with page.expect_response("**/jobs/table?*"):
        held[0].continue_()
    expect(row(page, long).get_by_role("checkbox")).to_be_checked()
    expect(page.locator("#jobs-selected")).to_have_text("1 selected:")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Kill").click()
    expect(page.locator(".jobs-flash")).to_contain_text("Killed 1 of 1 job.")


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

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Kill").click()
    expect(page.locator('.job-head [data-field="status"]')).to_have_text("Killed")
    expect(page.locator("#job-history")).to_contain_text("Killed by user")


def test_the_job_page_follows_its_job_to_the_end(page: Page, live_server: LiveServer) -> None:
    """Without a reload: the Kill button goes, Ended and the exit code come, and the job can
    be deleted from its page once it is over."""
    sign_in(page, live_server)
    [job_id] = submit(live_server, sleep=3, exit_code=4)["job_ids"]
    running(live_server, job_id)
    page.goto(f"{live_server.url}/jobs/{job_id}")
    page.evaluate("window.__stillTheSamePage = true")
    head = page.locator(".job-head")
    expect(head.get_by_role("button", name="Kill")).to_be_visible()
    expect(head.get_by_role("button", name="Delete")).to_have_count(0)
    expect(head.locator('[data-field="status"]')).to_have_text("Failed", timeout=30_000)
    expect(head.get_by_role("button", name="Kill")).to_have_count(0)
    expect(head).to_contain_text("Exit code4")
    expect(head).to_contain_text("Ended")
    assert page.evaluate("window.__stillTheSamePage") is True, "the page was reloaded"
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    head.get_by_role("button", name="Delete").click()
    page.wait_for_url(f"{live_server.url}/jobs")
    assert asked == [f"Delete job {job_id} with its logs and outputs? This cannot be undone."]
    expect(page.locator(".jobs-flash")).to_contain_text("Deleted 1 of 1 job.")


def test_every_job_matching_the_filters_is_killed_at_once(
    page: Page, live_server: LiveServer
) -> None:
    sign_in(page, live_server)
    sub = submit(live_server, jobs=60, sleep=300)
    page.goto(f"{live_server.url}/jobs?submission={sub['id']}")
    expect(page.locator(".jobs-summary")).to_contain_text("60 jobs")
    page.locator("#jobs-select-all").check()
    expect(page.locator("#jobs-selected")).to_have_text("50 selected:")
    page.get_by_role("button", name="Select all 60 jobs matching these filters").click()
    expect(page.locator("#jobs-selected")).to_have_text(
        "All 60 jobs matching these filters selected:"
    )
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Kill").click()
    expect(page.locator(".jobs-flash")).to_contain_text("Killed 60 of 60 jobs.", timeout=60_000)
    assert asked == ["Kill 60 job(s)? What they have not written yet is lost."]


def test_all_jobs_matching_stay_selected_when_new_rows_come(
    page: Page, live_server: LiveServer
) -> None:
    """The rows are the most recently changed first: a job off the page that changes comes
    onto it. With every job matching the filters selected, it comes selected too."""
    sign_in(page, live_server)
    sub = submit(live_server, jobs=60, sleep=300)
    page.goto(f"{live_server.url}/jobs?submission={sub['id']}")
    page.locator("#jobs-select-all").check()
    page.get_by_role("button", name="Select all 60 jobs matching these filters").click()
    selected = page.locator("#jobs-selected")
    expect(selected).to_have_text("All 60 jobs matching these filters selected:")
    shown = page.locator('#jobs-table input[name="job"]').evaluate_all("bs => bs.map(b => b.value)")
    [off_page, *_] = [i for i in sub["job_ids"] if str(i) not in shown]
    killed = httpx.post(
        f"{live_server.url}/api/v1/jobs/{off_page}/kill",
        headers={"Authorization": f"Bearer {live_server.token}"},
    )
    assert killed.status_code == 200, killed.text
    expect(row(page, off_page).locator('input[name="job"]')).to_be_checked(timeout=15_000)
    expect(selected).to_have_text("All 60 jobs matching these filters selected:")


def test_a_submission_is_deleted_from_its_page_after_saying_what_is_lost(
    page: Page, live_server: LiveServer
) -> None:
    sign_in(page, live_server)
    sub = submit(live_server, jobs=2, sleep=300)
    running(live_server, sub["job_ids"][0])
    page.goto(f"{live_server.url}/submissions/{sub['id']}")
    expect(page.get_by_role("button", name="Kill unfinished (2)")).to_be_visible()
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Delete submission").click()
    page.wait_for_url(f"{live_server.url}/jobs")
    assert asked == [
        f"Delete submission {sub['id']}: kill its 2 unfinished jobs, then delete all 2 jobs"
        " with their logs and outputs? This cannot be undone."
    ]
    expect(page.locator(".jobs-flash")).to_contain_text("Deleted 2 of 2 jobs.")


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
