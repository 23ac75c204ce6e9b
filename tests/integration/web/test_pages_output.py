"""What every page shares: the icon, UTC times, binary sizes, a 413 with a way back."""

from __future__ import annotations

import re

import httpx

from concordia.core.units import size_text
from tests.conftest import Running
from tests.integration.web.test_api import submit, wait_submission


async def test_the_favicon_exists_and_pages_name_it(signed_in: httpx.AsyncClient) -> None:
    icon = await signed_in.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.lstrip().startswith("<svg")
    home = (await signed_in.get("/")).text
    assert re.search(r'<link rel="icon" type="image/svg\+xml" href="[^"]*/favicon.svg">', home)
    assert (await signed_in.get("/static/favicon.svg")).status_code == 200


async def test_a_form_too_large_gets_a_page_with_a_way_back(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    form = "http://testserver/concordia/hello"
    big = b"x=" + b"0" * app.settings.max_request_bytes
    response = await signed_in.post(
        "/concordia/hello",
        content=big,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Referer": form},
    )
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>Too large</h1>" in response.text
    assert f"larger than {app.settings.max_request_bytes} bytes" in response.text
    assert '<a href="/concordia/hello">Back to the page you came from</a>' in response.text
    elsewhere = await signed_in.post(
        "/concordia/hello", content=big, headers={"Referer": "https://evil.example/x"}
    )
    assert '<a href="/">Back to the home page</a>' in elsewhere.text


async def test_a_job_page_counts_from_1_and_says_utc_and_sizes_as_the_cli(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    sub = await submit(app.client, jobs=2)
    await wait_submission(app.client, sub["id"])
    first, second = sub["job_ids"]
    page = (await signed_in.get(f"/jobs/{first}")).text
    assert f"Submission {sub['id']}</a> (job 1 of the batch)" in page
    assert "(job 2 of the batch)" in (await signed_in.get(f"/jobs/{second}")).text
    outputs = (await app.client.get(f"/api/v1/jobs/{first}/outputs")).json()["items"]
    for output in outputs:
        assert f'<td class="size">{size_text(output["size"])}</td>' in page
    listing = (await signed_in.get("/jobs")).text
    assert "Updated (UTC)" in listing and "Created (UTC)" in listing
    assert "Built (UTC)" in (await signed_in.get("/images")).text
