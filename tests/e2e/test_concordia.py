"""The Concordia form and a submission followed live, in a real browser."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

from tests.conftest import LiveServer
from tests.e2e.conftest import shot, sign_in


def submissions_made(server: LiveServer) -> int:
    """Jobs stored so far, asked of the REST API with the local token."""
    response = httpx.get(
        f"{server.url}/api/v1/jobs", headers={"Authorization": f"Bearer {server.token}"}
    )
    response.raise_for_status()
    total: int = response.json()["total"]
    return total


def test_fill_fix_submit_and_watch_the_jobs_finish(page: Page, live_server: LiveServer) -> None:
    sign_in(page, live_server)
    page.get_by_role("link", name="DIRAC").click()
    page.wait_for_url(f"{live_server.url}/concordia")
    shot(page, "concordia-choose")
    page.get_by_role("link", name="Hello, Concordia").click()
    page.wait_for_url(f"{live_server.url}/concordia/hello")
    expect(page.locator("h1")).to_have_text("Hello, Concordia")
    jobs = page.get_by_label("Jobs")
    expect(jobs).to_have_value("1")
    expect(page.locator(".preview-count")).to_contain_text("1 job")
    shot(page, "concordia-form")

    # Checked by the server as it is typed: the message comes next to the field.
    jobs.fill("0")
    error = page.locator("#err-p-jobs")
    expect(error).to_have_text("must be >= 1")
    expect(jobs).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#concordia-preview")).to_contain_text("every value is valid")
    shot(page, "concordia-invalid")
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("alert")).to_contain_text("must be >= 1")
    assert page.url == f"{live_server.url}/concordia/hello"
    expect(page.get_by_label("Jobs")).to_have_value("0")  # what was typed is kept
    shot(page, "concordia-refused")
    assert submissions_made(live_server) == 0

    page.get_by_label("Jobs").fill("3")
    page.get_by_label("Message").fill("hi")
    page.get_by_label("Sleep (s)").fill("1")  # long enough to be seen Running first
    expect(page.locator("#err-p-jobs")).to_be_hidden()
    expect(page.get_by_label("Jobs")).to_have_attribute("aria-invalid", "false")
    expect(page.locator(".preview-count")).to_contain_text("3 jobs")
    expect(page.locator("pre.jdl")).to_contain_text("hi")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(rf"{re.escape(live_server.url)}/submissions/\d+$"))
    expect(page.locator("h1")).to_have_text(re.compile(r"Submission \d+"))

    # No reload from here on: the rows and the progress follow the server's events.
    page.evaluate("window.__sameDocument = true")
    statuses = page.locator("table.submission-jobs td.status")
    expect(statuses).to_have_count(3)
    expect(page.locator("#submission-progress")).to_contain_text("In progress")
    expect(statuses).to_have_text(["Done", "Done", "Done"], timeout=30_000)
    expect(page.locator("#submission-progress")).to_contain_text("Finished", timeout=10_000)
    expect(page.locator(".count-done")).to_have_text("3 done")
    assert page.evaluate("window.__sameDocument") is True
    assert submissions_made(live_server) == 3
    shot(page, "submission")


def test_the_form_fits_a_phone(page: Page, live_server: LiveServer) -> None:
    sign_in(page, live_server)
    page.set_viewport_size({"width": 375, "height": 700})
    page.goto(f"{live_server.url}/concordia/hello")
    expect(page.locator(".preview-count")).to_contain_text("1 job")
    widest = page.evaluate("document.documentElement.scrollWidth")
    assert widest <= 375, f"the page scrolls sideways ({widest}px)"
    shot(page, "concordia-form-phone")
