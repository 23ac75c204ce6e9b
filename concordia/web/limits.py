"""A cap on request bodies for the whole app: refused (413) before they fill memory or disk."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
        return f"the request body is larger than {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: Response
        if scope["path"].startswith("/api/"):
            response = JSONResponse({"detail": self._text}, status_code=413)
        else:
            response = PlainTextResponse(self._text, status_code=413)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
