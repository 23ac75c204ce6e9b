"""The CTA stand-in for real: its image built from Debian and PyPI, two jobs run in it."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from pathlib import Path

import pytest

from tests.conftest import make_settings, running_app

# An application and its (big) image build: nothing of it depends on the database.
pytestmark = pytest.mark.one_database


async def test_showermodel_builds_and_two_jobs_make_results_and_plots(tmp_path: Path) -> None:
    # Rootfs only: the formats are proven on the hello image; this build is big (~1.4 GB).
    settings = make_settings(tmp_path / "var", image_formats=[])
    async with running_app(settings) as app:
        client = app.client
        body = {
            "application": "showermodel",
            "parameters": {"jobs": 2, "first_run": 41, "showers": 3, "layout": "square-4"},
        }
        submitted = await client.post("/api/v1/submissions", json=body)
        assert submitted.status_code == 201, submitted.text
        view = submitted.json()
        deadline = time.monotonic() + 900  # mmdebstrap of the scientific Python stack, pip
        while True:
            page = (await client.get(f"/api/v1/jobs?submission={view['id']}")).json()
            jobs = page["items"]
            if all(j["status"] in ("Done", "Failed") for j in jobs):
                break
            assert time.monotonic() < deadline, jobs
            await asyncio.sleep(1)
        image = (await client.get(f"/api/v1/images/{view['image_id']}")).json()
        assert image["status"] == "ready", image["error"]
        log = (await client.get(f"/api/v1/images/{view['image_id']}/log")).text
        assert "ShowerModel" in log
        tables = []
        for job in sorted(jobs, key=lambda j: j["id"]):
            logs = (await client.get(f"/api/v1/jobs/{job['id']}/logs?stream=stderr")).json()
            assert job["status"] == "Done", logs["data"]
            files = {
                f["path"]: f for f in (await client.get(f"/api/v1/jobs/{job['id']}/outputs")).json()
            }
            run = (await client.get(f"/api/v1/jobs/{job['id']}")).json()["parameters"]["run"]
            assert {
                f"showers_run{run}.csv",
                f"profile_run{run}.png",
                f"signal_run{run}.png",
            } <= set(files)
            table = (
                await client.get(f"/api/v1/jobs/{job['id']}/outputs/showers_run{run}.csv")
            ).text
            rows = list(csv.DictReader(io.StringIO(table)))
            assert len(rows) == 3  # one per shower
            for plot in (f"profile_run{run}.png", f"signal_run{run}.png"):
                png = (await client.get(f"/api/v1/jobs/{job['id']}/outputs/{plot}")).content
                assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
            tables.append(table)
        assert tables[0] != tables[1]  # seeds come from the run numbers: the two runs differ
