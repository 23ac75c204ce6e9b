"""A private PostgreSQL cluster for tests that stop, crash or restart the database server
(the machine's shared server at 127.0.0.1:5432 serves other tests meanwhile: never that one)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port

#: The OS user the cluster runs as when the tests run as root (initdb refuses root).
OS_USER = "postgres"
SUPERUSER = "postgres"
COMMAND_TIMEOUT = 120


def server_bindir() -> Path:
    """Where initdb, pg_ctl and psql are: pg_config's bindir, else the newest of Debian's
    /usr/lib/postgresql/<version>/bin (pg_config may belong to a client-only install)."""
    found = shutil.which("pg_config")
    if found:
        answer = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(answer.stdout.strip())
        if answer.returncode == 0 and (bindir / "initdb").is_file():
            return bindir
    versions = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda bindir: [int(n) for n in re.findall(r"\d+", bindir.parent.name)],
    )
    if not versions:
        pytest.fail("no PostgreSQL server binaries (initdb) on this machine", pytrace=False)
    return versions[-1]


class PrivatePostgres:
    """A cluster of its own in a temporary directory, on a free loopback port, trusting
    127.0.0.1 only; ``restart`` crashes it (an immediate stop) and starts it again."""

    def __init__(self) -> None:
        self.bindir = server_bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="concordia-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_user = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
        if self._as_user:
            shutil.chown(self.root, OS_USER, OS_USER)
        self.root.chmod(0o700)

    def _run(self, program: str, *args: str) -> str:
        command = [*self._as_user, str(self.bindir / program), *args]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{result.stderr}\n{log}")
        return result.stdout

    def init(self) -> None:
        # No fsync: the machine does not crash in these tests, only the server does (its
        # commits are then in the OS's cache, and recovery finds them in the WAL).
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                "max_connections = 100\n"
            )
        (self.data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    @property
    def running(self) -> bool:
        command = [*self._as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"]
        return subprocess.run(command, capture_output=True, check=False).returncode == 0

    def restart(self) -> None:
        """A crash of the server (its connections cut, no checkpoint), then a start: it
        recovers from its WAL."""
        self.stop("immediate")
        self.start()

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database,
            "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql,
        )  # fmt: skip

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database for the block; its SQLAlchemy URL. Dropped after."""
        if not self.running:  # a test that crashed it and failed does not leave it down
            self.start()
        name = f"concordia_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"')
        try:
            yield self.url(name)
        finally:
            self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def private_cluster() -> Iterator[PrivatePostgres]:
    """A started private cluster for the block; stopped and removed after."""
    cluster = PrivatePostgres()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """One private cluster per session (each test takes a database of its own)."""
    with private_cluster() as cluster:
        yield cluster
