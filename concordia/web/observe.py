"""Each HTTP request observed: its request id (in context and in the response), one access-log
line, and the request metrics by route template."""

from __future__ import annotations

import logging
import re
import time
import uuid
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from concordia.core.text import CONTROL_CHARACTERS
from concordia.logs import REQUEST_ID
from concordia.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS

access_log = logging.getLogger("concordia.access")

HEADER = b"x-request-id"
#: An incoming id is kept only if it is short and made of these characters: it goes into
#: every log line of the request, where a CR, LF, quote or space could forge or break lines.
SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
#: The route label of a request no route answered (static files, paths that are not
#: found): its path is not a label, it is unbounded.
OTHER = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Control characters of a query string, escaped in the access log.
#: Query parameters that are secrets (a grid image link's signature): never logged.
_SECRET = re.compile(r"(^|&)(sig)=[^&]*")


def request_id_of(scope: Scope) -> str:
    """The client's X-Request-ID if it is sane, else a new one."""
    for name, value in scope["headers"]:
        if name == HEADER:
            if SANE_REQUEST_ID.fullmatch(value):
                given: str = value.decode("ascii")
                return given
            break
    return uuid.uuid4().hex


def _route(scope: Scope, path: str) -> str:
    """The template of the route that answered ``path`` (e.g. /api/v1/jobs/{job_id})."""
    # The router records the route on the scope it was given (the same dict).
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    regex = getattr(route, "path_regex", None)
    if not isinstance(template, str) or not isinstance(regex, re.Pattern):
        return OTHER
    # An included router's route may know its path below the router's prefix only: the
    # prefix is what precedes the part of the path the route's own pattern matches.
    for start in (0, *(m.start() for m in re.finditer("/", path) if m.start())):
        if regex.match(path[start:]):
            return path[:start] + template
    return template


def _target(scope: Scope) -> str:
    """The request's path and query for the log, quoted as uvicorn does: the path arrives
    percent-decoded and may hold a newline."""
    target = quote(scope.get("root_path", "") + scope["path"])
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        query = _SECRET.sub(r"\1\2=REDACTED", query)
        target += "?" + CONTROL_CHARACTERS.sub(lambda m: f"%{ord(m.group()):02X}", query)
    return target


class RequestContext:
    """Pure ASGI middleware (a BaseHTTPMiddleware would hold streamed responses such as
    Server-Sent Events): the outermost, so that every line logged while a request is
    handled carries its id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        # Before routing, which may change the scope's paths.
        path, target = scope["path"], _target(scope)
        status = 500  # what the client gets if the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._observe(scope, path, target, status, time.perf_counter() - started)
            REQUEST_ID.reset(token)

    @staticmethod
    def _observe(scope: Scope, path: str, target: str, status: int, seconds: float) -> None:
        method = scope["method"]
        # Label values must be bounded: a client may send any method token.
        label = method if method in METHODS else "other"
        route = _route(scope, path)
        HTTP_REQUESTS.labels(label, route, str(status)).inc()
        HTTP_REQUEST_SECONDS.labels(label, route).observe(seconds)
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "-"
        duration_ms = round(seconds * 1000, 1)
        access_log.info(
            '%s - "%s %s HTTP/%s" %d %.1fms',
            where,
            method,
            target,
            scope.get("http_version", "1.1"),
            status,
            duration_ms,
            extra={
                "method": method,
                "path": target,
                "status": status,
                "duration_ms": duration_ms,
                "client": where,
            },
        )
