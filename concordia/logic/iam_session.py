"""The IAM tokens of a browser sign-in: kept encrypted with its session, refreshed when due."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from concordia.auth.oidc import GrantRefused, Iam, IamUnreachable
from concordia.auth.vault import VaultError
from concordia.db import browser_sessions as session_queries
from concordia.db.tables import utcnow
from concordia.logic.database import Database
from concordia.logic.errors import Conflict, DomainError
from concordia.logic.identity import Identity
from concordia.logic.keyring import Keyring

log = logging.getLogger(__name__)

#: Refresh this long before the access token expires: a call made with it must not fail.
REFRESH_MARGIN = 60.0


class SessionEnded(DomainError):
    """The IAM sign-in cannot be renewed (revoked, expired): sign in again."""

    status_code = 401


def iam_of(keyring: Keyring) -> Iam:
    if keyring.iam is None:
        raise Conflict("Concordia runs in local mode: there is no IAM to ask")
    return keyring.iam


def kept_tokens(token: dict[str, Any]) -> dict[str, Any]:
    """What is needed to act for the user later: access and refresh tokens, expiry."""
    return {
        "access_token": token["access_token"],
        "refresh_token": token.get("refresh_token"),
        "expires_at": int(token.get("expires_at") or time.time() + int(token.get("expires_in", 0))),
        "scope": token.get("scope", ""),
    }


def sealed(keyring: Keyring, kept: dict[str, Any]) -> str:
    """The tokens encrypted by the vault, as a session row keeps them."""
    return keyring.vault.encrypt(json.dumps(kept).encode())


async def fresh_tokens(
    db: Database, keyring: Keyring, user_id: int, session_id: int | None = None
) -> dict[str, Any]:
    """The IAM tokens of one browser session of the user (with no ``session_id``, of their
    newest live one: a caller with a bearer token), refreshed first when they expire within
    the margin. Raises SessionEnded when there are none or IAM refuses the refresh;
    IamUnreachable passes."""
    async with keyring.token_locks[user_id]:  # one refresh per user at a time
        row_id, tokens = await _stored(db, keyring, user_id, session_id)
        if tokens["expires_at"] - REFRESH_MARGIN > time.time():
            return tokens
        if not tokens.get("refresh_token"):
            if tokens["expires_at"] > time.time():
                return tokens
            raise SessionEnded("your IAM sign-in has expired: sign in again")
        new = await _refreshed(db, keyring, user_id, row_id, tokens["refresh_token"])
        new.setdefault("refresh_token", tokens["refresh_token"])  # IAM does not rotate them
        kept = kept_tokens(new)
        await _keep(db, row_id, sealed(keyring, kept))
        return kept


async def audience_token(db: Database, keyring: Keyring, user_id: int, audience: str) -> str:
    """An access token of the user's for another service (``audience``: Rucio's), got by
    refreshing their newest live IAM sign-in; the sign-in's own tokens stay (a refresh
    token IAM rotates is kept). SessionEnded when they have no sign-in with a refresh
    token or IAM ended it; IamUnreachable passes."""
    async with keyring.token_locks[user_id]:
        row_id, tokens = await _stored(db, keyring, user_id, None)
        if not tokens.get("refresh_token"):
            raise SessionEnded("your IAM sign-in keeps no refresh token: sign in again")
        new = await _refreshed(db, keyring, user_id, row_id, tokens["refresh_token"], audience)
        if new.get("refresh_token") not in (None, tokens["refresh_token"]):
            await _keep(
                db,
                row_id,
                sealed(keyring, {**tokens, "refresh_token": new["refresh_token"]}),
            )
        token: str = new["access_token"]
        return token


async def _stored(
    db: Database, keyring: Keyring, user_id: int, session_id: int | None
) -> tuple[int, dict[str, Any]]:
    """The row id and decrypted tokens of a live sign-in of the user; SessionEnded if none."""
    iam_of(keyring)  # local mode: there is no sign-in to read (Conflict)
    async with db.reading() as session:
        found = await session_queries.session_tokens(session, user_id, session_id, utcnow())
    tokens: dict[str, Any] | None = None
    if found is not None:
        try:
            tokens = json.loads(keyring.vault.decrypt(found[1]))
        except VaultError:  # the encryption keys changed: the tokens are lost, not a 500
            tokens = None
    if found is None or tokens is None:
        raise SessionEnded("there is no IAM sign-in for this account: sign in again")
    return found[0], tokens


async def _refreshed(
    db: Database,
    keyring: Keyring,
    user_id: int,
    row_id: int,
    refresh_token: str,
    audience: str = "",
) -> dict[str, Any]:
    """IAM's answer to a refresh; a sign-in IAM ended is forgotten (SessionEnded)."""
    try:
        return await iam_of(keyring).refresh(refresh_token, audience)
    except GrantRefused as exc:
        if exc.error != "invalid_grant":  # our client's problem (e.g. its secret), not theirs
            log.error("IAM refused Concordia's token refresh: %s", exc.error)
            raise IamUnreachable(f"IAM refused the refresh ({exc.error})") from None
        log.info("IAM ended a sign-in of user %s (invalid_grant)", user_id)
        await _keep(db, row_id, None)
        raise SessionEnded("IAM ended your sign-in: sign in again") from None


async def _keep(db: Database, row_id: int, ciphertext: str | None) -> None:
    """Store a session's renewed tokens, or forget them (IAM revoked them): a session ended
    meanwhile stays ended, with none."""
    async with db.writing() as session:
        await session_queries.set_session_tokens(session, row_id, ciphertext)


async def iam_access_token(
    db: Database, keyring: Keyring, identity: Identity, scope: str = ""
) -> str:
    """A valid IAM access token to call IAM for the user: the one they authenticated with
    if it has ``scope``, else the one of the browser session they came with, or of their
    newest one (refreshed when needed)."""
    if identity.iam_token and (not scope or scope in identity.iam_scopes):
        return identity.iam_token
    try:
        tokens = await fresh_tokens(db, keyring, identity.user_id, identity.session_id)
    except IamUnreachable as exc:
        raise IamDown(str(exc)) from None
    token: str = tokens["access_token"]
    return token


class IamDown(DomainError):
    """IAM does not answer now: nothing was changed, try again later."""

    status_code = 503
