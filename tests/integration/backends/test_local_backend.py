"""The local backend with real processes under real bubblewrap: lifecycle, limits, isolation."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import pytest

from concordia.backends import isolation, local_start, local_watch, sandbox
from concordia.backends.base import BackendRef, JobSpec, StatusUpdate
from concordia.backends.cgroup import slot_cgroup
from concordia.backends.forkserver import ForkedJob, ForkServer
from concordia.backends.local import LocalBackend
from concordia.core.states import FINAL_STATES, JobStatus
from tests.fsflags import EXT4, attributes, filesystem
from tests.integration.conftest import Factory

# The local backend on its own: no database.
pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap"),
]

S = JobStatus
T = TypeVar("T")
AS_ROOT = os.geteuid() == 0


async def within(awaitable: Awaitable[T], seconds: float = 15) -> T:
    return await asyncio.wait_for(awaitable, seconds)


def job(uuid: str, *argv: str, cpu_time: int = 10, **fields: Any) -> JobSpec:
    return JobSpec(uuid=uuid, job_id=1, name=uuid, argv=list(argv), cpu_time=cpu_time, **fields)


def ref(uuid: str) -> BackendRef:
    return BackendRef(uuid=uuid, ref=uuid)


async def run(
    backend: LocalBackend, *specs: JobSpec, seconds: float = 15
) -> dict[str, list[StatusUpdate]]:
    """Submit the jobs; return their updates once each has a final one."""
    await backend.submit(list(specs))
    return await updates_until(backend, {s.uuid for s in specs}, seconds)


async def updates_until(
    backend: LocalBackend, uuids: set[str], seconds: float = 15
) -> dict[str, list[StatusUpdate]]:
    seen: dict[str, list[StatusUpdate]] = {uuid: [] for uuid in uuids}

    async def wait() -> None:
        while not all(u and u[-1].status in FINAL_STATES for u in seen.values()):
            await backend.changed.wait()
            for update in await backend.poll([]):
                seen.setdefault(update.uuid, []).append(update)

    await within(wait(), seconds)
    return seen


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await within(wait(), seconds)


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_job_runs_and_its_outputs_are_collected(make_backend: Factory) -> None:
    backend = await make_backend()
    assert backend.isolated
    script = (
        "echo hello; echo oops >&2; echo data > result.txt; mkdir sub;"
        " echo a > sub/a.txt; echo b > sub/b.dat; mkdir dir.txt"
    )
    updates = await run(backend, job("j1", "sh", "-c", script, outputs=["*.txt", "sub/*.txt"]))
    history = updates["j1"]
    assert [u.status for u in history] == [S.MATCHED, S.RUNNING, S.COMPLETING, S.DONE]
    assert [u.minor_status for u in history] == [
        "Assigned to local slot",
        "Application",
        "Collecting outputs",
        "Execution Complete",
    ]
    assert all(a.timestamp < b.timestamp for a, b in pairwise(history))
    assert history[-1].exit_code == 0
    assert history[1].state["isolated"] is True
    assert history[1].state["memory_limit"] is True  # the default bound (local_memory_mb)
    jd = backend.job_dir("j1")
    assert (jd / "std.out").read_text() == "hello\n"
    assert (jd / "std.err").read_text() == "oops\n"
    assert not (jd / "work").exists()
    dest = jd.parent.parent / "download"
    files = await within(backend.fetch_outputs(ref("j1"), dest))
    names = sorted(str(f.relative_to(dest)) for f in files)
    assert names == ["result.txt", "std.err", "std.out", "sub/a.txt"]
    assert (dest / "result.txt").read_text() == "data\n"
    assert (dest / "std.out").read_text() == "hello\n"


async def test_a_job_directory_a_crash_left_half_made_is_made_again(
    make_backend: Factory,
) -> None:
    """A server killed between a job's mkdir and its chmod leaves the directory closed to
    the job's user (the server's umask); the job handed over again still runs."""
    backend = await make_backend()
    jd = backend.job_dir("again")
    jd.mkdir(mode=0o700)
    (jd / "work").mkdir(mode=0o700)
    (jd / "work" / "left.txt").write_text("from the first try\n")
    updates = await run(backend, job("again", "sh", "-c", "ls; echo ran"))
    assert updates["again"][-1].status == S.DONE, updates["again"][-1].minor_status
    assert (jd / "std.out").read_text() == "ran\n"  # in a clean work directory
    assert jd.stat().st_mode & 0o777 == 0o711


def spares_of(backend: LocalBackend) -> list[Path]:
    """The spare job directories of every process, in the jobs directory's .spares/."""
    root = backend.settings.jobs_dir / ".spares"
    return sorted(spare for own in root.iterdir() for spare in own.iterdir())


async def test_a_job_takes_the_directory_its_slot_made_ahead(make_backend: Factory) -> None:
    """A slot makes its next job's directory while the last one runs; the job's start renames
    it into place (no file made on the way). A rerun cleans its own directory instead."""
    backend = await make_backend(local_slots=1)
    await until(lambda: len(spares_of(backend)) == 1)
    (first,) = spares_of(backend)
    made = first.stat().st_ino
    script = "ls -a; echo x > r.txt"
    updates = await run(backend, job("ahead", "sh", "-c", script, outputs=["r.txt"]))
    assert updates["ahead"][-1].status == S.DONE, updates["ahead"][-1].minor_status
    jd = backend.job_dir("ahead")
    assert jd.stat().st_ino == made
    assert jd.stat().st_mode & 0o777 == 0o711
    assert (jd / "std.out").read_text() == ".\n..\n"  # a clean work directory
    assert sorted(p.name for p in (jd / "outputs").iterdir()) == ["r.txt", "std.err", "std.out"]
    await until(lambda: spares_of(backend) not in ([], [first]))
    (second,) = spares_of(backend)
    again = await run(backend, job("ahead", "sh", "-c", script, outputs=["r.txt"]))
    assert again["ahead"][-1].status == S.DONE
    assert jd.stat().st_ino == made and (jd / "std.out").read_text() == ".\n..\n"
    assert spares_of(backend) == [second]
    await within(backend.close())
    assert list((backend.settings.jobs_dir / ".spares").iterdir()) == []


async def test_the_spares_an_ended_process_left_are_removed_at_start(
    make_backend: Factory,
) -> None:
    """Each process keeps its spares in a directory it holds locked: those of a process that
    ended are removed when a backend starts, a live one's (another worker's) stay."""
    backend = await make_backend(local_slots=1)
    await within(backend.close())
    root = backend.settings.jobs_dir / ".spares"
    ended, live = root / "ended", root / "live"
    for own in (ended, live):
        (own / "0" / "work").mkdir(parents=True)
    held = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        await make_backend(local_slots=1)
        assert not ended.exists()
        assert (live / "0" / "work").is_dir()
    finally:
        os.close(held)


async def test_exit_code_and_start_failures(make_backend: Factory, tmp_path: Path) -> None:
    backend = await make_backend()
    missing = tmp_path / "missing.dat"
    updates = await run(
        backend,
        job("code", "sh", "-c", "exit 3"),
        job("noexe", "no-such-program"),
        job("noinput", "true", input_files=[missing]),
    )
    assert updates["code"][-1].status == S.FAILED
    assert updates["code"][-1].minor_status == "Application exited with code 3"
    assert updates["code"][-1].exit_code == 3
    assert updates["noexe"][-1].status == S.FAILED
    assert updates["noexe"][-1].minor_status.startswith("Cannot start application:")
    assert "no-such-program" in updates["noexe"][-1].minor_status
    assert [u.status for u in updates["noinput"]] == [S.MATCHED, S.FAILED]
    assert updates["noinput"][-1].minor_status.startswith("Cannot start application: input")


async def test_input_files_are_in_the_work_directory(make_backend: Factory, tmp_path: Path) -> None:
    backend = await make_backend()
    data = tmp_path / "in.txt"
    data.write_text("42\n")
    updates = await run(
        backend, job("in", "sh", "-c", "cat in.txt; echo x >> in.txt", input_files=[data])
    )
    assert updates["in"][-1].status == S.DONE
    assert (backend.job_dir("in") / "std.out").read_text() == "42\n"


async def test_cpu_time_limit(make_backend: Factory) -> None:
    backend = await make_backend(local_wall_time_factor=5)
    updates = await run(backend, job("cpu", "python3", "-c", "while True: pass", cpu_time=1))
    assert updates["cpu"][-1].status == S.FAILED
    assert updates["cpu"][-1].minor_status == "CPU time limit exceeded"


async def test_wall_time_limit(make_backend: Factory) -> None:
    backend = await make_backend(local_wall_time_factor=1)
    updates = await run(backend, job("wall", "sleep", "30", cpu_time=1))
    assert [u.status for u in updates["wall"]][-2:] == [S.COMPLETING, S.FAILED]
    assert updates["wall"][-1].minor_status == "Wall time limit exceeded"
    assert updates["wall"][-1].state["wall_seconds"] < 5


async def test_kill_running_job(make_backend: Factory) -> None:
    backend = await make_backend()
    seconds = only_ours(300)
    script = f"trap 'echo got TERM; exit 1' TERM; echo started; sleep {seconds} & wait"
    await backend.submit([job("k", "sh", "-c", script)])
    std_out = backend.job_dir("k") / "std.out"
    await until(lambda: std_out.exists() and "started" in std_out.read_text())
    await until(lambda: running("sleep", seconds))  # what is looked for below is there
    pending = await backend.poll([])
    pid = next(u.state["pid"] for u in pending if u.status == S.RUNNING)
    assert backend.running("k") and pid_exists(pid)
    await within(backend.kill([ref("k")]))
    assert not backend.running("k")
    assert not pid_exists(pid)
    # Gone with the job (the kernel ends its sandbox's processes; on a loaded machine that
    # once took more than 5 s).
    await until(lambda: not running("sleep", seconds), 15)
    await asyncio.sleep(0.2)
    assert await backend.poll([]) == []  # the caller records Killed itself
    outputs = backend.job_dir("k") / "outputs"
    assert (outputs / "std.out").read_text() == "started\ngot TERM\n"  # SIGTERM came first


async def test_a_job_killed_while_it_starts_does_not_run(
    make_backend: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launch runs in a thread (the server answers meanwhile): a kill that comes then,
    with no process yet to signal, still ends the job once it has one."""
    entered, release = threading.Event(), threading.Event()
    real_spawn = ForkServer.spawn

    def slow_spawn(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(30)
        return real_spawn(*args, **kwargs)

    backend = await make_backend()  # (its start-up spawns probes)
    monkeypatch.setattr(ForkServer, "spawn", slow_spawn)
    seconds = only_ours(301)
    await backend.submit([job("s", "sleep", seconds)])
    assert await asyncio.to_thread(entered.wait, 15)
    killing = asyncio.ensure_future(backend.kill([ref("s")]))
    await asyncio.sleep(0.3)
    assert not killing.done()  # it waits for the job, which has no process yet
    release.set()
    await within(killing)
    assert not backend.running("s")
    await until(lambda: not running("sleep", seconds), 15)
    assert await backend.poll([]) == []  # not even Running: the caller records Killed


def only_ours(seconds: int) -> str:
    """A sleep's duration no other test's process has: the machine's processes are looked
    through, and other test processes (the other pass, other workers) run sleeps too."""
    return f"{seconds}.{os.getpid()}"


def running(*argv: str) -> bool:
    """Whether a process of this machine runs exactly ``argv``."""
    wanted = "\0".join(argv).encode() + b"\0"
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes() == wanted:
                    return True
            except OSError:
                pass
    return False


async def test_kill_queued_job(make_backend: Factory) -> None:
    backend = await make_backend(local_slots=1)
    await backend.submit([job("first", "sleep", "300"), job("second", "true")])
    await until(lambda: backend.running("first"))
    await within(backend.kill([ref("second")]))
    await within(backend.kill([ref("first")]))
    await asyncio.sleep(0.3)
    updates = await backend.poll([])
    assert not [u for u in updates if u.uuid == "second"]
    assert not backend.job_dir("second").exists()


@pytest.mark.skipif(not AS_ROOT, reason="the job's uid is only dropped when the server is root")
async def test_isolation(make_backend: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER_SECRET_FOR_TEST", "secret")
    backend = await make_backend()
    data_dir = backend.settings.data_dir
    probe = f"""
import os, socket
def check(name, action):
    try:
        action()
        print(name, "allowed")
    except OSError as exc:
        print(name, "denied", type(exc).__name__)
check("write-usr", lambda: open("/usr/concordia-test", "w"))
check("read-shadow", lambda: open("/etc/shadow").read())
check("list-root", lambda: os.listdir("/root"))
check("list-data-dir", lambda: os.listdir({str(data_dir)!r}))
check("postgres", lambda: socket.create_connection(("127.0.0.1", 5432), timeout=2))
print("uid", os.getuid(), os.geteuid())
print("env", os.environ["HOME"], os.environ["PATH"], "SERVER_SECRET_FOR_TEST" in os.environ)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print("caps", *(int(status[k], 16) for k in ("CapEff", "CapPrm", "CapBnd")))
open("owner.txt", "w").close()
"""
    updates = await run(backend, job("iso", "python3", "-c", probe, outputs=["owner.txt"]))
    assert updates["iso"][-1].status == S.DONE, (backend.job_dir("iso") / "std.err").read_text()
    lines = (backend.job_dir("iso") / "std.out").read_text().splitlines()
    assert lines[0].startswith("write-usr denied")
    assert lines[1].startswith("read-shadow denied")
    assert lines[2] == "list-root denied FileNotFoundError"
    assert lines[3] == "list-data-dir denied FileNotFoundError"
    assert lines[4].startswith("postgres denied")
    assert lines[5] == f"uid {sandbox.SANDBOX_UID} {sandbox.SANDBOX_UID}"
    assert lines[6] == f"env /work {sandbox.SANDBOX_PATH} False"  # nothing from the server
    assert lines[7] == "caps 0 0 0"
    # Outside the sandbox the job is the unprivileged JOB_UID, never root.
    assert (backend.job_dir("iso") / "outputs" / "owner.txt").stat().st_uid == sandbox.JOB_UID


async def test_symlinks_are_never_collected(make_backend: Factory) -> None:
    backend = await make_backend()
    script = "ln -s /etc/passwd leak.txt; ln -s / root; ln -s /etc etc; echo ok > real.txt"
    globs = ["*.txt", "root/etc/passwd", "etc/*", "**/passwd", "../*", "/etc/passwd"]
    updates = await run(backend, job("sym", "sh", "-c", script, outputs=globs))
    assert updates["sym"][-1].status == S.DONE
    outputs = backend.job_dir("sym") / "outputs"
    found = sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*"))
    assert found == ["real.txt", "std.err", "std.out"]
    assert not any(p.is_symlink() for p in outputs.rglob("*"))


async def test_submit_is_idempotent_and_a_rerun_starts_clean(make_backend: Factory) -> None:
    backend = await make_backend()
    spec = job("idem", "sh", "-c", "echo run; echo x > out.txt", outputs=["*.txt"])
    refs = await backend.submit([spec])
    assert await backend.submit([spec]) == refs
    assert refs[0].ref == "idem" and refs[0].state == {"dir": str(backend.job_dir("idem"))}
    updates = await updates_until(backend, {"idem"})
    assert [u.status for u in updates["idem"]].count(S.MATCHED) == 1
    assert (backend.job_dir("idem") / "std.out").read_text() == "run\n"
    # A rescheduled job runs again, from a clean directory.
    rerun = job("idem", "sh", "-c", "ls; echo again", outputs=["*.txt"])
    updates = await run(backend, rerun)
    assert [u.status for u in updates["idem"]] == [S.MATCHED, S.RUNNING, S.COMPLETING, S.DONE]
    assert (backend.job_dir("idem") / "std.out").read_text() == "again\n"
    assert not (backend.job_dir("idem") / "outputs" / "out.txt").exists()


async def test_stdout_streams_while_the_job_runs(make_backend: Factory) -> None:
    backend = await make_backend()
    await backend.submit([job("stream", "sh", "-c", "echo first; sleep 1.5; echo second")])
    std_out = backend.job_dir("stream") / "std.out"
    await until(lambda: std_out.exists() and std_out.read_text() == "first\n")
    assert backend.running("stream")
    updates = await updates_until(backend, {"stream"})
    assert updates["stream"][-1].status == S.DONE
    assert std_out.read_text() == "first\nsecond\n"


async def test_plain_mode(make_backend: Factory) -> None:
    backend = await make_backend(local_isolation="none")
    assert not backend.isolated
    script = "id -u; pwd; echo out > r.txt"
    updates = await run(backend, job("plain", "sh", "-c", script, outputs=["r.txt"]))
    assert updates["plain"][1].state["isolated"] is False
    assert updates["plain"][-1].status == S.DONE
    uid, cwd = (backend.job_dir("plain") / "std.out").read_text().split()
    assert int(uid) == (sandbox.JOB_UID if AS_ROOT else os.getuid())
    assert cwd == str(backend.job_dir("plain") / "work")
    assert (backend.job_dir("plain") / "outputs" / "r.txt").read_text() == "out\n"


async def test_memory_limit(make_backend: Factory) -> None:
    probe = slot_cgroup()
    limited = "memory" in probe.bounds
    probe.remove()
    if not limited:
        pytest.skip("no writable memory cgroup")
    backend = await make_backend(local_memory_mb=64)
    hog = "x = bytearray(400 * 1024 * 1024); print('survived')"
    updates = await run(backend, job("mem", "python3", "-c", hog), job("small", "true"))
    assert updates["mem"][1].state["memory_limit"] is True
    assert updates["mem"][-1].status == S.FAILED
    assert updates["mem"][-1].minor_status == "Memory limit exceeded"
    assert updates["small"][-1].status == S.DONE


async def test_a_bad_uuid_queues_nothing(make_backend: Factory) -> None:
    backend = await make_backend()
    with pytest.raises(ValueError, match="invalid job uuid"):
        await backend.submit([job("fine", "true"), job("../escape", "true")])
    await asyncio.sleep(0.2)
    assert await backend.poll([]) == []
    assert not backend.job_dir("fine").exists()


async def test_close_kills_everything(make_backend: Factory) -> None:
    backend = await make_backend(local_slots=1)
    await backend.submit([job("long", "sleep", "300"), job("waiting", "true")])
    await until(lambda: backend.running("long"))
    pid = next(u.state["pid"] for u in await backend.poll([]) if u.status == S.RUNNING)
    await within(backend.close())
    assert not pid_exists(pid)
    assert await backend.poll([]) == []
    assert (backend.job_dir("long") / "outputs" / "std.out").exists()
    assert not backend.job_dir("waiting").exists()


def test_isolation_modes(tmp_path: Path) -> None:
    assert isolation.detect_isolation("none") is False
    assert isolation.detect_isolation("auto", tmp_path) is True
    assert isolation.detect_isolation("bwrap", tmp_path) is True
    with pytest.raises(ValueError, match="unknown isolation mode"):
        isolation.detect_isolation("docker")
    assert "local_isolation = none" in (isolation.isolation_problem("none") or "")
    assert isolation.isolation_problem("auto", tmp_path) is None


async def test_the_jobs_directory_spreads_its_jobs(make_backend: Factory) -> None:
    """On ext4, the started backend has marked its jobs directory (see test_spread.py)."""
    backend = await make_backend()
    jobs_dir = backend.settings.jobs_dir
    if filesystem(jobs_dir) != EXT4:
        pytest.skip(f"the jobs directory is on {filesystem(jobs_dir)}, not ext4")
    assert "T" in attributes(jobs_dir)


@pytest.mark.parametrize(
    ("owner", "name"),
    [(local_start, "prepare"), (ForkedJob, "reap"), (local_watch, "_tidy")],
    ids=["preparing its directory", "reaping it", "collecting its outputs"],
)
async def test_the_event_loop_runs_while_a_job_is_prepared_reaped_and_tidied(
    make_backend: Factory, monkeypatch: pytest.MonkeyPatch, owner: object, name: str
) -> None:
    """A job's file work (a millisecond or two on a slow filesystem) and its reaping (it asks
    the slot's fork server: on a busy machine a slow round trip) must not hold up the
    requests the event loop answers meanwhile."""
    busy = threading.Event()
    real = getattr(owner, name)

    def slow(*args: Any) -> Any:
        busy.set()
        time.sleep(0.5)  # as a slow disk, or a fork server slow to be scheduled, would
        busy.clear()
        return real(*args)

    monkeypatch.setattr(owner, name, slow)
    backend = await make_backend()
    ticks_while_busy = 0

    async def ticker() -> None:
        nonlocal ticks_while_busy
        while True:
            await asyncio.sleep(0.01)
            ticks_while_busy += busy.is_set()

    ticking = asyncio.create_task(ticker())
    try:
        updates = await run(backend, job("slow", "true"))
    finally:
        ticking.cancel()
    assert updates["slow"][-1].status == S.DONE
    assert ticks_while_busy >= 10  # about 50 in the half second
