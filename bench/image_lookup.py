"""Select-if-exists speed: POST /api/v1/images for configurations whose image exists, with
1,000 images in the store.

Starts `concordia serve` on SQLite with a one-parameter application (build argument n),
builds its image for n=0 for real, then registers 999 more configurations as built (rows
and store entries of the same content), and times 500 requests for random n. The same
run measures GET /healthz last, as the floor of a request here. Last line: `p95_ms <x>`.
Goal: p95 < 5 ms.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from options import benchmark, parse
from server import serve

from concordia.core.recipe import image_id
from concordia.logic.applications import ApplicationCatalog
from concordia.logic.image_plans import flat_recipe

APP = """
name: lookup
title: Lookup bench
command: "true"
build_args:
  n: {type: int, default: 0, min: 0, max: 100000}
image:
  variant: extract
  packages: [busybox-static]
  shell: /bin/busybox sh
  steps: ["/bin/busybox --install -s /bin", "echo {n} > /etc/n"]
"""


def register(data_dir: Path, apps: Path, first: dict[str, object], count: int) -> None:
    """Rows and store entries for n = 1..count-1, copies of the n=0 image under their ids."""
    catalog = ApplicationCatalog(apps).load()
    recipe = flat_recipe(catalog, catalog.get("lookup"))
    builder = str(first["builder"])
    store = data_dir / "images"
    source = store / str(first["id"])
    meta = json.loads((source / "image.json").read_text())
    con = sqlite3.connect(data_dir / "concordia.db")
    rows = []
    for n in range(1, count):
        new_id = image_id(recipe, {"n": n}, {}, builder)
        target = store / new_id
        target.mkdir()
        (target / "rootfs").symlink_to(source / "rootfs")
        (target / "image.json").write_text(
            json.dumps({**meta, "id": new_id, "build_args": {"n": n}})
        )
        rows.append((new_id, json.dumps({"n": n})))
    con.executemany(
        "INSERT INTO images (id, application, build_args, status, builder, formats, created_at,"
        " error, built_at, rootfs_size)"
        " VALUES (?, 'lookup', ?, 'ready', ?, '{}', datetime('now'), '', datetime('now'), 0)",
        [(i, args, builder) for i, args in rows],
    )
    # Images are seen by those who asked for them: the bench's user asked for each, under
    # each of their VOs as for the first (a user of several VOs claims it in each).
    claims = con.execute(
        "SELECT user_id, vo FROM image_users WHERE image_id = ?", (first["id"],)
    ).fetchall()
    con.executemany(
        "INSERT INTO image_users (image_id, user_id, vo, asked_at)"
        " VALUES (?, ?, ?, datetime('now'))",
        [(i, user_id, vo) for i, _ in rows for user_id, vo in claims],
    )
    con.commit()
    con.close()


def timed(client: httpx.Client, requests: int, send: object) -> list[float]:
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = send()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] * 1000


def main() -> None:
    parser = benchmark(__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=500)
    args = parse(parser, images=20, requests=20)
    with tempfile.TemporaryDirectory(prefix="concordia-bench-") as tmp:
        apps, data_dir = Path(tmp) / "apps", Path(tmp) / "var"
        apps.mkdir()
        (apps / "lookup.yaml").write_text(APP)
        Path(tmp).chmod(0o711)
        with serve(data_dir, applications_dir=str(apps), image_formats="[]") as server:
            client = server.client()
            first = client.post("/api/v1/images", json={"application": "lookup"}).json()["image"]
            while first["status"] == "building":
                time.sleep(0.2)
                first = client.get(f"/api/v1/images/{first['id']}").json()
            assert first["status"] == "ready", first["error"]
            register(data_dir, apps, first, args.images)
            listed = client.get("/api/v1/images").json()
            assert len(listed) == args.images, len(listed)

            def lookup() -> httpx.Response:
                body = {"application": "lookup", "build_args": {"n": random.randrange(args.images)}}
                return client.post("/api/v1/images", json=body)

            timed(client, 50, lookup)  # warm-up
            ours = timed(client, args.requests, lookup)
            floor = timed(client, args.requests, lambda: client.get("/healthz"))
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"images {args.images}, requests {args.requests}")
    print(f"healthz_p95_ms {p95(floor):.2f} (median {statistics.median(floor) * 1000:.2f})")
    print(f"lookup_median_ms {statistics.median(ours) * 1000:.2f}")
    print(f"ratio {p95(ours) / p95(floor):.2f}")
    print(f"p95_ms {p95(ours):.2f}")


if __name__ == "__main__":
    main()
