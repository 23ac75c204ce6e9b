"""Jobs attack the machine they run on: the server's secrets, its processes and network, and
the resources other users need. Each attack is a real job under the local backend's sandbox."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import textwrap
import time
from pathlib import Path

import pytest

from concordia.backends.cgroup import slot_cgroup
from concordia.core.limits import JobLimits
from concordia.core.states import JobStatus
from tests.conftest import make_settings, running_app
from tests.integration.backends.test_local_backend import job, run
from tests.integration.conftest import Factory, host_address

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap"),
]
S = JobStatus


def _controllers() -> list[str]:
    probe = slot_cgroup()
    try:
        return probe.bounds
    finally:
        probe.remove()


def needs(*controllers: str) -> pytest.MarkDecorator:
    """Skip unless one of ``controllers`` (v1's and v2's names of it) is writable."""
    return pytest.mark.skipif(
        not set(controllers) & set(_controllers()),
        reason=f"no writable {' or '.join(controllers)} cgroup controller",
    )


def sh(uuid: str, script: str, **fields: object) -> object:
    return job(uuid, "sh", "-c", textwrap.dedent(script), **fields)


async def test_a_job_sees_no_host_process_secret_file_or_port(
    make_backend: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONCORDIA_OIDC_CLIENT_SECRET", "server-secret-in-environ")
    backend = await make_backend()
    assert backend.isolated, backend.isolation_problem
    data_dir = backend.settings.data_dir
    (data_dir / "encryption-key").write_text("key-of-the-server\n")
    # The deployment guide's layout: a 0640 root:<service group> file under /etc.
    guarded = Path(f"/etc/concordia-test-{os.getpid()}.toml")
    guarded.write_text("database_password = 'db-password'\n")
    guarded.chmod(0o640)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    connect = f'import socket; socket.create_connection(("127.0.0.1", {port}), 2)'
    script = f"""
        echo "pids: $(ls /proc | grep -c '^[0-9]')"
        echo "environ: $(cat /proc/{os.getpid()}/environ /proc/1/environ | grep -c secret)"
        echo "key: $(cat {data_dir}/encryption-key 2>&1)"
        echo "guarded: $(cat {guarded} 2>&1)"
        echo "etc: $(ls /etc | tr '\\n' ' ')"
        echo "connect: $(python3 -c '{connect}' 2>&1 | tail -1)"
        echo "userns: $(unshare -U true 2>&1)"
        echo "id: $(id)"
        """
    server.setblocking(False)
    try:
        updates = await run(backend, sh("spy", script))
        with pytest.raises(BlockingIOError):  # the job never reached the host's port
            server.accept()
    finally:
        guarded.unlink()
        server.close()
    out = (backend.job_dir("spy") / "std.out").read_text()
    assert updates["spy"][-1].status == S.DONE, out
    seen = dict(line.split(": ", 1) for line in out.splitlines())
    assert int(seen["pids"]) < 10  # its own few processes, none of the host's
    assert seen["environ"] == "0"  # no process environment with the server's secret
    assert "No such file" in seen["key"]  # the data dir is not there
    assert "No such file" in seen["guarded"]  # nor the host's /etc
    etc = set(seen["etc"].split())
    assert {"passwd", "group", "nsswitch.conf", "ld.so.cache", "ssl"} <= etc
    assert not any(name.startswith("concordia") or name == "shadow" for name in etc), etc
    assert "Connection refused" in seen["connect"]  # its own loopback, where nothing listens
    assert "unshare failed" in seen["userns"]  # no user namespace of its own
    assert seen["id"].startswith("uid=1000(job) gid=1000(job)")


@needs("pids")
async def test_a_fork_bomb_ends_at_the_process_bound(make_backend: Factory) -> None:
    backend = await make_backend()
    bomb = sh("bomb", "i=0; while [ $i -lt 2000 ]; do sleep 30 & i=$((i + 1)); done; wait",
              limits=JobLimits(processes=64), cpu_time=20)  # fmt: skip
    updates = await run(backend, bomb, sh("other", "echo fine"), seconds=20)
    assert updates["bomb"][-1].status == S.FAILED
    assert updates["bomb"][-1].minor_status == "Process limit exceeded (64 processes)"
    assert updates["other"][-1].status == S.DONE  # the other slot's job was not starved


async def test_tmp_and_shm_are_bounded(make_backend: Factory) -> None:
    backend = await make_backend(local_tmp_mb=8)
    fill = """
        for dir in /tmp /dev/shm; do
          head -c 20000000 /dev/zero > $dir/fill 2>/dev/null
          echo "$dir $(wc -c < $dir/fill)"
        done
        """
    updates = await run(backend, sh("fill", fill))
    out = (backend.job_dir("fill") / "std.out").read_text().split()
    assert updates["fill"][-1].status == S.DONE
    assert int(out[1]) <= 8 * 1024 * 1024 and int(out[3]) <= 8 * 1024 * 1024, out


@needs("memory")
async def test_files_in_shm_count_as_memory(make_backend: Factory) -> None:
    backend = await make_backend(local_memory_mb=64, local_tmp_mb=0)
    hog = "head -c 300000000 /dev/zero > /dev/shm/hog; echo survived"
    updates = await run(backend, sh("shm", hog), seconds=30)
    assert updates["shm"][-1].status == S.FAILED
    assert updates["shm"][-1].minor_status == "Memory limit exceeded"


async def test_one_big_file_in_work_ends_the_job(make_backend: Factory) -> None:
    backend = await make_backend(local_work_mb=16)
    updates = await run(backend, sh("big", "echo writing; head -c 40000000 /dev/zero > big"))
    assert updates["big"][-1].status == S.FAILED
    assert updates["big"][-1].minor_status == "Disk limit exceeded (16 MB in /work)"


async def test_many_files_in_work_end_the_job(make_backend: Factory) -> None:
    backend = await make_backend(local_work_mb=16)
    many = (
        "i=0; while [ $i -lt 100 ]; do head -c 1000000 /dev/zero > f$i; sleep 0.1; i=$((i+1)); done"
    )
    updates = await run(backend, sh("many", many, cpu_time=30), seconds=30)
    assert updates["many"][-1].status == S.FAILED
    assert updates["many"][-1].minor_status == "Disk limit exceeded (16 MB in /work)"
    assert updates["many"][-1].state["wall_seconds"] < 8  # not left to run its 10 s


@needs("cpuacct", "cpu")
async def test_cpu_time_counts_every_process_of_the_job(make_backend: Factory) -> None:
    backend = await make_backend(local_wall_time_factor=30)
    # Four busy processes: the job's CPU time passes its bound long before any one's does.
    burn = "for i in 1 2 3 4; do sh -c 'while :; do :; done' & done; wait"
    updates = await run(backend, sh("burn", burn, cpu_time=1), seconds=40)
    assert updates["burn"][-1].status == S.FAILED
    assert updates["burn"][-1].minor_status == "CPU time limit exceeded"
    assert updates["burn"][-1].state["cpu_seconds"] < 4


async def test_an_application_limit_replaces_the_default(make_backend: Factory) -> None:
    backend = await make_backend(local_tmp_mb=64)
    fill = "head -c 20000000 /dev/zero > /tmp/fill 2>/dev/null; wc -c < /tmp/fill"
    updates = await run(backend, sh("small", fill, limits=JobLimits(tmp_mb=4)))
    assert updates["small"][-1].status == S.DONE
    assert int((backend.job_dir("small") / "std.out").read_text()) <= 4 * 1024 * 1024
    assert "1024 processes" in backend.limits_summary


ATTACKS = {
    "bomb": """\
name: bomb
title: A fork bomb
command: "sh -c 'i=0; while [ $i -lt 2000 ]; do sleep 30 & i=$((i + 1)); done; wait'"
cpu_time: 20
limits: {processes: 64}
""",
    "fill": """\
name: fill
title: Fills its work directory
command: "sh -c 'head -c 40000000 /dev/zero > big'"
cpu_time: 20
limits: {work_mb: 16}
""",
    "noop": "name: noop\ntitle: Nothing\ncommand: /bin/true\ncpu_time: 5\n",
}


async def test_one_users_attacks_end_at_their_bounds_through_the_server(tmp_path: Path) -> None:
    """Applications' limits reach their jobs; the server answers and another user's job runs
    while one user's jobs attack."""
    apps = tmp_path / "apps"
    apps.mkdir()
    for name, text in ATTACKS.items():
        (apps / f"{name}.yaml").write_text(text)
    settings = make_settings(tmp_path / "var", applications_dir=apps, local_slots=2)
    async with (
        running_app(settings) as app,
        app.new_client("alice") as alice,
        app.new_client("bob") as bob,
    ):
        ids = []
        for client, name in ((alice, "bomb"), (alice, "fill"), (bob, "noop")):
            answer = await client.post("/api/v1/submissions", json={"application": name})
            assert answer.status_code == 201, answer.text
            ids += [(client, job_id) for job_id in answer.json()["job_ids"]]
        slowest = 0.0
        deadline = time.monotonic() + 60
        while True:
            started = time.monotonic()
            assert (await bob.get("/healthz")).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            jobs = [(await client.get(f"/api/v1/jobs/{i}")).json() for client, i in ids]
            if all(job["status"] in ("Done", "Failed") for job in jobs):
                break
            assert time.monotonic() < deadline, jobs
            await asyncio.sleep(0.2)
    assert [(job["status"], job["minor_status"]) for job in jobs] == [
        ("Failed", "Process limit exceeded (64 processes)"),
        ("Failed", "Disk limit exceeded (16 MB in /work)"),
        ("Done", "Execution Complete"),
    ]
    assert slowest < 1.0


async def test_a_job_with_network_reaches_out_but_not_the_hosts_loopback(
    make_backend: Factory, listener: int
) -> None:
    backend = await make_backend()
    probe = (
        "import socket, sys\n"
        "for host in sys.argv[1:]:\n"
        "    try:\n"
        f"        with socket.create_connection((host, {listener}), 2) as s:\n"
        "            print(host, s.recv(100).decode().strip())\n"
        "    except OSError as exc:\n"
        "        print(host, 'refused:', exc)\n"
    )
    host = host_address()
    script = f"""
        python3 -c "{probe}" 127.0.0.1 10.0.2.2 169.254.169.254 {host}
        ip route del 169.254.0.0/16 2>&1 | tail -1
        cat /etc/resolv.conf
        """
    updates = await run(backend, sh("net", script, network=True), sh("closed", script))
    opened = (backend.job_dir("net") / "std.out").read_text()
    closed = (backend.job_dir("closed") / "std.out").read_text()
    assert updates["net"][-1].status == updates["closed"][-1].status == S.DONE
    reached = {line.split()[0] for line in opened.splitlines() if "reached" in line}
    assert reached == {host}, opened  # outbound only: not the host's loopback, nor link-local
    assert "Operation not permitted" in opened  # the route blocking link-local stays
    assert "nameserver 10.0.2.3" in opened
    assert "reached" not in closed  # no network asked for: none at all


async def test_many_jobs_with_a_network_at_once_each_get_theirs(make_backend: Factory) -> None:
    """Each job's network has descriptors of its own: closing one job's never closes another's
    (numbers reused across slots: jobs failed with "Bad file descriptor", or ran before their
    network was up)."""
    backend = await make_backend(local_slots=2)
    jobs = [job(f"n{i}", "true", network=True) for i in range(16)]
    updates = await run(backend, *jobs, seconds=60)
    assert {u[-1].minor_status for u in updates.values()} == {"Execution Complete"}
