"""Submission to the grid: 1,000 jobs through Concordia against the same 1,000 JDLs posted
directly to the same DiracX in chunks of 20.

Starts a real DiracX 0.7.0 (scripts/diracx-server, from .venv-diracx: `make diracx-venv`) and
`concordia serve` with the diracx backend acting as the user jane (trusted-service tokens).
Concordia: from POST /api/v1/submissions (1,000 jobs of a no-op application) until
Concordia has recorded the DiracX id of all 1,000 (one input sandbox, JobName = the job's
uuid, chunks of 20), read from its database every 20 ms (asking DiracX that often would
load DiracX itself, and every 0.5 s would round the figure up by a quarter second on
average); DiracX then lists them all. Direct: a token, then 50 POST /api/jobs/jdl of 20
JDLs of the same form (the same input sandbox), measured last. Both meet a DiracX already
warm: before Concordia's run, one sandbox request and one chunk of 20 JDLs of another
group are sent (a DiracX just started makes its S3 client and first queries then, about
50 ms that a running DiracX never spends again, and that the direct run, measured last,
would not pay). Five rounds, each Concordia's run then the direct one, against the same
server and DiracX (the first Concordia run also makes and uploads the input sandbox and
gets the user's token; later ones find them, as a running Concordia does); each round is
printed, and the medians. Last line: `ratio <median concordia/median direct>`. Goal: <= 1.3.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
import uuid
from contextlib import closing
from pathlib import Path

import httpx
from grid import noop_app, running_diracx, token
from server import serve

from concordia.backends.base import JobSpec
from concordia.backends.diracx import DiracXBackend
from concordia.core.jdl import job_jdl
from concordia.settings import Settings

JOBS, CHUNK = 1000, 20
#: Rounds of both measurements (the machine is shared: one round alone is noisy).
ROUNDS = 5


def jdl(group: str, sandbox: list[str]) -> str:
    return job_jdl(
        executable="concordia-job.sh", arguments=["eyJhcmd2IjogWyJ0cnVlIl19"],
        job_name=f"{uuid.uuid4()}.0", job_group=group, input_sandbox=sandbox,
        output_sandbox=["std.out", "std.err"], std_output="std.out", std_error="std.err",
        cpu_time=60, priority=1, tags=[],
    )  # fmt: skip


def warm_up(dx: httpx.Client) -> None:
    """What DiracX does once after its start: the S3 client behind sandbox requests, the
    first inserts."""
    request = {"checksum_algorithm": "sha256", "checksum": "0" * 64, "size": 1,
               "format": "tar.bz2"}  # fmt: skip
    dx.post("/api/jobs/sandbox", json=request).raise_for_status()
    dx.post("/api/jobs/jdl", json=[jdl("warm-up", []) for _ in range(CHUNK)]).raise_for_status()


def listed(client: httpx.Client) -> int:
    """How many jobs DiracX holds for the user (its Content-Range total)."""
    response = client.post(
        "/api/jobs/search", params={"per_page": 1}, json={"parameters": ["JobID"], "search": []}
    )
    total = response.headers.get("content-range", "").rpartition("/")[2]
    return int(total) if total.isdigit() else len(response.json())


def recorded_database(data_dir: Path) -> sqlite3.Connection:
    """Concordia's SQLite file, read-only (WAL lets a reader in beside the server's writes).
    One connection for the whole run, and each read counts only the round's rows: a read
    every 20 ms then costs 0.04 ms of CPU, where a new connection counting every job cost
    1.6 ms (measured on a table of 6,000 rows made for it); fifty of those a second, on a
    machine of two cores, are CPU taken from DiracX."""
    uri = f"file:{data_dir / 'concordia.db'}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=10)


def recorded(db: sqlite3.Connection, after: int) -> int:
    """How many jobs of ids above ``after`` Concordia has recorded a DiracX id for."""
    query = "SELECT count(*) FROM jobs WHERE id > ? AND backend_ref IS NOT NULL"
    return int(db.execute(query, (after,)).fetchone()[0])


def same_sandbox(dx: httpx.Client, url: str) -> str:
    """The PFN of the input sandbox Concordia made for the no-op jobs (the same bytes)."""
    backend = DiracXBackend(Settings(diracx_url=url))
    spec = JobSpec(uuid="x", job_id=0, name="x", argv=["true"], cpu_time=60)
    sandbox = backend._input_sandbox(spec)
    slot = dx.post(
        "/api/jobs/sandbox",
        json={"checksum_algorithm": "sha256", "checksum": sandbox.sha256,
              "size": sandbox.size, "format": "tar.bz2"},
    )  # fmt: skip
    slot.raise_for_status()
    assert slot.json()["url"] is None, "Concordia's sandbox should be in DiracX already"
    return str(slot.json()["pfn"])


def through_concordia(client: httpx.Client, db: sqlite3.Connection) -> tuple[float, float]:
    """Seconds until Concordia recorded every DiracX id, and the submission call's."""
    after = int(db.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0])
    start = time.perf_counter()
    made = client.post(
        "/api/v1/submissions", json={"application": "noop", "parameters": {"jobs": JOBS}}
    )
    made.raise_for_status()
    accepted = time.perf_counter() - start
    while recorded(db, after) < JOBS:
        time.sleep(0.02)
    return time.perf_counter() - start, accepted


def posted_directly(dx: httpx.Client, pfn: str) -> float:
    jdls = [jdl("noop.direct", [pfn]) for _ in range(JOBS)]
    start = time.perf_counter()
    for i in range(0, JOBS, CHUNK):
        dx.post("/api/jobs/jdl", json=jdls[i : i + CHUNK]).raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    pairs: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        root.chmod(0o711)
        with running_diracx(root / "diracx") as (url, secret):
            apps = root / "apps"
            noop_app(apps, JOBS)
            settings = {
                "applications_dir": str(apps), "local_user": "jane", "diracx_url": url,
                "diracx_legacy_secret": secret, "default_backend": "diracx",
                "poll_interval": "2",
            }  # fmt: skip
            headers = {"Authorization": f"Bearer {token(url, secret, 'jane', 'cta_user')}"}
            with httpx.Client(base_url=url, headers=headers, timeout=120) as dx:
                warm_up(dx)
                with (
                    serve(root / "var", **settings) as server,
                    server.client() as client,
                    closing(recorded_database(server.data_dir)) as db,
                ):
                    for n in range(ROUNDS):
                        through, accepted = through_concordia(client, db)
                        assert listed(dx) == CHUNK + (2 * n + 1) * JOBS
                        pfn = same_sandbox(dx, url)  # Concordia's: DiracX has it already
                        direct = posted_directly(dx, pfn)  # measured last in each round
                        assert listed(dx) == CHUNK + (2 * n + 2) * JOBS
                        pairs.append((through, direct))
                        print(
                            f"round {n + 1}: concordia_s {through:.2f} (the submission call "
                            f"{accepted:.2f} s) direct_s {direct:.2f} ratio {through / direct:.2f}"
                        )
    through = statistics.median(c for c, _ in pairs)
    direct = statistics.median(d for _, d in pairs)
    print(f"concordia_s {through:.2f} ({JOBS / through:.0f} jobs/s; median of {ROUNDS})")
    print(f"direct_s {direct:.2f} ({JOBS / direct:.0f} jobs/s; median of {ROUNDS})")
    print(f"ratio {through / direct:.2f}")


if __name__ == "__main__":
    main()
