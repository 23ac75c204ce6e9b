"""Home, account and error pages in a real browser."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.conftest import LiveServer
from tests.e2e.conftest import login_url, shot, sign_in


def test_signing_in_leads_home_with_the_services(page: Page, live_server: LiveServer) -> None:
    sign_in(page, live_server)
    expect(page.get_by_label("Signed in as")).to_have_text("local")
    cards = page.locator(".card h2")
    expect(cards).to_have_text(
        ["DIRAC", "WSRT-Apertif", "ASTRON VO", "Zooniverse", "Rucio", "Zenodo"]
    )
    shot(page, "home")
    page.get_by_role("link", name="DIRAC").click()
    page.wait_for_url(f"{live_server.url}/concordia")


def test_the_account_page_says_what_local_mode_knows(page: Page, live_server: LiveServer) -> None:
    sign_in(page, live_server)
    page.get_by_role("link", name="Account").click()
    expect(page.locator("h1")).to_have_text("Account")
    facts = page.locator(".facts")
    expect(facts).to_contain_text("jobs are isolated; jobs in images run with bwrap")
    shot(page, "account")


def test_errors_are_pages_with_a_way_back(page: Page, live_server: LiveServer) -> None:
    page.goto(f"{live_server.url}/account")
    expect(page.locator("h1")).to_have_text("Please sign in")
    used = login_url(live_server)
    sign_in(page, live_server)
    page.goto(used)  # a one-time link works once
    expect(page.locator("h1")).to_have_text("Please sign in")
    missing = page.goto(f"{live_server.url}/no/such/page")
    assert missing is not None and missing.status == 404
    expect(page.locator("h1")).to_have_text("Not found")
    shot(page, "error-404")
    page.get_by_role("link", name="Back to the home page").click()
    page.wait_for_url(f"{live_server.url}/")


def test_after_signing_out_the_api_token_signs_in_again(
    page: Page, live_server: LiveServer
) -> None:
    sign_in(page, live_server)
    page.get_by_role("button", name="Sign out").click()
    page.goto(f"{live_server.url}/account")
    expect(page.locator("h1")).to_have_text("Please sign in")
    page.get_by_role("link", name="Sign in", exact=True).last.click()
    page.wait_for_url(f"{live_server.url}/login?next=/account")
    expect(page.get_by_role("heading", name="A one-time link")).to_be_visible()
    expect(page.locator("main")).to_contain_text("concordia login-link")
    page.get_by_label("API token", exact=True).fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("This API token is unknown or expired.")
    shot(page, "sign-in")
    page.get_by_label("API token", exact=True).fill(live_server.token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server.url}/account")
    expect(page.get_by_label("Signed in as")).to_have_text("local")
