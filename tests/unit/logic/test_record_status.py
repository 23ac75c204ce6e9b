"""Where every status is written (logic.jobs.record_status): texts cut, history kept."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.states import STATUS_TEXT_MAX, JobStatus
from concordia.db.tables import Job
from concordia.logic.jobs import HISTORY_KEY, record_status


def test_a_status_text_made_by_concordia_itself_is_cut_where_it_is_written() -> None:
    """A data-lake or internal error's message becomes a minor status through logic, not a
    backend's StatusUpdate: record_status, where every status is written, cuts it too."""
    session = AsyncSession()  # unbound: record_status only adds to the transaction's info
    job = Job(id=1, status=JobStatus.COMPLETING.value, minor_status="", application_status="")
    record_status(
        session, job, JobStatus.FAILED, minor="data lake: " + "x" * 900, source="DataLake"
    )
    assert len(job.minor_status) == STATUS_TEXT_MAX and job.minor_status.endswith("…")
    [row] = session.info[HISTORY_KEY]
    assert row["minor_status"] == job.minor_status
    assert job.status == JobStatus.FAILED.value
