"""/events: Server-Sent Events of the caller's job changes and of image builds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from concordia.web.api.media import RAW, event_stream
from concordia.web.deps import CurrentUser, PlatformDep
from concordia.web.errors import AUTHENTICATED

router = APIRouter(tags=["events"], responses=AUTHENTICATED)


@router.get(
    "/events",
    response_class=RAW,
    responses=event_stream('Job and image changes, after one "ready"', "ready", "job", "image"),
)
async def events(request: Request, platform: PlatformDep, user: CurrentUser) -> EventSourceResponse:
    async def stream() -> AsyncIterator[dict[str, str]]:
        async with platform.bus.subscribe() as queue:
            yield {"event": "ready", "data": "{}"}
            while not await request.is_disconnected():
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=15)
                except TimeoutError:
                    continue
                if event.reaches(user.user_id, user.vos):
                    yield {"event": event.kind, "data": json.dumps(event.data)}

    return EventSourceResponse(stream(), ping=15)
