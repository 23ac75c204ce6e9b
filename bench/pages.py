"""Jobs page speed: GET /jobs (first page, default filters) with 100,000 jobs in the database.

Starts `concordia serve` on SQLite in a temporary data dir, fills the database with
100,000 jobs of the local user and a one-time login token, signs a client in with it,
then times 100 requests of the HTML page (table, counts per status, filters).
Last line: `p95_ms <x>`. Goal: p95 < 100 ms; with --jobs 1000000, < 50 ms.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from jobs_query import _stamp, fill
from options import benchmark, parse
from server import serve


def add_login_token(db: Path) -> str:
    """A one-time login token for the local user, stored as the server stores one."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO api_tokens (user_id, digest, kind, name, created_at, expires_at)"
        " VALUES (1, ?, 'login', 'bench', ?, ?)",
        (hashlib.sha256(token.encode()).hexdigest(), _stamp(now), _stamp(now + timedelta(hours=1))),
    )
    con.commit()
    con.close()
    return token


def time_page(
    url: str, token: str, path: str, requests: int, row: str, rows: int
) -> tuple[list[float], httpx.Response]:
    """Sign in with ``token``, then GET ``path`` ``requests`` times (after 10 that warm
    caches and connections), each with ``rows`` times ``row``: the sorted times in ms, and
    the last answer."""
    times = []
    with httpx.Client(base_url=url, timeout=60) as client:
        signed_in = client.get("/login", params={"token": token})
        assert signed_in.status_code == 303, signed_in.text
        for i in range(requests + 10):
            start = time.perf_counter()
            response = client.get(path)
            elapsed = (time.perf_counter() - start) * 1000
            response.raise_for_status()
            assert response.text.count(row) == rows
            if i >= 10:
                times.append(elapsed)
    return sorted(times), response


def main() -> None:
    parser = benchmark(__doc__)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100)
    args = parse(parser, jobs=2000, requests=10)

    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp) / "var") as server:
        db = server.data_dir / "concordia.db"
        t0 = time.perf_counter()
        fill(db, args.jobs)
        token = add_login_token(db)
        print(f"filled {args.jobs} jobs in {time.perf_counter() - t0:.1f} s")
        times, response = time_page(
            server.url, token, "/jobs", args.requests, "<tr data-job-id=", 50
        )
        summary = response.text.split('class="jobs-summary">', 1)[1].split("<", 1)[0]
        print(f"requests {len(times)} of GET /jobs ({summary}), {len(response.text)} bytes")
        print(f"p50_ms {statistics.median(times):.1f}")
        print(f"peak_rss_mb {server.peak_rss_mb():.0f}")
        print(f"p95_ms {times[int(len(times) * 0.95) - 1]:.1f}")


if __name__ == "__main__":
    main()
