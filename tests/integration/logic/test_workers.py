"""Web processes and the worker apart: `concordia serve --workers 2` beside `concordia worker`,
on one database (SQLite here; PostgreSQL in the suite's second pass), as an operator runs
them: jobs run, pages hear of them live, kills reach the worker; a second worker (a standby on
SQLite, running beside the first on PostgreSQL) takes over one that dies; no job runs twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import LiveServer, free_port
from tests.database import ON_POSTGRESQL, fetch_value

#: The tests marked sql hang on the database: its lease, its notifications between processes.
pytestmark = pytest.mark.slow


@dataclass
class Worker:
    """`concordia worker` as a real process."""

    env: dict[str, str]
    cwd: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "concordia", "worker"],
                env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process is not None and self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, f"no {text!r} in: {self.output()}"
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)


@dataclass
class Split:
    web: LiveServer
    workers: list[Worker] = field(default_factory=list)

    def worker(self, **env: str) -> Worker:
        """A worker started with the web processes' settings (and ``env``'s)."""
        n = len(self.workers)
        worker = Worker(
            {**self.web.env, **env},
            self.web.data_dir.parent,
            self.web.data_dir.parent / f"w{n}.log",
        )
        self.workers.append(worker)
        worker.start()
        return worker

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.web.token}"}
        return httpx.Client(base_url=self.web.url, headers=headers, timeout=30)


@pytest.fixture
def split(live_server: LiveServer) -> Iterator[Split]:
    """The fixture's server stopped: its data dir and database serve the split processes."""
    live_server.kill(signal.SIGTERM)
    web = LiveServer(live_server.data_dir, live_server.port, live_server.env)
    web.args = ("serve", "--workers", "2")
    setup = Split(web)
    try:
        yield setup
    finally:
        if web.process is not None and web.process.poll() is None:
            web.kill(signal.SIGTERM)
        for worker in setup.workers:
            worker.stop()


def submit(client: httpx.Client, jobs: int, sleep: float = 0.0) -> list[int]:
    parameters = {"jobs": jobs, "message": "split", "sleep": sleep}
    answer = client.post(
        "/api/v1/submissions", json={"application": "hello", "parameters": parameters}
    )
    assert answer.status_code == 201, answer.text
    return list(answer.json()["job_ids"])


def statuses(client: httpx.Client, ids: list[int]) -> dict[int, str]:
    return {i: client.get(f"/api/v1/jobs/{i}").json()["status"] for i in ids}


def wait_final(client: httpx.Client, ids: list[int], timeout: float = 120) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        now = statuses(client, ids)
        if all(s in {"Done", "Failed", "Killed"} for s in now.values()):
            return now
        assert time.monotonic() < deadline, f"not final: {now}"
        time.sleep(0.3)


def sandboxes_of(uuid: str) -> int:
    """Processes whose command line names the job's directory (its bwrap sandbox)."""
    count = 0
    for entry in os.listdir("/proc"):
        try:
            count += uuid.encode() in Path(f"/proc/{entry}/cmdline").read_bytes()
        except (FileNotFoundError, NotADirectoryError, PermissionError, ProcessLookupError):
            continue
    return count


def until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


class Events(threading.Thread):
    """The live event stream of a web process, read on a thread while the test goes on."""

    def __init__(self, split: Split) -> None:
        super().__init__(daemon=True)
        self.split, self.seen, self.ready = split, list[dict[str, Any]](), threading.Event()

    def run(self) -> None:
        with self.split.client() as client, client.stream("GET", "/api/v1/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: ready"):
                    self.ready.set()
                elif line.startswith("data: ") and line != "data: {}":
                    self.seen.append(json.loads(line[6:]))


@pytest.mark.sql
def test_web_processes_and_a_worker_run_jobs_live_and_kill_them(split: Split) -> None:
    split.worker().wait_for("worker running")
    split.web.start()
    # The banner says where the CLI finds its token, as `serve` alone does.
    assert f"The CLI uses the API token in {split.web.data_dir.resolve()}/api-token" in (
        split.web.output()
    )
    events = Events(split)
    events.start()
    assert events.ready.wait(30)
    with split.client() as client:
        quick = submit(client, 4)
        [slow] = submit(client, 1, sleep=60)
        assert set(wait_final(client, quick).values()) == {"Done"}
        # Done was recorded by the worker; the web process serving the stream heard of it.
        deadline = time.monotonic() + 15
        while {e["id"] for e in events.seen if e["status"] == "Done"} < set(quick):
            assert time.monotonic() < deadline, events.seen
            time.sleep(0.2)
        while statuses(client, [slow])[slow] != "Running":
            time.sleep(0.2)
        uuid = client.get(f"/api/v1/jobs/{slow}").json()["uuid"]
        until(lambda: sandboxes_of(uuid) > 0, "the long job runs in its sandbox")
        # Killed in a web process; the worker, which runs the job, stops it.
        assert client.post(f"/api/v1/jobs/{slow}/kill").json()["status"] == "Killed"
        until(lambda: sandboxes_of(uuid) == 0, "the killed job still runs")
        assert statuses(client, [slow])[slow] == "Killed"


@pytest.mark.sql
def test_a_second_worker_takes_over_from_one_that_dies(split: Split) -> None:
    """On SQLite the second waits as a standby; on PostgreSQL it runs beside the first, each
    taking jobs from the shared queue as it has room, and adopts the first's once it dies."""
    first = split.worker()
    first.wait_for("worker running")
    second = split.worker()
    second.wait_for("worker running" if ON_POSTGRESQL else "waiting as a standby")
    split.web.start()
    database = split.web.database_url
    with split.client() as client:
        # More than one worker takes: each holds its 2 slots' jobs and a queue of 16.
        ids = submit(client, 40, sleep=1.5)
        if ON_POSTGRESQL:  # both run jobs at once; the first is killed while it runs some
            running = "SELECT count(DISTINCT worker) FROM jobs WHERE status = 'Running'"
            until(lambda: fetch_value(database, running) == 2, "both workers run jobs")
            firsts = "SELECT count(*) FROM jobs WHERE status = 'Running' AND worker = 1"
            until(lambda: fetch_value(database, firsts) > 0, "the first worker runs jobs")
        else:
            deadline = time.monotonic() + 60
            while "Running" not in statuses(client, ids).values():
                assert time.monotonic() < deadline
                time.sleep(0.1)
        first.stop(signal.SIGKILL)  # mid-batch
        second.wait_for("worker running")
        final = wait_final(client, ids)
        # The jobs the first worker was running were found stalled and run again.
        assert set(final.values()) == {"Done"}, final
        assert client.get("/api/v1/jobs").json()["total"] == 40  # each job once
        stalled = 0
        for job_id in ids:
            history = client.get(f"/api/v1/jobs/{job_id}").json()["history"]
            assert [h["status"] for h in history].count("Done") == 1, history
            for entry in history:
                if entry["status"] == "Stalled":  # the process named: the worker that died
                    assert (
                        entry["minor_status"] == "Job process lost: worker 1 stopped while it ran"
                    )
                    stalled += 1
        assert stalled > 0, "no job of the killed worker was taken over"
        # The worker that took them over says so.
        assert "adopted" in second.output() and "job(s) of worker 1, gone: " in second.output()
    second.stop()  # SIGTERM: a clean stop, as systemd's
    assert second.process is not None and second.process.returncode == 0, second.output()
    assert "worker stopped" in second.output()


@pytest.mark.sql
def test_serve_does_not_start_beside_a_worker(split: Split) -> None:
    split.worker().wait_for("worker running")
    other = split.worker()
    other.wait_for("worker running" if ON_POSTGRESQL else "waiting as a standby")
    other.stop()  # stopped while it runs, or waits
    assert other.process is not None and other.process.returncode == 0, other.output()
    alone = subprocess.run(
        [sys.executable, "-m", "concordia", "serve"],
        env=split.web.env, cwd=split.web.data_dir.parent, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert alone.returncode != 0
    assert "start `concordia serve --workers N` beside it" in alone.stdout + alone.stderr


def scrape(url: str) -> dict[str, list[Sample]]:
    """A /metrics parsed by Prometheus's own parser: the samples of each metric family."""
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f.samples for f in text_string_to_metric_families(response.text)}


def sample(families: dict[str, list[Sample]], name: str) -> float:
    [value] = [s.value for samples in families.values() for s in samples if s.name == name]
    return value


def test_the_worker_serves_its_metrics_beside_the_web_processes(split: Split) -> None:
    port = free_port()
    split.worker(CONCORDIA_WORKER_METRICS_PORT=str(port)).wait_for("worker running")
    split.web.start()
    worker_metrics = f"http://127.0.0.1:{port}/metrics"
    rounds = sample(scrape(worker_metrics), "concordia_reconcile_round_seconds_count")
    # The worker's reconciler goes round (every poll interval when idle): its scrape says so.
    until(
        lambda: sample(scrape(worker_metrics), "concordia_reconcile_round_seconds_count") > rounds,
        "the worker's round count does not grow",
    )
    assert "concordia_http_requests" not in scrape(worker_metrics)  # the web's, not its own
    web = scrape(f"{split.web.url}/metrics")
    assert "concordia_reconcile_round_seconds" not in web  # no rounds there: not a 0
    assert sample(web, "concordia_workers") == 1
    assert "concordia_http_requests" in web


@pytest.mark.sql
def test_readyz_tells_when_no_worker_holds_its_lease(split: Split) -> None:
    split.web.env["CONCORDIA_WORKER_ABSENCE_SECONDS"] = "1"
    worker = split.worker()
    worker.wait_for("worker running")
    split.web.start()
    with split.client() as client:
        assert client.get("/readyz", params={"workers": "true"}).status_code == 200
        worker.stop(signal.SIGKILL)

        def workers_gone() -> bool:
            return client.get("/readyz", params={"workers": "true"}).status_code == 503

        until(workers_gone, "/readyz?workers=true still ready with the worker dead")
        reason = client.get("/readyz", params={"workers": "true"}).json()["reason"]
        assert reason.startswith("no worker has held its lease for over 1 s"), reason
        assert client.get("/readyz").status_code == 200  # the pages still serve
        assert sample(scrape(f"{split.web.url}/metrics"), "concordia_workers") == 0
        # A worker back: ready again.
        split.worker().wait_for("worker running")
        assert client.get("/readyz", params={"workers": "true"}).status_code == 200


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, NotADirectoryError, PermissionError, ProcessLookupError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def running(pid: int) -> bool:
    try:  # a zombie has ended (its new parent reaps it when it gets to it)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_web_processes_end_when_their_parent_is_killed(split: Split) -> None:
    split.worker().wait_for("worker running")
    split.web.start()
    assert split.web.process is not None
    web = [
        pid
        for pid in children_of(split.web.process.pid)
        if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(web) == 2, web
    with split.client() as client:
        until(lambda: client.get("/readyz").status_code == 200, "the web processes serve")
    split.web.kill(signal.SIGKILL)  # as the OOM killer would
    try:
        # Orphans would serve on, out of systemd's stop, holding the port the next start needs.
        until(lambda: not any(running(pid) for pid in web), "web processes outlived their parent")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{split.web.url}/healthz", timeout=5)
    finally:
        for pid in filter(running, web):  # not left behind by a failure
            os.kill(pid, signal.SIGKILL)
