"""Dispatch on PostgreSQL, where workers run side by side: a job another worker took while
this one chose from the queue is not taken a second time."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from concordia.core.states import JobStatus
from concordia.db.engine import make_engine
from concordia.db.tables import Job
from concordia.logic import dispatch
from concordia.logic.job_specs import RoundMemory
from concordia.settings import Settings
from tests.database import ON_POSTGRESQL
from tests.integration.logic.test_adoption import SLOT, assign, status_of, worker

pytestmark = [
    pytest.mark.sql,
    pytest.mark.skipif(
        not ON_POSTGRESQL, reason="slots are PostgreSQL's: on SQLite one worker runs at a time"
    ),
]
OTHER = SLOT + 1


async def test_a_job_another_worker_took_meanwhile_is_left_to_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue is read without locks to share it fairly; a job in it may be another
    worker's by the time this one locks what it chose. Taken again, it would run twice, in
    the same directory (a crash test saw one run fail as the other's start emptied it)."""
    async with worker(settings) as (platform, job_id):
        # In the shared queue: Waiting, no worker, not handed over.
        await assign(platform, job_id, None, status=JobStatus.WAITING.value, backend_ref=None)
        chosen = dispatch.held_by_owner

        async def other_worker_takes_it(*args: Any, **kwargs: Any) -> Any:
            # Between this worker's read of the queue and its lock: the other commits.
            engine = make_engine(settings.database_url)
            try:
                async with engine.begin() as connection:
                    await connection.execute(
                        update(Job)
                        .where(Job.id == job_id)
                        .values(worker=OTHER)  # its own now, to be handed over
                    )
            finally:
                await engine.dispose()
            return await chosen(*args, **kwargs)

        started: list[int] = []

        async def specs_for(*args: Any, **kwargs: Any) -> list[Any]:
            started.extend(job.id for job in args[3])  # what the round would start
            return []

        monkeypatch.setattr(dispatch, "held_by_owner", other_worker_takes_it)
        monkeypatch.setattr(dispatch, "specs_for", specs_for)
        await dispatch.dispatch_round(
            platform, RoundMemory(), "local", platform.backends["local"],
            room=2, being_handed=set(), last_before_start=0,
        )  # fmt: skip
        assert started == []
        assert await status_of(platform, job_id) == (JobStatus.WAITING.value, OTHER)
