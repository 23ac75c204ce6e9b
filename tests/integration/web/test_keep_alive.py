"""An idle keep-alive connection stays open for request_read_timeout, past the 5 s after which
HTTP clients (httpx's pools, the CLI's) stop reusing one: no request is sent on a connection
the server is closing at that moment."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import LiveServer

TIMEOUT = 8
#: Longer than uvicorn's own keep-alive (5 s) and httpx's pool expiry (5 s).
IDLE = 6.0
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def live_server_env() -> dict[str, str]:
    return {"CONCORDIA_REQUEST_READ_TIMEOUT": str(TIMEOUT)}


async def answer(reader: asyncio.StreamReader) -> bytes:
    """One response's status line, its head and its body read (a short one: /healthz)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 5)
    return head.split(b"\r\n", 1)[0]


async def test_an_idle_connection_is_kept_for_the_read_timeout(live_server: LiveServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", live_server.port)
    try:
        writer.write(REQUEST)
        await writer.drain()
        assert (await answer(reader)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(IDLE)
        writer.write(REQUEST)  # the same connection, idle longer than a client's pool keeps it
        await writer.drain()
        assert (await answer(reader)).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
