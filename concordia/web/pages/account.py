"""The account page: memberships, the certificate IAM lists, the credential and the proxy."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from concordia.logic import accounts, proxies
from concordia.logic.errors import DomainError, Invalid
from concordia.logic.me import account
from concordia.web.deps import PlatformDep
from concordia.web.pages.common import PageUser, read_form, render

router = APIRouter()
FLASH = "account_flash"


async def _page(
    request: Request, platform: PlatformDep, user: PageUser, status_code: int = 200, **extra: Any
) -> HTMLResponse:
    backends = [
        {"name": name, "isolated": b.isolated, "problem": b.isolation_problem,
         "runtime": b.runtime_summary, "limits": b.limits_summary,
         "unreachable": b.unreachable}
        for name, b in platform.backends.items()
    ]  # fmt: skip
    return render(
        request, "account.html", status_code=status_code, me=await account(platform, user),
        backends=backends, flash=request.session.pop(FLASH, None),
        default_hours=platform.settings.proxy_lifetime_hours,
        proxy_groups=platform.settings.proxy_dirac_group, **extra,
    )  # fmt: skip


@router.get("/account", response_class=HTMLResponse)
async def account_page(request: Request, platform: PlatformDep, user: PageUser) -> HTMLResponse:
    return await _page(request, platform, user)


async def account_problem(
    request: Request, platform: PlatformDep, user: PageUser, exc: DomainError
) -> HTMLResponse:
    """The account page again, saying why what was asked was refused."""
    return await _page(request, platform, user, exc.status_code, problem=exc.message)


async def act(
    request: Request, platform: PlatformDep, user: PageUser, action: Awaitable[str]
) -> Response:
    """Run a form's action: its message on the page it redirects to (post/redirect/get), or
    the page again with the refusal."""
    try:
        message = await action
    except DomainError as exc:
        return await account_problem(request, platform, user, exc)
    request.session[FLASH] = message
    return RedirectResponse("/account", status_code=303)


@router.post("/account/scim", response_model=None)
async def read_scim_again(request: Request, platform: PlatformDep, user: PageUser) -> Response:
    await read_form(request)

    async def action() -> str:
        reading = await accounts.refresh_scim(platform.db, platform.keyring, user)
        return f"Read from IAM: {len(reading.certificates)} certificate(s)."

    return await act(request, platform, user, action())


@router.post("/account/credential", response_model=None)
async def upload_credential(request: Request, platform: PlatformDep, user: PageUser) -> Response:
    limit = platform.settings.max_credential_bytes
    form = await read_form(request, max_bytes=2 * limit + 16 * 1024, max_files=2)
    data = b""
    for field in ("file", "key"):
        upload = form.get(field)
        if isinstance(upload, UploadFile):
            data += await upload.read(limit + 1) + b"\n"

    async def action() -> str:
        if not data.strip():
            raise Invalid("file", "choose your certificate file (.p12, or .pem with its key)")
        password = str(form.get("password", ""))
        view = await proxies.upload_credential(platform, user, data.strip(), password)
        return f"Your certificate {view.dn} is stored, encrypted."

    return await act(request, platform, user, action())


@router.post("/account/credential/delete", response_model=None)
async def delete_credential(request: Request, platform: PlatformDep, user: PageUser) -> Response:
    await read_form(request)

    async def action() -> str:
        await proxies.delete_credential(platform.db, user)
        return "Your certificate and its key are deleted from Concordia."

    return await act(request, platform, user, action())


@router.post("/account/proxy", response_model=None)
async def new_proxy(request: Request, platform: PlatformDep, user: PageUser) -> Response:
    form = await read_form(request)

    async def action() -> str:
        hours = _hours(str(form.get("lifetime_hours", "")))
        vo = str(form.get("vo", "")) or None
        view = await proxies.new_proxy(
            platform.settings, platform.db, platform.keyring, user, timedelta(hours=hours), vo
        )
        made = f"New proxy for {view.dn}, valid {view.seconds_left / 3600:.1f} h."
        return f"{made} Shorter than asked: {view.shortened}" if view.shortened else made

    return await act(request, platform, user, action())


def _hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        raise Invalid("lifetime_hours", "a number of hours, e.g. 48") from None
    if not 0 < hours <= 24 * 366:
        raise Invalid("lifetime_hours", "between 0 and 8784 hours")
    return hours


@router.post("/account/proxy/delete", response_model=None)
async def forget_proxy(request: Request, platform: PlatformDep, user: PageUser) -> Response:
    await read_form(request)

    async def action() -> str:
        await proxies.forget_proxy(platform.db, user)
        return "The proxy is deleted."

    return await act(request, platform, user, action())
