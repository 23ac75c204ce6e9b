"""The links worker nodes fetch a grid job's image with: signed for one job and until when,
no session; Range and ETag for resumed downloads; anything else refused, saying nothing."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from concordia.backends.base import JobImage
from concordia.backends.grid_images import GridImages
from concordia.images.publication import IMAGE_LINKS, link_signature
from concordia.logic.job_specs import job_image as _job_image
from tests.conftest import Running


async def running_job(app: Running) -> dict[str, Any]:
    """A hello job in the seed's image, running until the test kills it."""
    made = await app.client.post(
        "/api/v1/submissions",
        json={"application": "hello", "parameters": {"sleep": 60}, "backend": "local"},
    )
    assert made.status_code == 201, made.text
    [job_id] = made.json()["job_ids"]
    deadline = time.monotonic() + 60
    while (job := (await app.client.get(f"/api/v1/jobs/{job_id}")).json())["status"] != "Running":
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)
    return job


def image_of(app: Running, job: dict[str, Any]) -> JobImage:
    image = _job_image(app.platform.images.store.get(job["image_id"]))
    assert image is not None and image.squashfs is not None
    return image


def anonymous(link: str) -> str:
    """The link as a node uses it: path and query, no session, no token."""
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"


async def test_a_job_s_link_serves_its_image_with_range_and_etag(
    app: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="concordia.access")
    job = await running_job(app)
    image = image_of(app, job)
    keys = app.platform.keyring.vault.derived_keys(IMAGE_LINKS)
    link = GridImages(app.settings, app.settings.public_url, keys).link(image, job["uuid"])
    assert link is not None and link.startswith(f"{app.settings.public_url}/api/v1/grid/images/")
    data = image.squashfs.read_bytes() if image.squashfs else b""
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    node = app.client.__class__(transport=app.client._transport, base_url="http://testserver")
    async with node:
        whole = await node.get(anonymous(link))
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["etag"] == etag and whole.headers["accept-ranges"] == "bytes"
        # A job that was cut off goes on where it stopped, if the image is the same.
        rest = await node.get(anonymous(link), headers={"Range": "bytes=100-", "If-Range": etag})
        assert rest.status_code == 206 and rest.content == data[100:]
        other = await node.get(anonymous(link), headers={"Range": "bytes=100-", "If-Range": '"x"'})
        assert other.status_code == 200 and other.content == data
        same = await node.get(anonymous(link), headers={"If-None-Match": etag})
        assert same.status_code == 304 and same.content == b""
    signature = parse_qs(urlsplit(link).query)["sig"][0]
    assert "sig=REDACTED" in caplog.text and signature not in caplog.text
    await app.client.post(f"/api/v1/jobs/{job['id']}/kill")


async def test_a_wrong_expired_or_foreign_link_is_refused(app: Running) -> None:
    job = await running_job(app)
    image = image_of(app, job)
    [key] = app.platform.keyring.vault.derived_keys(IMAGE_LINKS)
    path = f"/api/v1/grid/images/{image.id}/image.sqsh"

    def query(job_uuid: str, expires: int, key: bytes = key, image_id: str = image.id) -> str:
        sig = link_signature(key, image_id, job_uuid, expires)
        return urlencode({"job": job_uuid, "expires": expires, "sig": sig})

    later, earlier = int(time.time()) + 3600, int(time.time()) - 1
    node = app.client.__class__(transport=app.client._transport, base_url="http://testserver")
    async with node:
        assert (await node.get(f"{path}?{query(job['uuid'], later)}")).status_code == 200
        refused = {
            "wrong key": f"{path}?{query(job['uuid'], later, key=b'x' * 32)}",
            "expired": f"{path}?{query(job['uuid'], earlier)}",
            "expiry moved": f"{path}?{query(job['uuid'], later)}".replace(
                str(later), str(later + 1)
            ),
            "another job": f"{path}?{query('0' * 36, later)}",
            "another image": f"/api/v1/grid/images/{'a' * 64}/image.sqsh?"
            + query(job["uuid"], later, image_id="a" * 64),
            "a signature not in ASCII": f"{path}?"
            + urlencode({"job": job["uuid"], "expires": later, "sig": "é" * 64}),
        }
        for why, url in refused.items():
            answer = await node.get(url)
            assert answer.status_code == 403, (why, answer.text)
            assert answer.json()["detail"].startswith("this image link is not valid"), why
        # Once the job is over, its link is dead too.
        await app.client.post(f"/api/v1/jobs/{job['id']}/kill")
        deadline = time.monotonic() + 30
        while (await app.client.get(f"/api/v1/jobs/{job['id']}")).json()["status"] != "Killed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert (await node.get(f"{path}?{query(job['uuid'], later)}")).status_code == 403
