"""The CTA stand-in for real: its image built from Debian and PyPI, two jobs run in it."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from concordia.datalake.rucio import Rucio
from concordia.settings import Settings
from tests.conftest import Running, make_settings, running_app
from tests.rucio import RucioServer

pytestmark = pytest.mark.slow


async def test_showermodel_builds_and_two_jobs_make_results_and_plots(
    tmp_path: Path, rucio_server: RucioServer
) -> None:
    # Rootfs only: the formats are proven on the hello image; this build is big (~1.4 GB).
    # The data lake is there (off by default for showermodel): the last job stores its
    # photon file in the real Rucio.
    settings = make_settings(
        tmp_path / "var", image_formats=[], local_user=rucio_server.users[0],
        datalake_url=rucio_server.url, datalake_account=rucio_server.service,
        datalake_password=rucio_server.password(rucio_server.service),
        datalake_verify=rucio_server.ca, datalake_rse=rucio_server.posix_rse,
    )  # fmt: skip
    async with running_app(settings) as app:
        client = app.client
        parameters = {"jobs": 2, "first_run": 41, "showers": 3, "layout": "square-4"}
        # mmdebstrap of the scientific Python stack, pip: the first build takes minutes.
        view, jobs = await run_submission(client, parameters, timeout=900)
        image = (await client.get(f"/api/v1/images/{view['image_id']}")).json()
        assert image["status"] == "ready", image["error"]
        log = (await client.get(f"/api/v1/images/{view['image_id']}/log")).text
        assert "ShowerModel" in log
        tables = []
        for job in sorted(jobs, key=lambda j: j["id"]):
            logs = (await client.get(f"/api/v1/jobs/{job['id']}/logs?stream=stderr")).json()
            assert job["status"] == "Done", logs["data"]
            files = {
                f["path"]: f
                for f in (await client.get(f"/api/v1/jobs/{job['id']}/outputs")).json()["items"]
            }
            run = (await client.get(f"/api/v1/jobs/{job['id']}")).json()["parameters"]["run"]
            assert {
                f"showers_run{run}.csv",
                f"profile_run{run}.png",
                f"signal_run{run}.png",
            } <= set(files)
            assert f"photons_run{run}.npy" not in files  # the photon file is off by default
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
        # The same image (built once: ~15 min) runs the jobs that write the photon file.
        await check_photon_files(app, tmp_path)
        await check_data_lake(app, rucio_server, tmp_path)


async def check_data_lake(app: Running, rucio: RucioServer, tmp_path: Path) -> None:
    """A job whose submission chose the data lake: its photon file (the application's data)
    is in Rucio, in the submission's dataset with the job's metadata, and comes back through
    Concordia with the adler32 Rucio has; its other outputs stay with the job."""
    user = rucio.users[0]
    dataset = f"showermodel.t{tmp_path.name[-12:]}"
    parameters = {"showers": 2, "layout": "square-4", "first_run": 11, "energy_max": 100,
                  "photon_file": "arrival-times"}  # fmt: skip
    view, (job,) = await run_submission(
        app.client, parameters, timeout=300, datalake={"dataset": dataset}
    )
    assert view["datalake"]["did"] == f"user.{user}:{dataset}"
    assert job["status"] == "Done", job
    [file] = (await app.client.get(f"/api/v1/jobs/{job['id']}/datalake")).json()
    assert file["name"].endswith(".photons_run11.npy") and file["state"] == "A"
    got = await app.client.get(f"/api/v1/jobs/{job['id']}/datalake/{file['name']}")
    assert got.status_code == 200 and len(got.content) == file["bytes"] > 8192
    assert f"{zlib.adler32(got.content):08x}" == file["adler32"]
    assert got.content[:6] == b"\x93NUMPY"
    outputs = (await app.client.get(f"/api/v1/jobs/{job['id']}/outputs")).json()["items"]
    paths = {f["path"] for f in outputs}
    assert "showers_run11.csv" in paths and "photons_run11.npy" not in paths
    checker = Rucio(
        rucio.url, rucio.service, password=rucio.password(rucio.service), verify=rucio.ca
    )
    try:
        assert [f.name for f in await checker.files(f"user.{user}", dataset)] == [file["name"]]
        meta = await checker.metadata(f"user.{user}", file["name"])
    finally:
        await checker.aclose()
    assert meta["application"] == "showermodel" and str(meta["run"]) == "11"
    assert meta["image_id"] == view["image_id"] and str(meta["job_id"]) == str(job["id"])


async def check_photon_files(app: Running, tmp_path: Path) -> None:
    """Jobs with the photon file on write arrival times per shower and telescope, in a file
    that grows with the showers (the image is built: the jobs start at once)."""
    photons: dict[int, Path] = {}
    image_id = ""
    for showers, layout, run in ((2, "square-4", 7), (6, "square-4", 8), (2, "grid-9", 9)):
        parameters = {
            "showers": showers,
            "layout": layout,
            "first_run": run,
            "energy_max": 100,
            "photon_file": "arrival-times",
        }
        view, (job,) = await run_submission(app.client, parameters, timeout=300)
        image_id = view["image_id"]
        logs = [
            (await app.client.get(f"/api/v1/jobs/{job['id']}/logs?stream={stream}")).json()
            for stream in ("stdout", "stderr")
        ]
        assert job["status"] == "Done", (job, [log["data"] for log in logs])
        url = f"/api/v1/jobs/{job['id']}/outputs/photons_run{run}.npy"
        response = await app.client.get(url)
        assert response.status_code == 200, response.text
        photons[run] = tmp_path / f"photons_run{run}.npy"
        photons[run].write_bytes(response.content)
    found = {run: load_in_image(app.settings, image_id, path) for run, path in photons.items()}
    sizes = {run: path.stat().st_size for run, path in photons.items()}
    for run, (showers, telescopes) in {7: (2, 4), 8: (6, 4), 9: (2, 9)}.items():
        summary = found[run]
        # One row per shower and telescope, shower by shower.
        assert summary["pairs"] == [[s, t] for s in range(showers) for t in range(telescopes)]
        assert summary["runs"] == [run]
        assert summary["bins"] == 2048
        # Times: ns since the primary entered the atmosphere, the light of a ~100 km track.
        assert summary["finite"] and 1e5 < summary["t_min"] <= summary["t_max"] < 1e6
        assert summary["t_mean_in_window"]
        # Every photoelectron of the CSV's signal is in the histogram (or after it).
        assert summary["max_npe_mismatch"] < 1e-3
        assert summary["negative_bins"] == 0 and summary["total_npe"] > 0
    # The file grows with the showers and the telescopes: 8 kB per shower and telescope.
    assert sizes[8] > sizes[7] and sizes[9] > sizes[7]
    per_row = (sizes[8] - sizes[7]) / (4 * 4)
    assert 8192 < per_row < 8400
    assert 3_000_000 < 100 * 4 * per_row < 4_000_000  # a few MB for 100 showers on square-4


async def run_submission(
    client: httpx.AsyncClient,
    parameters: dict[str, Any],
    timeout: float,
    datalake: dict[str, str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Submit showermodel and wait for its jobs to end; the submission and its jobs."""
    body: dict[str, Any] = {"application": "showermodel", "parameters": parameters}
    if datalake is not None:
        body["datalake"] = datalake
    submitted = await client.post("/api/v1/submissions", json=body)
    assert submitted.status_code == 201, submitted.text
    view = submitted.json()
    deadline = time.monotonic() + timeout
    while True:
        jobs = (await client.get(f"/api/v1/jobs?submission={view['id']}")).json()["items"]
        if all(j["status"] in ("Done", "Failed") for j in jobs):
            return view, jobs
        assert time.monotonic() < deadline, jobs
        await asyncio.sleep(1)


#: Read in the image's own Python with its numpy, as a user of the file would.
READ_PHOTONS = """
import json, sys
import numpy as np
a = np.load(sys.argv[1])  # a structured array: no pickle needed
t = np.concatenate([a["t_first_ns"], a["t_mean_ns"]])
late = a["t_first_ns"] + a["pe"].shape[1] * 0.25
print(json.dumps({
    "pairs": a[["shower", "telescope"]].tolist(),
    "runs": np.unique(a["run"]).tolist(),
    "bins": int(a["pe"].shape[1]),
    "finite": bool(np.isfinite(t).all() and np.isfinite(a["pe"]).all()),
    "t_min": float(t.min()),
    "t_max": float(t.max()),
    "t_mean_in_window": bool(((a["t_mean_ns"] >= a["t_first_ns"])
                              & (a["t_mean_ns"] <= late)).all()),
    "max_npe_mismatch": float(np.max(np.abs(a["pe"].sum(axis=1) + a["npe_late"] - a["npe"])
                                     / np.maximum(a["npe"], 1.0))),
    "negative_bins": int((a["pe"] < 0).sum()),
    "total_npe": float(a["npe"].sum()),
}))
"""


def load_in_image(settings: Settings, image_id: str, path: Path) -> dict[str, Any]:
    rootfs = settings.images_dir / image_id / "rootfs"
    bwrap = shutil.which("bwrap")
    assert bwrap, "bubblewrap runs the image's python"
    cmd = [bwrap, "--ro-bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev"]
    cmd += ["--tmpfs", "/tmp", "--ro-bind", str(path), "/tmp/photons.npy"]  # / is read-only
    cmd += ["python3", "-c", READ_PHOTONS, "/tmp/photons.npy"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary
