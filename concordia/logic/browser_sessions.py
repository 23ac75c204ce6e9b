"""Browser sessions kept on the server, the cookie only their id: opened, saved, started, ended."""

from __future__ import annotations

import copy
import secrets
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db import browser_sessions as session_queries
from concordia.db.tables import utcnow
from concordia.logic.database import Database
from concordia.logic.identity import digest
from concordia.logic.keyring import Keyring

#: A signed-in session lasts this long after its last request (the sliding window the
#: signed cookie had before).
LIFETIME = timedelta(days=14)
#: A sign-in under way (IAM's state, the page to go back to) is finished within the hour
#: authlib gives its state, or forgotten.
SIGN_IN_LIFETIME = timedelta(hours=1)
#: The last-seen time (and with it the expiry) is written at most this often: not a write
#: per request.
TOUCH_EVERY = timedelta(minutes=5)
#: Expired sessions are removed at most this often, when a new one starts: sign-ins begun
#: and never finished (anyone can begin one) leave no rows behind for long.
SWEEP_EVERY = timedelta(minutes=1)
_last_sweep = datetime.min.replace(tzinfo=UTC)


class CookieChange(Enum):
    KEEP = "keep"  # send nothing
    SET = "set"  # send the session's id (new, or its expiry slides)
    CLEAR = "clear"  # tell the browser to drop its cookie


class SessionState(dict[str, Any]):
    """``request.session``: the session row's data, which the pages read and change; saved
    after the request when it changed."""

    def __init__(
        self,
        data: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        row_id: int | None = None,
        user_id: int | None = None,
        last_seen: datetime | None = None,
    ) -> None:
        super().__init__(data or {})
        #: The random id the cookie carries (None: no session yet).
        self.token = token
        self.row_id = row_id
        #: The signed-in user (None: not signed in).
        self.user_id = user_id
        self.last_seen = last_seen
        self.saved: dict[str, Any] = copy.deepcopy(dict(self))
        #: A new id to send (set at sign-in).
        self.issued = False


def state_of(session: MutableMapping[str, Any]) -> SessionState:
    """The server-side session behind ``request.session`` (web.sessions puts it there)."""
    if not isinstance(session, SessionState):
        raise TypeError("request.session is not a server-side session")
    return session


def _expiry(state: SessionState, now: datetime) -> datetime:
    return now + (LIFETIME if state.user_id is not None else SIGN_IN_LIFETIME)


async def open_session(db: Database, token: str) -> SessionState:
    """The session of a cookie's id; an empty one for an unknown, expired or ended id."""
    async with db.reading() as session:
        row = await session_queries.live_session(session, digest(token), utcnow())
    if row is None:
        return SessionState()
    return SessionState(
        row.data, token=token, row_id=row.id, user_id=row.user_id, last_seen=row.last_seen
    )


async def save_session(db: Database, state: SessionState, presented: bool) -> CookieChange:
    """After the request: keep what changed (a session emptied is ended), slide the expiry
    of one in use; what the cookie (``presented`` with the request or not) then needs."""
    now = utcnow()
    data = dict(state)
    if not data:
        if state.row_id is not None:
            async with db.writing() as session:
                await session_queries.end_session(session, state.row_id)
        state.row_id = state.token = None
        return CookieChange.CLEAR if presented else CookieChange.KEEP
    if state.row_id is None:  # first words of a sign-in under way
        state.token = secrets.token_urlsafe(32)
        async with db.writing() as session:
            await _sweep(session, now)
            state.row_id = await session_queries.add_session(
                session, digest(state.token), None, data, None, now, _expiry(state, now)
            )
        return CookieChange.SET
    changed = data != state.saved
    stale = state.last_seen is None or now - state.last_seen > TOUCH_EVERY
    if changed or stale:
        async with db.writing() as session:
            await session_queries.save_session(
                session, state.row_id, data if changed else None, now, _expiry(state, now)
            )
    return CookieChange.SET if state.issued or stale else CookieChange.KEEP


async def _sweep(session: AsyncSession, now: datetime, *, always: bool = False) -> None:
    """Remove the expired sessions, if not done in this process for SWEEP_EVERY."""
    global _last_sweep
    if always or now - _last_sweep >= SWEEP_EVERY:
        await session_queries.end_expired(session, now)
        _last_sweep = now


async def start_session(
    db: Database,
    state: SessionState,
    user_id: int,
    values: dict[str, Any],
    iam_tokens: str | None = None,
) -> None:
    """Signing in: always a new id (one planted in the browser before is not taken over),
    the old session ended, and expired ones cleaned up."""
    now = utcnow()
    token = secrets.token_urlsafe(32)
    data = {**values, "csrf": secrets.token_urlsafe(24)}
    async with db.writing() as session:
        if state.row_id is not None:
            await session_queries.end_session(session, state.row_id)
        await _sweep(session, now, always=True)
        row_id = await session_queries.add_session(
            session, digest(token), user_id, data, iam_tokens, now, now + LIFETIME
        )
    state.clear()
    state.update(data)
    state.saved = copy.deepcopy(data)
    state.token, state.row_id, state.user_id, state.last_seen = token, row_id, user_id, now
    state.issued = True


async def end_session(db: Database, keyring: Keyring, cookie: MutableMapping[str, Any]) -> None:
    """Signing out: the row goes, with the IAM tokens of its sign-in; a copy of the cookie
    opens nothing any more."""
    state = state_of(cookie)
    if state.row_id is not None:
        async with db.writing() as session:
            await session_queries.end_session(session, state.row_id)
    if state.user_id is not None:  # the data lake asks IAM again, as whatever sign-in is left
        keyring.lake_tokens.pop(state.user_id, None)
    state.clear()
    state.row_id = state.user_id = state.token = None
