"""What each open event stream sends of a published change: its owner's streams, each the
same frame (encoded once for all of them), another user's nothing."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import pytest

from concordia.logic.events import Event, EventBus
from concordia.logic.identity import Identity
from concordia.web.api import events


def user(user_id: int) -> Identity:
    return Identity(user_id=user_id, username=f"u{user_id}", display_name="U", auth="token")


async def test_every_stream_of_the_owner_sends_the_change_and_no_other_users_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded: list[Event] = []
    real = events._encoded

    def counted(event: Event) -> bytes:
        encoded.append(event)
        return real(event)

    monkeypatch.setattr(events, "_encoded", counted)
    bus = EventBus()
    platform: Any = SimpleNamespace(bus=bus)
    tabs = [events._changes(platform, user(1)) for _ in range(3)]
    other = events._changes(platform, user(2))
    for stream in [*tabs, other]:
        assert await anext(stream) == {"event": "ready", "data": "{}"}  # subscribed
    change = Event(kind="job", owner_id=1, data={"id": 7, "status": "Running"})
    bus.publish(change)
    frames = [await anext(stream) for stream in tabs]
    assert frames == [b'event: job\r\ndata: {"id": 7, "status": "Running"}\r\n\r\n'] * 3
    assert encoded == [change]  # once, for the three streams
    nothing = asyncio.ensure_future(anext(other))
    await asyncio.sleep(0.05)
    assert not nothing.done()  # not the other user's
    nothing.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await nothing
    for stream in [*tabs, other]:
        await stream.aclose()
