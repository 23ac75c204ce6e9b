"""/events: Server-Sent Events of the caller's job changes and of image builds."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from sse_starlette import ServerSentEvent
from sse_starlette.sse import EventSourceResponse

from concordia.logic.events import Event
from concordia.logic.identity import Identity
from concordia.logic.platform import Platform
from concordia.web.api.media import RAW, event_stream
from concordia.web.deps import CurrentUser, PlatformDep
from concordia.web.errors import AUTHENTICATED

router = APIRouter(tags=["events"], responses=AUTHENTICATED)
TOO_MANY: dict[int | str, dict[str, Any]] = {
    429: {"description": "The caller has as many streams open as allowed"}
}


@router.get(
    "/events",
    response_class=RAW,
    responses={
        **event_stream('Job and image changes, after one "ready"', "ready", "job", "image"),
        **TOO_MANY,
    },
)
async def events(request: Request, platform: PlatformDep, user: CurrentUser) -> EventSourceResponse:
    # Each stream holds a subscription and a connection for as long as the client likes: a
    # thousand from one user slowed every other request, so each user gets a few.
    open_streams = _open_streams(request)
    limit = platform.settings.max_event_streams_per_user
    if open_streams[user.user_id] >= limit:
        detail = f"you have {limit} event streams open already: close one first"
        raise HTTPException(429, detail)
    open_streams[user.user_id] += 1

    async def stream() -> AsyncIterator[dict[str, str] | bytes]:
        try:
            # aclosing: the subscription ends with the stream, not when collected.
            async with aclosing(_changes(platform, user)) as changes:
                async for item in changes:
                    yield item
        finally:  # the client went (the response cancels this) or the server stops
            open_streams[user.user_id] -= 1
            if not open_streams[user.user_id]:
                del open_streams[user.user_id]

    return EventSourceResponse(stream(), ping=15)


def _open_streams(request: Request) -> Counter[int]:
    """Open streams per user id, in this process (each of `serve --workers N` counts its own)."""
    app_state = request.app.state
    if not hasattr(app_state, "event_streams"):
        app_state.event_streams = Counter()
    streams: Counter[int] = app_state.event_streams
    return streams


async def _changes(
    platform: Platform, user: Identity
) -> AsyncGenerator[dict[str, str] | bytes, None]:
    vos = set(user.vos)
    async with platform.bus.subscribe() as queue:
        yield {"event": "ready", "data": "{}"}
        # No disconnect check per event (each costs a cancel scope and a receive): the
        # response itself cancels this stream when the client goes.
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), timeout=15)
            except TimeoutError:
                continue
            # What came meanwhile goes in the same write: a round's news of hundreds of
            # jobs, one send each, would hold up the requests the server answers beside
            # (bench/load.py: p95 of GET /api/v1/jobs).
            events = [first]
            while not queue.empty():
                events.append(queue.get_nowait())
            chunk = b"".join(
                e.sent_as("sse", _encoded) for e in events if e.reaches(user.user_id, vos)
            )
            if chunk:
                yield chunk


def _encoded(event: Event) -> bytes:
    return ServerSentEvent(event=event.kind, data=event.data_json).encode()
