"""Users' own DiracX sign-ins (diracx_auth = user): kept encrypted, refreshed, acted with."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from concordia.auth.vault import VaultError
from concordia.backends.base import (
    Backend,
    BackendError,
    BackendUnreachable,
    Owner,
    SignIn,
    SignInEnded,
    Token,
)
from concordia.db import users as user_queries
from concordia.logic.accounts import member_of
from concordia.logic.database import Database
from concordia.logic.errors import Conflict, Forbidden, Unavailable
from concordia.logic.identity import Identity
from concordia.logic.keyring import Keyring
from concordia.logic.platform import Platform
from concordia.logic.secrets import put_secret, read_secret
from concordia.settings import GridSettings

log = logging.getLogger(__name__)

#: One row per user: every (VO, group) they connected, by "vo/group".
KIND = "diracx_tokens"
#: Refresh this long before the access token expires: a call made with it must not fail.
REFRESH_MARGIN = 60.0


class DiracXConnection(BaseModel):
    """What may be shown of a connection: never a token."""

    vo: str
    group: str
    #: The DiracX user the tokens are of (their preferred_username).
    dirac_user: str
    #: When DiracX's refresh token runs out (rotation keeps the first one's expiry): the
    #: connection lapses then, and the user connects again.
    usable_until: datetime | None


class NotConnected(Conflict):
    """The user has not connected their DiracX account for this VO and group (or it lapsed)."""


def per_user(backends: dict[str, Backend]) -> bool:
    """Whether jobs go to DiracX with their owners' own sign-ins (diracx_auth = user)."""
    return any(backend.needs_user_token for backend in backends.values())


def _grid(backends: dict[str, Backend]) -> Backend:
    """The backend whose jobs act with users' own sign-ins: DiracX in per-user mode."""
    for backend in backends.values():
        if backend.needs_user_token:
            return backend
    raise Conflict("no DiracX is configured here (diracx_url)")


def _forget_token(backends: dict[str, Backend], owner: Owner) -> None:
    """The user's sign-in changed: no backend acts with the token it kept of the old one."""
    for backend in backends.values():
        backend.forget_token(owner)


def scope_for(identity: Identity, vo: str) -> tuple[str, str]:
    """The VO and DIRAC group the user's jobs run under in DiracX; a VO they are not in is
    refused."""
    return vo, member_of(identity, vo).dirac_group


async def _read(db: Database, keyring: Keyring, user_id: int) -> dict[str, dict[str, Any]]:
    try:
        async with db.reading() as session:
            found = await read_secret(session, keyring.vault, user_id, KIND)
    except VaultError:  # the encryption keys changed: the tokens are lost, not a 500
        return {}
    if found is None:
        return {}
    kept: dict[str, dict[str, Any]] = json.loads(found[0])
    return kept


async def _write(
    db: Database, keyring: Keyring, user_id: int, kept: dict[str, dict[str, Any]]
) -> None:
    shown = {
        key: {k: v for k, v in entry.items() if k in DiracXConnection.model_fields}
        for key, entry in kept.items()
    }
    async with db.writing() as session:
        await put_secret(session, keyring.vault, user_id, KIND, json.dumps(kept).encode(), shown)


def _entry(signed: SignIn, token: Token) -> dict[str, Any]:
    until = signed.usable_until
    return {
        "vo": signed.vo,
        "group": signed.group,
        "dirac_user": signed.user,
        "usable_until": datetime.fromtimestamp(until, UTC).isoformat() if until else None,
        "access_token": token.access_token,
        "expires_at": time.time() + token.expires_in,
        "refresh_token": token.refresh_token,
    }


async def connect(
    platform: Platform, identity: Identity, answer: dict[str, Any]
) -> DiracXConnection:
    """Keep the tokens DiracX gave at the end of the user's sign-in there, once checked to
    be of a VO the user is a member of, in its DIRAC group, and of the user themself."""
    token = Token.model_validate(answer)
    signed = _grid(platform.backends).sign_in_of(token)
    vo, group = scope_for(identity, signed.vo)
    if signed.group != group:
        raise Conflict(
            f"DiracX signed you in to {vo}/{signed.group}, not to {vo}/{group}: nothing was kept"
        )
    await _check_same_person(platform.settings, platform.db, identity, signed)
    async with platform.keyring.token_locks[identity.user_id]:
        kept = await _read(platform.db, platform.keyring, identity.user_id)
        kept[f"{vo}/{group}"] = _entry(signed, token)
        await _write(platform.db, platform.keyring, identity.user_id, kept)
    _forget_token(platform.backends, Owner(identity.username, vo, group))
    log.info("user %s connected DiracX as %s in %s/%s", identity.username, signed.user, vo, group)
    return DiracXConnection.model_validate(kept[f"{vo}/{group}"])


async def _check_same_person(
    settings: GridSettings, db: Database, identity: Identity, signed: SignIn
) -> None:
    """With the same IAM, the IAM subject DiracX names must be the user's own (a browser
    still signed in to IAM as someone else must not connect their account)."""
    if not settings.diracx_same_iam:
        return
    async with db.reading() as session:
        subject = await user_queries.iam_subject(session, identity.user_id)
    if subject is not None and signed.iam_subject != subject:
        raise Forbidden(
            f"DiracX signed you in as {signed.user}, another IAM account than yours: sign out "
            "of IAM, then connect again as yourself; nothing was kept"
        )


async def connections(db: Database, keyring: Keyring, user_id: int) -> list[DiracXConnection]:
    kept = await _read(db, keyring, user_id)
    return [DiracXConnection.model_validate(entry) for entry in kept.values()]


async def disconnect(
    db: Database,
    backends: dict[str, Backend],
    keyring: Keyring,
    identity: Identity,
    vo: str,
    group: str,
) -> None:
    async with keyring.token_locks[identity.user_id]:
        kept = await _read(db, keyring, identity.user_id)
        if kept.pop(f"{vo}/{group}", None) is None:
            raise NotConnected(f"your DiracX account is not connected for {vo}/{group}")
        await _write(db, keyring, identity.user_id, kept)
    _forget_token(backends, Owner(identity.username, vo, group))


async def access_token(
    db: Database, backends: dict[str, Backend], keyring: Keyring, user_id: int, vo: str, group: str
) -> tuple[str, float]:
    """The user's DiracX access token for (vo, group) and its expiry, refreshed first when
    it expires within the margin. NotConnected when there is none or DiracX ended it."""
    # Shielded, lock included: once DiracX has rotated a refresh token, the new one is kept
    # even if the caller is cancelled, before anyone else reads the old one (a replay ends
    # all the user's DiracX sign-ins).
    return await asyncio.shield(_access_token(db, backends, keyring, user_id, vo, group))


async def _access_token(
    db: Database, backends: dict[str, Backend], keyring: Keyring, user_id: int, vo: str, group: str
) -> tuple[str, float]:
    key = f"{vo}/{group}"
    how = "connect it again on your account page"
    # DiracX rotates refresh tokens: one refresh at a time.
    async with keyring.token_locks[user_id]:
        kept = await _read(db, keyring, user_id)
        entry = kept.get(key)
        if entry is None:
            raise NotConnected(f"your DiracX account is not connected for {key}: {how}")
        if entry["expires_at"] - REFRESH_MARGIN > time.time():
            return entry["access_token"], entry["expires_at"]
        if not entry.get("refresh_token"):
            raise NotConnected(f"your DiracX sign-in for {key} has expired: {how}")
        return await _refresh(db, backends, keyring, user_id, kept, key, how)


async def _refresh(
    db: Database,
    backends: dict[str, Backend],
    keyring: Keyring,
    user_id: int,
    kept: dict[str, dict[str, Any]],
    key: str,
    how: str,
) -> tuple[str, float]:
    entry = kept[key]
    grid = _grid(backends)
    try:
        token = await grid.refresh_user_token(entry["refresh_token"])
    except SignInEnded as exc:
        log.info("DiracX ended user %s's sign-in for %s: %s", user_id, key, exc)
        kept.pop(key)
        await _write(db, keyring, user_id, kept)
        raise NotConnected(f"DiracX ended your sign-in for {key} ({exc}): {how}") from None
    except BackendUnreachable:
        raise
    except BackendError as exc:  # Concordia's problem (its client id), not theirs:
        log.error("DiracX refused Concordia's token refresh: %s", exc)  # nothing decided
        raise BackendUnreachable(f"DiracX refused Concordia's token refresh: {exc}") from None
    signed = grid.sign_in_of(token)
    kept[key] = _entry(
        replace(signed, vo=entry["vo"], group=entry["group"], user=entry["dirac_user"]), token
    )
    await _write(db, keyring, user_id, kept)
    return token.access_token, kept[key]["expires_at"]


async def require_connection(
    db: Database,
    backends: dict[str, Backend],
    keyring: Keyring,
    identity: Identity,
    vo: str,
    group: str,
) -> None:
    """Before a submission to DiracX in per-user mode: refused now (409, with what to do)
    rather than jobs failing later."""
    try:
        await access_token(db, backends, keyring, identity.user_id, vo, group)
    except BackendUnreachable as exc:  # its token needed a refresh, and DiracX is down
        raise Unavailable(f"nothing was submitted: {exc}") from None


def user_tokens(db: Database, backends: dict[str, Backend], keyring: Keyring) -> None:
    """Give each backend that needs users' own tokens where they come from: users' own
    sign-ins, by username."""

    async def source(owner: Owner) -> tuple[str, float]:
        async with db.reading() as session:
            user_id = await user_queries.user_id_named(session, owner.user)
        if user_id is None:
            raise NotConnectedGrid(f"no user {owner.user!r} here")
        try:
            return await access_token(db, backends, keyring, user_id, owner.vo, owner.group)
        except NotConnected as exc:
            raise NotConnectedGrid(str(exc)) from None

    for backend in backends.values():
        if backend.needs_user_token:
            backend.use_user_tokens(source)


class NotConnectedGrid(BackendError):
    """As the backend sees a missing or ended sign-in: the job's call is refused, with why."""
