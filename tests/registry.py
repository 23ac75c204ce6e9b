"""A real OCI registry for tests: Debian's docker-registry (CNCF distribution) on loopback,
open or behind htpasswd basic auth, with its request log."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

USER, PASSWORD = "pusher", "s3cret-for-tests"


@dataclass
class LocalRegistry:
    url: str
    host: str
    log: Path

    def requests(self, method: str, path_part: str) -> int:
        """How many requests of ``method`` to a path containing ``path_part`` it served."""
        count = 0
        for line in self.log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("http.request.method") == method and path_part in entry.get(
                "http.request.uri", ""
            ):
                count += 1
        return count


def _start(root: Path, auth: bool) -> Iterator[LocalRegistry]:
    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        pytest.fail("docker-registry and skopeo are needed: make test-deps installs them")
    root.mkdir(parents=True)
    port = free_port()
    config = [
        "version: 0.1",
        "log: {formatter: json, accesslog: {disabled: true}, level: info}",
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}",
        f"http: {{addr: '127.0.0.1:{port}', secret: not-a-secret-test-only}}",
        "health: {storagedriver: {enabled: false}}",
    ]
    if auth:
        htpasswd = subprocess.run(
            ["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True
        ).stdout
        (root / "htpasswd").write_text(htpasswd)
        config.append(f"auth: {{htpasswd: {{realm: tests, path: {root / 'htpasswd'}}}}}")
    (root / "config.yml").write_text("\n".join(config) + "\n")
    log = root / "registry.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(root / "config.yml")], stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/v2/").status_code in (200, 401):
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield LocalRegistry(url=url, host=f"127.0.0.1:{port}", log=log)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    """An open registry, its storage and log in the test's tmp dir."""
    yield from _start(tmp_path / "registry", auth=False)


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    """A registry that takes pushes from USER with PASSWORD only."""
    yield from _start(tmp_path / "auth-registry", auth=True)
