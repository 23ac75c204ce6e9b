"""Browser sessions in local mode: signing out ends them for every copy of the cookie, each
sign-in is a new session, an expired one opens nothing and is cleaned up."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select, update

from concordia.db.browser_sessions import add_session
from concordia.db.tables import BrowserSession, utcnow
from concordia.logic import browser_sessions
from concordia.logic.identity import local_sign_in
from tests.conftest import Running

pytestmark = pytest.mark.sql

COOKIE = "concordia_session"


@asynccontextmanager
async def browser(app: Running, cookie: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client keeping cookies, as a browser does (no bearer token)."""
    async with httpx.AsyncClient(
        transport=app.client._transport, base_url="http://testserver"
    ) as client:
        if cookie is not None:
            client.cookies.set(COOKIE, cookie, domain="testserver.local")
        yield client


async def sign_in(app: Running, client: httpx.AsyncClient) -> str:
    """Through a new one-time link (as a restarted `concordia serve` prints); the cookie."""
    async with app.platform.writing() as session:
        link = urlsplit(await local_sign_in(session, app.settings))
    assert (await client.get(f"{link.path}?{link.query}")).status_code == 303
    return client.cookies[COOKIE]


async def sign_out(client: httpx.AsyncClient) -> None:
    csrf = re.search(r'name="csrf" value="([^"]+)"', (await client.get("/account")).text)
    assert csrf
    assert (await client.post("/logout", data={"csrf": csrf.group(1)})).status_code == 303


async def rows(app: Running) -> list[BrowserSession]:
    async with app.platform.reading() as session:
        return list(await session.scalars(select(BrowserSession)))


async def test_a_cookie_copied_before_signing_out_opens_nothing(app: Running) -> None:
    async with browser(app) as client:
        first = await sign_in(app, client)
        assert (await client.get("/api/v1/me")).status_code == 200
        await sign_out(client)
        assert COOKIE not in client.cookies  # the browser was told to drop it
        second = await sign_in(app, client)
        assert second != first  # each sign-in, a new session id
        assert (await client.get("/api/v1/me")).status_code == 200
    async with browser(app, first) as copy:
        me = await copy.get("/api/v1/me")
        assert me.status_code == 401 and me.json()["detail"] == "not authenticated"
        page = await copy.get("/jobs")
        assert page.status_code == 401 and "one-time link" in page.text
    async with browser(app, second) as copy:
        assert (await copy.get("/api/v1/me")).status_code == 200
    # The database keeps only the digest of the one session left, not its id.
    assert [row.digest for row in await rows(app)] == [hashlib.sha256(second.encode()).hexdigest()]


async def test_an_expired_session_opens_nothing_and_is_cleaned_up_at_the_next_sign_in(
    app: Running,
) -> None:
    async with browser(app) as client:
        old = await sign_in(app, client)
    async with app.platform.writing() as session:
        await session.execute(update(BrowserSession).values(expires_at=utcnow()))
    async with browser(app, old) as client:
        assert (await client.get("/api/v1/me")).status_code == 401
        await sign_in(app, client)
    assert len(await rows(app)) == 1  # the expired row went with this sign-in


async def test_a_session_in_use_slides_its_expiry(app: Running) -> None:
    async with browser(app) as client:
        await sign_in(app, client)
        long_ago = utcnow() - timedelta(days=13)
        async with app.platform.writing() as session:
            await session.execute(
                update(BrowserSession).values(
                    last_seen=long_ago, expires_at=long_ago + timedelta(days=14)
                )
            )
        answer = await client.get("/api/v1/me")
        assert answer.status_code == 200
        assert "max-age=1209600" in answer.headers["set-cookie"].lower()
    (row,) = await rows(app)
    assert row.expires_at > utcnow() + timedelta(days=13, hours=23)


async def test_sign_ins_begun_and_never_finished_leave_no_rows_behind(app: Running) -> None:
    """Anyone can begin a sign-in (a session row); expired ones go when new ones start."""
    async with app.platform.writing() as session:
        await add_session(session, "abandoned", None, {"state": "x"}, None, utcnow(), utcnow())
    browser_sessions._last_sweep = utcnow() - browser_sessions.SWEEP_EVERY  # not swept lately
    change = await browser_sessions.save_session(
        app.platform.db, browser_sessions.SessionState({"state": "y"}), presented=False
    )
    assert change is browser_sessions.CookieChange.SET
    assert [row.digest for row in await rows(app)] != [] and all(
        row.digest != "abandoned" for row in await rows(app)
    )
