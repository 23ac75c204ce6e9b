"""Signing in and out: IAM's authorization code flow with PKCE, or local mode's one-time link."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from concordia.auth.oidc import IamUnreachable, OAuthError
from concordia.logic.accounts import sign_in
from concordia.logic.identity import consume_login_token
from concordia.web.deps import PlatformDep
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


@router.get("/login")
async def login(request: Request, platform: PlatformDep, token: str = "", next: str = "/") -> Any:
    if platform.iam is not None:
        request.session["next"] = _safe_next(next)
        redirect_uri = f"{platform.settings.public_url}/auth/callback"
        try:
            return await platform.iam.client.authorize_redirect(request, redirect_uri)
        except (IamUnreachable, OSError, ValueError) as exc:
            log.warning("IAM discovery failed: %s", exc)
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
    if platform.iam is None:
        return error_page(request, 404, "IAM sign-in is not configured here.")
    try:
        token = await platform.iam.client.authorize_access_token(request)  # type: ignore[no-untyped-call]
    except OAuthError as exc:
        why = exc.description or exc.error
        return error_page(request, 401, f"IAM did not sign you in: {why}.", "Try again.")
    except (IamUnreachable, OSError) as exc:
        log.warning("IAM token endpoint failed: %s", exc)
        return error_page(request, 503, "IAM could not be reached to finish signing you in.")
    target = _safe_next(str(request.session.get("next", "/")))
    _start_session(request, await sign_in(platform, token))
    return RedirectResponse(target, status_code=303)


@router.post("/logout")
async def logout(request: Request) -> RedirectResponse:
    await read_form(request)  # CSRF: a cross-site form must not sign people out
    request.session.clear()
    return RedirectResponse("/", status_code=303)
