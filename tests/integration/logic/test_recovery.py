"""Durability: SIGKILL the real server while jobs run; the next start loses nothing."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.sql


def api(server: LiveServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=10
    )


def wait_for(
    client: httpx.Client, job_id: int, statuses: set[str], timeout: float = 30, *, runs: int = 1
) -> dict[str, Any]:
    """The job once in one of ``statuses`` in its ``runs``-th run (reschedules + 1)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in statuses and job["reschedule_count"] + 1 >= runs:
            return job
        time.sleep(0.1)
    history = [(h["status"], h["minor_status"]) for h in job["history"]]
    raise AssertionError(f"job {job_id} never reached {statuses} in {timeout} s: {history}")


def processes_become(server: LiveServer, expected: int, timeout: float = 15) -> int:
    """The count of the server's hello.sh shells once it is ``expected`` (or when time is
    up): a job is Running once bwrap is started, its shell appears a moment later on a
    loaded machine."""
    deadline = time.monotonic() + timeout
    while (count := hello_processes(server)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


def hello_processes(server: LiveServer) -> int:
    """Job shells running hello.sh under this server's data directory, counted from /proc
    (bwrap's own argv is not counted). Other tests' jobs run beside these (the suite's
    workers and its PostgreSQL pass): a shell counts when a process above it names this
    server's data directory (the bwrap that binds the job's directory)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _cmdline(entry)[:2] == [b"sh", b"hello.sh"]:
            count += _started_below(entry, os.fsencode(server.data_dir.absolute()))
    return count


def _cmdline(pid: str) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().split(b"\0")
    except (FileNotFoundError, NotADirectoryError, PermissionError, ProcessLookupError):
        return []


def _started_below(pid: str, data_dir: bytes) -> bool:
    """Whether a process above ``pid`` has ``data_dir`` in its arguments."""
    while pid not in ("0", "1"):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        pid = status.split("PPid:")[1].split()[0]
        if any(data_dir in arg for arg in _cmdline(pid)):
            return True
    return False


def test_jobs_running_at_sigkill_are_stalled_then_rescheduled(live_server: LiveServer) -> None:
    with api(live_server) as client:
        running = client.post(
            "/api/v1/submissions",
            json={"application": "hello", "parameters": {"jobs": 2, "sleep": 60}},
        ).json()
        queued = client.post(
            "/api/v1/submissions", json={"application": "hello", "parameters": {"jobs": 2}}
        ).json()
        for job_id in running["job_ids"]:
            assert wait_for(client, job_id, {"Running"})["isolated"] is True
        for job_id in queued["job_ids"]:  # two slots, both busy: they wait their turn
            assert wait_for(client, job_id, {"Waiting"}, timeout=10)["status"] == "Waiting"
    assert processes_become(live_server, 2) == 2

    live_server.kill(signal.SIGKILL)
    live_server.start()

    with api(live_server) as client:
        for job_id in running["job_ids"]:
            # Its second run: the restarted server answers before its first round has
            # adopted the jobs (a moment when the dead run still shows as Running).
            job = wait_for(client, job_id, {"Running"}, runs=2)
            history = [h["status"] for h in job["history"]]
            assert history.count("Stalled") == 1, history
            at = history.index("Stalled")
            assert history[at : at + 4] == ["Stalled", "Failed", "Rescheduled", "Received"]
            assert job["reschedule_count"] == 1
        # The reruns are the only job processes: the killed server's jobs died with it.
        assert processes_become(live_server, 2) == 2
        for job_id in running["job_ids"]:
            assert client.post(f"/api/v1/jobs/{job_id}/kill").json()["status"] == "Killed"
        # The queued jobs were neither lost nor duplicated: each ran once, to Done.
        for job_id in queued["job_ids"]:
            done = wait_for(client, job_id, {"Done"})
            assert [h["status"] for h in done["history"]].count("Running") == 1
            assert done["reschedule_count"] == 0
        assert client.get("/api/v1/jobs").json()["total"] == 4


def test_without_reschedules_left_a_stalled_job_fails(live_server: LiveServer) -> None:
    live_server.env["CONCORDIA_MAX_RESCHEDULES"] = "0"
    with api(live_server) as client:
        sub = client.post(
            "/api/v1/submissions", json={"application": "hello", "parameters": {"sleep": 60}}
        ).json()
        wait_for(client, sub["job_ids"][0], {"Running"})
    live_server.kill(signal.SIGKILL)
    live_server.start()
    with api(live_server) as client:  # the restarted worker's first round finds it gone
        job = wait_for(client, sub["job_ids"][0], {"Failed"})
        assert job["minor_status"] == "Stalled"
        assert [h["status"] for h in job["history"]][-2:] == ["Stalled", "Failed"]


def test_events_stream_job_changes_live(live_server: LiveServer) -> None:
    """A batch's news, many jobs a round (sent together when they come together): every
    job's statuses reach the stream, each job's in the order it went through them."""
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    jobs = 40

    def listen() -> None:
        headers = {"Authorization": f"Bearer {live_server.token}"}
        with httpx.stream(
            "GET", f"{live_server.url}/api/v1/events", headers=headers, timeout=60
        ) as r:
            event = ""
            done: set[int] = set()
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                    if event == "ready":
                        ready.set()
                elif line.startswith("data:") and event == "job":
                    seen.append(json.loads(line.split(":", 1)[1]))
                    if seen[-1]["status"] == "Done":
                        done.add(seen[-1]["id"])
                        if len(done) == jobs:
                            return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert ready.wait(10)
    with api(live_server) as client:
        sub = client.post(
            "/api/v1/submissions", json={"application": "hello", "parameters": {"jobs": jobs}}
        ).json()
    thread.join(60)
    assert not thread.is_alive(), "not every job's Done reached the stream"
    order = ["Received", "Checking", "Waiting", "Matched", "Running", "Completing", "Done"]
    for job_id in sub["job_ids"]:
        statuses = [e["status"] for e in seen if e["id"] == job_id]
        # One event per job per reconciler round: its status then, in order.
        assert statuses[0] == "Received" and statuses[-1] == "Done"
        assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)
