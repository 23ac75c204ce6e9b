"""What every page shares: templates, the signed-in user, CSRF for forms."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from concordia import __version__
from concordia.core.units import duration, size_text
from concordia.logic.errors import Invalid, TooLarge
from concordia.logic.identity import Identity
from concordia.web.deps import CSRF_HEADER, MAX_ROW_ID, PlatformDep, same_secret, session_user

TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")
TEMPLATES.env.globals.update(version=__version__, csrf_header=CSRF_HEADER)
TEMPLATES.env.filters.update(duration=duration, size=size_text)


class SignInRequired(Exception):
    """A page needs a signed-in user; the app shows how to sign in (401)."""


class PageForbidden(Exception):
    """A form came without the session's CSRF token (403)."""


async def page_identity(request: Request, platform: PlatformDep) -> Identity:
    identity = await session_user(request, platform)
    if identity is None:
        raise SignInRequired
    return identity


PageUser = Annotated[Identity, Depends(page_identity)]


#: A page form is a few fields: anything larger is refused (413) before it is parsed.
MAX_FORM_BYTES = 256 * 1024


async def read_form(
    request: Request, *, csrf: bool = True, max_bytes: int = MAX_FORM_BYTES, max_files: int = 0
) -> FormData:
    """A posted form (urlencoded, or multipart with at most ``max_files`` files), by default
    with its CSRF token checked before anything in it is used."""
    if len(await request.body()) > max_bytes:
        raise TooLarge(f"the form is larger than {max_bytes} bytes")
    form = await request.form(max_files=max_files)
    if csrf:
        check_csrf(request, str(form.get("csrf", "")))
    return form


def check_csrf(request: Request, token: str) -> None:
    """A state-changing form must carry the session's token (a cross-site form cannot)."""
    if not same_secret(token, request.session.get("csrf", "")):
        raise PageForbidden


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    # A refusal at the door (web.limits) comes before the session is read: no user then.
    cookie = request.session if "session" in request.scope else {}
    user = cookie.get("display_name") or cookie.get("username")
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {"user": user, "csrf": cookie.get("csrf", ""), **context},
        status_code=status_code,
    )


_HEADINGS = {
    401: "Please sign in",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    409: "Not possible now",
    413: "Too large",
    422: "Please check what you entered",
    500: "Something went wrong",
}


def error_page(
    request: Request,
    status: int,
    *lines: str,
    back: tuple[str, str] = ("/", "Back to the home page"),
) -> HTMLResponse:
    return render(
        request,
        "error.html",
        status_code=status,
        heading=_HEADINGS.get(status, "Error"),
        lines=lines,
        back_url=back[0],
        back_label=back[1],
    )


def page_number(request: Request, name: str = "page") -> int:
    """A page number from the query (1 when absent); Invalid naming it otherwise."""
    raw = request.query_params.get(name, "1").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_ROW_ID:
        raise Invalid(name, "must be a whole number from 1", location="query")
    return int(raw)
