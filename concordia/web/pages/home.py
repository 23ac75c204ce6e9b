"""Home (ESAP style): the platform's services and archives as cards."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from concordia.web.deps import PlatformDep
from concordia.web.pages.common import render

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, platform: PlatformDep) -> HTMLResponse:
    return render(request, "home.html", cards=platform.settings.cards)


FAVICON = Path(__file__).resolve().parent.parent / "static" / "favicon.svg"


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    """Browsers ask for /favicon.ico whatever the page says: the same icon, not a 404."""
    return FileResponse(FAVICON, media_type="image/svg+xml")
