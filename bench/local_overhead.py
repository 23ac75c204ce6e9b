"""The platform's overhead on local jobs: 200 jobs of /bin/true, submission to all Done.

Runs, in the same process and the same run:
- platform: `concordia serve` (SQLite, local backend, SLOTS slots) with a one-line
  application running /bin/true; the time from POST /submissions of 200 jobs until the
  submission is finished (every job Done, with its history and outputs stored), read from
  its database every 20 ms as bench/diracx_submit.py does (asking the server that often
  would add its answers, 4-6 ms of CPU each, to the platform's time);
- direct: the same 200 bubblewrap command lines (the local backend's own sandbox) run
  straight from asyncio with the same parallelism, no database, no server;
- where the server runs as root, also the same command lines started as the platform starts
  them, as the job's user from a fork server per slot (the privilege drop's share of the
  gap: an unprivileged bubblewrap builds its user namespace unaided).
Last line: `ratio <platform/direct>`. Goal <= 1.2.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

from forked import run_to_end
from options import benchmark, parse
from server import serve

from concordia.backends.isolation import detect_isolation
from concordia.backends.job_process import fork_server, privilege_drop
from concordia.backends.sandbox import build_command, hand_over, minimal_etc
from concordia.core.states import FINAL_STATES

APPLICATION = """\
name: noop
title: /bin/true
command: /bin/true
cpu_time: 60
batch: {count: jobs}
parameters:
  jobs: {type: int, default: 1, min: 1, max: 10000}
"""


FINAL = json.dumps(sorted(status.value for status in FINAL_STATES))
UNFINISHED = (
    "SELECT count(*) FROM jobs WHERE submission_id = ? "
    "AND status NOT IN (SELECT value FROM json_each(?))"
)


def run_platform(tmp: Path, jobs: int, slots: int) -> float:
    apps = tmp / "apps"
    apps.mkdir()
    (apps / "noop.yaml").write_text(APPLICATION)
    settings = {"applications_dir": str(apps), "local_slots": str(slots)}
    with serve(tmp / "var", **settings) as server, server.client() as client:
        client.get("/api/v1/me").raise_for_status()  # warm the connection
        cpu_before = server.cpu_seconds()
        start = time.perf_counter()
        response = client.post(
            "/api/v1/submissions", json={"application": "noop", "parameters": {"jobs": jobs}}
        )
        response.raise_for_status()
        print(f"submit_s {time.perf_counter() - start:.3f}")
        sid = response.json()["id"]
        with closing(server.database()) as db:
            while db.execute(UNFINISHED, (sid, FINAL)).fetchone()[0]:
                time.sleep(0.02)
        elapsed = time.perf_counter() - start
        print(f"server_cpu_s {server.cpu_seconds() - cpu_before:.3f}")
        body = client.get(f"/api/v1/submissions/{sid}").json()
    if body["counts"] != {"Done": jobs}:
        raise SystemExit(f"not every job is Done: {body['counts']}")
    return elapsed


async def run_direct(tmp: Path, jobs: int, slots: int, isolated: bool) -> float:
    root = tmp / "direct"
    root.mkdir()
    etc = minimal_etc(root)  # what a job without an image sees as /etc
    limit = asyncio.Semaphore(slots)

    async def one(index: int) -> None:
        async with limit:
            work = root / str(index) / "work"
            work.mkdir(parents=True)
            hand_over(work)
            cmd = build_command(["/bin/true"], work, isolated=isolated, etc=etc)
            proc = await asyncio.create_subprocess_exec(*cmd, cwd=work)
            if await proc.wait() != 0:
                raise SystemExit(f"direct run {index} failed")

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(jobs)))
    return time.perf_counter() - start


def run_as_job_user(tmp: Path, jobs: int, slots: int) -> float:
    """The same jobs, each slot's one after the other from its own fork server (the job's
    user), started as the local backend starts them (job_process.launch)."""
    root = tmp / "dropped"
    root.mkdir()
    etc = minimal_etc(root)
    servers = [fork_server() for _ in range(slots)]
    devnull = os.open(os.devnull, os.O_WRONLY)

    def one_slot(slot: int) -> None:
        for index in range(slot, jobs, slots):
            work = root / str(index) / "work"
            work.mkdir(parents=True)
            hand_over(work)
            code = run_to_end(
                ["/bin/true"], work, forkserver=servers[slot], stdout=devnull, stderr=devnull,
                cpu_time=60, isolated=True, etc=etc,
            )  # fmt: skip
            if code != 0:
                raise SystemExit(f"run {index} as the job's user failed")

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(slots) as pool:
            list(pool.map(one_slot, range(slots)))
        return time.perf_counter() - start
    finally:
        for server in servers:
            server.close()
        os.close(devnull)


def main() -> None:
    parser = benchmark(__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 1)
    args = parse(parser, jobs=10)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        tmp.chmod(0o711)  # jobs of a server running as root pass through as another uid
        isolated = detect_isolation("auto")
        print(f"jobs {args.jobs}, slots {args.slots}, bubblewrap {isolated}")
        platform = run_platform(tmp, args.jobs, args.slots)
        print(f"platform_s {platform:.3f}")
        if isolated and privilege_drop():
            dropped = run_as_job_user(tmp, args.jobs, args.slots)
            print(f"as_the_job_user_s {dropped:.3f}")
        direct = asyncio.run(run_direct(tmp, args.jobs, args.slots, isolated))
        print(f"direct_s {direct:.3f}")
        shutil.rmtree(tmp / "direct", ignore_errors=True)
        print(f"ratio {platform / direct:.2f}")


if __name__ == "__main__":
    main()
