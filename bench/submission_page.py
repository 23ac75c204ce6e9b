"""A big submission's page: GET /submissions/1 of a submission of 10,000 jobs.

Starts `concordia serve` on SQLite in a temporary data dir, fills the database with one
submission of 10,000 jobs of the local user, signs a client in, then times 100 requests of
the submission's page (its facts, progress, whole-submission actions with their counts and
the first page of its jobs). Last line: `p95_ms <x>`. Goal: p95 < 200 ms.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from jobs_query import fill
from options import benchmark, parse
from pages import add_login_token, time_page
from server import serve


def main() -> None:
    parser = benchmark(__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=100)
    args = parse(parser, jobs=200, requests=10)

    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp) / "var") as server:
        db = server.data_dir / "concordia.db"
        fill(db, args.jobs)
        token = add_login_token(db)
        times, response = time_page(
            server.url, token, "/submissions/1", args.requests, '<tr id="job-', 100
        )
        print(f"requests {len(times)} of GET /submissions/1 ({args.jobs} jobs), "
              f"{len(response.text)} bytes")  # fmt: skip
        print(f"p50_ms {statistics.median(times):.1f}")
        print(f"p95_ms {times[int(len(times) * 0.95) - 1]:.1f}")


if __name__ == "__main__":
    main()
