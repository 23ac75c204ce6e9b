"""Images in a real browser: an application whose image is not built is submitted, its build
log streams in live and the page turns ready without a reload; the catalogue follows builds."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import LiveServer
from tests.e2e.conftest import shot, sign_in
from tests.integration.images.test_images import BUSYBOX

# A busybox image whose build takes a few seconds more than it needs, to be watched.
SLOW_YAML = f"""
name: slow
title: Slow build
description: A tiny busybox image whose build takes a few seconds, to watch its log.
command: "cat /etc/flavour"
batch: {{count: jobs}}
build_args:
  flavour: {{type: enum, label: Flavour, choices: [vanilla, chocolate], default: vanilla}}
parameters:
  jobs: {{type: int, label: Jobs, default: 1, min: 1, max: 10}}
{BUSYBOX}    - 'for i in 1 2 3 4 5 6; do echo "working $i"; sleep 1; done'
    - 'echo {{flavour}} > /etc/flavour'
"""


@pytest.fixture
def live_server_env(tmp_path: Path) -> dict[str, str]:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "slow.yaml").write_text(SLOW_YAML)
    return {"CONCORDIA_APPLICATIONS_DIR": str(apps)}


def fits(page: Page, width: int) -> None:
    widest = page.evaluate("document.documentElement.scrollWidth")
    assert widest <= width, f"the page scrolls sideways ({widest}px)"


def test_a_new_image_builds_with_its_log_live(page: Page, live_server: LiveServer) -> None:
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/concordia/slow")
    line = page.locator("#concordia-image")
    expect(line).to_contain_text("not built yet — submitting builds it")
    first = line.locator("code").inner_text()
    page.get_by_label("Flavour").select_option("chocolate")
    expect(line.locator("code")).not_to_have_text(first)  # another configuration, another id
    expect(line).to_contain_text("not built yet")
    chosen = line.locator("code").inner_text()
    shot(page, "image-form-not-built")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r".*/submissions/\d+$"))

    page.get_by_role("link", name="Images", exact=True).click()
    expect(page.locator("h1")).to_have_text("Images")
    row = page.locator("tr[data-image-id]")
    expect(row).to_have_count(1)
    expect(row.locator(".image-status")).to_have_text("building")
    row.get_by_role("link", name=f"Image {chosen}").click()

    # From here no reload: the log arrives over SSE, the end turns the page ready.
    expect(page.locator("h1")).to_contain_text(f"Image {chosen} of Slow build")
    page.evaluate("window.__sameDocument = true")
    status = page.locator('#image-parts [data-field="status"]')
    log = page.locator("#image-log")
    expect(status).to_have_text("building")
    expect(page.locator("#image-log-state")).to_contain_text("its log follows live")
    expect(log).to_contain_text("working 2", timeout=120_000)
    expect(status).to_have_text("building")  # the log came while it was building
    shot(page, "image-building")
    expect(log).to_contain_text("working 6")
    expect(log).to_contain_text("built in", timeout=120_000)
    expect(status).to_have_text("ready")
    expect(page.locator("#image-log-state")).to_have_text(
        "The build has finished: the image is ready."
    )
    formats = page.locator("table.image-formats")
    expect(formats).to_contain_text("SquashFS")
    expect(formats.locator("code.hash").first).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
    expect(page.get_by_role("button", name="Rebuild")).to_be_visible()
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    shot(page, "image-ready")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download SquashFS").click()
    assert download.value.suggested_filename == f"slow-{chosen}.sqsh"

    page.set_viewport_size({"width": 375, "height": 700})
    page.reload()
    expect(status).to_have_text("ready")
    fits(page, 375)
    shot(page, "image-phone")

    # Back on the form, the configuration's image is ready and links to its page.
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{live_server.url}/concordia/slow")
    page.get_by_label("Flavour").select_option("chocolate")
    expect(page.locator("#concordia-image")).to_contain_text("ready — it will be selected")
    expect(page.locator("#concordia-image").get_by_role("link", name=chosen)).to_be_visible()
    shot(page, "image-form-ready")


def test_the_catalogue_follows_builds_live(page: Page, live_server: LiveServer) -> None:
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/images")
    expect(page.locator(".images-notice")).to_contain_text("Images are built here with mmdebstrap")
    expect(page.locator(".images-empty")).to_be_visible()
    page.evaluate("window.__sameDocument = true")

    started = httpx.post(
        f"{live_server.url}/api/v1/images",
        json={"application": "slow"},
        headers={"Authorization": f"Bearer {live_server.token}"},
        timeout=30,
    )
    assert started.status_code == 202, started.text
    badge = page.locator("tr[data-image-id] .image-status")
    expect(badge).to_have_text("building")
    shot(page, "images-building")
    expect(badge).to_have_text("ready", timeout=120_000)
    expect(page.locator("tr[data-image-id]")).to_contain_text("SquashFS")
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    shot(page, "images")

    page.set_viewport_size({"width": 375, "height": 700})
    page.reload()
    expect(badge).to_have_text("ready")
    fits(page, 375)
    shot(page, "images-phone")

    # No job uses it: it can be deleted, and the catalogue says so.
    image_id = started.json()["image"]["id"]
    page.get_by_role("link", name=f"Image {image_id[:12]}").click()
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url(f"{live_server.url}/images")
    assert asked and asked[0].startswith(f"Delete image {image_id[:12]}? Its build took")
    expect(page.get_by_role("status")).to_have_text(f"Deleted image {image_id[:12]} of slow.")
    expect(page.locator(".images-empty")).to_be_visible()
