"""Read timeouts uvicorn lacks: for a request's headers (its HTTP protocol) and its body (ASGI)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # uvicorn without httptools (not "standard"): h11 only
    HttpToolsProtocol = None  # type: ignore[assignment, misc]


class HeaderDeadline(asyncio.Protocol):
    """Mixed into uvicorn's HTTP protocols: a connection that has not sent a whole request
    head within ``request_read_timeout`` seconds of opening, or of the end of its previous
    response, is closed. uvicorn (0.55) times a connection out only once it had a response
    (keep-alive), so a client sending half a request line held its socket and its memory
    for ever: enough of them exhaust the server's file descriptors."""

    # Provided by the uvicorn protocol this is mixed into.
    cycle: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def __init__(self, *args: Any, request_read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = request_read_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._cycle_before: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A new request cycle: its head is complete. An upgraded connection (WebSocket) is
        # another protocol's from now on.
        if self.cycle is not self._cycle_before or self.transport.get_protocol() is not self:
            self._stop_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        # Unless the connection ends, or a pipelined request (already read) goes on.
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_timer()
        self._cycle_before = self.cycle
        self._head_timer = self.loop.call_later(self._read_timeout, self._head_too_slow)

    def _stop_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class H11WithHeaderDeadline(HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with the deadline."""


if HttpToolsProtocol is not None:

    class HttpToolsWithHeaderDeadline(HeaderDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol with the deadline."""


def http_protocol(timeout: float, implementation: str = "auto") -> Any:
    """What to pass uvicorn as ``http=``: the protocol it would choose ("auto": httptools
    when installed, else h11) with the deadline. A partial of a module's class, so that
    uvicorn can hand it to the processes of --workers (pickled)."""
    cls: type[HeaderDeadline] = H11WithHeaderDeadline
    if implementation != "h11" and HttpToolsProtocol is not None:
        cls = HttpToolsWithHeaderDeadline
    return functools.partial(cls, request_read_timeout=timeout)


class BodyReadTimeout:
    """Pure ASGI middleware: while a request's body is being read, each part must arrive
    within ``seconds``, else the app's receive() raises HTTP 408 (the app's error handlers
    turn it into the usual JSON or page; the connection is then closed). A body sent
    slowly, or never, would otherwise hold its request open for ever. Once the body is
    complete, receive() only waits for the client to leave (event streams): not timed."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout(self.seconds):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"the request body did not arrive within {self.seconds:g} s",
                    headers={"Connection": "close"},
                ) from None
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        await self.app(scope, timed_receive, send)
