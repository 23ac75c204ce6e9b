"""Connecting a user's DiracX account (per-user mode): DiracX's authorization code flow."""

from __future__ import annotations

import logging

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response

from concordia.logic import diracx_accounts
from concordia.logic.errors import DomainError
from concordia.web.deps import PlatformDep
from concordia.web.oauth import OAuthError, StarletteOAuth2App
from concordia.web.pages.account import account_problem, act
from concordia.web.pages.common import PageUser, error_page, read_form

log = logging.getLogger(__name__)
router = APIRouter()


def _client(request: Request) -> StarletteOAuth2App | None:
    client: StarletteOAuth2App | None = request.app.state.diracx_oauth
    return client


@router.post("/account/diracx", response_model=None)
async def connect(request: Request, platform: PlatformDep, user: PageUser) -> Response:
    """Off to DiracX, which signs the user in at their VO's IAM and sends them back."""
    form = await read_form(request)
    client = _client(request)
    if client is None:
        return error_page(request, 404, "Users do not connect DiracX accounts here.")
    try:
        vo, group = diracx_accounts.scope_for(user, str(form.get("vo", "")))
    except DomainError as exc:
        return await account_problem(request, platform, user, exc)
    redirect_uri = f"{platform.settings.public_url}/auth/diracx/callback"
    try:
        redirect: Response = await client.authorize_redirect(
            request, redirect_uri, scope=f"vo:{vo} group:{group}"
        )
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("DiracX authorization could not start: %s", type(exc).__name__)
        return error_page(request, 503, "DiracX cannot be reached now.", "Try again later.")
    return redirect


@router.get("/auth/diracx/callback", response_model=None)
async def callback(request: Request, platform: PlatformDep, user: PageUser) -> Response:
    """DiracX sends the browser back with a code; authlib checks the state (a connection
    started from this browser's session) and redeems the code with the PKCE verifier; the
    tokens say which VO and group they are of, and are kept encrypted."""
    client = _client(request)
    if client is None:
        return error_page(request, 404, "Users do not connect DiracX accounts here.")
    try:
        token = await client.authorize_access_token(request)  # type: ignore[no-untyped-call]
    except OAuthError as exc:
        if exc.error == "mismatching_state":  # authlib: no flow of this state in the session
            return error_page(request, 400, "No DiracX connection was started from this browser.")
        why = exc.description or exc.error
        return error_page(request, 401, f"DiracX did not connect your account: {why}.")
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        log.warning("DiracX token endpoint failed: %s", type(exc).__name__)
        return error_page(request, 503, "DiracX could not be reached to finish connecting.")

    async def connected() -> str:
        done = await diracx_accounts.connect(platform, user, token)
        return (
            f"Your DiracX account is connected: jobs of {done.vo} run as {done.dirac_user} "
            f"in {done.group}."
        )

    return await act(request, platform, user, connected())


@router.post("/account/diracx/disconnect", response_model=None)
async def disconnect(request: Request, platform: PlatformDep, user: PageUser) -> Response:
    form = await read_form(request)

    async def disconnected() -> str:
        vo, group = diracx_accounts.scope_for(user, str(form.get("vo", "")))
        await diracx_accounts.disconnect(
            platform.db, platform.backends, platform.keyring, user, vo, group
        )
        return f"Your DiracX account is disconnected for {vo}."

    return await act(request, platform, user, disconnected())
