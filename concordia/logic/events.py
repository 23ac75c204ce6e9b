"""An in-process event bus: job and image changes fanned out to SSE subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from functools import cached_property
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr


class Event(BaseModel):
    kind: str  # "job" | "image"
    #: The job's owner (a job event reaches its owner only).
    owner_id: int | None
    data: dict[str, Any]
    #: Also reached: these users (an image's), and the members of these VOs (an image
    #: shared in its users' VOs).
    viewers: list[int] = Field(default_factory=list)
    vos: list[str] = Field(default_factory=list)

    #: What the event's subscribers send of it, made once by the first (see sent_as).
    _sent: dict[str, bytes] = PrivateAttr(default_factory=dict)

    @cached_property
    def data_json(self) -> str:
        """The data as JSON, made once: every subscriber's stream sends the same text."""
        return json.dumps(self.data)

    def sent_as(self, form: str, make: Callable[[Event], bytes]) -> bytes:
        """``make(self)``, made once for every subscriber that sends the event in ``form``
        (twenty streams open, one event, one encoding)."""
        sent = self._sent.get(form)
        if sent is None:
            sent = self._sent[form] = make(self)
        return sent

    def reaches(self, user_id: int, vos: Iterable[str]) -> bool:
        if user_id == self.owner_id or user_id in self.viewers:
            return True
        return not set(self.vos).isdisjoint(vos)


class EventBus:
    """Each subscriber gets its own bounded queue; a slow one loses old events, not the server."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._queue_size = queue_size

    @property
    def listened(self) -> bool:
        return bool(self._subscribers)

    def publish(self, event: Event) -> None:
        for queue in self._subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
