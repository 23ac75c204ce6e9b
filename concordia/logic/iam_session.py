"""The IAM tokens of a signed-in user: kept encrypted, refreshed before they expire."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from concordia.auth.oidc import GrantRefused, Iam, IamUnreachable
from concordia.auth.vault import VaultError
from concordia.logic.errors import Conflict, DomainError
from concordia.logic.identity import Identity
from concordia.logic.platform import Platform
from concordia.logic.secrets import drop_secret, put_secret, read_secret

log = logging.getLogger(__name__)

KIND = "iam_tokens"
#: Refresh this long before the access token expires: a call made with it must not fail.
REFRESH_MARGIN = 60.0


class SessionEnded(DomainError):
    """The IAM sign-in cannot be renewed (revoked, expired): sign in again."""

    status_code = 401


def iam_of(platform: Platform) -> Iam:
    if platform.iam is None:
        raise Conflict("Concordia runs in local mode: there is no IAM to ask")
    return platform.iam


async def store_tokens(platform: Platform, user_id: int, token: dict[str, Any]) -> dict[str, Any]:
    """Keep what is needed to act for the user later: access and refresh tokens, expiry."""
    kept = {
        "access_token": token["access_token"],
        "refresh_token": token.get("refresh_token"),
        "expires_at": int(token.get("expires_at") or time.time() + int(token.get("expires_in", 0))),
        "scope": token.get("scope", ""),
    }
    async with platform.writing() as session:
        await put_secret(
            session,
            platform.vault,
            user_id,
            KIND,
            json.dumps(kept).encode(),
            {"scope": kept["scope"]},
        )
    return kept


async def fresh_tokens(platform: Platform, user_id: int) -> dict[str, Any]:
    """The user's IAM tokens, refreshed first when they expire within the margin. Raises
    SessionEnded when there are none or IAM refuses the refresh; IamUnreachable passes."""
    iam = iam_of(platform)
    async with platform.token_locks[user_id]:  # one refresh per user at a time
        try:
            async with platform.reading() as session:
                found = await read_secret(session, platform.vault, user_id, KIND)
        except VaultError:  # the encryption keys changed: the tokens are lost, not a 500
            found = None
        if found is None:
            raise SessionEnded("there is no IAM sign-in for this account: sign in again")
        tokens: dict[str, Any] = json.loads(found[0])
        if tokens["expires_at"] - REFRESH_MARGIN > time.time():
            return tokens
        if not tokens.get("refresh_token"):
            if tokens["expires_at"] > time.time():
                return tokens
            raise SessionEnded("your IAM sign-in has expired: sign in again")
        try:
            new = await iam.refresh(tokens["refresh_token"])
        except GrantRefused as exc:
            if exc.error != "invalid_grant":  # our client's problem (e.g. its secret), not theirs
                log.error("IAM refused Concordia's token refresh: %s", exc.error)
                raise IamUnreachable(f"IAM refused the refresh ({exc.error})") from None
            log.info("IAM ended user %s's sign-in (invalid_grant)", user_id)
            await forget_tokens(platform, user_id)
            raise SessionEnded("IAM ended your sign-in: sign in again") from None
        new.setdefault("refresh_token", tokens["refresh_token"])  # IAM does not rotate them
        return await store_tokens(platform, user_id, new)


async def forget_tokens(platform: Platform, user_id: int) -> None:
    """Signing out, or IAM revoked them: nothing can act for the user any more."""
    async with platform.writing() as session:
        await drop_secret(session, user_id, KIND)


async def iam_access_token(platform: Platform, identity: Identity, scope: str = "") -> str:
    """A valid IAM access token to call IAM for the user: the one they authenticated with
    if it has ``scope``, else the one of their web sign-in (refreshed when needed)."""
    if identity.iam_token and (not scope or scope in identity.iam_scopes):
        return identity.iam_token
    try:
        tokens = await fresh_tokens(platform, identity.user_id)
    except IamUnreachable as exc:
        raise IamDown(str(exc)) from None
    token: str = tokens["access_token"]
    return token


class IamDown(DomainError):
    """IAM does not answer now: nothing was changed, try again later."""

    status_code = 503
