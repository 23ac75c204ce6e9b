"""Errors as the caller can read them: JSON for the API, a page with a way back for people."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from concordia.logic.errors import DomainError, Invalid
from concordia.web.pages.common import PageForbidden, SignInRequired, error_page

log = logging.getLogger(__name__)


class Problem(BaseModel):
    """One bad input: where (``["body", "parameters", "jobs"]``), the rule, its kind."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every API error: a sentence for the user, or for a 422 each problem found."""

    detail: str | list[Problem]


_MEANING = {
    400: "The body cannot be read: not JSON (or not UTF-8), or broken multipart",
    401: "Not authenticated, or the token is invalid or expired",
    403: "Not allowed: not a member of the VO it needs, or a browser call without its CSRF token",
    404: "No such thing, or not the caller's",
    408: "The request's body came too slowly (request_read_timeout); nothing was changed",
    409: "Its state, or Concordia's configuration, forbids this now (the detail says why)",
    413: "Too large: the request body, or what it asks for (the detail says which)",
    422: "Bad input: each problem names its field and rule",
    429: "Over a per-user limit (jobs queued, work at once); nothing was changed (the detail "
    "says which and what to do)",
    503: "IAM or a backend does not answer now; nothing was changed, try again",
}


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, for its OpenAPI ``responses``: clients (and the
    schema tests) learn every status it can give and the one body they all share."""
    return {code: {"model": ErrorBody, "description": _MEANING[code]} for code in codes}


#: What any route behind CurrentUser can answer: no or a bad token; IAM's keys unreadable.
AUTHENTICATED = documented(401, 503)
#: The same for a state change: a browser session also needs its CSRF token.
CHANGES = documented(401, 403, 503)
#: A route reading a body: one it cannot parse, or one over the size limit.
BODY = documented(400, 413)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/healthz", "/readyz", "/.well-known/"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> Response:
        if not _is_api(request):
            return error_page(request, exc.status_code, exc.message)
        if isinstance(exc, Invalid):
            # The same shape as FastAPI's own validation errors, so clients parse one form.
            detail = [
                {"loc": [location, *field.split(".")], "msg": rule, "type": "value_error"}
                for location, field, rule in exc.problems
            ]
            return JSONResponse({"detail": detail}, status_code=422)
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_api(request):
            return JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        return error_page(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)
        lines = [f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors()]
        return error_page(request, 422, *lines)

    @app.exception_handler(SignInRequired)
    async def sign_in(request: Request, _exc: SignInRequired) -> Response:
        here = quote(request.url.path)
        if request.app.state.platform.keyring.iam is not None:
            back = (f"/login?next={here}", "Sign in with your IAM account")
            return error_page(request, 401, "This page needs you to be signed in.", back=back)
        return error_page(
            request,
            401,
            "This page needs you to be signed in.",
            "In local mode, sign in with the API token, or open a new one-time link from "
            "`concordia login-link`.",
            back=(f"/login?next={here}", "Sign in"),
        )

    @app.exception_handler(PageForbidden)
    async def forbidden(request: Request, _exc: PageForbidden) -> Response:
        return error_page(
            request, 403, "This form has expired or did not come from Concordia; reload the page."
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        if not _is_api(request):
            return error_page(request, 500, "The error has been logged.")
        return JSONResponse({"detail": "internal error; it has been logged"}, status_code=500)
