"""In a real browser: submit to the grid (a real DiracX, the test site playing the grid), watch
the jobs end, see a job's status history from DiracX and download its output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import LiveServer
from tests.diracx.fixtures import DiracX
from tests.diracx.site import Site
from tests.e2e.conftest import shot, sign_in
from tests.integration.backends.test_diracx_backend import grid_server_env


@pytest.fixture
def live_server_env(tmp_path: Path, diracx: DiracX) -> dict[str, str]:
    return grid_server_env(tmp_path, diracx)


def test_submit_to_the_grid_and_get_the_results(
    page: Page, live_server: LiveServer, site: Site
) -> None:
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/concordia/gridhello")
    page.get_by_label("Jobs").fill("2")
    page.get_by_label("message").fill("grid")
    run_on = page.get_by_label("Run on")
    expect(run_on).to_have_value("local")  # the server's default
    run_on.select_option("diracx")
    # The preview shows the JDL DiracX will be sent: the job wrapper, not the local command.
    expect(page.locator("pre.jdl")).to_contain_text('Executable = "concordia-job.sh"')
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(rf"{re.escape(live_server.url)}/submissions/\d+$"))
    statuses = page.locator("table.submission-jobs td.status")
    expect(statuses).to_have_count(2)
    with site.running():
        expect(statuses).to_have_text(["Done", "Done"], timeout=60_000)
    shot(page, "grid-submission")

    page.locator("table.submission-jobs a").first.click()
    history = page.locator("#job-history")
    for status in ("Waiting", "Matched", "Running", "Completing", "Done"):
        expect(history).to_contain_text(status)
    expect(history).to_contain_text("TestSite")  # the grid's own sources, as DiracX has them
    expect(page.locator("#job-outputs")).to_contain_text("result.txt")
    with page.expect_download() as download:
        page.get_by_label("Download result.txt").click()
    assert Path(download.value.path()).read_text() == "grid\n"
    shot(page, "grid-job")
