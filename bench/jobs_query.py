"""Job monitor query speed: GET /api/v1/jobs with 100,000 jobs in the database.

Starts `concordia serve` on SQLite in a temporary data dir, fills the database with
100,000 jobs of the local user, then times 200 requests (50 per page, filtered by status,
sorted by last update) and reads the server's peak RSS. Last line: `p95_ms <x>`.
Goal at 100,000 jobs: p95 < 50 ms; with --jobs 1000000: p95 < 20 ms, RSS < 250 MB.
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from options import benchmark, parse
from server import serve

STATUSES = ["Done"] * 70 + ["Failed"] * 10 + ["Running"] * 5 + ["Waiting"] * 10 + ["Killed"] * 5


def fill(db: Path, jobs: int) -> None:
    """Insert one submission and ``jobs`` jobs straight into SQLite (the setup, not timed)."""
    con = sqlite3.connect(db)
    now = datetime.now(UTC)
    con.execute(
        "INSERT INTO applications (name, fingerprint, definition, first_used)"
        " VALUES ('hello', 'bench', '{}', ?)",
        (_stamp(now),),
    )
    con.execute(
        "INSERT INTO submissions (owner_id, application_id, application, parameters, build_args,"
        ' backend, job_count, vo, "group", created_at)'
        " VALUES (1, 1, 'hello', '{}', '{}', 'local', ?, '', '', ?)",
        (jobs, _stamp(now)),
    )
    rng = random.Random(1)
    rows = []
    for i in range(jobs):
        at = _stamp(now - timedelta(seconds=jobs - i))
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


def _stamp(at: datetime) -> str:
    """UTC time as SQLAlchemy stores it in SQLite."""
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")


def main() -> None:
    parser = benchmark(__doc__)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parse(parser, jobs=2000, requests=20)

    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp) / "var") as server:
        t0 = time.perf_counter()
        fill(server.data_dir / "concordia.db", args.jobs)
        print(f"filled {args.jobs} jobs in {time.perf_counter() - t0:.1f} s")
        params: dict[str, str | int] = {"status": "Done", "per_page": 50, "sort": "-updated"}
        times = []
        with server.client() as client:
            for i in range(args.requests + 10):
                params["page"] = 1 + i % 20
                start = time.perf_counter()
                response = client.get("/api/v1/jobs", params=params)
                elapsed = (time.perf_counter() - start) * 1000
                response.raise_for_status()
                assert len(response.json()["items"]) == 50
                if i >= 10:  # the first requests warm caches and connections
                    times.append(elapsed)
        total = f"{response.json()['total']}{'+' if response.json().get('more') else ''}"
        times.sort()
        print(f"requests {len(times)} (status=Done: {total} jobs), per_page 50")
        print(f"p50_ms {statistics.median(times):.1f}")
        print(f"peak_rss_mb {server.peak_rss_mb():.0f}")
        print(f"p95_ms {times[int(len(times) * 0.95) - 1]:.1f}")


if __name__ == "__main__":
    main()
