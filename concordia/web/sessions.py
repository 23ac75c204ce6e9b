"""The session middleware: ``request.session`` is the server-side session of the cookie's id."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from concordia.logic.browser_sessions import (
    LIFETIME,
    CookieChange,
    SessionState,
    open_session,
    save_session,
)
from concordia.logic.platform import Platform

COOKIE = "concordia_session"
#: Static files need no session: no database read for each of them.
NO_SESSION = "/static/"


class ServerSessions:
    def __init__(self, app: ASGIApp, *, https_only: bool) -> None:
        self.app = app
        self.flags = "; httponly; samesite=lax" + ("; secure" if https_only else "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        platform: Platform | None = getattr(scope["app"].state, "platform", None)
        if platform is None or scope["path"].startswith(NO_SESSION):  # None: not started
            scope["session"] = SessionState()
            await self.app(scope, receive, send)
            return
        token = HTTPConnection(scope).cookies.get(COOKIE)
        state = await open_session(platform.db, token) if token else SessionState()
        scope["session"] = state

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                change = await save_session(platform.db, state, presented=token is not None)
                if change is CookieChange.SET:
                    value = f"{state.token}; Max-Age={int(LIFETIME.total_seconds())}"
                    self._set(message, value)
                elif change is CookieChange.CLEAR:
                    self._set(message, "; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0")
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _set(self, message: Message, value: str) -> None:
        headers = MutableHeaders(scope=message)
        headers.append("Set-Cookie", f"{COOKIE}={value}; path=/{self.flags}")
