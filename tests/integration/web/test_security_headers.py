"""Every page, the API and the text build log carry the security headers; no page may be framed."""

from __future__ import annotations

import httpx

from tests.conftest import Running


def assert_protected(response: httpx.Response) -> None:
    policy = response.headers.get("content-security-policy", "")
    assert "default-src 'self'" in policy, (response.url, policy)
    assert "frame-ancestors 'none'" in policy, (response.url, policy)
    assert response.headers.get("x-content-type-options") == "nosniff", response.url
    assert response.headers.get("referrer-policy") == "same-origin", response.url


async def test_pages_api_and_build_log_carry_the_security_headers(
    app: Running, signed_in: httpx.AsyncClient
) -> None:
    # The hello image is in the store already: asking for it returns it at once.
    asked = await app.client.post("/api/v1/images", json={"application": "hello"})
    image_id = asked.json()["image"]["id"]
    for path in ("/", "/jobs", "/images", f"/images/{image_id}", "/account", "/concordia"):
        response = await signed_in.get(path)
        assert response.status_code == 200, (path, response.status_code)
        assert response.headers["content-type"].startswith("text/html")
        assert_protected(response)
    # The build log is text a build step wrote: it must never be sniffed into HTML.
    log = await app.client.get(f"/api/v1/images/{image_id}/log")
    assert log.status_code == 200 and log.headers["content-type"].startswith("text/plain")
    assert_protected(log)
    # Error answers too: a page that is not there, the JSON API refusing a stranger.
    assert_protected(await signed_in.get("/nowhere"))
    assert_protected(await app.client.get("/api/v1/jobs/999999"))


async def test_the_api_docs_keep_their_scripts_but_may_not_be_framed(app: Running) -> None:
    docs = await app.client.get("/api/docs")
    assert docs.status_code == 200
    assert docs.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert docs.headers["x-content-type-options"] == "nosniff"
