"""Request dependencies: the platform and the caller's identity (bearer token or session)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from concordia.logic.identity import Identity, user_for_token
from concordia.logic.platform import Platform

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


async def get_identity(request: Request, platform: PlatformDep) -> Identity:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        async with platform.reading() as session:
            user = await user_for_token(session, token.strip())
        if user is None:
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
        return Identity(
            user_id=user.id, username=user.username, display_name=user.display_name, auth="token"
        )
    cookie = request.session
    if "user_id" in cookie:
        # A cookie rides along with any cross-site request: state changes need the CSRF token.
        if request.method not in SAFE_METHODS and not secrets.compare_digest(
            request.headers.get(CSRF_HEADER, ""), cookie.get("csrf", "")
        ):
            raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header")
        return Identity(
            user_id=cookie["user_id"],
            username=cookie["username"],
            display_name=cookie.get("display_name", ""),
            auth="session",
        )
    raise HTTPException(401, "not authenticated", headers={"WWW-Authenticate": "Bearer"})


CurrentUser = Annotated[Identity, Depends(get_identity)]
