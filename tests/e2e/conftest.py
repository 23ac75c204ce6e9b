"""A real browser (Debian's chromium driven by Playwright) on a live Concordia."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import LiveServer

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
# Chromium's own calls home are refused on this closed network, many at a time: keep it quiet.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# Per module, not per session: sync Playwright keeps an event loop running in this thread
# while it lives, and the asyncio tests of the other folders need the thread to themselves.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make test does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    # Whatever the Content-Security-Policy blocks (an inline script or style) fails the test:
    # the page would be broken for users, and Chromium only says so in the console.
    refused: list[str] = []
    page.on(
        "console",
        lambda m: (
            refused.append(f"{m.location.get('url')}: {m.text}")
            if "Content Security Policy" in m.text
            else None
        ),
    )
    yield page
    context.close()
    assert not refused, f"the browser refused under the CSP: {refused}"


def login_url(server: LiveServer) -> str:
    found: list[str] = re.findall(r"http://\S+/login\?token=\S+", server.output())
    assert found, "the server printed no login link"
    return found[-1]


def sign_in(page: Page, server: LiveServer) -> None:
    page.goto(login_url(server))
    page.wait_for_url(f"{server.url}/")


def shot(page: Page, name: str) -> Path:
    """A full-page screenshot in test-artifacts/screenshots, to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
