"""The job monitor under load: 100 clients polling GET /api/v1/jobs while 1,000 jobs run.

Starts `concordia serve` (local backend, as many slots as cores) on the embedded SQLite or,
with `--database postgresql`, on a fresh database of the PostgreSQL server at
127.0.0.1:5432 (created and dropped by this run), with a one-line application running
/bin/true. 100 clients, each on its own connection, poll GET /api/v1/jobs in a loop, about a
second apart (first page, filtered by status, sorted, by submission; 50 per page), and
20 of them also hold an SSE stream of GET /api/v1/events open and read it. One submission
of 1,000 jobs is posted; every GET /api/v1/jobs started between the post and the moment all
1,000 are final is timed. Then, in the same run, the baseline: the same polling by the same
clients against the same server with no job running. Everything is bounded: a deadline and
a count of requests per phase.
Last line: `p95_ms <x>` (under load). Goal: p95 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
from local_overhead import APPLICATION
from options import benchmark, parse
from server import Server, serve

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
# What a job monitor asks for: mostly the first page, often one status, sometimes sorted
# otherwise or narrowed to the submission; always 50 a page. SUBMISSION is filled in later.
QUERIES: list[dict[str, str | int]] = [
    {},
    {},
    {"page": 2},
    {"status": "Running"},
    {"status": "Waiting,Matched"},
    {"status": "Done"},
    {"status": "Done", "page": 3},
    {"status": "Failed"},
    {"sort": "name"},
    {"sort": "-created"},
    {"sort": "status"},
    {"submission": "SUBMISSION"},
]


@dataclass
class Run:
    """What the clients share: the phase requests are timed for, and what they measured."""

    phase: str = "warm"
    limit: int = 0
    submission: int = 0
    times: dict[str, list[float]] = field(default_factory=dict)
    errors: int = 0
    events: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_jobs_before: float = 0.0

    def timing(self) -> bool:
        """Whether another request is wanted in this phase (its count bounded)."""
        return self.phase in ("load", "baseline") and len(self.times[self.phase]) < self.limit


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, uniquely named database on the PostgreSQL server, dropped afterwards."""
    name = f"concordia_bench_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        con = await asyncpg.connect(f"{PG_SERVER}/postgres")
        try:
            await con.execute(sql)
        finally:
            await con.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _client(server: Server, timeout: float | None = 30) -> httpx.AsyncClient:
    """A client of its own: one connection, as one browser tab or script."""
    return httpx.AsyncClient(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=timeout,
        limits=httpx.Limits(max_connections=1),
    )


async def poll(server: Server, run: Run, seed: int, think: float) -> None:
    """One client: GET /api/v1/jobs, think, again, until the run is over."""
    rng = random.Random(seed)
    async with _client(server) as client:
        while run.phase != "over":
            query = dict(rng.choice(QUERIES))
            if query.get("submission") == "SUBMISSION":
                query = {"submission": run.submission} if run.submission else {}
            phase = run.phase
            wanted = run.timing()
            start = time.perf_counter()
            try:
                response = await client.get("/api/v1/jobs", params={"per_page": 50, **query})
                response.raise_for_status()
            except httpx.HTTPError:
                run.errors += 1
            else:
                if wanted and run.phase == phase:  # started and ended in the same phase
                    run.times[phase].append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think)


async def listen(server: Server, run: Run, ready: asyncio.Event) -> None:
    """One SSE stream held open and read: the events are counted per phase."""
    async with _client(server, timeout=None) as client:
        async with client.stream("GET", "/api/v1/events") as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line == "event: ready":
                    ready.set()
                elif line.startswith("event:"):
                    run.events[run.phase] = run.events.get(run.phase, 0) + 1


async def phase(run: Run, name: str, limit: int, until: float, done: asyncio.Event) -> bool:
    """Time requests as `name` until `done` is set or `limit` are timed (True), or until
    the deadline (False)."""
    run.times[name], run.limit, run.phase = [], limit, name
    while not done.is_set() and len(run.times[name]) < limit:
        if time.monotonic() > until:
            run.phase = "idle"
            return False
        await asyncio.sleep(0.05)
    run.phase = "idle"
    return True


async def bench(server: Server, args: argparse.Namespace) -> tuple[Run, float]:
    run = Run()
    deadline = time.monotonic() + args.deadline
    ready = [asyncio.Event() for _ in range(args.sse)]
    listeners = [asyncio.create_task(listen(server, run, r)) for r in ready]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), timeout=30)
    pollers = [
        asyncio.create_task(poll(server, run, seed, args.think)) for seed in range(args.clients)
    ]
    await asyncio.sleep(2)  # connections opened and first requests made: not timed
    try:
        async with _client(server, timeout=120) as control:
            finished = asyncio.Event()
            timed = asyncio.create_task(phase(run, "load", args.max_requests, deadline, finished))
            run.cpu, run.cpu_jobs_before = (
                {"server": server.cpu_seconds()},
                jobs_cpu_seconds(server),
            )
            start = time.perf_counter()
            made = await control.post(
                "/api/v1/submissions",
                json={"application": "noop", "parameters": {"jobs": args.jobs}},
            )
            made.raise_for_status()
            run.submission = made.json()["id"]
            print(f"submit_s {time.perf_counter() - start:.3f}")
            while True:
                body = (await control.get(f"/api/v1/submissions/{run.submission}")).json()
                if body["finished"] or timed.done():
                    break
                await asyncio.sleep(0.1)
            jobs_s = time.perf_counter() - start
            run.cpu = {"server": server.cpu_seconds() - run.cpu["server"]}
            run.cpu["jobs"] = jobs_cpu_seconds(server) - run.cpu_jobs_before
            finished.set()
            if not await timed:
                raise SystemExit(f"the jobs were not final within {args.deadline} s")
            if body["counts"] != {"Done": args.jobs}:
                raise SystemExit(f"not every job is Done: {body['counts']}")
            # the baseline: as many requests as under load (bounded), no job running
            await asyncio.sleep(1)
            count = min(len(run.times["load"]), args.max_requests)
            until = time.monotonic() + args.deadline
            if not await phase(run, "baseline", count, until, asyncio.Event()):
                raise SystemExit(f"the baseline did not end within {args.deadline} s")
    finally:
        run.phase = "over"
        for task in listeners:
            task.cancel()
        await asyncio.gather(*pollers, *listeners, return_exceptions=True)
    return run, jobs_s


def jobs_cpu_seconds(server: Server) -> float:
    """User + system CPU time of the server's ended children: the jobs' processes."""
    fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def percentile(times: list[float], share: float) -> float:
    ordered = sorted(times)
    return ordered[max(0, int(len(ordered) * share) - 1)]


def main() -> None:
    parser = benchmark(__doc__)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--sse", type=int, default=20, help="clients also holding an SSE stream")
    # About a second: a monitor refreshed as fast as a person reads it (the Jobs page itself
    # refetches at most every 0.4 s while events come). At 0.2 s, 50 clients alone keep a
    # 2-core machine's server busy, jobs or not, and the baseline is no baseline.
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds between polls")
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-requests", type=int, default=100_000, help="timed, per phase")
    parser.add_argument(
        "--web-processes", type=int, default=0,
        help="serve --workers N beside a concordia worker (0: one process does all)",
    )  # fmt: skip
    parser.add_argument("--deadline", type=float, default=600, help="seconds, per phase")
    args = parse(parser, jobs=20, clients=4, sse=1, think=0.2, max_requests=200, deadline=60)

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        tmp.chmod(0o711)  # jobs of a server running as root pass through as another uid
        apps = tmp / "apps"
        apps.mkdir()
        (apps / "noop.yaml").write_text(APPLICATION)
        # The clients stand for many users' browsers but sign in as the one local user:
        # each SSE client gets a stream (the per-user bound would refuse all past 10).
        settings = {
            "applications_dir": str(apps),
            "local_slots": str(args.slots),
            "max_event_streams_per_user": str(max(args.sse, 1)),
        }
        with _database(args.database) as url:
            if url:
                settings["database_url"] = url
            with serve(tmp / "var", args.web_processes, **settings) as server:
                cpu_before = server.cpu_seconds()
                run, jobs_s = asyncio.run(bench(server, args))
                server_cpu = server.cpu_seconds() - cpu_before
    load, baseline = run.times["load"], run.times["baseline"]
    print(
        f"database {args.database}, jobs {args.jobs}, slots {args.slots}, clients {args.clients}"
        f" ({args.sse} with SSE), think {args.think} s, web processes {args.web_processes},"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    print(f"jobs_s {jobs_s:.1f} (submission to all {args.jobs} Done)")
    print(f"server_cpu_s {server_cpu:.1f} in all, {run.cpu['server']:.1f} under load")
    print(f"jobs_cpu_s {run.cpu['jobs']:.1f} (the jobs' own processes)")
    under_load, idle = run.events.get("load", 0), run.events.get("baseline", 0)
    print(f"sse_events {under_load} under load, {idle} in the baseline")
    print(f"errors {run.errors}")
    print(f"requests {len(load)} under load ({len(load) / jobs_s:.0f}/s), {len(baseline)} baseline")
    print(f"p50_ms {statistics.median(load):.1f}")
    print(f"p99_ms {percentile(load, 0.99):.1f}")
    print(f"baseline_p50_ms {statistics.median(baseline):.1f}")
    baseline_p95 = percentile(baseline, 0.95)
    print(f"baseline_p95_ms {baseline_p95:.1f}")
    print(f"ratio {percentile(load, 0.95) / baseline_p95:.2f} (under load / baseline, p95)")
    print(f"p95_ms {percentile(load, 0.95):.1f}")


@contextmanager
def _database(kind: str) -> Iterator[str]:
    """The database URL to serve on: '' for the embedded SQLite."""
    if kind == "sqlite":
        yield ""
        return
    with postgres_database() as url:
        yield url


if __name__ == "__main__":
    main()
