"""The form checks rules across fields and the CPU time live, in a real browser."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.conftest import LiveServer
from tests.e2e.conftest import shot, sign_in
from tests.e2e.test_concordia import submissions_made


def test_an_inverted_energy_range_is_shown_at_both_fields_and_not_submitted(
    page: Page, live_server: LiveServer
) -> None:
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/concordia/showermodel")
    expect(page.locator(".preview-count")).to_contain_text("1 job")

    page.get_by_label("Minimum energy (TeV)").fill("50")
    page.get_by_label("Maximum energy (TeV)").fill("5")
    for field in ("energy_min", "energy_max"):
        expect(page.locator(f"#err-p-{field}")).to_contain_text("must not exceed")
        expect(page.locator(f"#p-{field}")).to_have_attribute("aria-invalid", "true")
    shot(page, "concordia-rule")
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("alert")).to_contain_text("must not exceed the maximum energy")
    assert submissions_made(live_server) == 0

    page.get_by_label("Maximum energy (TeV)").fill("100")
    expect(page.locator("#err-p-energy_min")).to_be_hidden()
    expect(page.locator("#err-p-energy_max")).to_be_hidden()


def test_the_preview_shows_cpu_time_and_refuses_a_job_over_the_limit(
    page: Page, live_server: LiveServer
) -> None:
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/concordia/showermodel")
    page.get_by_label("Array layout").select_option("grid-25")
    page.get_by_label("Primary").select_option("proton")
    page.get_by_label("Showers per job").fill("2000")
    expect(page.locator("#err-p-showers")).to_contain_text("about 1,505 s")
    expect(page.locator("#err-p-showers")).to_contain_text("limit of 600 s")

    page.locator("#p-jobs").fill("4")
    page.get_by_label("Showers per job").fill("700")
    expect(page.locator("#err-p-showers")).to_be_hidden()
    cpu = page.locator(".preview-cpu")
    expect(cpu).to_contain_text("530 s (9 min) per job")
    expect(cpu).to_contain_text("2,120 s (35 min) for the batch")
    expect(page.locator(".preview-cpu-warning")).to_contain_text("a slow worker node")
    shot(page, "concordia-cpu-estimate")


def test_a_click_on_submit_survives_a_check_landing_during_it(
    page: Page, live_server: LiveServer
) -> None:
    """A check answered between the press and the release of a click on Submit (a user who
    types and submits at once) leaves the button in place, so the click submits."""
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/concordia/showermodel")
    expect(page.locator(".preview-count")).to_contain_text("1 job")
    page.locator("#p-jobs").fill("2")
    submit = page.get_by_role("button", name="Submit")
    submit.scroll_into_view_if_needed()
    box = submit.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    expect(page.locator(".preview-count")).to_contain_text("2 jobs")  # the check has landed
    page.mouse.up()
    page.wait_for_url(f"{live_server.url}/submissions/*")
    assert submissions_made(live_server) == 2
