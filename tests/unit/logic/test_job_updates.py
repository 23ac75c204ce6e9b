"""How a poll's news is split into transactions: by job, each job's news whole and in order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from concordia.backends.base import StatusUpdate
from concordia.core.states import JobStatus
from concordia.logic.job_updates import per_write

START = datetime(2026, 12, 1, tzinfo=UTC)


def news(*uuids: str) -> list[StatusUpdate]:
    return [
        StatusUpdate(
            uuid=uuid,
            status=JobStatus.RUNNING,
            minor_status=f"step {n}",
            timestamp=START + timedelta(seconds=n),
        )
        for n, uuid in enumerate(uuids)
    ]


def test_each_jobs_news_stays_whole_and_in_order_within_a_group_of_jobs() -> None:
    updates = news("a", "b", "a", "c", "d", "b", "e", "c")
    groups = per_write(updates, jobs=2)
    assert [[u.uuid for u in group] for group in groups] == [
        ["a", "b", "a", "b"],
        ["c", "d", "c"],
        ["e"],
    ]
    assert sorted((u for g in groups for u in g), key=lambda u: u.timestamp) == updates
    for group in groups:
        assert group == sorted(group, key=lambda u: u.timestamp)


def test_no_news_is_no_transaction() -> None:
    assert per_write([], jobs=2) == []
