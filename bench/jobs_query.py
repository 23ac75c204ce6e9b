"""Job monitor query speed: GET /api/v1/jobs with 100,000 jobs in the database.

Starts `concordia serve` on SQLite in a temporary data dir, fills the database with
100,000 jobs of the local user, then times 200 requests (50 per page, filtered by status,
sorted by last update) and reads the server's peak RSS. Last line: `p95_ms <x>`.
Goal: p95 < 50 ms, RSS < 250 MB.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

STATUSES = ["Done"] * 70 + ["Failed"] * 10 + ["Running"] * 5 + ["Waiting"] * 10 + ["Killed"] * 5


def fill(db: Path, jobs: int) -> None:
    """Insert one submission and ``jobs`` jobs straight into SQLite (the setup, not timed)."""
    con = sqlite3.connect(db)
    now = datetime.now(UTC)
    con.execute(
        "INSERT INTO applications (name, fingerprint, definition, first_used)"
        " VALUES ('hello', 'bench', '{}', ?)",
        (now.isoformat(),),
    )
    con.execute(
        "INSERT INTO submissions (owner_id, application_id, application, parameters, build_args,"
        ' backend, job_count, vo, "group", created_at)'
        " VALUES (1, 1, 'hello', '{}', '{}', 'local', ?, '', '', ?)",
        (jobs, now.isoformat()),
    )
    rng = random.Random(1)
    rows = []
    for i in range(jobs):
        at = (now - timedelta(seconds=jobs - i)).isoformat()
        status = rng.choice(STATUSES)
        rows.append(
            (
                str(uuid.uuid4()),
                i,
                f"hello_{i}",
                f'{{"run": {i}}}',
                '["sh"]',
                "[ JobName = x; ]",
                status,
                "",
                "",
                "local",
                "{}",
                0,
                "[]",
                at,
                at,
            )
        )
    con.executemany(
        'INSERT INTO jobs (uuid, submission_id, owner_id, application, "index", name, parameters,'
        " argv, jdl, status, minor_status, application_status, backend, backend_state,"
        " reschedule_count, outputs, created_at, updated_at)"
        " VALUES (?, 1, 1, 'hello', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    con.commit()
    con.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "var"
        port = 18000 + os.getpid() % 1000
        env = {**os.environ, "CONCORDIA_DATA_DIR": str(data), "CONCORDIA_PORT": str(port)}
        server = subprocess.Popen(
            [sys.executable, "-m", "concordia", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while not (data / "api-token").exists() or not _up(url):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            token = (data / "api-token").read_text().strip()
            t0 = time.perf_counter()
            fill(data / "concordia.db", args.jobs)
            print(f"filled {args.jobs} jobs in {time.perf_counter() - t0:.1f} s")

            headers = {"Authorization": f"Bearer {token}"}
            params = {"status": "Done", "per_page": 50, "sort": "-updated"}
            times = []
            with httpx.Client(base_url=url, headers=headers) as client:
                for i in range(args.requests + 10):
                    params["page"] = 1 + i % 20
                    start = time.perf_counter()
                    response = client.get("/api/v1/jobs", params=params)
                    elapsed = (time.perf_counter() - start) * 1000
                    response.raise_for_status()
                    assert len(response.json()["items"]) == 50
                    if i >= 10:  # the first requests warm caches and connections
                        times.append(elapsed)
            total = response.json()["total"]
            times.sort()
            p50 = statistics.median(times)
            p95 = times[int(len(times) * 0.95) - 1]
            print(f"requests {len(times)} (status=Done: {total} jobs), per_page 50")
            print(f"p50_ms {p50:.1f}")
            print(f"peak_rss_mb {peak_rss_mb(server.pid):.0f}")
            print(f"p95_ms {p95:.1f}")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
