"""`concordia serve` with JSON logs: one object per stderr line, request ids, no secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port


@dataclass
class JsonServer:
    url: str
    data_dir: Path
    stdout: Path
    stderr: Path

    @property
    def token(self) -> str:
        return (self.data_dir / "api-token").read_text().strip()

    def login_url(self) -> str:
        """The one-time link of the banner (stdout: the logs are on stderr)."""
        return next(w for w in self.stdout.read_text().split() if "/login?token=" in w)

    def records(self) -> list[dict[str, Any]]:
        """Every stderr line as JSON: a line that is not one fails the test."""
        return [json.loads(line) for line in self.stderr.read_text().splitlines()]

    def access(self, **fields: Any) -> dict[str, Any]:
        """The access record with these fields, once the server has written it."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for record in self.records():
                if record["logger"] == "concordia.access" and fields.items() <= record.items():
                    return record
            time.sleep(0.05)
        raise AssertionError(f"no access record with {fields}: {self.stderr.read_text()}")


@pytest.fixture
def json_server(tmp_path: Path) -> Iterator[JsonServer]:
    port = free_port()
    env = {
        **os.environ,
        "CONCORDIA_DATA_DIR": str(tmp_path / "var"),
        "CONCORDIA_PORT": str(port),
        "CONCORDIA_LOG_FORMAT": "json",
        "CONCORDIA_LOCAL_SLOTS": "1",
    }
    server = JsonServer(
        f"http://127.0.0.1:{port}", tmp_path / "var", tmp_path / "out.log", tmp_path / "err.log"
    )
    with server.stdout.open("wb") as out, server.stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "concordia", "serve"], env=env, stdout=out, stderr=err
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, server.stderr.read_text()
            assert time.monotonic() < deadline, server.stderr.read_text()
            try:
                if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_json_lines_carry_the_request_id_and_never_a_token(json_server: JsonServer) -> None:
    headers = {"Authorization": f"Bearer {json_server.token}", "X-Request-ID": "ops-check-1"}
    jobs = httpx.get(f"{json_server.url}/api/v1/jobs?per_page=5", headers=headers)
    assert jobs.status_code == 200 and jobs.headers["x-request-id"] == "ops-check-1"
    record = json_server.access(request_id="ops-check-1")
    assert record["method"] == "GET" and record["status"] == 200
    assert record["path"] == "/api/v1/jobs?per_page=5"
    assert isinstance(record["duration_ms"], float) and record["duration_ms"] >= 0
    assert record["level"] == "INFO" and "ops-check-1" not in record["message"]
    assert record["time"].endswith("+00:00")

    # A hostile id is not written: the generated one that replaced it is.
    hostile = 'x" 500 0ms forged'
    replaced = httpx.get(f"{json_server.url}/healthz", headers={"X-Request-ID": hostile})
    json_server.access(request_id=replaced.headers["x-request-id"], path="/healthz")

    # The one-time link's token is masked in the access record and in its message.
    login = json_server.login_url()
    token = login.split("token=", 1)[1]
    signed_in = httpx.get(login, follow_redirects=False)
    assert signed_in.status_code == 303
    masked = json_server.access(path="/login?token=***", status=303)
    assert masked["request_id"] == signed_in.headers["x-request-id"]
    assert "/login?token=*** HTTP/1.1" in masked["message"]

    stderr = json_server.stderr.read_text()
    assert token not in stderr and json_server.token not in stderr and hostile not in stderr
    records = json_server.records()  # every line is a JSON object
    # uvicorn's own lines go the same way, outside any request.
    started = [r for r in records if r["message"] == "Application startup complete."]
    assert started and started[0]["logger"] == "uvicorn.error"
    assert started[0]["request_id"] is None
    # Each access line is written once: uvicorn's own access log is off.
    assert sum(r["logger"] == "uvicorn.access" for r in records) == 0
