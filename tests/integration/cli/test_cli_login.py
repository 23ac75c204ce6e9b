"""`concordia login` (IAM device flow) against a real server and the IAM double; then the
CLI's commands as that user, with the token refreshed and, after logout, gone."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LiveServer
from tests.iam.pki import TestCA
from tests.iam.server import IamDouble


@pytest.fixture
def live_server_env(iam: IamDouble, request: pytest.FixtureRequest) -> dict[str, str]:
    """The server in IAM mode; a test adds settings by parametrizing this fixture."""
    iam.state.any_loopback_redirect = True
    iam.state.device_interval = 1
    return {
        "CONCORDIA_OIDC_ISSUER": iam.url,
        "CONCORDIA_OIDC_CLIENT_ID": "concordia",
        "CONCORDIA_OIDC_CLIENT_SECRET": "concordia-secret",
        "CONCORDIA_OIDC_CLI_CLIENT_ID": "concordia-cli",
        **getattr(request, "param", {}),
    }


def concordia(server: LiveServer, tokens: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CONCORDIA_CLI_TOKENS_FILE": str(tokens), "PYTHONUNBUFFERED": "1"}
    env.pop("CONCORDIA_TOKEN", None)
    return subprocess.Popen(
        [sys.executable, "-m", "concordia", "--url", server.url, *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def run(server: LiveServer, tokens: Path, *args: str) -> subprocess.CompletedProcess[str]:
    process = concordia(server, tokens, *args)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def approved_login(server: LiveServer, iam: IamDouble, tokens: Path, username: str) -> str:
    """`concordia login`, approved in IAM by ``username``; all it printed."""
    login = concordia(server, tokens, "login", "--timeout", "60")
    assert login.stdout is not None
    shown = ""
    deadline = time.monotonic() + 30
    while "enter the code" not in shown and time.monotonic() < deadline:
        shown += login.stdout.readline()
    match = re.search(r"enter the code (\S+?)\)", shown)
    assert match, shown
    assert f"{iam.url}/device" in shown
    iam.approve_device(match.group(1), username)
    out, err = login.communicate(timeout=60)
    assert login.returncode == 0, err
    return shown + out


def test_login_with_the_device_flow_then_use_refresh_and_logout(
    live_server: LiveServer, iam: IamDouble, tmp_path: Path
) -> None:
    iam.add_user("jane", certificate=TestCA().issue_user("Jane Doe"))
    tokens = tmp_path / "config" / "tokens.json"
    shown = approved_login(live_server, iam, tokens, "jane")
    assert "as jane. Recognised as a member of ESCAPE, CTA" in shown
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert iam.count("/token", grant_type="urn:ietf:params:oauth:grant-type:device_code") >= 1

    me = run(live_server, tokens, "me")
    assert me.returncode == 0, me.stderr
    assert "Recognised as a member of ESCAPE, CTA" in me.stdout
    assert "certificate (IAM): /C=NL/O=Nikhef/CN=Jane Doe" in me.stdout

    stored = json.loads(tokens.read_text())
    stored[live_server.url]["expires_at"] = 0  # expired: the CLI refreshes it first
    tokens.write_text(json.dumps(stored))
    assert run(live_server, tokens, "me").returncode == 0
    assert iam.count("/token", grant_type="refresh_token") == 1

    assert "Signed out" in run(live_server, tokens, "logout").stdout
    after = run(live_server, tokens, "me")
    assert after.returncode == 1 and "concordia login" in after.stderr


def test_login_denied_in_the_browser_says_so(
    live_server: LiveServer, iam: IamDouble, tmp_path: Path
) -> None:
    iam.add_user("jane")
    tokens = tmp_path / "tokens.json"
    login = concordia(live_server, tokens, "login", "--timeout", "60")
    assert login.stdout is not None
    shown = ""
    while "enter the code" not in shown:
        shown += login.stdout.readline()
    code = re.search(r"enter the code (\S+?)\)", shown)
    assert code
    iam.approve_device(code.group(1), "jane", approve=False)
    _, err = login.communicate(timeout=60)
    assert login.returncode == 1 and "IAM did not sign you in" in err
    assert not tokens.exists()


AUDIENCE = "https://concordia.example"


@pytest.mark.parametrize("live_server_env", [{"CONCORDIA_OIDC_AUDIENCE": AUDIENCE}], indirect=True)
def test_login_asks_iam_for_the_audience_the_server_checks(
    live_server: LiveServer, iam: IamDouble, tmp_path: Path
) -> None:
    iam.add_user("jane")
    tokens = tmp_path / "tokens.json"
    shown = approved_login(live_server, iam, tokens, "jane")
    assert "Signed in to" in shown and "as jane" in shown
    assert run(live_server, tokens, "me").returncode == 0
    stored = json.loads(tokens.read_text())
    stored[live_server.url]["expires_at"] = 0  # the refreshed token is for the audience too
    tokens.write_text(json.dumps(stored))
    me = run(live_server, tokens, "me")
    assert me.returncode == 0, me.stderr
    assert iam.count("/token", grant_type="refresh_token") == 1
