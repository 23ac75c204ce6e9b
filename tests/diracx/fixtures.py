"""Pytest fixtures: a real DiracX server (scripts/diracx-server) for the whole session."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.iam.server import IamDouble

if TYPE_CHECKING:
    from tests.diracx.site import Site

REPO = Path(__file__).resolve().parents[2]
SERVER_SCRIPT = REPO / "scripts" / "diracx-server"
DIRACX_VENV = REPO / ".venv-diracx"
# Fixed subjects: the registry of DiracX lists users by the `sub` of their IdP's tokens, so a
# test adds jane to the IAM double with this one (IamDouble.add_user(..., sub=JANE_SUB)).
JANE = "jane"
JANE_SUB = "2f1c5e7a-0000-4000-8000-00000000a4e1"
SITE_USER = "site"
SITE_SUB = "2f1c5e7a-0000-4000-8000-00000000517e"
VO = "cta"
USER_GROUP = f"{VO}_user"
ADMIN_GROUP = f"{VO}_admin"
IDP_CLIENT_ID = "diracx"
#: Where DiracX may send a user back after signing in (per-user mode): the in-process
#: Concordia of the tests (tests.integration.auth.test_iam.PUBLIC_URL).
CONCORDIA_CALLBACK = "http://testserver/auth/diracx/callback"
SCRIPT_TIMEOUT = 180.0
TOKEN_MARGIN = 60.0  # seconds of validity a cached token must still have


def diracx_script(*args: str) -> str:
    """Run scripts/diracx-server; its stdout, or the test fails with its stderr."""
    result = subprocess.run(
        [sys.executable, str(SERVER_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/diracx-server {args[0]} failed:\n{result.stderr}", pytrace=False)
    return result.stdout


class DiracX:
    """The test's handle on the running DiracX: its URL, tokens of its users, and a way to stop
    and start it again (DiracX only: moto, the sandbox store, and the state stay)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    @property
    def info(self) -> dict[str, Any]:
        """STATE_DIR/env.json as the script last wrote it."""
        info: dict[str, Any] = json.loads((self.state_dir / "env.json").read_text())
        return info

    @property
    def url(self) -> str:
        return str(self.info["url"])

    @property
    def vo(self) -> str:
        return str(self.info["vo"])

    @property
    def legacy_secret(self) -> str:
        return str(self.info["legacy_secret"])

    def exchange(self, username: str, group: str) -> httpx.Response:
        """The raw answer of the legacy exchange (a trusted service asking for a user's
        token): 200 with tokens, 403 when the user is not in the group, 400 for a stranger."""
        return httpx.get(
            f"{self.url}/api/auth/legacy-exchange",
            params={"preferred_username": username, "scope": f"vo:{self.vo} group:{group}"},
            headers={"Authorization": f"Bearer diracx:legacy:{self.legacy_secret}"},
            timeout=30,
        )

    def token(self, username: str, group: str) -> str:
        """An access token of ``username`` in ``group``, kept until near its expiry (its signing
        key is in the state dir: a restarted DiracX still accepts it)."""
        key = (username, group)
        with self._lock:
            cached = self._tokens.get(key)
            if cached and cached[1] - time.monotonic() > TOKEN_MARGIN:
                return cached[0]
            response = self.exchange(username, group)
            if response.status_code != 200:
                raise PermissionError(
                    f"no DiracX token for {username} in {group}: "
                    f"{response.status_code} {response.text}"
                )
            body = response.json()
            token = str(body["access_token"])
            self._tokens[key] = (token, time.monotonic() + float(body["expires_in"]))
            return token

    def client(self, username: str, group: str, *, timeout: float = 30) -> httpx.Client:
        """A client on DiracX with the bearer of ``username`` in ``group``; close it after."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token(username, group)}"},
            timeout=timeout,
        )

    def rows(
        self, ids: list[int], *fields: str, user: str = JANE, group: str = USER_GROUP
    ) -> list[dict[str, Any]]:
        """DiracX's rows of these jobs with ``fields``, as ``user`` sees them (a normal user
        sees only their own jobs)."""
        with self.client(user, group) as dx:
            answer = dx.post(
                "/api/jobs/search",
                json={
                    "parameters": ["JobID", *fields],
                    "search": [{"parameter": "JobID", "operator": "in", "values": ids}],
                },
            )
        assert answer.status_code == 200, answer.text  # all on one page
        rows: list[dict[str, Any]] = answer.json()
        return rows

    def job_jdl(self, job_id: int) -> str:
        """The job's current JDL, as DIRAC's matcher reads it: from JobDB itself. No HTTP
        route of DiracX 0.7.0 returns it (the search refuses "JDL"), so the test site, which
        plays DIRAC's server-side matcher, reads the SQLite file read-only (stdlib only)."""
        uri = f"file:{self.info['jobdb_path']}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
            row = db.execute("SELECT JDL FROM JobJDLs WHERE JobID = ?", (job_id,)).fetchone()
        if row is None or not row[0]:
            raise KeyError(f"no JDL for job {job_id}")
        text: str = row[0]
        # DIRAC's compressJDL: base64 of zlib; an old uncompressed one starts with "[".
        return text if text.startswith("[") else zlib.decompress(base64.b64decode(text)).decode()

    # --- the process

    @property
    def running(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, *, kill: bool = False) -> None:
        """Stop DiracX (SIGTERM, then SIGKILL after 10 s; ``kill``: SIGKILL at once, a crash);
        moto and the state stay."""
        pid = self.info["pids"]["diracx"]
        if kill and pid and "uvicorn" in _cmdline(pid):  # now: the script's start-up is slow
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        diracx_script("stop-diracx", str(self.state_dir), *(["--kill"] if kill else []))

    def start(self) -> float:
        """Start DiracX again on the same port and state; the seconds it took to be ready."""
        t0 = time.monotonic()
        diracx_script("start-diracx", str(self.state_dir))
        return time.monotonic() - t0

    @contextmanager
    def stopped(self, *, kill: bool = False) -> Iterator[None]:
        """DiracX down for the block, up again after it (also when the block fails)."""
        self.stop(kill=kill)
        try:
            yield
        finally:
            self.start()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="session")
def diracx_server(
    iam_server: IamDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DiracX]:
    """DiracX and its S3 store, started once per session with the VO "cta" whose IdP is the
    session's IAM double; jane in cta_user, the test site's user in cta_admin."""
    if not (DIRACX_VENV / "bin" / "uvicorn").exists():
        pytest.fail(
            "DiracX is not installed in .venv-diracx: run `make diracx-venv`", pytrace=False
        )
    state = tmp_path_factory.mktemp("diracx")
    diracx_script(
        "start",
        str(state),
        f"--vo={VO}",
        f"--idp-url={iam_server.url}",
        f"--idp-client-id={IDP_CLIENT_ID}",
        f"--user={JANE}:{JANE_SUB}:{USER_GROUP}",
        f"--user={SITE_USER}:{SITE_SUB}:{ADMIN_GROUP}",
        f"--allowed-redirect={CONCORDIA_CALLBACK}",
    )
    try:
        yield DiracX(state)
    finally:
        diracx_script("stop", str(state))


@pytest.fixture
def diracx(diracx_server: DiracX) -> DiracX:
    """The session's DiracX, up (a test that stopped it and failed does not leave it down)."""
    if not diracx_server.running:
        diracx_server.start()
    return diracx_server


@pytest.fixture
def site(diracx: DiracX, tmp_path: Path) -> Iterator[Site]:
    """The test site (the grid) for this test, acting as the site user."""
    from tests.diracx.site import Site  # the site module builds on this one

    test_site = Site(diracx, diracx.token(SITE_USER, ADMIN_GROUP), workdir=tmp_path / "site")
    yield test_site
    test_site.close()
