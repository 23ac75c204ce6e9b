"""API tokens: a web process trusts a token it has checked for a few seconds (no database read
per request), never past the token's expiry, and not at all with the window set to 0."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import update

from concordia.db.tables import ApiToken, User, utcnow
from concordia.logic.identity import digest
from concordia.settings import Settings
from tests.conftest import Running, running_app

pytestmark = pytest.mark.sql


async def set_groups(app: Running, username: str, groups: list[str]) -> None:
    async with app.platform.writing() as session:
        await session.execute(update(User).where(User.username == username).values(groups=groups))


@pytest.mark.parametrize(("trust", "seen"), [(3600.0, []), (0.0, ["/cta"])])
async def test_a_checked_token_is_trusted_for_the_window_only(
    settings: Settings, trust: float, seen: list[str]
) -> None:
    configured = settings.model_copy(update={"api_token_trust_seconds": trust})
    async with running_app(configured) as app, app.new_client("ada") as ada:
        assert (await ada.get("/api/v1/me")).json()["groups"] == []
        await set_groups(app, "ada", ["/cta"])
        # Within the window the identity read first stands; with none, the new groups show.
        assert (await ada.get("/api/v1/me")).json()["groups"] == seen


async def test_a_trusted_token_is_refused_once_it_expires(settings: Settings) -> None:
    configured = settings.model_copy(update={"api_token_trust_seconds": 3600.0})
    async with running_app(configured) as app, app.new_client("ada") as ada:
        token = ada.headers["Authorization"].removeprefix("Bearer ")
        # Room for the first request on a loaded machine: it must come before the expiry.
        expires = utcnow() + timedelta(seconds=5)
        async with app.platform.writing() as session:
            await session.execute(
                update(ApiToken).where(ApiToken.digest == digest(token)).values(expires_at=expires)
            )
        assert (await ada.get("/api/v1/me")).status_code == 200  # checked, trusted until expiry
        await asyncio.sleep((expires - utcnow()).total_seconds() + 0.2)
        refused = await ada.get("/api/v1/me")
        assert refused.status_code == 401, refused.text
        assert refused.headers["WWW-Authenticate"] == "Bearer"


async def test_an_unknown_token_is_refused_and_not_remembered(app: Running) -> None:
    answer = await app.client.get("/api/v1/me", headers={"Authorization": "Bearer not-a-token"})
    assert answer.status_code == 401
    assert digest("not-a-token") not in app.platform.keyring.trusted_tokens
