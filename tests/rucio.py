"""Pytest fixtures: a real Rucio server with its POSIX and WebDAV RSEs (scripts/rucio-server)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.iam.server import IamDouble

REPO = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = REPO / "scripts" / "rucio-server"
RUCIO_VENV = REPO / ".venv-rucio"
SCRIPT_TIMEOUT = 180.0


@dataclass(frozen=True, slots=True)
class RucioServer:
    """What scripts/rucio-server wrote in env.json: where Rucio and its RSEs are, and the
    passwords of its accounts (root, the service account ``service``, the users)."""

    url: str
    webdav_url: str
    ca: str  # the WebDAV RSE's self-signed certificate: the ``verify`` of a client
    passwords: dict[str, str]
    service: str
    users: tuple[str, ...]
    posix_rse: str
    webdav_rse: str
    #: The WebDAV storage under /token/ as an RSE of its own: only WLCG token holders get in.
    token_rse: str
    posix_prefix: Path
    state_dir: Path
    #: The WebDAV RSE's storage again, for WLCG token holders only: nginx asks a verifier
    #: on verifier_port (tests/wlcg_verifier.py, started by a test) about each request.
    token_webdav_url: str
    verifier_port: int
    #: The IAM (the session's test double) whose access tokens Rucio accepts (audience rucio).
    oidc_issuer: str

    def password(self, account: str) -> str:
        return self.passwords[account]

    def settings(self) -> dict[str, Any]:
        """Concordia's settings of this data lake: the service account, the POSIX RSE."""
        return {
            "datalake_url": self.url,
            "datalake_account": self.service,
            "datalake_password": self.password(self.service),
            "datalake_verify": self.ca,
            "datalake_rse": self.posix_rse,
        }

    def as_root(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A call of Rucio's REST API as root (what an operator sees)."""
        headers = {"X-Rucio-Account": "root", "X-Rucio-Username": "root",
                   "X-Rucio-Password": self.password("root")}  # fmt: skip
        token = httpx.get(f"{self.url}/auth/userpass", headers=headers).headers
        auth = {"X-Rucio-Auth-Token": token["X-Rucio-Auth-Token"]}
        return httpx.request(method, f"{self.url}/{path}", headers=auth, **kwargs)

    def add_oidc_identity(self, account: str, sub: str) -> None:
        """Map an IAM subject to ``account`` (as ESCAPE's IAM-to-Rucio sync does)."""
        identity = f"SUB={sub}, ISS={self.oidc_issuer}"
        body = {"identity": identity, "authtype": "OIDC", "email": f"{account}@example.org"}
        answer = self.as_root("POST", f"accounts/{account}/identities", json=body)
        assert answer.status_code == 201 or "Duplicate" in answer.text, answer.text


def rucio_script(*args: str) -> None:
    """Run scripts/rucio-server, or fail the test with its stderr."""
    result = subprocess.run(
        [sys.executable, str(SERVER_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/rucio-server {args[0]} failed:\n{result.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def rucio_server(
    tmp_path_factory: pytest.TempPathFactory, iam_server: IamDouble
) -> Iterator[RucioServer]:
    """Rucio, nginx (WebDAV) and a database of their own, started once per session; Rucio
    accepts the access tokens of the session's IAM double."""
    if not (RUCIO_VENV / "bin" / "gunicorn").exists():
        pytest.fail(
            "the Rucio server is not installed in .venv-rucio: `make test-deps` installs it",
            pytrace=False,
        )
    state = tmp_path_factory.mktemp("rucio")
    rucio_script("start", str(state), "--oidc-issuer", iam_server.issuer)
    try:
        info = json.loads((state / "env.json").read_text())
        yield RucioServer(
            url=info["url"],
            webdav_url=info["webdav_url"],
            ca=info["ca"],
            passwords=dict(info["accounts"]),
            service=info["service_account"],
            users=tuple(info["users"]),
            posix_rse=info["rses"]["posix"],
            webdav_rse=info["rses"]["webdav"],
            token_rse=info["rses"]["token"],
            posix_prefix=Path(info["posix_prefix"]),
            state_dir=state,
            token_webdav_url=info["token_webdav_url"],
            verifier_port=info["ports"]["verifier"],
            oidc_issuer=iam_server.issuer,
        )
    finally:
        rucio_script("stop", str(state))
