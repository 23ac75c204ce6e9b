"""The API refuses what would fail later (rules, CPU time, unknown keys) and dry-runs the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.jdl import parse_jdl
from concordia.db.tables import Image, ImageUser
from concordia.logic import submissions
from concordia.logic.errors import TooMany
from concordia.settings import OperationSettings
from tests.conftest import Running, make_settings, running_app

# Every request here is refused or dry-run, and leaves no image or job: no image seed.


@pytest.fixture
async def bare(tmp_path: Path) -> AsyncIterator[Running]:
    async with running_app(make_settings(tmp_path / "var")) as app:
        yield app


async def stored_jobs(client: httpx.AsyncClient) -> int:
    total: int = (await client.get("/api/v1/jobs")).json()["total"]
    return total


def problems(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {".".join(map(str, p["loc"][1:])): p["msg"] for p in response.json()["detail"]}


async def test_an_inverted_energy_range_is_a_422_naming_both_fields(bare: Running) -> None:
    body = {"application": "showermodel", "parameters": {"energy_min": 50, "energy_max": 5}}
    found = problems(await bare.client.post("/api/v1/submissions", json=body))
    assert set(found) == {"parameters.energy_min", "parameters.energy_max"}
    assert "must not exceed" in found["parameters.energy_min"]
    assert await stored_jobs(bare.client) == 0
    assert (await bare.client.get("/api/v1/images")).json() == []  # no build started


async def test_jobs_over_their_cpu_time_are_refused_with_the_estimate(bare: Running) -> None:
    parameters = {"showers": 2000, "layout": "grid-25", "primary": "proton"}
    body = {"application": "showermodel", "parameters": parameters}
    found = problems(await bare.client.post("/api/v1/submissions", json=body))
    # At every parameter the estimate reads, the photon file's (left at none) too.
    assert set(found) == {f"parameters.{name}" for name in [*parameters, "photon_file"]}
    assert "about 1,505 s" in found["parameters.showers"]


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"application": "hello", "paramters": {"jobs": 5}}, "paramters"),
        ({"application": "hello", "dry_run": True}, "dry_run"),
    ],
)
async def test_an_unknown_key_in_a_body_is_refused_by_name(
    bare: Running, body: dict[str, Any], key: str
) -> None:
    found = problems(await bare.client.post("/api/v1/submissions", json=body))
    assert key in found and "Extra inputs are not permitted" in found[key]
    assert await stored_jobs(bare.client) == 0
    image = await bare.client.post("/api/v1/images", json={"application": "hello", "forse": 1})
    assert "forse" in problems(image)


async def test_a_dry_run_returns_every_job_and_jdl_and_stores_nothing(bare: Running) -> None:
    body = {"application": "hello", "parameters": {"jobs": 3, "first_run": 7, "message": "hi"}}
    response = await bare.client.post("/api/v1/submissions?dry_run=true", json=body)
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["dry_run"] is True and plan["job_count"] == 3 and plan["backend"] == "local"
    assert [job["parameters"]["run"] for job in plan["jobs"]] == [7, 8, 9]
    jdl = parse_jdl(plan["jobs"][2]["jdl"])
    assert jdl["JobName"] == plan["jobs"][2]["name"]
    assert plan["image_id"] and plan["image_status"] is None  # it would be built first
    assert await stored_jobs(bare.client) == 0
    assert (await bare.client.get("/api/v1/images")).json() == []

    bad = {"application": "showermodel", "parameters": {"energy_min": 50, "energy_max": 5}}
    refused = await bare.client.post("/api/v1/submissions?dry_run=true", json=bad)
    assert "parameters.energy_max" in problems(refused)


async def test_a_submission_refused_after_its_image_claim_leaves_no_claim(
    bare: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another submission of the user's takes the last room in their queue between the first
    # check and the one in the transaction, after the image (to be built) is claimed in it.
    first_check = submissions.check_queue_room

    async def full_when_storing(
        settings: OperationSettings,
        session: AsyncSession,
        owner_id: int,
        adding: int,
        *,
        lock: bool = False,
    ) -> None:
        if lock:
            raise TooMany("the queue filled up meanwhile")
        await first_check(settings, session, owner_id, adding)

    monkeypatch.setattr(submissions, "check_queue_room", full_when_storing)
    refused = await bare.client.post("/api/v1/submissions", json={"application": "hello"})
    assert refused.status_code == 429, refused.text
    assert "filled up meanwhile" in refused.json()["detail"]
    async with bare.platform.reading() as session:
        assert await session.scalar(select(func.count()).select_from(Image)) == 0
        assert await session.scalar(select(func.count()).select_from(ImageUser)) == 0
    assert bare.platform.images.started == 0 and not bare.platform.images.tasks
    assert (await bare.client.get("/api/v1/images")).json() == []
    assert await stored_jobs(bare.client) == 0
