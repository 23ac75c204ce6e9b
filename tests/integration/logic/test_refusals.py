"""Refusals say what would be accepted, and the same mistake gets the same answer."""

from __future__ import annotations

import httpx

from tests.conftest import Running
from tests.integration.web.test_api import submit, wait_submission


async def test_rescheduling_a_done_job_names_the_states_that_can_be(app: Running) -> None:
    sub = await submit(app.client)
    await wait_submission(app.client, sub["id"])
    [job] = sub["job_ids"]
    refused = await app.client.post(f"/api/v1/jobs/{job}/reschedule")
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert detail == (
        f"job {job} is Done: only Checking, Waiting, Failed or Killed jobs can be rescheduled"
    )


async def test_a_submission_page_that_is_no_number_is_not_found_as_a_job_page_is(
    signed_in: httpx.AsyncClient,
) -> None:
    for path in ("/jobs/abc", "/submissions/abc", "/submissions/abc/progress"):
        response = await signed_in.get(path)
        assert response.status_code == 404, (path, response.text)
        assert "Not found" in response.text and "validation" not in response.text.lower()
