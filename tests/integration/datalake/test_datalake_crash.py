"""A SIGKILL of Concordia while it uploads a local job's data to the real Rucio: after the
restart each job is Done and each of its files is in Rucio once, recorded once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from concordia.datalake.rucio import Rucio
from tests.conftest import LiveServer, free_port
from tests.integration.datalake.test_datalake import APP as LAKE_APP
from tests.integration.datalake.test_datalake import SCRIPT
from tests.rucio import RucioServer

pytestmark = pytest.mark.sql

# test_datalake's application, named apart, with outputs of up to a GB.
APP = (
    LAKE_APP.replace("name: lake", "name: big")
    .replace("title: Data lake test", "title: Big data outputs")
    .replace(
        "kb: {type: int, default: 64, min: 1, max: 4096}",
        "kb: {type: int, default: 1024, min: 1, max: 1048576}",
    )
)
JOBS, KB = 3, 256 * 1024
UPLOADING = "Uploading data to the data lake"


def server_for(tmp_path: Path, rucio: RucioServer, user: str) -> LiveServer:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "big.yaml").write_text(APP)
    (apps / "lake.sh").write_text(SCRIPT)
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    env = {
        **os.environ,
        "CONCORDIA_DATA_DIR": data_dir.name,
        "CONCORDIA_PORT": str(free_port()),
        "CONCORDIA_LOCAL_SLOTS": "3",
        "CONCORDIA_POLL_INTERVAL": "0.5",
        "CONCORDIA_APPLICATIONS_DIR": str(apps),
        "CONCORDIA_LOCAL_USER": user,
        "CONCORDIA_DATALAKE_URL": rucio.url,
        "CONCORDIA_DATALAKE_ACCOUNT": rucio.service,
        "CONCORDIA_DATALAKE_PASSWORD": rucio.password(rucio.service),
        "CONCORDIA_DATALAKE_VERIFY": rucio.ca,
        "CONCORDIA_DATALAKE_RSE": rucio.webdav_rse,
    }
    return LiveServer(data_dir=data_dir, port=int(env["CONCORDIA_PORT"]), env=env)


def api(server: LiveServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.token}"}
    return httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=30)


async def test_a_sigkill_mid_upload_resumes_and_stores_each_file_once(
    tmp_path: Path, rucio_server: RucioServer
) -> None:
    user = rucio_server.users[0]
    server = server_for(tmp_path, rucio_server, user)
    server.start()
    try:
        with api(server) as client:
            body = {"application": "big", "parameters": {"jobs": JOBS, "kb": KB}}
            sub = client.post("/submissions", json=body).json()
            deadline = time.monotonic() + 120
            while True:  # the first upload under way: killed there
                jobs = [client.get(f"/jobs/{j}").json() for j in sub["job_ids"]]
                if any(j["minor_status"] == UPLOADING for j in jobs):
                    break
                assert time.monotonic() < deadline, jobs
                time.sleep(0.01)
        server.kill(signal.SIGKILL)
        uploading_when_killed = [j["id"] for j in jobs if j["minor_status"] == UPLOADING]
        assert uploading_when_killed

        server.start()
        with api(server) as client:
            deadline = time.monotonic() + 180
            while True:
                response = client.get(f"/submissions/{sub['id']}")
                assert response.status_code == 200, (response.status_code, response.text)
                if (view := response.json())["finished"]:
                    break
                assert time.monotonic() < deadline, view
                time.sleep(0.2)
            assert view["counts"] == {"Done": JOBS}, view
            listed = {j: client.get(f"/jobs/{j}/datalake").json() for j in sub["job_ids"]}
            for job_id in uploading_when_killed:  # resumed, not stalled and run again
                job = client.get(f"/jobs/{job_id}").json()
                assert job["reschedule_count"] == 0, job
                assert "Stalled" not in [h["status"] for h in job["history"]], job
        assert all(len(files) == 1 for files in listed.values()), listed
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill(signal.SIGTERM)

    checker = Rucio(
        rucio_server.url, rucio_server.service,
        password=rucio_server.password(rucio_server.service), verify=rucio_server.ca,
    )  # fmt: skip
    try:
        in_rucio = await checker.files(f"user.{user}", view["datalake"]["dataset"])
    finally:
        await checker.aclose()
    names = sorted(f.name for f in in_rucio)
    assert names == sorted(files[0]["name"] for files in listed.values())
    assert all(f.bytes == KB * 1024 and f.state == "A" for f in in_rucio)
