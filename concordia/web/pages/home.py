"""Home (ESAP style): the platform's services and archives as cards."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from concordia.web.deps import PlatformDep
from concordia.web.pages.common import render

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, platform: PlatformDep) -> HTMLResponse:
    return render(request, "home.html", cards=platform.settings.cards)
