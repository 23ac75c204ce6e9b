"""Signing in and out: IAM's code flow with PKCE, or in local mode a one-time link or API token."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from concordia.auth.oidc import IamUnreachable
from concordia.logic.accounts import sign_in, sign_in_with_api_token, sign_in_with_link
from concordia.logic.browser_sessions import end_session, state_of
from concordia.web.deps import PlatformDep, same_secret
from concordia.web.oauth import OAuthError, StarletteOAuth2App
from concordia.web.pages.common import PageForbidden, error_page, read_form, render

log = logging.getLogger(__name__)
router = APIRouter()
#: The session key of the sign-in form's CSRF token (not "csrf": that one marks a session
#: signed in).
SIGN_IN_CSRF = "sign_in_csrf"
SIGN_IN = ("/login", "Sign in")


def _safe_next(target: str) -> str:
    """Only a path of this site: an open redirect would lend Concordia's name to phishing."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


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
    if token:
        if await sign_in_with_link(platform.db, token, request.session):
            return RedirectResponse("/", status_code=303)
        problem = "This sign-in link is unknown, already used or expired."
        return _local_sign_in_page(request, next, 401, problem)
    if state_of(request.session).user_id is not None:  # signed in already
        return RedirectResponse(_safe_next(next), status_code=303)
    return _local_sign_in_page(request, next)


@router.post("/login")
async def login_with_api_token(request: Request, platform: PlatformDep) -> Response:
    """Local mode: sign in with the API token, in a new session."""
    if _client(request) is not None:  # IAM signs people in; its tokens are not typed here
        return error_page(request, 404, "Sign in with your IAM account.", back=SIGN_IN)
    form = await read_form(request, csrf=False)
    # The form's token from this browser's own sign-in page: another site cannot sign a
    # visitor in to an account of its choosing.
    if not same_secret(str(form.get("csrf", "")), str(request.session.get(SIGN_IN_CSRF, ""))):
        raise PageForbidden
    target = str(form.get("next", "/"))
    token = str(form.get("token", "")).strip()
    if not token or not await sign_in_with_api_token(platform.db, token, request.session):
        problem = "This API token is unknown or expired."
        return _local_sign_in_page(request, target, 401, problem)
    return RedirectResponse(_safe_next(target), status_code=303)


def _local_sign_in_page(
    request: Request, next: str, status_code: int = 200, problem: str = ""
) -> HTMLResponse:
    """Local mode's sign-in page: the API token, or how to get a new one-time link. The
    form's CSRF token lives in a session of its own, until the sign-in replaces it."""
    form_token = request.session.setdefault(SIGN_IN_CSRF, secrets.token_urlsafe(24))
    return render(
        request, "login.html", status_code=status_code, problem=problem,
        next=_safe_next(next), sign_in_csrf=form_token,
    )  # fmt: skip


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
    except (httpx.HTTPError, ValueError, KeyError, IamUnreachable) as exc:
        log.warning("IAM token endpoint or keys failed: %s", type(exc).__name__)
        return unreachable
    target = _safe_next(str(request.session.get("next", "/")))
    try:
        await sign_in(platform.db, platform.keyring, token, request.session)
    except IamUnreachable:
        return unreachable
    return RedirectResponse(target, status_code=303)


@router.post("/logout")
async def logout(request: Request, platform: PlatformDep) -> RedirectResponse:
    await read_form(request)  # CSRF: a cross-site form must not sign people out
    # The session and its IAM tokens go: a copy of the cookie opens nothing any more.
    await end_session(platform.db, platform.keyring, request.session)
    return RedirectResponse("/", status_code=303)
