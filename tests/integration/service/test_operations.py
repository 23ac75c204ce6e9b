"""Operating the server: /readyz against real databases, /metrics scraped and parsed, and the
request id of every request."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import text

from concordia.db.migrate import schema_heads
from concordia.settings import Settings
from concordia.web.app import create_app
from tests.conftest import Running, make_settings, running_app, seed_images
from tests.database import PG_ADMIN
from tests.integration.web.test_api import submit, wait_submission

pytestmark = pytest.mark.sql

GENERATED_ID = re.compile(r"[0-9a-f]{32}")


async def scrape(client: httpx.AsyncClient) -> dict[str, list[Sample]]:
    """/metrics parsed by Prometheus's own parser: the samples of each metric family."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f.samples for f in text_string_to_metric_families(response.text)}


def value(families: dict[str, list[Sample]], family: str, sample: str, **labels: str) -> float:
    """One sample's value; 0 for a labelled series not seen yet (as Prometheus reads it)."""
    found = [
        s.value
        for s in families.get(family, [])
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) <= 1, found
    return found[0] if found else 0.0


async def test_ready_once_started_and_not_before(settings: Settings) -> None:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        before = await client.get("/readyz")  # the lifespan has not run: nothing started
        assert before.status_code == 503
        assert before.json() == {
            "status": "unavailable",
            "reason": "the platform is starting or stopping",
        }
        async with app.router.lifespan_context(app):
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "ready"
        after = await client.get("/readyz")
        assert after.status_code == 503
        assert (await client.get("/healthz")).status_code == 200  # alive all along


async def test_not_ready_when_the_schema_is_not_the_latest(app: Running) -> None:
    assert (await app.client.get("/readyz")).status_code == 200
    async with app.platform.writing() as session:
        await session.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    response = await app.client.get("/readyz")
    assert response.status_code == 503
    [latest] = schema_heads()
    assert latest != "0001"
    reason = response.json()["reason"]
    assert reason == f"the database schema is at 0001, not at the latest ({latest})", reason


@pytest.fixture
async def pg_database(tmp_path: Path, image_seed: Path) -> AsyncIterator[tuple[Settings, str]]:
    """Settings on a fresh PostgreSQL database of its own, and its name (to drop it)."""
    name = f"concordia_ready_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        yield seed_images(make_settings(tmp_path / "var", database_url=url), image_seed), name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.mark.postgres
async def test_not_ready_once_the_postgresql_database_is_gone(
    pg_database: tuple[Settings, str],
) -> None:
    settings, name = pg_database
    async with running_app(settings) as app:
        assert (await app.client.get("/readyz")).status_code == 200
        before = await scrape(app.client)
        assert value(before, "concordia_database_up", "concordia_database_up") == 1
        admin = await asyncpg.connect(PG_ADMIN)
        try:  # FORCE ends the platform's open connections too
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        response = await app.client.get("/readyz")
        assert response.status_code == 503
        reason = response.json()["reason"]
        assert reason.startswith("the database does not answer ("), reason
        assert name not in reason and "127.0.0.1" not in reason  # asked without signing in
        # The scrape still answers, with this process's metrics and the database down.
        after = await scrape(app.client)
        assert value(after, "concordia_database_up", "concordia_database_up") == 0
        assert "concordia_jobs" not in after
        assert value(after, "concordia_http_requests", "concordia_http_requests_total",
                     route="/readyz", status="503") >= 1  # fmt: skip


async def test_metrics_count_jobs_submissions_rounds_and_requests(app: Running) -> None:
    before = await scrape(app.client)
    sub = await submit(app.client, jobs=3, message="metrics")
    assert (await wait_submission(app.client, sub["id"]))["counts"] == {"Done": 3}
    # A request of a route with a parameter, and one that no route answers.
    assert (await app.client.get(f"/api/v1/jobs/{sub['job_ids'][0]}")).status_code == 200
    assert (await app.client.get("/no/such/page")).status_code == 404
    after = await scrape(app.client)

    jobs = {(s.labels["state"], s.labels["backend"]): s.value for s in after["concordia_jobs"]}
    assert jobs[("Done", "local")] == 3
    assert sum(jobs.values()) == 3  # a fresh database: these jobs only, none elsewhere
    assert {backend for _, backend in jobs} == {"local"}

    def delta(family: str, sample: str, **labels: str) -> float:
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    hist = "concordia_submission_seconds"
    assert delta(hist, f"{hist}_count") == 1
    assert delta(hist, f"{hist}_sum") > 0
    rounds = "concordia_reconcile_round_seconds"
    assert delta(rounds, f"{rounds}_count") >= 1
    assert value(after, rounds, f"{rounds}_bucket", le="+Inf") == value(
        after, rounds, f"{rounds}_count"
    )
    requests = "concordia_http_requests"
    sample = f"{requests}_total"
    assert delta(requests, sample, method="POST", route="/api/v1/submissions", status="201") == 1
    assert delta(requests, sample, method="GET", route="/api/v1/jobs/{job_id}", status="200") == 1
    assert delta(requests, sample, method="GET", route="other", status="404") == 1
    # The scrape before this one was counted; the path of the 404 is no label.
    assert delta(requests, sample, method="GET", route="/metrics", status="200") == 1
    routes = {s.labels["route"] for s in after[requests]}
    assert "/no/such/page" not in routes


async def test_a_rebuild_is_timed_by_outcome(app: Running) -> None:
    family, sample = "concordia_image_build_seconds", "concordia_image_build_seconds_count"
    before = value(await scrape(app.client), family, sample, outcome="ready")
    response = await app.client.post("/api/v1/images", json={"application": "hello", "force": True})
    assert response.status_code == 202, response.text
    url = f"/api/v1/images/{response.json()['image']['id']}"
    async with asyncio.timeout(300):
        while (image := (await app.client.get(url)).json())["status"] == "building":
            await asyncio.sleep(0.2)
    assert image["status"] == "ready", image["error"]
    after = await scrape(app.client)
    assert value(after, family, sample, outcome="ready") == before + 1
    assert value(after, family, "concordia_image_build_seconds_sum", outcome="ready") > 0


async def test_metrics_can_need_a_token_or_be_off(tmp_path: Path, image_seed: Path) -> None:
    guarded = make_settings(tmp_path / "a", metrics_token="s3cret-metrics")
    async with running_app(guarded) as app:
        anon = await app.client.get("/metrics")  # an API token is not the metrics token
        assert anon.status_code == 401
        assert anon.headers["www-authenticate"] == "Bearer"
        wrong = await app.client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert wrong.status_code == 401
        right = await app.client.get("/metrics", headers={"Authorization": "Bearer s3cret-metrics"})
        assert right.status_code == 200 and "concordia_jobs" in right.text
    off = make_settings(tmp_path / "b", metrics_enabled=False)
    async with running_app(off) as app:
        response = await app.client.get("/metrics")
        assert response.status_code == 404
        assert response.json() == {"detail": "metrics are disabled"}


async def test_every_response_has_a_request_id(app: Running) -> None:
    first = (await app.client.get("/api/v1/jobs")).headers["x-request-id"]
    second = (await app.client.get("/no/such/page")).headers["x-request-id"]
    assert GENERATED_ID.fullmatch(first) and GENERATED_ID.fullmatch(second)
    assert first != second


async def test_a_sane_incoming_request_id_is_kept(app: Running) -> None:
    given = "5f1c2a9e-0b7d-4c1e-9a2f-3d4e5f6a7b8c"
    response = await app.client.get("/api/v1/jobs", headers={"X-Request-ID": given})
    assert response.headers.get_list("x-request-id") == [given]


@pytest.mark.parametrize(
    "hostile",
    [
        "x" * 129,  # too long to log
        'a" 200 0.1ms\\nINFO forged',  # quotes, spaces, a backslash: a forged access line
        '{"level":"ERROR"}',  # JSON punctuation
        "id\tid",  # a tab
        "caf\u00e9",  # not ASCII
        "",  # empty
    ],
)
async def test_a_hostile_request_id_is_replaced(app: Running, hostile: str) -> None:
    response = await app.client.get("/healthz", headers={"X-Request-ID": hostile.encode()})
    [replaced] = response.headers.get_list("x-request-id")
    assert GENERATED_ID.fullmatch(replaced), replaced
