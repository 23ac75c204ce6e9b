"""Second build of a recipe whose configurations differ only in their last step (CORSIKA's
interaction models): how much of the first build it repeats.

Starts `concordia serve` (the embedded default: mmdebstrap, every image format) with a
minbase recipe of a few packages, a pip-free base as most are, whose last step writes the
build argument; builds it for model=a, then for model=b, each timed from the request to
"ready" (the image's own figure, the seconds its build took, beside it). Last line:
`ratio <second build s / first build s>`. Goal: <= 0.2.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from options import benchmark, parse
from server import serve

APP = """
name: rebuild
title: Rebuild bench
command: "cat /etc/model"
build_args:
  model: {type: enum, choices: [a, b], default: a}
image:
  variant: minbase
  packages: [python3-minimal, ca-certificates]
  steps:
    - "python3 -c 'import sys; print(sys.version)' > /etc/python-version"
    - "echo {model} > /etc/model"
"""


def build(client: httpx.Client, model: str) -> tuple[float, dict[str, Any]]:
    """Seconds from the request to the image being ready, and the image."""
    started = time.perf_counter()
    body = {"application": "rebuild", "build_args": {"model": model}}
    image = client.post("/api/v1/images", json=body).json()["image"]
    while image["status"] == "building":
        time.sleep(0.1)
        image = client.get(f"/api/v1/images/{image['id']}").json()
    elapsed = time.perf_counter() - started
    assert image["status"] == "ready", image["error"]
    return elapsed, image


def main() -> None:
    parser = benchmark(__doc__)
    parse(parser)
    with tempfile.TemporaryDirectory(prefix="concordia-bench-") as tmp:
        apps, data_dir = Path(tmp) / "apps", Path(tmp) / "var"
        apps.mkdir()
        (apps / "rebuild.yaml").write_text(APP)
        Path(tmp).chmod(0o711)
        with serve(data_dir, applications_dir=str(apps)) as server:
            client = server.client()
            first, _ = build(client, "a")
            second, image_b = build(client, "b")
            log = client.get(f"/api/v1/images/{image_b['id']}/log").text
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"formats {', '.join(image_b['formats']) or 'rootfs only'}")
    print(f"rootfs_mb {image_b['rootfs_size'] / 1e6:.0f}")
    print("second build log, last lines:\n  " + "\n  ".join(log.strip().splitlines()[-4:]))
    print(f"first_build_s {first:.1f}")
    print(f"second_build_s {second:.1f}")
    print(f"ratio {second / first:.2f}")


if __name__ == "__main__":
    main()
