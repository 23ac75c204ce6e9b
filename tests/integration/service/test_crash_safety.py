"""Crash safety: a batch (200 local jobs, 60 grid jobs) while Concordia's processes are
SIGKILLed at random points (its submission, its hand-over, its jobs running) and restarted,
and PostgreSQL crashed and restarted under it: every job exists once, reaches its backend
once and ends. Two installations: `concordia serve` alone, and `serve --workers 1` beside
`concordia worker` (two side by side on PostgreSQL): its web process killed during the
submission, a worker during the hand-over and while the jobs run. Each suite pass crashes
its own database: SQLite under both installations, PostgreSQL in the second pass under the
split one, as deployed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from concordia.core.states import JobStatus
from tests.conftest import LiveServer, free_port, make_settings, seed_images
from tests.database import ON_POSTGRESQL
from tests.diracx.fixtures import DiracX
from tests.diracx.site import grid_nodes
from tests.integration.backends.test_diracx_backend import grid_server_env
from tests.integration.backends.test_diracx_crash import client_of, in_diracx, total_in_diracx
from tests.pg import PrivatePostgres, private_postgres

pytestmark = [pytest.mark.slow, pytest.mark.sql]

__all__ = ["private_postgres"]  # the fixture, found by pytest in this module
#: The batch of each backend: a grid job costs the test site and its DiracX about a second,
#: a local job a tenth of one.
JOBS = {"local": 200, "diracx": 60}
#: The installations, by what their three kills hit: `concordia serve`, or, apart, the web
#: process of `serve --workers 1` (during the submission) and `concordia worker` (during the
#: hand-over and while the jobs run).
KILLED = {"serve": ("serve", "serve", "serve"), "web+worker": ("web", "worker", "worker")}
#: On PostgreSQL, the split installation alone: the one its deployment runs (docs/deployment.md);
#: `serve` alone is the embedded default, crashed on SQLite.
INSTALLATIONS = ["web+worker"] if ON_POSTGRESQL else list(KILLED)
#: The split installation's workers: on PostgreSQL two run side by side (the kills hit the
#: first; the other adopts its jobs, or it does on its restart); on SQLite one at a time.
WORKERS = ("worker", "worker2") if ON_POSTGRESQL else ("worker",)
MAX_RESCHEDULES = 1  # low: a job stalled by two kills fails, and the test sees that path too
#: A replay: CONCORDIA_CRASH_SEED=<the seed a failure printed>.
SEED_VARIABLE = "CONCORDIA_CRASH_SEED"
STALLED = ("Failed", "Stalled", "StalledJobAgent")  # a job lost with its process
#: Test-site workers: the grid runs jobs side by side, as a grid of several nodes does.
SITE_WORKERS = 3
#: The local jobs' slots, across the workers, and each job's sleep (s), by installation.
#: Killing `serve` stops the jobs with it; killing the split installation's web process does
#: not, and the test (watching through that process) is blind till it is back, in about 4 s
#: (6 under the suite's load). Its batch lasts some 25 s, or the kills planned for the
#: hand-over and the run would find it ended.
LOCAL_SLOTS = 4
JOB_SLEEP = {"serve": 0.1, "web+worker": 0.4}
#: A worker that exits is started again this long after (its unit's RestartSec, shortened).
RESTART_SECONDS = 1.0


@dataclass
class Story:
    """The seed and what was done when, for every failure message (a failure is replayed
    with the same seed)."""

    seed: int
    started: float = field(default_factory=time.monotonic)
    events: list[str] = field(default_factory=list)
    #: Called at each step of a wait: what must stop it at once (a test site's failure).
    checks: list[Callable[[], None]] = field(default_factory=list)

    def __call__(self, event: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:6.1f}s {event}")

    def check(self) -> None:
        for check in self.checks:
            check()

    def __str__(self) -> str:
        return f"{SEED_VARIABLE}={self.seed}\n  " + "\n  ".join(self.events)


class Serve:
    """`concordia serve` (or `serve --workers 1`: one web process, no supervisor between):
    SIGKILLed, then started again as a user or its unit would."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server

    def crash(self) -> None:
        self.server.kill(signal.SIGKILL)

    def start(self) -> None:
        self.server.start(timeout=60)

    def stop(self) -> None:
        if self.server.process is not None and self.server.process.poll() is None:
            self.server.kill(signal.SIGTERM)

    def exit_code(self) -> int | None:
        return self.server.process.poll() if self.server.process is not None else None

    def pid(self) -> int | None:
        return self.server.process.pid if self.server.process is not None else None


class WorkerProcess:
    """`concordia worker` as its systemd unit runs it (Restart=always): started again when it
    exits (a worker whose database went away exits 75), and SIGKILLed by the test."""

    def __init__(self, env: dict[str, str], cwd: Path, story: Story, name: str) -> None:
        self.env, self.cwd, self.story = env, cwd, story
        self.log = cwd / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        threading.Thread(target=self._supervise, daemon=True).start()

    def _spawn(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "concordia", "worker"],
                env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def _supervise(self) -> None:
        while not self._stopped.wait(RESTART_SECONDS):
            with self._lock:
                if self.process is not None and (code := self.process.poll()) is not None:
                    self.story(f"{self.log.stem} exited {code}: started again, as by its unit")
                    self._spawn()

    def _output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> None:
        """Started, and running the work (not waiting as a standby)."""
        runs = self._output().count("worker running")
        with self._lock:
            self._spawn()
        deadline = time.monotonic() + 60
        while self._output().count("worker running") == runs:
            assert time.monotonic() < deadline, self._output()
            time.sleep(0.1)

    def crash(self) -> None:
        with self._lock:
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None  # not the supervisor's to start: the test starts it

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout=30)

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


Process = Serve | WorkerProcess


@dataclass
class Installation:
    """One Concordia's processes, by kind, on one database."""

    processes: dict[str, Process]
    web: LiveServer
    story: Story
    #: The batch's jobs.
    jobs: int
    #: Called with the kind of process right before its kill (e.g. to see jobs run) and
    #: right after (e.g. to see that its jobs died with it).
    before_kill: Callable[[str], None] = lambda kind: None
    after_kill: Callable[[str], None] = lambda kind: None

    def crash(self, kind: str, why: str) -> None:
        self.before_kill(kind)
        self.processes[kind].crash()
        self.story(f"SIGKILL {kind} ({why})")
        self.after_kill(kind)
        try:
            self.processes[kind].start()
        except (RuntimeError, AssertionError) as exc:
            code = self.processes[kind].exit_code()
            message = f"{kind} did not start again (exit {code}): {exc}\n{self.story}"
            raise AssertionError(message) from exc
        self.story(f"{kind} restarted")

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The database URL: SQLite in the data dir, or, in the suite's PostgreSQL pass, a
    database of a private PostgreSQL cluster (this test crashes it: never the machine's
    shared server)."""
    if not ON_POSTGRESQL:
        yield f"sqlite+aiosqlite:///{tmp_path / 'var' / 'concordia.db'}"
        return
    cluster: PrivatePostgres = request.getfixturevalue("private_postgres")
    with cluster.database() as url:
        yield url


def database_restarter(
    request: pytest.FixtureRequest, database: str
) -> Callable[[float], None] | None:
    """How to crash the database server and start it again after some seconds down. None
    for SQLite: it is no server of its own, a file in the process, and "the database
    restarted" means nothing more than the process killed."""
    if not database.startswith("postgresql"):
        return None
    cluster: PrivatePostgres = request.getfixturevalue("private_postgres")

    def restart(down: float) -> None:
        cluster.stop("immediate")
        time.sleep(down)
        cluster.start()

    return restart


@contextmanager
def sites(diracx: DiracX, tmp_path: Path, workers: int, story: Story) -> Iterator[None]:
    """The test site as ``workers`` nodes for the block; a node that fails stops the
    story's waits at once."""
    with grid_nodes(diracx, tmp_path / "site", workers) as nodes:
        story.checks.extend(node.check for node in nodes)
        yield


def seed() -> int:
    return int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(2**32))


def installation(
    tmp_path: Path, database: str, env: dict[str, str], story: Story, kind: str, jobs: int
) -> Installation:
    data_dir = tmp_path / "var"
    data_dir.mkdir(exist_ok=True)
    environment = {
        **os.environ,
        "CONCORDIA_DATA_DIR": str(data_dir),
        "CONCORDIA_DATABASE_URL": database,
        "CONCORDIA_PORT": str(free_port()),
        "CONCORDIA_POLL_INTERVAL": "0.5",
        "CONCORDIA_KILL_GRACE_SECONDS": "1",
        "CONCORDIA_MAX_RESCHEDULES": str(MAX_RESCHEDULES),
        **env,
    }
    server = LiveServer(data_dir=data_dir, port=int(environment["CONCORDIA_PORT"]), env=environment)
    processes: dict[str, Process]
    if kind == "serve":
        processes = {"serve": Serve(server)}
    else:  # the workers first: they migrate the database the web processes wait for
        server.args = ("serve", "--workers", "1")
        processes = {name: WorkerProcess(environment, tmp_path, story, name) for name in WORKERS}
        for worker in processes.values():
            worker.start()
        processes["web"] = Serve(server)
    server.start(timeout=60)
    story(f"{' and '.join(processes)} started on {database.partition(':')[0]}")
    return Installation(processes, server, story, jobs)


def answer(client: httpx.Client, path: str, **params: Any) -> Any | None:
    """A GET's JSON, or None while the server or its database cannot answer (restarting)."""
    try:
        response = client.get(path, params=params)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def wait_until(
    what: str,
    ready: Callable[[], Any],
    story: Story,
    timeout: float = 120,
    interval: float = 0.05,
) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        story.check()
        assert time.monotonic() < deadline, f"never {what} in {timeout:.0f} s\n{story}"
        time.sleep(interval)
    return value


def progress(view: dict[str, Any]) -> int:
    """0 to twice the batch: jobs taken by their backend, plus jobs ended."""
    ended = sum(int(view["counts"].get(status, 0)) for status in ("Done", "Failed"))
    return int(view["handed_over"]) + ended


def wait_for_progress(
    client: httpx.Client,
    url: str,
    story: Story,
    ready: Callable[[dict[str, Any]], bool],
    what: str,
    still_for: float = 120,
) -> dict[str, Any]:
    """The submission's view once ``ready``; fails when its progress stands still for
    ``still_for`` s: a loaded machine makes the batch slow, a stuck one does not move."""
    best, last = -1, None
    deadline = time.monotonic() + still_for
    while True:
        story.check()
        view = answer(client, url)
        if view is not None:
            if ready(view):
                return dict(view)
            last = view
            if progress(view) > best:
                best, deadline = progress(view), time.monotonic() + still_for
        assert time.monotonic() < deadline, (
            f"never {what}: progress stood at {best} for {still_for:.0f} s"
            f" ({last and last['handed_over']} handed over, {last and last['counts']})\n{story}"
        )
        time.sleep(0.05)


def kill_during_submission(
    concordia: Installation, killed: str, body: dict[str, Any], rng: random.Random
) -> int:
    """POST the batch and SIGKILL ``killed`` a random moment later; after the restart the
    batch is there whole or not at all (then the user submits it again). Its id."""
    story, jobs = concordia.story, concordia.jobs
    posted: dict[str, Any] = {}

    def post() -> None:
        with client_of(concordia.web) as client:
            try:
                posted["response"] = client.post("/api/v1/submissions", json=body)
                story("the POST answered")
            except httpx.HTTPError as exc:
                posted["error"] = exc

    thread = threading.Thread(target=post)
    thread.start()
    time.sleep(rng.uniform(0.0, 0.4))
    concordia.crash(killed, "during the submission")
    thread.join(60)
    response = posted.get("response")
    story("the POST was answered" if response else "the POST had no answer")
    with client_of(concordia.web) as client:
        page = client.get("/api/v1/jobs", params={"per_page": 500}).json()
        assert page["total"] in (0, jobs), f"a batch stored in part: {page['total']}\n{story}"
        if response is not None:
            assert response.status_code == 201, response.text
            assert page["total"] == jobs, f"an accepted batch lost\n{story}"
            return int(response.json()["id"])
        if page["total"] == jobs:
            return int(page["items"][0]["submission_id"])
        story("the batch died with the process: submitted again")
        again = client.post("/api/v1/submissions", json=body)
        assert again.status_code == 201, again.text
        return int(again.json()["id"])


def run_batch(
    concordia: Installation,
    killed: tuple[str, str, str],
    body: dict[str, Any],
    rng: random.Random,
    restart_database: Callable[[float], None] | None,
) -> int:
    """The batch through three SIGKILLs, of the processes ``killed`` names (during the
    submission, the hand-over and the jobs' run), and one database crash where it is a
    server of its own, then to its end. The submission's id."""
    story = concordia.story
    submission = kill_during_submission(concordia, killed[0], body, rng)
    url = f"/api/v1/submissions/{submission}"
    # Where the later disruptions come, as progress (handed over + done, 0 to 2 * jobs): a
    # kill while the batch is being handed over, one while its jobs run, and the database
    # crash anywhere after the first (also last: no kill after it then heals what it broke).
    jobs = concordia.jobs
    handing = rng.randint(1, jobs * 3 // 4)
    running = rng.randint(jobs * 5 // 4, jobs * 19 // 10)
    steps: list[tuple[int, str]] = [(handing, killed[1]), (running, killed[2])]
    if restart_database is not None:
        steps.append((rng.randint(handing + 1, jobs * 19 // 10), "database"))
    for at, action in sorted(steps):
        with client_of(concordia.web) as client:
            ready = lambda v, at=at: progress(v) >= at  # noqa: E731
            view = wait_for_progress(client, url, story, ready, f"progress {at}")
        state = f"{view['handed_over']} handed over, {view['counts'].get('Done', 0)} done"
        if action != "database":
            concordia.crash(action, state)
        else:
            assert restart_database is not None
            restart_database(rng.uniform(0.2, 2.0))
            story(f"the database crashed and restarted ({state})")
    with client_of(concordia.web) as client:
        final = wait_for_progress(
            client, url, story, lambda v: bool(v["finished"]), "the end of every job"
        )
    story(f"finished: {final['counts']}")
    return submission


def assert_each_job_once_and_final(
    concordia: Installation, submission: int, *, stalls_expected: bool
) -> list[dict[str, Any]]:
    """Exactly the batch's jobs, each uuid once, each Done, or Failed as a stall with no
    reschedule left (only where the backend's jobs die with the server); histories without a
    repeated transition. The jobs' details."""
    story = concordia.story
    with client_of(concordia.web) as client:
        page = client.get("/api/v1/jobs", params={"per_page": 500}).json()
        assert page["total"] == concordia.jobs, f"{page['total']} jobs\n{story}"
        assert {j["submission_id"] for j in page["items"]} == {submission}
        jobs = [client.get(f"/api/v1/jobs/{j['id']}").json() for j in page["items"]]
    uuids = Counter(j["uuid"] for j in jobs)
    assert len(uuids) == concordia.jobs, (
        f"uuids twice: {[u for u, n in uuids.items() if n > 1]}\n{story}"
    )
    outcomes: Counter[str] = Counter()
    for job in jobs:
        history = [(h["status"], h["minor_status"], h["source"]) for h in job["history"]]
        where = f"job {job['id']}: {history}\n{story}"
        timed = [(*h, e["timestamp"]) for h, e in zip(history, job["history"], strict=True)]
        assert len(set(timed)) == len(timed), f"a history entry twice: {where}"
        repeated = [a for a, b in pairwise(history) if a[:2] == b[:2]]
        assert not repeated, f"a transition recorded twice {repeated}: {where}"
        stalls = history.count(STALLED)
        if not stalls_expected:  # a grid's jobs do not die with Concordia
            assert stalls == 0, f"a grid job stalled: {where}"
        # One Received per run: the first, then one per reschedule (a job whose last stall
        # found no reschedule left ran no more; the branches below tie the count to stalls).
        runs = job["reschedule_count"] + 1
        assert [h[0] for h in history].count(JobStatus.RECEIVED.value) == runs, where
        if job["status"] == JobStatus.DONE.value:
            assert job["reschedule_count"] == stalls <= MAX_RESCHEDULES, where
            assert [h[0] for h in history].count("Done") == 1, where
            outcomes["Done"] += 1
            outcomes["Done after a stall"] += stalls > 0
        else:
            # The one way a job of this batch may fail: stalled once more than it may be
            # rescheduled.
            assert (job["status"], job["minor_status"]) == STALLED[:2], where
            assert stalls == MAX_RESCHEDULES + 1 == job["reschedule_count"] + 1, where
            outcomes["Failed (stalled, no reschedule left)"] += 1
    story(f"outcomes: {dict(outcomes)}")
    assert outcomes["Done"] + outcomes["Failed (stalled, no reschedule left)"] == concordia.jobs
    print(story)  # what was done, with pytest -s or -rP
    return jobs


# --- the local backend


def job_processes(marker: str, data_dir: Path) -> list[str]:
    """Processes of this test's jobs: the job's argv carries ``marker`` (so do its launcher's
    and bubblewrap's), or they run in the data dir."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if marker.encode() in argv or cwd.startswith(str(data_dir)):
            command = argv.replace(b"\0", b" ")[:200].decode(errors="replace")
            found.append(f"{entry}: {command}")
    return found


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (its children, theirs...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie is over: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def no_job_process_left(marker: str, data_dir: Path, story: Story) -> None:
    """Jobs die with the process that ran them (bubblewrap's --die-with-parent): none is
    left a moment after."""
    deadline = time.monotonic() + 15
    while left := job_processes(marker, data_dir):
        assert time.monotonic() < deadline, f"job processes left: {left}\n{story}"
        time.sleep(0.1)


@pytest.mark.parametrize("killed", INSTALLATIONS)
def test_local_batch_survives_kills(
    killed: str, tmp_path: Path, image_seed: Path, database: str, request: pytest.FixtureRequest
) -> None:
    story = Story(seed())
    rng = random.Random(story.seed)
    marker = f"crash-{story.seed}"  # in every job's argv: its processes are found by it
    seed_images(make_settings(tmp_path / "var"), image_seed)
    workers = 1 if killed == "serve" else len(WORKERS)
    slots = {"CONCORDIA_LOCAL_SLOTS": str(LOCAL_SLOTS // workers)}
    concordia = installation(tmp_path, database, slots, story, killed, JOBS["local"])
    data_dir = concordia.web.data_dir
    running: list[int] = []
    killed_jobs: set[int] = set()

    def count_running(kind: str) -> None:
        if kind == "web":  # it runs no jobs: the ones running are not its kill's
            return
        running.append(len(job_processes(marker, data_dir)))
        killed_jobs.clear()
        if (pid := concordia.processes[kind].pid()) is not None:
            killed_jobs.update(descendants(pid))

    def jobs_died(kind: str) -> None:
        if kind == "web":  # a web process runs no jobs: the worker's go on
            return
        if len(concordia.processes) > 2:  # another worker's jobs go on: the killed one's die
            ended = lambda: not any(alive(pid) for pid in killed_jobs)  # noqa: E731
            wait_until("the killed worker's jobs ending", ended, story, timeout=15, interval=0.1)
        else:
            no_job_process_left(marker, data_dir, story)

    concordia.before_kill = count_running
    concordia.after_kill = jobs_died
    request.addfinalizer(concordia.stop)
    body = {
        "application": "hello",
        "parameters": {"jobs": JOBS["local"], "sleep": JOB_SLEEP[killed], "message": marker},
    }
    restart = database_restarter(request, database)
    submission = run_batch(concordia, KILLED[killed], body, rng, restart)
    jobs = assert_each_job_once_and_final(concordia, submission, stalls_expected=True)
    no_job_process_left(marker, data_dir, story)
    # Kills hit running jobs (the point of the test: jobs killed with their process,
    # rescheduled or failed): seen running at a kill, or stalled by one (jobs of 0.1 s may
    # all be between two starts at the moment the processes are looked at). A job was
    # rescheduled, or failed, only for its stalls (assert_each_job_once_and_final).
    stalled = [j["id"] for j in jobs if j["reschedule_count"] or j["status"] != "Done"]
    assert max(running) > 0 or stalled, f"no job hit by any kill: {running}\n{story}"


# --- the diracx backend


@pytest.mark.parametrize("killed", INSTALLATIONS)
def test_diracx_batch_survives_kills(
    killed: str,
    tmp_path: Path,
    database: str,
    diracx: DiracX,
    request: pytest.FixtureRequest,
) -> None:
    story = Story(seed())
    rng = random.Random(story.seed)
    before = total_in_diracx(diracx)  # the session's DiracX holds other tests' jobs too
    jobs = JOBS["diracx"]
    env = {**grid_server_env(tmp_path, diracx, jobs), "CONCORDIA_DEFAULT_BACKEND": "diracx"}
    concordia = installation(tmp_path, database, env, story, killed, jobs)
    request.addfinalizer(concordia.stop)
    body = {"application": "gridhello", "parameters": {"jobs": jobs}}
    restart = database_restarter(request, database)
    with sites(diracx, tmp_path, SITE_WORKERS, story):
        submission = run_batch(concordia, KILLED[killed], body, rng, restart)
    ended = assert_each_job_once_and_final(concordia, submission, stalls_expected=False)
    # Each job once in DiracX (its JobName is its uuid and run), no DiracX job without its
    # Concordia job.
    rows = in_diracx(diracx, {f"{j['uuid']}.0" for j in ended})
    names = Counter(r["JobName"] for r in rows)
    assert len(rows) == jobs == len(names), f"in DiracX twice: {names.most_common(3)}\n{story}"
    assert {str(r["JobID"]) for r in rows} == {j["backend_ref"] for j in ended}, str(story)
    assert total_in_diracx(diracx) == before + jobs, f"DiracX jobs of no Concordia job\n{story}"
    assert {r["Status"] for r in rows} == {"Done"}, str(story)
