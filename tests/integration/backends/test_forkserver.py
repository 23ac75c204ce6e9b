"""A slot's fork server starts real jobs: what they get of it (descriptors, session, rlimits,
user), what they cannot reach (its socket, its memory), and that nothing outlives it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from concordia.backends import job_exit, job_process, sandbox
from concordia.backends.forkserver import ForkServer

AS_ROOT = os.geteuid() == 0


@pytest.fixture
def server() -> Iterator[ForkServer]:
    forkserver = job_process.fork_server()
    yield forkserver
    forkserver.close()


def run(
    server: ForkServer, script: str, tmp_path: Path, rlimits: Sequence[tuple[int, int, int]] = ()
) -> tuple[int, str]:
    """Run ``sh -c script`` through the fork server: (exit code, its stdout)."""
    out = tmp_path / "out"
    with open(out, "wb") as stdout:
        fds = {1: stdout.fileno(), 2: stdout.fileno()}
        env = {"PATH": sandbox.SANDBOX_PATH, "ONLY": "this"}
        proc = server.spawn(["sh", "-c", textwrap.dedent(script)], Path("/"), env, fds, rlimits)
    assert job_exit.until_ended(proc.pid, timeout=30)
    proc.reap()
    assert proc.returncode is not None
    return proc.returncode, out.read_text()


def limits_of(text: str, name: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(name))
    return line[len(name) :].split()[:2]


def test_a_job_gets_its_descriptors_session_limits_and_nothing_else(
    server: ForkServer, tmp_path: Path
) -> None:
    read_end, write_end = os.pipe()
    rlimits = job_process.job_rlimits(60, file_mb=2)
    try:
        out = tmp_path / "out"
        with open(out, "wb") as stdout:
            proc = server.spawn(
                [
                    "sh",
                    "-c",
                    "ls /proc/$$/fd; echo sid $(ps -o sid= $$) pid $$; env; "
                    "cat /proc/self/limits; id -u; id -G; read line; echo stdin=$line; "
                    "echo passed >&9",
                ],
                tmp_path,
                {"PATH": sandbox.SANDBOX_PATH, "ONLY": "this"},
                {1: stdout.fileno(), 2: stdout.fileno(), 9: write_end},
                rlimits,
            )
        os.close(write_end)
        assert os.read(read_end, 100) == b"passed\n"  # fd 9 is the job's copy of the pipe
        assert job_exit.until_ended(proc.pid, timeout=30)
        assert proc.reap()[0] == 0 and proc.returncode == 0
    finally:
        os.close(read_end)
    text = out.read_text().splitlines()
    # Only what it was given: no socket to the fork server, no descriptor of the server.
    assert text[:4] == ["0", "1", "2", "9"]
    sid_line = text[4].split()
    assert sid_line[1] == sid_line[3] == str(proc.pid)  # a session (and process group) its own
    env = {line.split("=", 1)[0] for line in text if "=" in line and line[0].isupper()}
    assert env <= {"PATH", "ONLY", "PWD"}  # nothing of the server's environment
    whole = "\n".join(text)
    assert limits_of(whole, "Max cpu time") == ["60", "65"]
    assert limits_of(whole, "Max file size") == [str(2 << 20)] * 2
    assert "stdin=" in text  # /dev/null
    uid, groups = text[-3], text[-2]
    if AS_ROOT:  # no supplementary group of the server's, no root
        assert uid == str(sandbox.JOB_UID) and groups == str(sandbox.JOB_GID)


def test_a_job_cannot_read_its_fork_servers_memory_or_environment(
    server: ForkServer, tmp_path: Path
) -> None:
    code, _ = run(server, "true", tmp_path)  # it runs from the first job on
    assert code == 0 and server.pid is not None
    code, out = run(server, f"cat /proc/{server.pid}/environ /proc/{server.pid}/mem", tmp_path)
    assert code != 0 and "Permission denied" in out  # not dumpable: same uid, still refused


def test_a_program_that_cannot_start_raises_and_the_next_one_starts(
    server: ForkServer, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError) as raised:
        server.spawn(["/nonexistent/program"], tmp_path, {}, {})
    assert str(raised.value).count("[Errno") == 1  # as the user reads it, once
    with pytest.raises(OSError):
        server.spawn(["true"], tmp_path / "no-such-directory", {"PATH": "/usr/bin:/bin"}, {})
    assert run(server, "exit 3", tmp_path)[0] == 3


def test_higher_hard_limits_or_a_cpu_limit_near_its_own_use_get_a_new_fork_server(
    server: ForkServer, tmp_path: Path
) -> None:
    run(server, "true", tmp_path, rlimits=job_process.job_rlimits(100))
    first = server.pid
    _, out = run(server, "cat /proc/self/limits", tmp_path, rlimits=job_process.job_rlimits(50))
    assert server.pid == first and limits_of(out, "Max cpu time") == ["50", "55"]  # lowered
    _, out = run(server, "cat /proc/self/limits", tmp_path, rlimits=job_process.job_rlimits(200))
    assert server.pid != first and limits_of(out, "Max cpu time") == ["200", "205"]
    second = server.pid
    # A 1 s CPU limit is within a second of any fork server's own use: a new one each time.
    run(server, "true", tmp_path, rlimits=job_process.job_rlimits(1))
    assert server.pid != second


def test_jobs_die_with_their_fork_server_which_is_replaced(
    server: ForkServer, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    sandbox.hand_over(work)
    etc = sandbox.minimal_etc(tmp_path)
    plain = ForkServer(job_process.privilege_drop())
    try:
        procs = [  # bwrap's sandbox, and a plain job (no isolation)
            job_process.launch(
                ["sleep", "301"],
                work,
                forkserver=forkserver,
                stdout=1,
                stderr=2,
                cpu_time=60,
                isolated=isolated,
                etc=etc,
            )
            for forkserver, isolated in ((server, True), (plain, False))
        ]
        deadline = time.monotonic() + 15  # until each runs its program (setpriv's
        while time.monotonic() < deadline and not all(map(runs_sleep, procs)):  # pdeathsig set)
            time.sleep(0.05)
        for forkserver in (server, plain):
            assert forkserver.pid is not None
            os.kill(forkserver.pid, signal.SIGKILL)
        for proc in procs:
            assert job_exit.until_ended(proc.pid, timeout=15)
            ran: list[int] = []  # the work after the job, which the reaping overlaps
            status, _ = proc.reap(lambda: ran.append(1))  # noqa: B023 (called at once)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            assert ran == [1]  # once, though there was no fork server left to ask
    finally:
        plain.close()
    assert run(server, "exit 4", tmp_path)[0] == 4  # a new fork server


def test_work_that_fails_while_a_job_is_reaped_leaves_the_fork_server_in_step(
    server: ForkServer, tmp_path: Path
) -> None:
    """The work after a job runs while the fork server reaps it; if that work fails, its
    reply is still read: the next request gets its own."""
    proc = server.spawn(["sh", "-c", "exit 3"], Path("/"), {}, {})
    assert job_exit.until_ended(proc.pid, timeout=30)

    def fails() -> None:
        raise RuntimeError("the outputs could not be collected")

    with pytest.raises(RuntimeError, match="could not be collected"):
        proc.reap(fails)
    assert run(server, "exit 5", tmp_path) == (5, "")
    assert not alive(proc.pid)  # it was reaped all the same


@pytest.mark.parametrize(
    "start",
    [
        "job_process.launch(['sleep', '303'], work, forkserver=server, stdout=1, stderr=2,"
        " cpu_time=60, isolated=True, etc=sandbox.minimal_etc(work.parent))",
        # A program that never asks to die with its parent, as bwrap does only some
        # milliseconds after its start: the fork server kills it as it ends.
        "server.spawn(['sleep', '303'], work, {}, {1: 1, 2: 2})",
    ],
    ids=["sandboxed", "bare"],
)
def test_nothing_outlives_a_killed_server(tmp_path: Path, start: str) -> None:
    """The server is SIGKILLed while its slot runs a job: the fork server and the job end."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from concordia.backends import job_process, sandbox
        work = Path({str(tmp_path)!r}) / "work"
        work.mkdir()
        sandbox.hand_over(work)
        server = job_process.fork_server()
        proc = {start}
        print(server.pid, proc.pid, flush=True)
        time.sleep(300)
    """)
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None
        pids = [int(pid) for pid in host.stdout.readline().split()]
        assert len(pids) == 2
        host.kill()
        host.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.1)
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        host.kill()


def runs_sleep(proc: job_process.JobProcess) -> bool:
    """Whether the job's process, or the sandbox's below bwrap, runs ``sleep`` by now."""
    with contextlib.suppress(OSError):
        for pid in [proc.pid, *job_exit.descendants(proc.pid)]:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"):
                return True
    return False


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie has ended: init reaps orphans in its own time)."""
    return not job_exit.until_ended(pid, timeout=0)
