"""Home (ESAP style: the platform's services and archives as cards) and the account page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from concordia.web.deps import PlatformDep
from concordia.web.pages.common import PageUser, render

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, platform: PlatformDep) -> HTMLResponse:
    return render(request, "home.html", cards=platform.settings.cards)


@router.get("/account", response_class=HTMLResponse)
async def account(request: Request, platform: PlatformDep, user: PageUser) -> HTMLResponse:
    backends = [
        {
            "name": name,
            "isolated": b.isolated,
            "problem": b.isolation_problem,
            "runtime": b.runtime_summary,
        }
        for name, b in platform.backends.items()
    ]
    return render(request, "account.html", identity=user, backends=backends, mode="local")
