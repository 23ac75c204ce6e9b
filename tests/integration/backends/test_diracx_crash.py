"""`concordia serve` killed (SIGKILL) while it hands a batch to a real DiracX, then
restarted: every job reaches DiracX exactly once, and every job is followed to its end."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.database import fetch_value
from tests.diracx.fixtures import JANE, USER_GROUP, DiracX
from tests.diracx.site import Site, grid_nodes
from tests.integration.backends.test_diracx_backend import grid_server_env

pytestmark = pytest.mark.slow

JOBS = 40
#: The test site's nodes, side by side.
NODES = 3


@pytest.fixture
def live_server_env(tmp_path: Path, diracx: DiracX) -> dict[str, str]:
    # Chunks of 2: the hand-over of the batch takes 20 calls, a window the kills of these
    # tests land in even when a loaded machine slows the test's own looks at DiracX.
    return {
        **grid_server_env(tmp_path, diracx, JOBS),
        "CONCORDIA_DEFAULT_BACKEND": "diracx",
        "CONCORDIA_DIRACX_CHUNK_SIZE": "2",
    }


def in_diracx(diracx: DiracX, names: set[str]) -> list[dict[str, Any]]:
    """The DiracX jobs whose JobName is one of ``names`` (whatever their number)."""
    with diracx.client(JANE, USER_GROUP) as dx:
        rows: list[dict[str, Any]] = []
        page = 1
        while True:
            found = dx.post(
                "/api/jobs/search",
                params={"page": page, "per_page": 500},
                json={
                    "parameters": ["JobID", "JobName", "Status"],
                    "search": [{"parameter": "JobName", "operator": "in", "values": list(names)}],
                },
            )
            assert found.status_code in (200, 206), found.text
            rows += found.json()
            if found.status_code == 200:
                return rows
            page += 1


def all_jobs(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for page in range(1, JOBS // 100 + 2):
        answer = client.get("/api/v1/jobs", params={"per_page": 100, "page": page, **params})
        jobs += answer.json()["items"]
    return jobs


def total_in_diracx(diracx: DiracX) -> int:
    with diracx.client(JANE, USER_GROUP) as dx:
        answer = dx.post("/api/jobs/search", params={"per_page": 1}, json={"parameters": ["JobID"]})
    total = answer.headers.get("content-range", "").rpartition("/")[2]
    return int(total) if total.isdigit() else len(answer.json())


def client_of(server: LiveServer) -> httpx.Client:
    """A client of the live server, as its local user (its token is read again after a
    restart)."""
    headers = {"Authorization": f"Bearer {server.token}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


def submit_until_diracx_has_some(client: httpx.Client, diracx: DiracX) -> int:
    """Submit the batch; back once DiracX holds part of it. DiracX's job count before."""
    before = total_in_diracx(diracx)  # the session's DiracX holds other tests' jobs too
    made = client.post(
        "/api/v1/submissions", json={"application": "gridhello", "parameters": {"jobs": JOBS}}
    )
    assert made.status_code == 201, made.text
    deadline = time.monotonic() + 60
    while total_in_diracx(diracx) == before:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return before


def assert_each_job_once_and_done(
    client: httpx.Client, diracx: DiracX, workdir: Path, before: int
) -> None:
    # The grid as several nodes: the batch runs in a third of the time one node takes.
    with grid_nodes(diracx, workdir, NODES) as nodes:
        deadline = time.monotonic() + 240
        while (done := len(all_jobs(client, status="Done"))) < JOBS:
            for node in nodes:
                node.check()
            failed = all_jobs(client, status="Failed")
            assert not failed, [client.get(f"/api/v1/jobs/{j['id']}").json() for j in failed]
            assert time.monotonic() < deadline, f"{done} of {JOBS} done"
            time.sleep(1)
    jobs = [client.get(f"/api/v1/jobs/{j['id']}").json() for j in all_jobs(client)]
    assert len(jobs) == JOBS
    assert total_in_diracx(diracx) == before + JOBS  # none submitted twice, none lost
    rows = in_diracx(diracx, {f"{j['uuid']}.0" for j in jobs})
    assert {str(r["JobID"]) for r in rows} == {j["backend_ref"] for j in jobs}


def test_a_kill_during_the_hand_over_submits_each_job_once(
    live_server: LiveServer, diracx: DiracX, tmp_path: Path
) -> None:
    with client_of(live_server) as client:
        # Killed once DiracX has part of the batch, before Concordia has recorded it all.
        before = submit_until_diracx_has_some(client, diracx)
    live_server.kill(signal.SIGKILL)
    # The kill came mid-hand-over: part of the batch had no DiracX id recorded yet.
    sql = "SELECT count(*) FROM jobs WHERE backend_ref IS NULL"
    assert fetch_value(live_server.database_url, sql) > 0
    live_server.start()
    with client_of(live_server) as client:
        assert_each_job_once_and_done(client, diracx, tmp_path / "site", before)


def test_diracx_killed_mid_batch_and_restarted_holds_each_job_once(
    live_server: LiveServer, diracx: DiracX, tmp_path: Path
) -> None:
    with client_of(live_server) as client:
        before = submit_until_diracx_has_some(client, diracx)
        # DiracX crashes with part of the batch accepted, and answers lost on the way.
        with diracx.stopped(kill=True):
            time.sleep(3)  # Concordia's rounds meet a dead DiracX meanwhile
            refs = [
                client.get(f"/api/v1/jobs/{j['id']}").json()["backend_ref"]
                for j in all_jobs(client)
            ]
            assert None in refs  # the crash did come mid-batch
        assert_each_job_once_and_done(client, diracx, tmp_path / "site", before)


def test_restarted_while_diracx_is_down_concordia_follows_its_jobs_once_it_is_back(
    live_server: LiveServer, diracx: DiracX, site: Site
) -> None:
    before = total_in_diracx(diracx)
    with client_of(live_server) as client:
        made = client.post(
            "/api/v1/submissions", json={"application": "gridhello", "parameters": {"jobs": 5}}
        )
        ids = made.json()["job_ids"]
        deadline = time.monotonic() + 60
        while not all(client.get(f"/api/v1/jobs/{i}").json()["backend_ref"] for i in ids):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    with diracx.stopped():
        live_server.kill(signal.SIGKILL)
        live_server.start()  # its recovery meets a dead DiracX
        time.sleep(3)
    with client_of(live_server) as client:
        with site.running():
            deadline = time.monotonic() + 120
            while (done := len(all_jobs(client, status="Done"))) < len(ids):
                assert time.monotonic() < deadline, f"{done} of {len(ids)} done"
                time.sleep(1)
    assert total_in_diracx(diracx) == before + len(ids)  # none submitted again
