"""Request dependencies: the platform and the caller's identity (bearer token or session)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from concordia.auth.oidc import IamUnreachable, TokenInvalid, looks_like_jwt
from concordia.logic.accounts import api_token_identity, bearer_identity, session_identity
from concordia.logic.iam_session import SessionEnded
from concordia.logic.identity import Identity
from concordia.logic.platform import Platform

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
#: The largest row id: PostgreSQL's integer columns (SQLite's are wider). A larger number
#: names nothing, and the database would refuse it rather than find no row.
MAX_ROW_ID = 2**31 - 1
#: A job or submission id in a path.
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]


def same_secret(given: str, expected: str) -> bool:
    """Constant time, and any text (compare_digest refuses non-ASCII str)."""
    return bool(expected) and secrets.compare_digest(given.encode(), expected.encode())


async def get_platform(request: Request) -> Platform:
    # async: a plain function would be run in a worker thread, a hand-over per request
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


async def bearer(platform: Platform, token: str) -> Identity:
    """An IAM access token (JWT, checked against the issuer's keys) or a Concordia API token."""
    if platform.keyring.iam is not None and looks_like_jwt(token):
        try:
            return await bearer_identity(platform.settings, platform.db, platform.keyring, token)
        except TokenInvalid as exc:
            raise HTTPException(401, f"invalid token: {exc}", headers=_CHALLENGE) from None
        except IamUnreachable:
            raise HTTPException(503, "IAM's keys cannot be read now: try again") from None
    identity = await api_token_identity(platform.settings, platform.db, platform.keyring, token)
    if identity is None:
        raise HTTPException(401, "invalid token", headers=_CHALLENGE)
    return identity


async def session_user(request: Request, platform: Platform) -> Identity | None:
    """The signed-in browser user, their IAM tokens renewed when due; None if not signed in
    (or IAM ended the sign-in: the session is cleared)."""
    try:
        identity = await session_identity(
            platform.settings, platform.db, platform.keyring, request.session
        )
    except SessionEnded:
        identity = None
    if identity is None and "csrf" in request.session:  # a sign-in, not one under way
        request.session.clear()  # the session ends (web.sessions deletes it)
    return identity


async def get_identity(request: Request, platform: PlatformDep) -> Identity:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        return await bearer(platform, token.strip())
    identity = await session_user(request, platform)
    if identity is not None:
        # A cookie rides along with any cross-site request: state changes need the CSRF token.
        if request.method not in SAFE_METHODS and not same_secret(
            request.headers.get(CSRF_HEADER, ""), request.session.get("csrf", "")
        ):
            raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header")
        return identity
    raise HTTPException(401, "not authenticated", headers=_CHALLENGE)


CurrentUser = Annotated[Identity, Depends(get_identity)]
