"""Security headers on every response: a Content-Security-Policy, nosniff, same-origin referrers."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The pages load only their own scripts, styles and images (no inline code: htmx's inline
# indicator style is turned off in base.html) and talk only to this server (htmx, SSE).
# frame-ancestors: no other site may frame a signed-in page and lure clicks onto it.
PAGE_POLICY = (
    "default-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; "
    "object-src 'none'"
)
# FastAPI's Swagger page is inline script and a CDN's files: it may not be framed either.
DOCS_POLICY = "frame-ancestors 'none'"


class SecurityHeaders:
    """Pure ASGI middleware (a BaseHTTPMiddleware would buffer streams and slow SSE): adds the
    headers to each response start, leaving a header a route set itself as it is."""

    def __init__(self, app: ASGIApp, docs_path: str | None = None) -> None:
        self.app = app
        self.docs_path = docs_path
        self.page_headers = _encoded(PAGE_POLICY)
        self.docs_headers = _encoded(DOCS_POLICY)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = self.docs_path is not None and scope["path"] == self.docs_path
        added = self.docs_headers if docs else self.page_headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in added if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _encoded(policy: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", policy.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    ]
