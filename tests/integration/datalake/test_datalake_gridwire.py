"""A backend that stores data itself (as DiracX's wrapper does), against the fake data lake:
its jobs are told where their data go, and Concordia registers only what the wrapper's
manifest names of the job's own; no manifest, or another's names, fail the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from concordia.backends.base import Backend, JobSpec
from concordia.db.tables import Job
from concordia.logic import datalake_uploads
from concordia.logic.errors import Conflict
from concordia.settings import ServerSettings, Settings
from tests.conftest import running_app
from tests.fakes.datalake import FakeLake
from tests.integration.datalake.test_datalake import FINAL, settings_with_app
from tests.integration.web.test_api import wait_status

pytestmark = pytest.mark.real

APP = """\
name: wired
title: Stored by its backend
command: "sh wired.sh {manifest}"
input_files: [wired.sh]
outputs: ["result.txt", "data-*.bin", "concordia-datalake.json"]
datalake:
  default: true
  data: ["data-*.bin"]
parameters:
  manifest: {type: enum, choices: [none, foreign], default: none}
"""
# What a payload could do: write a manifest of its own naming another job's file.
SCRIPT = """\
#!/bin/sh
echo small > result.txt
head -c 1000 /dev/zero > data-1.bin
if [ "$1" = foreign ]; then
  echo '[{"name": "wired.1.0.deadbeef.data-1.bin", "file": "data-1.bin", "bytes": 1000,
    "adler32": "03e80001", "url": "https://elsewhere/x"}]' > concordia-datalake.json
fi
"""


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values = {"datalake_sandbox_max_bytes": 4096} | overrides
    return settings_with_app(tmp_path, "wired", APP, SCRIPT, **values)


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        ("none", "data lake: the job came back without concordia-datalake.json"),
        ("foreign", "names 'wired.1.0.deadbeef.data-1.bin', not a file of this job"),
    ],
)
async def test_a_job_whose_backend_stores_its_data_registers_only_its_own(
    tmp_path: Path, one_rse_lake: FakeLake, sent: list[JobSpec], manifest: str, why: str
) -> None:
    async with running_app(settings(tmp_path)) as app:
        made = await app.client.post(
            "/api/v1/submissions",
            json={"application": "wired", "parameters": {"manifest": manifest}},
        )
        assert made.status_code == 201, made.text
        sub = made.json()
        [job_id] = sub["job_ids"]
        job = await wait_status(app.client, job_id, FINAL)
        assert job["status"] == "Failed" and why in job["minor_status"], job
        assert "Uploading data to the data lake" in [h["minor_status"] for h in job["history"]]
        assert (await app.client.get(f"/api/v1/jobs/{job_id}/datalake")).json() == []
        assert one_rse_lake.files_ == {}

        # What the backend was told: the RSE's address, the scope, the job's own names.
        [spec] = [s for s in sent if s.job_id == job_id]
        assert spec.datalake == {
            "url": "https://test_disk.invalid/lake",
            "scope": "user.local",
            "names": f"wired.{sub['id']}.0.{job['uuid'][:8]}.",
            "data": ["data-*.bin"],
            "sandbox_max_bytes": 4096,
        }
        # A submission without the data lake: nothing said of it.
        hello = await app.client.post("/api/v1/submissions", json={"application": "hello"})
        [hello_id] = hello.json()["job_ids"]
        assert (await wait_status(app.client, hello_id, FINAL))["status"] == "Done"
        [plain] = [s for s in sent if s.job_id == hello_id]
        assert plain.datalake is None


async def test_a_sandbox_not_fetched_at_first_is_fetched_again_without_a_restart(
    tmp_path: Path, one_rse_lake: FakeLake, sent: list[JobSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose sandbox its backend would not give (DiracX down) is not left Completing
    until the next start: the worker asks again at its next timed poll."""
    fetch = datalake_uploads.fetch_outputs
    refused: list[int] = []

    async def unanswered_twice(
        settings: ServerSettings, backends: dict[str, Backend], job: Job
    ) -> None:
        if len(refused) < 2:
            refused.append(job.id)
            raise Conflict("the backend did not answer")
        await fetch(settings, backends, job)

    monkeypatch.setattr(datalake_uploads, "fetch_outputs", unanswered_twice)
    monkeypatch.setattr(datalake_uploads, "FETCH_TRIES", 1)
    async with running_app(settings(tmp_path)) as app:
        made = await app.client.post(
            "/api/v1/submissions", json={"application": "wired", "parameters": {}}
        )
        [job_id] = made.json()["job_ids"]
        job = await wait_status(app.client, job_id, FINAL)
    assert refused == [job_id, job_id]
    # Fetched at last: what came back is judged (this job's wrapper wrote no manifest).
    assert job["status"] == "Failed" and "without concordia-datalake.json" in job["minor_status"]
