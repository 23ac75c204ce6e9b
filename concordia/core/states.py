"""The DIRAC job state machine: DIRAC's states and the transitions DIRAC allows."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    RECEIVED = "Received"
    CHECKING = "Checking"
    WAITING = "Waiting"
    MATCHED = "Matched"
    RUNNING = "Running"
    COMPLETING = "Completing"
    DONE = "Done"
    FAILED = "Failed"
    KILLED = "Killed"
    STALLED = "Stalled"
    DELETED = "Deleted"
    RESCHEDULED = "Rescheduled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


S = JobStatus

#: Allowed next states, as in DIRAC's JobsStateMachine (Staging, Submitting and Completed,
#: which Concordia never enters, are left out).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.RECEIVED: frozenset({S.CHECKING, S.WAITING, S.FAILED, S.DELETED, S.KILLED}),
    S.CHECKING: frozenset({S.WAITING, S.RESCHEDULED, S.FAILED, S.DELETED, S.KILLED}),
    S.WAITING: frozenset({S.MATCHED, S.RESCHEDULED, S.DELETED, S.KILLED, S.FAILED}),
    S.MATCHED: frozenset({S.RUNNING, S.FAILED, S.RESCHEDULED, S.KILLED}),
    S.RUNNING: frozenset(
        {S.STALLED, S.DONE, S.FAILED, S.RESCHEDULED, S.COMPLETING, S.KILLED, S.RECEIVED}
    ),
    S.COMPLETING: frozenset({S.DONE, S.FAILED, S.STALLED, S.KILLED}),
    S.STALLED: frozenset({S.RUNNING, S.FAILED, S.KILLED}),
    S.RESCHEDULED: frozenset({S.WAITING, S.RECEIVED, S.DELETED, S.FAILED, S.KILLED}),
    S.DONE: frozenset({S.DELETED}),
    S.FAILED: frozenset({S.RESCHEDULED, S.DELETED}),
    # DIRAC's machine allows only Deleted after Killed, but its JobManager reschedules
    # killed jobs without consulting it; Concordia makes that path explicit.
    S.KILLED: frozenset({S.DELETED, S.RESCHEDULED}),
    S.DELETED: frozenset(),
}

#: States in which nothing more happens unless a user acts.
FINAL_STATES = frozenset({S.DONE, S.FAILED, S.KILLED, S.DELETED})
#: States in which the job occupies, or is about to occupy, a backend slot.
#: The longest minor or application status stored (the columns' size): a backend's or an
#: error's longer text is cut, as PostgreSQL refuses it whole (and the job's update with it).
STATUS_TEXT_MAX = 256
ACTIVE_STATES = frozenset({S.MATCHED, S.RUNNING, S.COMPLETING})
#: States a job may be killed from.
KILLABLE_STATES = frozenset(s for s, nxt in TRANSITIONS.items() if S.KILLED in nxt)
#: States a job may be rescheduled from.
RESCHEDULABLE_STATES = frozenset(s for s, nxt in TRANSITIONS.items() if S.RESCHEDULED in nxt)
#: States a user may reschedule a job from: not while it holds a slot (kill it first).
USER_RESCHEDULABLE_STATES = RESCHEDULABLE_STATES - ACTIVE_STATES


def status_text(text: str) -> str:
    """``text`` within STATUS_TEXT_MAX characters, an ellipsis where it was cut."""
    return text if len(text) <= STATUS_TEXT_MAX else text[: STATUS_TEXT_MAX - 1] + "…"


def one_of(states: frozenset[JobStatus]) -> str:
    """States in DIRAC's order as a user reads them: "Checking, Waiting, Failed or Killed"."""
    names = [status.value for status in JobStatus if status in states]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


class InvalidTransition(ValueError):
    """A transition DIRAC's state machine does not allow."""

    def __init__(self, current: JobStatus, target: JobStatus) -> None:
        self.current = current
        self.target = target
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none"
        super().__init__(f"a job cannot go from {current} to {target} (allowed: {allowed})")


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: JobStatus, target: JobStatus) -> JobStatus:
    """Return ``target`` if ``current -> target`` is allowed, else raise InvalidTransition."""
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(current, target)
    return target


def check_path(current: JobStatus, path: list[JobStatus]) -> JobStatus:
    """Check a walk of several transitions; return the last state."""
    for target in path:
        current = check_transition(current, target)
    return current
