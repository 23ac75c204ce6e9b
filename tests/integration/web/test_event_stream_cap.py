"""One user holds a bounded number of open event streams; a closed stream frees its place."""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx
import pytest

from tests.conftest import LiveServer


@pytest.fixture
def live_server_env() -> dict[str, str]:
    return {"CONCORDIA_MAX_EVENT_STREAMS_PER_USER": "3"}


async def open_stream(client: httpx.AsyncClient, stack: AsyncExitStack) -> httpx.Response:
    response = await stack.enter_async_context(client.stream("GET", "/api/v1/events"))
    if response.status_code == 200:
        # Kept until the stack closes: a reader dropped half-way closes the connection.
        lines = response.aiter_lines()
        stack.push_async_callback(lines.aclose)  # type: ignore[attr-defined]
        while await anext(lines) != "event: ready":  # subscribed once "ready" came
            pass
    return response


async def test_a_user_over_the_stream_cap_gets_429_until_one_closes(
    live_server: LiveServer,
) -> None:
    headers = {"Authorization": f"Bearer {live_server.token}"}
    async with httpx.AsyncClient(base_url=live_server.url, headers=headers, timeout=10) as client:
        async with AsyncExitStack() as first:
            assert (await open_stream(client, first)).status_code == 200
            async with AsyncExitStack() as others:
                for _ in range(2):
                    assert (await open_stream(client, others)).status_code == 200
                refused = await open_stream(client, others)
                assert refused.status_code == 429
                await refused.aread()
                assert "3 event streams open already" in refused.json()["detail"]
            # The client left two streams: their places are free again (the server notices
            # the disconnect at its next write or receive, so allow it a moment).
            for _ in range(50):
                async with AsyncExitStack() as again:
                    if (await open_stream(client, again)).status_code == 200:
                        break
            else:
                pytest.fail("closed streams were never counted down")
            # The rest of the API answers the user meanwhile.
            assert (await client.get("/api/v1/me")).status_code == 200
