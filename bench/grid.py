"""What the grid benchmarks share: a real DiracX (scripts/diracx-server) and a no-op application."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


#: A tiny image (Debian's static busybox, as applications/hello.yaml), for jobs that must
#: have one to publish.
BUSYBOX_IMAGE = """image:
  base: debian:bookworm
  variant: extract
  packages: [busybox-static]
  shell: /bin/busybox sh
  steps: ["/bin/busybox --install -s /bin"]
"""


def noop_app(apps: Path, max_jobs: int, image: bool = False) -> None:
    """A CTA application whose jobs do nothing: what is measured is the platform. With
    ``image``, they run in the busybox image (a grid job's image is published first)."""
    apps.mkdir(parents=True, exist_ok=True)
    (apps / "noop.yaml").write_text(
        f"""name: noop
title: No-op
vos: [cta]
{BUSYBOX_IMAGE if image else ""}command: "true"
cpu_time: 600
batch: {{count: jobs}}
parameters:
  jobs: {{type: int, default: 1, min: 1, max: {max_jobs}}}
"""
    )


def _script(command: str, state: Path, *args: str) -> None:
    script = REPO / "scripts" / "diracx-server"
    subprocess.run([sys.executable, str(script), command, str(state), *args], check=True)


@contextmanager
def running_diracx(state: Path) -> Iterator[tuple[str, str]]:
    """A throw-away DiracX with the users jane (cta_user) and site (cta_admin): its URL and
    its trusted-service exchange secret."""
    users = [f"--user=jane:{uuid.uuid4()}:cta_user", f"--user=site:{uuid.uuid4()}:cta_admin"]
    _script("start", state, *users)
    try:
        info = json.loads((state / "env.json").read_text())
        yield str(info["url"]), str(info["legacy_secret"])
    finally:
        _script("stop", state)


def token(url: str, secret: str, user: str, group: str) -> str:
    """A DiracX token for the user in the group, by the trusted-service exchange."""
    response = httpx.get(
        f"{url}/api/auth/legacy-exchange",
        params={"preferred_username": user, "scope": f"vo:cta group:{group}"},
        headers={"Authorization": f"Bearer diracx:legacy:{secret}"},
    )
    response.raise_for_status()
    return str(response.json()["access_token"])
