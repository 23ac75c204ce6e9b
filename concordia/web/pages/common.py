"""What every page shares: templates, the signed-in user, CSRF for forms."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from concordia import __version__
from concordia.logic.identity import Identity
from concordia.web.deps import CSRF_HEADER

TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")
TEMPLATES.env.globals.update(version=__version__, csrf_header=CSRF_HEADER)


class SignInRequired(Exception):
    """A page needs a signed-in user; the app shows how to sign in (401)."""


class PageForbidden(Exception):
    """A form came without the session's CSRF token (403)."""


def page_identity(request: Request) -> Identity:
    cookie = request.session
    if "user_id" not in cookie:
        raise SignInRequired
    return Identity(
        user_id=cookie["user_id"],
        username=cookie["username"],
        display_name=cookie.get("display_name", ""),
        auth="session",
    )


PageUser = Annotated[Identity, Depends(page_identity)]


def check_csrf(request: Request, token: str) -> None:
    """A state-changing form must carry the session's token (a cross-site form cannot)."""
    expected = request.session.get("csrf", "")
    if not expected or not secrets.compare_digest(token, expected):
        raise PageForbidden


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    cookie = request.session
    user = cookie.get("display_name") or cookie.get("username")
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {"user": user, "csrf": cookie.get("csrf", ""), **context},
        status_code=status_code,
    )
