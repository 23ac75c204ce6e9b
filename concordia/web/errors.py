"""Domain errors and stray exceptions as JSON with the right status, never a bare 500 page."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from concordia.logic.errors import DomainError, Invalid

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(_request: Request, exc: DomainError) -> JSONResponse:
        if isinstance(exc, Invalid):
            # The same shape as FastAPI's own validation errors, so clients parse one form.
            detail = [
                {"loc": [location, *field.split(".")], "msg": rule, "type": "value_error"}
                for location, field, rule in exc.problems
            ]
            return JSONResponse({"detail": detail}, status_code=422)
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; it has been logged"}, status_code=500)
