"""The DIRAC job state machine: allowed walks pass, refused transitions raise."""

from __future__ import annotations

import pytest

from concordia.core.states import (
    FINAL_STATES,
    KILLABLE_STATES,
    RESCHEDULABLE_STATES,
    TRANSITIONS,
    InvalidTransition,
    JobStatus,
    check_path,
    check_transition,
)

S = JobStatus


def test_a_normal_job_walks_dirac_states_to_done() -> None:
    path = [S.CHECKING, S.WAITING, S.MATCHED, S.RUNNING, S.COMPLETING, S.DONE]
    assert check_path(S.RECEIVED, path) is S.DONE


def test_reschedule_walk_returns_to_received() -> None:
    assert check_path(S.FAILED, [S.RESCHEDULED, S.RECEIVED]) is S.RECEIVED


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.DONE, S.RUNNING),
        (S.RECEIVED, S.RUNNING),
        (S.DELETED, S.RECEIVED),
        (S.KILLED, S.DONE),
        (S.WAITING, S.DONE),
        (S.DONE, S.KILLED),
    ],
)
def test_refused_transitions_raise_with_the_allowed_ones(current: S, target: S) -> None:
    with pytest.raises(InvalidTransition) as info:
        check_transition(current, target)
    assert str(current) in str(info.value) and str(target) in str(info.value)
    assert info.value.current is current and info.value.target is target


def test_every_state_is_in_the_table_and_deleted_is_terminal() -> None:
    assert set(TRANSITIONS) == set(JobStatus)
    assert TRANSITIONS[S.DELETED] == frozenset()
    assert all(s.is_final for s in FINAL_STATES)
    assert not S.RUNNING.is_final


def test_kill_and_reschedule_sets_follow_the_table() -> None:
    assert S.RUNNING in KILLABLE_STATES and S.WAITING in KILLABLE_STATES
    assert S.DONE not in KILLABLE_STATES
    assert S.FAILED in RESCHEDULABLE_STATES and S.KILLED in RESCHEDULABLE_STATES
    assert S.DONE not in RESCHEDULABLE_STATES


def test_a_status_text_too_long_to_store_is_cut() -> None:
    """PostgreSQL refuses a minor status longer than its column, and the job's whole update
    with it (an internal error's message naming two long paths did): it is cut instead."""
    from datetime import UTC, datetime

    from concordia.backends.base import StatusUpdate
    from concordia.core.states import STATUS_TEXT_MAX
    from concordia.db.tables import Job

    update = StatusUpdate(
        uuid="u", status=S.FAILED, minor_status="Internal error: " + "x" * 900,
        application_status="y" * 300, timestamp=datetime.now(UTC),
    )  # fmt: skip
    assert len(update.minor_status) == len(update.application_status) == STATUS_TEXT_MAX
    assert update.minor_status.startswith("Internal error: x") and update.minor_status[-1] == "…"
    assert Job.__table__.c.minor_status.type.length == STATUS_TEXT_MAX  # type: ignore[attr-defined]
    short = StatusUpdate(uuid="u", status=S.DONE, minor_status="ok", timestamp=datetime.now(UTC))
    assert short.minor_status == "ok"
