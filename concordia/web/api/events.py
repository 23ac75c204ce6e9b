"""/events: Server-Sent Events of the caller's job changes and of image builds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter
from sse_starlette import ServerSentEvent
from sse_starlette.sse import EventSourceResponse

from concordia.logic.events import Event
from concordia.web.api.media import RAW, event_stream
from concordia.web.deps import CurrentUser, PlatformDep
from concordia.web.errors import AUTHENTICATED

router = APIRouter(tags=["events"], responses=AUTHENTICATED)


@router.get(
    "/events",
    response_class=RAW,
    responses=event_stream('Job and image changes, after one "ready"', "ready", "job", "image"),
)
async def events(platform: PlatformDep, user: CurrentUser) -> EventSourceResponse:
    async def stream() -> AsyncIterator[dict[str, str] | bytes]:
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
                chunk = b"".join(_encoded(e) for e in events if e.reaches(user.user_id, vos))
                if chunk:
                    yield chunk

    return EventSourceResponse(stream(), ping=15)


def _encoded(event: Event) -> bytes:
    return ServerSentEvent(event=event.kind, data=event.data_json).encode()
