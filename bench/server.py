"""A real `concordia serve` for the benchmarks: started on a free port, stopped afterwards."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class Server:
    url: str
    token: str
    pid: int
    data_dir: Path

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process itself (not of its jobs)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def database(self) -> sqlite3.Connection:
        """The server's SQLite file, read-only (WAL lets a reader in beside its writes): what
        a benchmark waits for, read without asking the server. One connection for the whole
        run, each read counting only its own rows: a read every 20 ms then costs 0.04 ms of
        CPU, where a new connection counting every job cost 1.6 ms (a table of 6,000 rows)
        and a request for a submission's page costs the server 4-6 ms."""
        uri = f"file:{self.data_dir / 'concordia.db'}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=10)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@contextmanager
def serve(data_dir: Path, web_processes: int = 0, **settings: str) -> Iterator[Server]:
    """Start the server with CONCORDIA_<NAME> settings; wait until it answers. With
    ``web_processes``, `concordia worker` and `concordia serve --workers N` beside it (the
    Server's pid is then the worker's: its CPU is the jobs' handling)."""
    data_dir.parent.chmod(0o711)  # jobs of a server running as root pass through as another uid
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "CONCORDIA_DATA_DIR": str(data_dir), "CONCORDIA_PORT": str(port)}
    env.update({f"CONCORDIA_{k.upper()}": v for k, v in settings.items()})
    command = [sys.executable, "-m", "concordia", "serve"]
    worker = None
    if web_processes:
        command += ["--workers", str(web_processes)]
        worker = subprocess.Popen(
            [sys.executable, "-m", "concordia", "worker"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        iam_mode = "oidc_issuer" in settings  # no local user, no api-token file
        while not (iam_mode or (data_dir / "api-token").exists()) or not _up(url):
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        token = "" if iam_mode else (data_dir / "api-token").read_text().strip()
        pid = worker.pid if worker is not None else process.pid
        yield Server(url=url, token=token, pid=pid, data_dir=data_dir)
    finally:
        for started in (process, worker):
            if started is not None:
                started.send_signal(signal.SIGTERM)
                started.wait(timeout=30)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
