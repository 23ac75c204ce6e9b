"""Users share the local slots: one user's thousands of jobs do not keep another's waiting,
and the per-user limits on queued and running jobs hold (real server, real jobs)."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from concordia.db.tables import Job, JobStatusHistory, Submission
from concordia.logic.scheduling import user_limit_minor
from tests.conftest import make_settings, running_app

pytestmark = [pytest.mark.real, pytest.mark.sql]

APPLICATION = """\
name: {name}
title: {command}
command: {command}
cpu_time: 60
batch: {{count: jobs}}
parameters:
  jobs: {{type: int, default: 1, min: 1, max: 10000}}
"""


def _apps(tmp_path: Path) -> Path:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "noop.yaml").write_text(APPLICATION.format(name="noop", command="/bin/true"))
    (apps / "nap.yaml").write_text(APPLICATION.format(name="nap", command="/bin/sleep 0.3"))
    return apps


async def _submit(client: httpx.AsyncClient, app: str, jobs: int) -> httpx.Response:
    return await client.post(
        "/api/v1/submissions", json={"application": app, "parameters": {"jobs": jobs}}
    )


async def _finish(client: httpx.AsyncClient, submission: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not (await client.get(f"/api/v1/submissions/{submission}")).json()["finished"]:
        assert time.monotonic() < deadline, f"submission {submission} not over in {seconds} s"
        await asyncio.sleep(0.1)


async def test_one_users_200_jobs_do_not_keep_anothers_waiting(tmp_path: Path) -> None:
    """One slot; Alice submits 200 jobs, then Bob one: his starts after a few of hers (those
    the local backend had queued already), not after all 200."""
    settings = make_settings(tmp_path / "var", applications_dir=_apps(tmp_path), local_slots=1)
    async with (
        running_app(settings) as app,
        app.new_client("alice") as alice,
        app.new_client("bob") as bob,
    ):
        hers = await _submit(alice, "noop", 200)
        assert hers.status_code == 201, hers.text
        # Bob comes once her jobs are in the queue (as when he arrives after her).
        deadline = time.monotonic() + 30
        while (await alice.get("/api/v1/jobs?status=Received")).json()["total"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        his = await _submit(bob, "noop", 1)
        assert his.status_code == 201, his.text
        await _finish(bob, his.json()["id"], 60)
        [bob_job] = his.json()["job_ids"]
        async with app.platform.reading() as session:
            started = await session.scalar(select(Job.started_at).where(Job.id == bob_job))
            before = await session.scalar(
                select(func.count()).where(
                    Job.submission_id == hers.json()["id"], Job.started_at < started
                )
            )
        # 17: the slot and the 16 jobs the local backend queues behind it when Bob comes.
        assert before is not None and before <= 17 + 8, f"{before} of Alice's jobs went first"
        await _finish(alice, hers.json()["id"], 120)


async def test_submission_over_the_queued_limit_is_refused_and_creates_nothing(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path / "var", applications_dir=_apps(tmp_path), max_queued_jobs_per_user=5
    )
    async with (
        running_app(settings) as app,
        app.new_client("alice") as alice,
        app.new_client("bob") as bob,
    ):
        assert (await _submit(alice, "nap", 3)).status_code == 201
        refused = await _submit(alice, "nap", 3)
        assert refused.status_code == 429, refused.text
        detail = refused.json()["detail"]
        assert "limit of 5 jobs" in detail and "you have 3" in detail and "Wait" in detail
        async with app.platform.reading() as session:
            assert await session.scalar(select(func.count()).select_from(Job)) == 3
            assert await session.scalar(select(func.count()).select_from(Submission)) == 1
        # Per user: Bob's own five are welcome.
        assert (await _submit(bob, "nap", 5)).status_code == 201


async def test_running_limit_keeps_a_users_extra_jobs_waiting(tmp_path: Path) -> None:
    """Two slots, a limit of one running job a user: Alice's four run one after the other,
    the others saying why they wait."""
    settings = make_settings(
        tmp_path / "var", applications_dir=_apps(tmp_path), max_running_jobs_per_user=1
    )
    async with running_app(settings) as app, app.new_client("alice") as alice:
        response = await _submit(alice, "nap", 4)
        assert response.status_code == 201, response.text
        await _finish(alice, response.json()["id"], 60)
        async with app.platform.reading() as session:
            spans = (
                await session.execute(
                    select(Job.started_at, Job.ended_at, Job.status).order_by(Job.started_at)
                )
            ).all()
            minors = set(await session.scalars(select(JobStatusHistory.minor_status)))
        assert [status for _, _, status in spans] == ["Done"] * 4
        for (_, ended, _), (started, _, _) in pairwise(spans):
            assert started >= ended, f"two of Alice's jobs ran at once: {spans}"
        assert user_limit_minor(1) in minors
