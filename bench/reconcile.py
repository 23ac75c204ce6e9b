"""One reconcile cycle against DiracX: 10,000 jobs known to Concordia, 1,000 of them changed in
DiracX since the last poll.

Starts a real DiracX 0.7.0 (scripts/diracx-server; `make diracx-venv`), Concordia in-process on
SQLite with the diracx backend acting as jane, submits 10,000 jobs through Concordia and waits
until all are handed over, polls once (as the reconciler does between changes), then moves
1,000 of them to Matched in DiracX (as a site would) and times one reconcile cycle: the
search for what changed, the status histories read, the database updated. Last line:
`seconds <x>`. Goal: < 2 s.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from grid import noop_app, running_diracx, token
from options import benchmark, parse
from sqlalchemy import func, select

from concordia.db.tables import Job
from concordia.settings import Settings
from concordia.web.app import create_app
from concordia.worker import Reconciler


async def run(root: Path, url: str, secret: str, jobs: int, changed: int) -> float:
    apps = root / "apps"
    noop_app(apps, jobs)
    settings = Settings(
        data_dir=root / "var", applications_dir=apps, local_user="jane", diracx_url=url,
        diracx_legacy_secret=secret, default_backend="diracx", poll_interval=3600,
        diracx_poll_interval=3600,  # this bench decides when DiracX is polled
    )  # fmt: skip
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        platform = app.state.platform
        local_token = settings.api_token_file.read_text().strip()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://bench",
            headers={"Authorization": f"Bearer {local_token}"},
        ) as client:
            made = await client.post(
                "/api/v1/submissions", json={"application": "noop", "parameters": {"jobs": jobs}}
            )
            made.raise_for_status()
        while True:  # the reconciler in the background hands them over
            async with platform.reading() as session:
                left = await session.scalar(select(func.count()).where(Job.backend_ref.is_(None)))
            if not left:
                break
            await asyncio.sleep(0.5)
        async with platform.reading() as session:
            refs = list(await session.scalars(select(Job.backend_ref).limit(changed)))
        backend = platform.backends["diracx"]
        reconciler = Reconciler(platform)
        backend._last_poll = -float("inf")
        await reconciler._load_watched("diracx")
        await reconciler.apply_updates("diracx", backend)  # the poll before the changes
        await asyncio.sleep(6)  # past the poll's margin for clock drift (5 s)

        start = datetime.now(UTC)
        body = {
            ref: {
                (start + timedelta(milliseconds=step)).isoformat(): {
                    "Status": status, "MinorStatus": minor, "Source": "Bench"
                }
                for step, (status, minor) in enumerate(
                    [("Checking", "JobSanity"), ("Waiting", "Pilot"), ("Matched", "Assigned")]
                )
            }
            for ref in refs
        }  # fmt: skip
        async with httpx.AsyncClient(base_url=url, timeout=300) as dx:
            headers = {"Authorization": f"Bearer {token(url, secret, 'site', 'cta_admin')}"}
            for i in range(0, changed, 200):
                chunk = dict(list(body.items())[i : i + 200])
                (await dx.patch("/api/jobs/status", json=chunk, headers=headers)).raise_for_status()

        backend._last_poll = -float("inf")
        begin = time.perf_counter()
        await reconciler.apply_updates("diracx", backend)
        seconds = time.perf_counter() - begin
        async with platform.reading() as session:
            matched = await session.scalar(select(func.count()).where(Job.status == "Matched"))
        assert matched == changed, matched
        return seconds


def main() -> None:
    parser = benchmark(__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--changed", type=int, default=1_000)
    args = parse(parser, jobs=200, changed=20)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        root.chmod(0o711)
        with running_diracx(root / "diracx") as (url, secret):
            seconds = asyncio.run(run(root, url, secret, args.jobs, args.changed))
    print(f"jobs {args.jobs} changed {args.changed}")
    print(f"seconds {seconds:.2f}")


if __name__ == "__main__":
    main()
