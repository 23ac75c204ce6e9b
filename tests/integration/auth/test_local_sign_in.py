"""Local mode's ways back in while the server runs on: a new one-time link from `concordia
login-link` (the data dir's owner only), and the API token on the sign-in page."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.conftest import LiveServer

COOKIE = "concordia_session"


def login_link(server: LiveServer, **env: str) -> subprocess.CompletedProcess[str]:
    """`concordia login-link`, run as a user runs it beside the server (same settings)."""
    return subprocess.run(
        [sys.executable, "-m", "concordia", "login-link"],
        env={**server.env, **env}, cwd=server.data_dir.parent,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def database(server: LiveServer) -> sqlite3.Connection:
    return sqlite3.connect(server.data_dir / "concordia.db")


def login_rows(server: LiveServer) -> list[tuple[str, str, str, str | None]]:
    """The one-time links the database holds: digest, created, expires, used."""
    with database(server) as db:
        query = "SELECT digest, created_at, expires_at, used_at FROM api_tokens"
        return list(db.execute(f"{query} WHERE kind = 'login' ORDER BY id"))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_of(link: str) -> str:
    query = urlsplit(link).query
    assert query.startswith("token="), link
    return query.removeprefix("token=")


def sign_in_page_csrf(browser: httpx.Client) -> str:
    page = browser.get("/login")
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def test_login_link_signs_a_new_browser_in_once_while_the_server_runs_on(
    live_server: LiveServer,
) -> None:
    assert live_server.process is not None
    made = login_link(live_server)
    assert made.returncode == 0, made.stderr
    link = made.stdout.strip()
    assert link.startswith(f"{live_server.url}/login?token="), made.stdout
    assert "works once, within 15 minutes" in made.stderr
    token = token_of(link)

    # Stored as a digest only, for 15 minutes at the most.
    digest_, created, expires, used = login_rows(live_server)[-1]
    assert digest_ == digest(token) and used is None
    lifetime = datetime.fromisoformat(expires) - datetime.fromisoformat(created)
    assert timedelta(0) < lifetime <= timedelta(minutes=15)
    for part in live_server.data_dir.glob("concordia.db*"):
        assert token.encode() not in part.read_bytes(), part

    with httpx.Client(base_url=live_server.url) as browser:
        opened = browser.get(f"/login?token={token}")
        assert opened.status_code == 303, opened.text
        me = browser.get("/api/v1/me")
        assert me.status_code == 200 and me.json()["auth"] == "session"
        assert me.json()["username"] == "local"
    with httpx.Client(base_url=live_server.url) as another:
        again = another.get(f"/login?token={token}")
        assert again.status_code == 401 and "already used" in again.text
        assert another.get("/api/v1/me").status_code == 401
    assert live_server.process.poll() is None  # the same server all along
    assert token not in live_server.output()  # the server never logs it

    # Each link is a new random token; used and expired ones are cleared away.
    second = login_link(live_server)
    assert second.returncode == 0, second.stderr
    assert token_of(second.stdout.strip()) != token
    assert digest(token) not in [row[0] for row in login_rows(live_server)]


def test_login_link_is_refused_to_anyone_but_the_data_dirs_owner(
    live_server: LiveServer, tmp_path: Path
) -> None:
    # A data dir someone else owns: one made for another user, or a system folder when the
    # tests do not run as root (nothing is written: the owner is checked first).
    others = Path("/")
    if os.geteuid() == 0:
        others = tmp_path / "someone-elses"
        others.mkdir()
        os.chown(others, 65534, 65534)
    before = login_rows(live_server)
    refused = login_link(live_server, CONCORDIA_DATA_DIR=str(others))
    assert refused.returncode == 1
    assert "only the owner of the data dir" in refused.stderr, refused.stderr
    assert refused.stdout == ""
    assert login_rows(live_server) == before
    assert list(others.iterdir()) == [] or others == Path("/")


def test_login_link_says_where_to_sign_in_in_iam_mode(live_server: LiveServer) -> None:
    iam = {"CONCORDIA_OIDC_ISSUER": "https://iam.example", "CONCORDIA_OIDC_CLIENT_ID": "c"}
    refused = login_link(live_server, **iam)
    assert refused.returncode == 1
    assert "signs people in with IAM (https://iam.example)" in refused.stderr
    assert f"{live_server.url}/login" in refused.stderr


def test_the_sign_in_page_takes_the_api_token_into_a_new_session(
    live_server: LiveServer,
) -> None:
    with httpx.Client(base_url=live_server.url) as browser:
        csrf = sign_in_page_csrf(browser)
        before = browser.cookies[COOKIE]  # the form's own session, not signed in
        form = {"csrf": csrf, "token": live_server.token, "next": "/jobs"}

        forged = browser.post("/login", data={**form, "csrf": "from-another-site"})
        assert forged.status_code == 403
        wrong = browser.post("/login", data={**form, "token": "not-a-token"})
        assert wrong.status_code == 401 and "unknown or expired" in wrong.text
        link = token_of(login_link(live_server).stdout.strip())
        not_api = browser.post("/login", data={**form, "token": link})
        assert not_api.status_code == 401  # a one-time link's token is no API token
        assert browser.get("/api/v1/me").status_code == 401

        signed_in = browser.post("/login", data=form)
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/jobs"
        after = browser.cookies[COOKIE]
        assert after != before  # a new session id: one planted before is not taken over
        me = browser.get("/api/v1/me")
        assert me.status_code == 200 and me.json()["auth"] == "session"
        assert browser.get("/jobs").status_code == 200
        assert browser.get("/login").headers.get("location") == "/"  # signed in already
    with httpx.Client(base_url=live_server.url, cookies={COOKIE: before}) as planted:
        assert planted.get("/api/v1/me").status_code == 401
    # A normal server-side session: its row, under the digest of the new id, for the user.
    with database(live_server) as db:
        rows = list(
            db.execute("SELECT user_id FROM browser_sessions WHERE digest = ?", (digest(after),))
        )
    assert len(rows) == 1 and rows[0][0] is not None
    assert live_server.token not in live_server.output()
