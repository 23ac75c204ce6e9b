"""What the whole app refuses at the door: bodies over the cap (413) before they fill memory
or disk, and NUL characters in a path or query (422): no database stores them in text."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from concordia.core.units import size_text
from concordia.web.pages.common import error_page


class BodyLimit:
    """Pure ASGI middleware: a declared Content-Length over the cap is refused at once; a
    body that grows past it (chunked) is cut off while it is read, as an HTTP 413 the
    app's error handlers turn into the usual JSON or page."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._text)
            return message

        await self.app(scope, limited_receive, send)

    @property
    def _text(self) -> str:
        cap = self.max_bytes
        return f"the request body is larger than {cap} bytes ({size_text(cap)})"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: Response
        if scope["path"].startswith("/api/"):
            response = JSONResponse({"detail": self._text}, status_code=413)
        else:  # a person sent a form or a file: a page, and the way back to where they were
            request = Request(scope)
            lines = (f"{self._text[0].upper()}{self._text[1:]}.", "Nothing was received or stored.")
            response = error_page(request, 413, *lines, back=_back(request))
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def _back(request: Request) -> tuple[str, str]:
    """The page the refused request came from, when it is one of ours; else the home page."""
    came_from = urlsplit(request.headers.get("referer", ""))
    if came_from.netloc == request.url.netloc and came_from.path.startswith("/"):
        here = came_from.path + (f"?{came_from.query}" if came_from.query else "")
        return here, "Back to the page you came from"
    return "/", "Back to the home page"


class NoNul:
    """Pure ASGI middleware: a request whose path or query holds a NUL character is refused
    (422, naming the query parameter, in FastAPI's validation error form), where it would
    otherwise reach the database (PostgreSQL refuses it in any text: a 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            bad = _nul_locations(scope)
            if bad:
                detail = [
                    {"type": "value_error", "loc": loc, "msg": "NUL characters are not allowed"}
                    for loc in bad
                ]
                await JSONResponse({"detail": detail}, status_code=422)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _nul_locations(scope: Scope) -> list[list[str]]:
    bad: list[list[str]] = []
    if "\x00" in scope["path"]:
        bad.append(["path"])
    query = scope.get("query_string", b"").decode("latin-1")
    if "\x00" in unquote(query):
        pairs = parse_qsl(query, keep_blank_values=True)
        bad += [["query", name] for name, value in pairs if "\x00" in name + value]
        if not bad:  # in a part that is no name=value pair
            bad.append(["query"])
    return bad
