"""The images pages in-process: the catalogue, an image's page (formats, checksums, log),
rebuild and delete behind CSRF, and the image the Concordia form shows for its configuration."""

from __future__ import annotations

import re
import shutil
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from concordia.logic import image_plans, image_selection, image_views
from tests.conftest import Running, make_settings, running_app
from tests.integration.images.test_images import BUSYBOX, wait_built
from tests.integration.web.test_api import FINAL, submit, wait_status

pytestmark = pytest.mark.real

TINY_YAML = f"""
name: tiny
title: Tiny
command: "cat /etc/flavour"
batch: {{count: jobs}}
build_args:
  flavour: {{type: enum, label: Flavour, choices: [vanilla, chocolate], default: vanilla}}
parameters:
  jobs: {{type: int, default: 1, min: 1, max: 10}}
{BUSYBOX}    - 'echo {{flavour}} > /etc/flavour'
"""


def csrf_of(html: str) -> str:
    found = re.search(r'data-csrf="([^"]+)"', html)
    assert found
    return found.group(1)


def image_rows(html: str) -> list[str]:
    return re.findall(r'<tr data-image-id="([0-9a-f]{64})"', html)


def text_of(html: str) -> str:
    """The words of a page, as a reader sees them (tags gone, spaces collapsed)."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


async def ask_for_hello(app: Running) -> dict[str, Any]:
    response = await app.client.post("/api/v1/images", json={"application": "hello"})
    assert response.status_code == 200, response.text  # seeded: selected at once
    image: dict[str, Any] = response.json()["image"]
    return image


async def test_the_catalogue_lists_an_image_once_asked_for(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    empty = await signed_in.get("/images")
    assert empty.status_code == 200
    assert image_rows(empty.text) == [] and "No images yet." in empty.text
    assert '<a href="/images" aria-current="page">Images</a>' in empty.text
    builder = image_views.builders(app.platform.settings, app.platform.images).summary
    assert builder.startswith("mmdebstrap")
    assert f"Images are built here with {builder} and stored as SquashFS and OCI archive" in (
        text_of(empty.text)
    )

    hello = await ask_for_hello(app)
    html = (await signed_in.get("/images")).text
    assert image_rows(html) == [hello["id"]]
    row = html[html.index(f'<tr data-image-id="{hello["id"]}"') :]
    row = row[: row.index("</tr>")]
    short = hello["id"][:12]
    assert (
        f'<a href="/images/{hello["id"]}" aria-label="Image {short}"><code>{short}</code></a>'
        in (row)
    )
    assert '<td class="app">hello</td>' in row and "none" in row  # hello has no build arguments
    assert '<span class="image-status image-status-ready">ready</span>' in row
    words = text_of(row)
    for fmt, name in (("squashfs", "SquashFS"), ("oci", "OCI archive")):
        size = hello["formats"][fmt]["size"]
        assert re.search(rf"{name} [\d.]+ (KiB|MiB)", words), words
        assert size > 0
    assert hello["builder"] in row and words.endswith(" 0")  # no job used it yet

    # The filter, and the table alone (as the live refresh fetches it).
    assert image_rows((await signed_in.get("/images?application=hello")).text) == [hello["id"]]
    other = (await signed_in.get("/images?application=corsika")).text
    assert image_rows(other) == [] and "No images of corsika yet." in other
    assert "<option selected>corsika</option>" in other
    table = await signed_in.get("/images/table?application=hello")
    assert image_rows(table.text) == [hello["id"]] and "<html" not in table.text


async def test_the_image_page_shows_formats_checksums_and_downloads(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    hello = await ask_for_hello(app)
    page = await signed_in.get(f"/images/{hello['id']}")
    assert page.status_code == 200
    html = page.text
    assert f"Image <code>{hello['id'][:12]}</code> of Hello, Concordia" in html
    assert f'<code class="hash">{hello["id"]}</code>' in html
    assert 'data-field="status">ready</span>' in html
    for fmt, name in (("squashfs", "SquashFS"), ("oci", "OCI archive")):
        assert f'<code class="hash">{hello["formats"][fmt]["sha256"]}</code>' in html
        link = f'href="/api/v1/images/{hello["id"]}/download/{fmt}" download'
        assert f'{link} aria-label="Download {name}"' in html
        # The link works with the browser's session alone.
        download = await signed_in.get(f"/api/v1/images/{hello['id']}/download/{fmt}")
        assert download.status_code == 200
        assert len(download.content) == hello["formats"][fmt]["size"]
    assert 'id="image-log"' in html and "Rebuild</button>" in html and "Delete</button>" in html
    parts = await signed_in.get(f"/images/{hello['id']}/parts")
    assert parts.text.count('hx-swap-oob="true"') == 1 and "<html" not in parts.text


async def test_rebuild_builds_again_and_the_page_shows_its_log(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    hello = await ask_for_hello(app)
    url = f"/images/{hello['id']}"
    csrf = csrf_of((await signed_in.get(url)).text)

    for forged in ({}, {"csrf": "forged"}):
        refused = await signed_in.post(f"{url}/rebuild", data=forged)
        assert refused.status_code == 403 and "Not allowed" in refused.text
    assert app.platform.images.started == 0

    rebuilt = await signed_in.post(f"{url}/rebuild", data={"csrf": csrf})
    assert rebuilt.status_code == 303 and rebuilt.headers["location"] == url
    assert app.platform.images.started == 1
    building = (await signed_in.get(url)).text
    assert 'data-field="status">building</span>' in building
    assert "The image is being built again; its log follows below." in building
    assert "The build is running: its log follows live." in building
    assert "Rebuild</button>" not in building  # not while it builds
    assert (await signed_in.get(url)).text.count("being built again") == 0  # shown once

    image = await wait_built(app.client, hello["id"])
    assert image["status"] == "ready", image["error"]
    done = (await signed_in.get(url)).text
    assert 'data-field="status">ready</span>' in done
    log = re.search(r'<pre id="image-log"[^>]*>(.*?)</pre>', done, re.S)
    assert log and f"building image {hello['id']} of hello" in log.group(1)
    assert "built in" in log.group(1)
    assert f'<code class="hash">{image["formats"]["squashfs"]["sha256"]}</code>' in done


async def test_delete_is_refused_while_a_job_uses_the_image(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    sub = await submit(app.client, sleep=60)
    image_id = sub["image_id"]
    url = f"/images/{image_id}"
    page = (await signed_in.get(url)).text
    assert "1 job ran or will run in it" in page

    forged = await signed_in.post(f"{url}/delete", data={})
    assert forged.status_code == 403
    refused = await signed_in.post(f"{url}/delete", data={"csrf": csrf_of(page)})
    assert refused.status_code == 409
    assert "The image was not deleted: 1 job(s) not yet finished use this image." in refused.text
    assert (
        'role="alert"' in refused.text and f'<code class="hash">{image_id}</code>' in refused.text
    )
    assert (await app.client.get(f"/api/v1/images/{image_id}")).json()["status"] == "ready"

    job_id = sub["job_ids"][0]
    assert (await app.client.post(f"/api/v1/jobs/{job_id}/kill")).status_code == 200
    await wait_status(app.client, job_id, FINAL)
    deleted = await signed_in.post(f"{url}/delete", data={"csrf": csrf_of(page)})
    assert deleted.status_code == 303 and deleted.headers["location"] == "/images"
    listing = (await signed_in.get("/images")).text
    assert f"Deleted image {image_id[:12]} of hello." in listing
    assert image_id not in image_rows(listing)
    assert "Deleted image" not in (await signed_in.get("/images")).text  # shown once
    gone = await signed_in.get(url)
    assert gone.status_code == 404 and "Not found" in gone.text


async def test_bad_image_ids_are_a_not_found_page(signed_in: httpx.AsyncClient) -> None:
    csrf = csrf_of((await signed_in.get("/images")).text)
    for path in ("nope", "a" * 64, "A" * 64, "a" * 65, "%2e%2e%2fetc", "a" * 64 + "/parts"):
        response = await signed_in.get(f"/images/{path}")
        assert response.status_code == 404, path
        assert "Not found" in response.text and "Back to the home page" in response.text
    for action in ("rebuild", "delete"):
        response = await signed_in.post(f"/images/{'b' * 64}/{action}", data={"csrf": csrf})
        assert response.status_code == 404 and "no image" in response.text


async def test_the_pages_need_a_session(app: Running) -> None:
    async with httpx.AsyncClient(transport=app.client._transport, base_url="http://t") as anon:
        assert (await anon.get("/images")).status_code == 401
        assert (await anon.get(f"/images/{'a' * 64}")).status_code == 401


async def test_the_form_shows_the_ready_image_and_the_unavailable_reason(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    state = await image_selection.image_state(app.platform, "hello", {})
    assert state.status == "ready" and state.id
    short = state.id[:12]
    form = text_of((await signed_in.get("/concordia/hello")).text)
    assert f"Container image Image {short} : ready — it will be selected." in form
    await ask_for_hello(app)  # now in the catalogue: the id links to its page
    html = (await signed_in.get("/concordia/hello")).text
    assert f'<a href="/images/{state.id}"><code>{short}</code></a>' in html

    # corsika needs a source the operator has not configured: said on its card and its form,
    # and its form cannot be submitted.
    catalog = app.platform.catalog
    reason = image_plans.unavailable_reason(app.platform.settings, catalog, catalog.get("corsika"))
    assert reason and "its build needs the file 'corsika'" in reason
    catalogue = (await signed_in.get("/concordia")).text
    card = catalogue[catalogue.index('href="/concordia/corsika"') :]
    card = card[: card.index("</li>")]
    why = reason.split(" is unavailable: ", 1)[1]  # the card shows the title already
    assert f"Unavailable here</strong>: {why}" in unescape(card)
    corsika = (await signed_in.get("/concordia/corsika")).text
    assert (
        '<button type="submit" id="concordia-submit" disabled aria-describedby="submit-why">'
        in corsika
    )
    image_line = corsika[corsika.index('id="concordia-image"') :]
    assert reason in unescape(image_line[: image_line.index("</div>")])
    checked = (await signed_in.post("/concordia/corsika/check", data={})).text
    why_checked = checked[checked.index('id="submit-why"') :]
    assert "Submitting is not possible" in why_checked[: why_checked.index("</p>")]
    assert 'id="submit-why" hidden' not in checked
    forced = await signed_in.post("/concordia/corsika", data={"csrf": csrf_of(corsika)})
    assert forced.status_code == 409
    assert "Nothing was submitted" in forced.text and reason in unescape(forced.text)
    assert (await app.client.get("/api/v1/jobs")).json()["total"] == 0


async def test_the_form_follows_the_image_of_its_build_arguments(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "tiny.yaml").write_text(TINY_YAML)
    async with running_app(make_settings(tmp_path / "var", applications_dir=apps)) as app:
        async with httpx.AsyncClient(
            transport=app.client._transport, base_url="http://testserver"
        ) as c:
            login = urlsplit(app.login_url)
            await c.get(f"{login.path}?{login.query}")
            vanilla = await image_selection.image_state(
                app.platform, "tiny", {"flavour": "vanilla"}
            )
            chocolate = await image_selection.image_state(
                app.platform, "tiny", {"flavour": "chocolate"}
            )
            assert vanilla.id and chocolate.id and vanilla.id != chocolate.id
            assert vanilla.status is None

            form = (await c.get("/concordia/tiny")).text
            assert f'data-image-watch="{vanilla.id}"' in form
            assert "not built yet — submitting builds it" in text_of(form)
            assert '<button type="submit" id="concordia-submit">Submit</button>' in form

            # The image line follows the build arguments as they are checked.
            async def line(flavour: str) -> str:
                data = {"build_args.flavour": flavour, "parameters.jobs": "1"}
                html = (await c.post("/concordia/tiny/check", data=data)).text
                found = re.search(r'<div id="concordia-image".*?</div>', html, re.S)
                assert found
                return found.group(0)

            assert f'data-image-watch="{chocolate.id}"' in await line("chocolate")
            assert "Shown when the image configuration is valid." in await line("mint")

            started = await app.client.post(
                "/api/v1/images",
                json={"application": "tiny", "build_args": {"flavour": "chocolate"}},
            )
            assert started.status_code == 202
            building = text_of(await line("chocolate"))
            assert f"Image {chocolate.id[:12]} : building — jobs will wait for it" in building
            assert (await wait_built(app.client, chocolate.id))["status"] == "ready"
            assert "ready — it will be selected." in text_of(await line("chocolate"))
            assert "not built yet" in text_of(await line("vanilla"))


async def test_without_a_builder_the_pages_say_what_to_install(tmp_path: Path) -> None:
    if shutil.which("apptainer") or shutil.which("singularity"):
        pytest.skip("apptainer is installed here: it would be the builder")
    settings = make_settings(tmp_path / "var", image_builders=["apptainer"])
    async with running_app(settings) as app:
        async with httpx.AsyncClient(
            transport=app.client._transport, base_url="http://testserver"
        ) as c:
            login = urlsplit(app.login_url)
            await c.get(f"{login.path}?{login.query}")
            page = text_of((await c.get("/images")).text)
            assert "No image builder can run on this server" in page
            assert "Install one of these, then restart Concordia: apptainer : not installed" in page
            catalogue = text_of((await c.get("/concordia")).text)
            assert "Images cannot be built on this server" in catalogue
            hello = (await c.get("/concordia/hello")).text
            assert "images cannot be built here" in hello and "disabled" in hello


async def test_submission_and_job_pages_lead_to_the_image(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    view = await submit(app.client, jobs=1)
    image_id = view["image_id"]
    assert image_id is not None
    link = f'href="/images/{image_id}"'
    assert link in (await signed_in.get(f"/submissions/{view['id']}")).text
    job = view["job_ids"][0]
    await wait_status(app.client, job, FINAL)
    assert link in (await signed_in.get(f"/jobs/{job}")).text
