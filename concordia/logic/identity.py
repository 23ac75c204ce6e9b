"""Users and bearer tokens: the local user, API tokens, one-time login tokens."""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.auth.groups import Membership
from concordia.db import users as db
from concordia.db.tables import ApiToken, User, utcnow
from concordia.settings import ServerSettings

#: A one-time sign-in link is opened at once by whoever asked for it: one lying in a
#: terminal's scrollback or a service's journal must not open a session hours later.
LOGIN_TOKEN_LIFETIME = timedelta(minutes=15)


class Identity(BaseModel):
    """Who is calling, as the API and pages see it."""

    user_id: int
    username: str
    display_name: str
    auth: str  # "token" | "session" | "iam-token"
    groups: list[str] = Field(default_factory=list)
    memberships: list[Membership] = Field(default_factory=list)
    #: The caller's IAM access token when they authenticated with it (the CLI after
    #: `concordia login`): IAM calls made for them use it. Never shown.
    iam_token: str | None = Field(default=None, exclude=True, repr=False)
    #: The scopes of that token (IAM's managed proxies need proxy:generate).
    iam_scopes: list[str] = Field(default_factory=list, exclude=True, repr=False)
    #: The browser session they came with (its row): IAM calls use that sign-in's tokens.
    session_id: int | None = Field(default=None, exclude=True, repr=False)

    @property
    def vos(self) -> list[str]:
        return [m.vo for m in self.memberships]

    def membership(self, vo: str) -> Membership | None:
        return next((m for m in self.memberships if m.vo == vo), None)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def ensure_user(session: AsyncSession, username: str, display_name: str = "") -> User:
    user = await db.user_named(session, username)
    if user is None:
        user = User(username=username, display_name=display_name or username)
        session.add(user)
        await session.flush()
    return user


async def create_token(
    session: AsyncSession, user: User, *, kind: str = "api", name: str = ""
) -> str:
    """A new random token; only its digest is stored, the caller shows or writes it once."""
    token = secrets.token_urlsafe(32)
    expires = utcnow() + LOGIN_TOKEN_LIFETIME if kind == "login" else None
    session.add(
        ApiToken(user_id=user.id, digest=digest(token), kind=kind, name=name, expires_at=expires)
    )
    await session.flush()
    return token


async def token_holder(session: AsyncSession, token: str) -> tuple[User, datetime | None] | None:
    """The user of an API token and when the token expires; an unknown or expired token
    gives None."""
    return await db.api_token_holder(session, digest(token), utcnow())


async def user_for_token(session: AsyncSession, token: str) -> User | None:
    """The user of an API token; an unknown or expired token gives None."""
    found = await token_holder(session, token)
    return None if found is None else found[0]


async def consume_login_token(session: AsyncSession, token: str) -> User | None:
    """Exchange a one-time login token for its user; a used or expired token gives None."""
    user_id = await db.use_login_token(session, digest(token), utcnow())
    if user_id is None:
        return None
    return await session.get(User, user_id)


def write_secret_file(path: Path, content: str) -> None:
    """Write a secret readable by its owner only (0600 from creation, no window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    os.replace(tmp, path)


async def local_api_token(session: AsyncSession, user: User, token_file: Path) -> str:
    """The local user's API token, kept in the data dir for the CLI (like Jupyter's)."""
    if token_file.exists():
        token = token_file.read_text().strip()
        found = await user_for_token(session, token)
        if found is not None and found.id == user.id:
            return token
    token = await create_token(session, user, name="local CLI")
    write_secret_file(token_file, token + "\n")
    return token


async def login_link(session: AsyncSession, settings: ServerSettings, name: str) -> str:
    """A new one-time sign-in link for the local user (single use, LOGIN_TOKEN_LIFETIME,
    only its digest stored); links used or expired are cleared away."""
    user = await ensure_user(session, settings.local_user)
    await db.clear_spent_login_tokens(session, utcnow())
    token = await create_token(session, user, kind="login", name=name)
    return f"{settings.public_url}/login?token={token}"


async def local_sign_in(session: AsyncSession, settings: ServerSettings) -> str:
    """Local mode at start: the machine's user, their API token in the data dir, and a
    one-time sign-in link for the browser."""
    user = await ensure_user(session, settings.local_user)
    await local_api_token(session, user, settings.api_token_file)
    return await login_link(session, settings, "start-up")
