"""Clients that send a request's head or body too slowly, or never, lose their connection
(head) or get 408 (body) after request_read_timeout; the server answers others meanwhile."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from concordia.web.timeouts import http_protocol
from tests.conftest import LiveServer

TIMEOUT = 2.0
#: Generous: the server closes them at TIMEOUT; this only bounds a test that would hang.
MARGIN = 6.0


@pytest.fixture
def live_server_env() -> dict[str, str]:
    return {"CONCORDIA_REQUEST_READ_TIMEOUT": str(TIMEOUT)}


async def connect(port: int, sent: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)
    await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """All the server sent until it closed the connection."""
    return await reader.read()


async def test_half_sent_request_lines_are_closed_and_others_are_served_meanwhile(
    live_server: LiveServer,
) -> None:
    port = live_server.port
    sockets = [await connect(port, b"GET /healthz HT") for _ in range(200)]
    opened = time.monotonic()
    try:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as client:
            asked = time.monotonic()
            health = await client.get("/healthz")
            assert health.status_code == 200 and time.monotonic() - asked < 1.0
        # A connection that had its answer, then sends half the next request: closed too.
        reader, writer = await connect(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.write(b"GET /heal")
        sockets.append((reader, writer))
        sent = await asyncio.wait_for(
            asyncio.gather(*(closed_by_server(r) for r, _ in sockets[:-1])), TIMEOUT + MARGIN
        )
        assert set(sent) == {b""}  # closed, nothing answered
        assert time.monotonic() - opened >= TIMEOUT * 0.9  # not before the timeout
        await asyncio.wait_for(reader.read(), TIMEOUT + MARGIN)
        assert reader.at_eof()
    finally:
        for _, writer in sockets:
            writer.close()


async def test_a_request_head_sent_in_parts_within_the_timeout_is_served(
    live_server: LiveServer,
) -> None:
    reader, writer = await connect(live_server.port, b"GET /healthz HT")
    try:
        await asyncio.sleep(TIMEOUT / 2)
        writer.write(b"TP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def test_a_body_that_stalls_gets_408(live_server: LiveServer) -> None:
    head = (
        "POST /api/v1/submissions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {live_server.token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    reader, writer = await connect(live_server.port, head.encode())
    try:
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT + MARGIN)
        assert time.monotonic() - started >= TIMEOUT * 0.9
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b'"detail":"the request body did not arrive within 2 s"' in answer
    finally:
        writer.close()


async def test_an_event_stream_is_not_cut_by_the_body_timeout(live_server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {live_server.token}"}
    async with httpx.AsyncClient(base_url=live_server.url, headers=headers, timeout=10) as client:
        async with client.stream("GET", "/api/v1/events") as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            while await anext(lines) != "event: ready":
                pass
            await asyncio.sleep(TIMEOUT * 1.5)
            assert (await client.get("/api/v1/me")).status_code == 200
            assert not stream.is_closed


@pytest.fixture(params=["h11", "httptools"])
def bare_server(request: pytest.FixtureRequest) -> Iterator[int]:
    """uvicorn with each HTTP implementation and the deadline, serving a trivial app."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        length = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        http=http_protocol(TIMEOUT / 4, request.param),
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


async def test_both_http_implementations_close_half_sent_heads(bare_server: int) -> None:
    half = await connect(bare_server, b"GET / HTTP/1.1\r\nHost")
    after_answer = await connect(bare_server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await after_answer[0].readuntil(b"ok")).startswith(b"HTTP/1.1 200")
    after_answer[1].write(b"GET /")
    for reader, writer in (half, after_answer):
        assert await asyncio.wait_for(reader.read(), TIMEOUT + MARGIN) == b""
        writer.close()
