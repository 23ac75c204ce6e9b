"""Signing in and out: IAM's authorization code flow with PKCE, or local mode's one-time link."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from concordia.auth.oidc import IamUnreachable
from concordia.logic.accounts import sign_in
from concordia.logic.iam_session import forget_tokens
from concordia.logic.identity import consume_login_token
from concordia.web.deps import PlatformDep
from concordia.web.oauth import OAuthError, StarletteOAuth2App
from concordia.web.pages.common import error_page, read_form

log = logging.getLogger(__name__)
router = APIRouter()


def _safe_next(target: str) -> str:
    """Only a path of this site: an open redirect would lend Concordia's name to phishing."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def _start_session(request: Request, values: dict[str, Any]) -> None:
    request.session.clear()  # a new identity never inherits the previous one's cookie
    request.session.update(values, csrf=secrets.token_urlsafe(24))


def _client(request: Request) -> StarletteOAuth2App | None:
    client: StarletteOAuth2App | None = request.app.state.oauth
    return client


@router.get("/login")
async def login(request: Request, platform: PlatformDep, token: str = "", next: str = "/") -> Any:
    client = _client(request)
    if client is not None:
        request.session["next"] = _safe_next(next)
        redirect_uri = f"{platform.settings.public_url}/auth/callback"
        try:
            return await client.authorize_redirect(request, redirect_uri)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("IAM discovery failed: %s", type(exc).__name__)
            return error_page(
                request, 503, "IAM cannot be reached to sign you in.", "Try again in a minute."
            )
    async with platform.writing() as session:
        user = await consume_login_token(session, token) if token else None
    if user is None:
        return error_page(
            request,
            401,
            "This sign-in link is unknown, already used or expired."
            if token
            else "Concordia runs in local mode: sign in with the one-time link that "
            "`concordia serve` (make run) printed when it started.",
            "Restart `concordia serve` (make run) for a new one-time link.",
        )
    _start_session(
        request, {"user_id": user.id, "username": user.username, "display_name": user.display_name}
    )
    return RedirectResponse("/", status_code=303)


@router.get("/auth/callback")
async def callback(request: Request, platform: PlatformDep) -> Response:
    """IAM sends the browser back here with a code (or an error); authlib checks the state,
    sends the PKCE verifier with the code, and validates the ID token and its nonce."""
    client = _client(request)
    if client is None:
        return error_page(request, 404, "IAM sign-in is not configured here.")
    unreachable = error_page(request, 503, "IAM could not be reached to finish signing you in.")
    try:
        token = await client.authorize_access_token(request)  # type: ignore[no-untyped-call]
    except OAuthError as exc:
        why = exc.description or exc.error
        return error_page(request, 401, f"IAM did not sign you in: {why}.", "Try again.")
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        log.warning("IAM token endpoint failed: %s", type(exc).__name__)
        return unreachable
    target = _safe_next(str(request.session.get("next", "/")))
    try:
        values = await sign_in(platform, token)
    except IamUnreachable:
        return unreachable
    _start_session(request, values)
    return RedirectResponse(target, status_code=303)


@router.post("/logout")
async def logout(request: Request, platform: PlatformDep) -> RedirectResponse:
    await read_form(request)  # CSRF: a cross-site form must not sign people out
    user_id = request.session.get("user_id")
    if user_id is not None and platform.iam is not None:
        # Nothing acts for the user any more: a copy of this cookie ends at its next renewal.
        await forget_tokens(platform, user_id)
    request.session.clear()
    return RedirectResponse("/", status_code=303)
