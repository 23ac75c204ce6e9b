"""What DiracX's answers tell of jobs: a poll's search, each job's new status-history entries
as Concordia's status updates, and whom each job runs as (kept in its ref's state)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from concordia.backends.base import BackendRef, Owner, StatusUpdate
from concordia.backends.grid_images import exit_code_of
from concordia.core.states import JobStatus

#: Polls ask for jobs updated since the last poll minus this (DiracX's clock may differ).
POLL_MARGIN = timedelta(seconds=5)
#: DIRAC states a Concordia job passes itself before it reaches DiracX: there, they are
#: steps of its Waiting (DiracX's minor statuses and sources say which).
_BEFORE_US = {JobStatus.RECEIVED, JobStatus.CHECKING}
_SEARCH_FIELDS = [
    "JobID", "JobName", "Status", "MinorStatus", "ApplicationStatus", "Site", "LoggingInfo",
]  # fmt: skip
#: What DIRAC says of a job not at a site yet.
_NO_SITE = frozenset({"", "ANY", "Unknown"})


def news_search(job_ids: list[int], since: datetime | None) -> dict[str, Any]:
    """A poll's search for these jobs: what news() reads of them, of those that changed
    since the owner's last poll if there was one."""
    search: list[dict[str, Any]] = [{"parameter": "JobID", "operator": "in", "values": job_ids}]
    if since is not None:  # only what changed since (clocks drift: a margin)
        search.append(
            {
                "parameter": "LastUpdateTime",
                "operator": "gt",
                # DiracX's own form: UTC, no offset.
                "value": (since - POLL_MARGIN).strftime("%Y-%m-%d %H:%M:%S"),
            }
        )
    return {"parameters": _SEARCH_FIELDS, "search": search}


def news(ref: BackendRef, row: dict[str, Any]) -> list[StatusUpdate]:
    """The history entries Concordia has not seen yet, as updates with DiracX's minor status
    and source (its Received and Checking as steps of Concordia's Waiting)."""
    history = row.get("LoggingInfo") or []
    seen = int(ref.state.get("seen", 0))
    # Where it runs, once matched (the data lake records it with the job's files).
    site = str(row.get("Site") or "")
    where = {} if site in _NO_SITE else {"site": site}
    updates = []
    for index, entry in enumerate(history[seen:], start=seen):
        try:
            status = JobStatus(entry["Status"])
        except (KeyError, ValueError):
            continue
        if index and _step(history[index - 1]) == _step(entry):
            continue  # the application status alone changed (the wrapper's word): no step
        minor, application = (
            str(entry.get("MinorStatus", "")),
            str(entry.get("ApplicationStatus", "")),
        )
        # The job wrapper's word on its command, as a local job's: its exit code and why.
        code = exit_code_of(application) if status.is_final else None
        if code is not None and status == JobStatus.FAILED:
            minor = application
        updates.append(
            StatusUpdate(
                uuid=ref.uuid,
                status=JobStatus.WAITING if status in _BEFORE_US else status,
                minor_status=minor,
                application_status=application,
                exit_code=code,
                timestamp=_when(entry.get("StatusTime")),
                source=str(entry.get("Source") or ""),
                state={"seen": index + 1, **where},
            )
        )
    ref.state["seen"] = len(history)
    return updates


def _step(entry: dict[str, Any]) -> tuple[object, object]:
    """What a history entry says of the job's state: its status and minor status."""
    return entry.get("Status"), entry.get("MinorStatus")


def _when(value: object) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return datetime.now(UTC)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.now(UTC)


def by_owner(refs: list[BackendRef]) -> dict[Owner, dict[int, BackendRef]]:
    """The jobs by whom they run as in DiracX, each by its DiracX id."""
    jobs: dict[Owner, dict[int, BackendRef]] = defaultdict(dict)
    for ref in refs:
        jobs[owner_of(ref)][int(ref.ref)] = ref
    return jobs


def owner_of(ref: BackendRef) -> Owner:
    """Whom a job runs as in DiracX: its owner, VO and DIRAC group (kept in its state)."""
    return Owner(ref.state.get("owner", ""), ref.state.get("vo", ""), ref.state.get("group", ""))
