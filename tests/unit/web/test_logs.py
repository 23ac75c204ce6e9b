"""The server's logging: JSON and text lines, masked secrets, request ids from context."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from concordia.logs import REQUEST_ID, logging_config
from concordia.web.observe import RequestContext


@pytest.fixture
def configured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """The server's configuration, JSON and text, each writing to a buffer; undone after."""
    buffers = io.StringIO(), io.StringIO()
    saved = logging.root.handlers[:], logging.root.level
    handlers = []
    for log_format, buffer in zip(("json", "text"), buffers, strict=True):
        config = logging_config(log_format)  # type: ignore[arg-type]
        logging.config.dictConfig(config)
        [handler] = logging.root.handlers
        handler.setStream(buffer)  # type: ignore[attr-defined]
        handlers.append(handler)
    logging.root.handlers = handlers
    try:
        yield buffers
    finally:
        logging.root.handlers, level = saved
        logging.root.setLevel(level)


def test_a_json_line_per_record_with_the_request_id_of_its_context(
    configured: tuple[io.StringIO, io.StringIO],
) -> None:
    as_json, as_text = configured
    log = logging.getLogger("concordia.test")
    log.info("outside any request")
    token = REQUEST_ID.set("req-7")
    try:
        log.warning("in a request: %s\nsecond line", "value")
    finally:
        REQUEST_ID.reset(token)
    first, second = (json.loads(line) for line in as_json.getvalue().splitlines())
    assert first["message"] == "outside any request" and first["request_id"] is None
    assert second["request_id"] == "req-7" and second["level"] == "WARNING"
    assert second["logger"] == "concordia.test"
    assert second["message"] == "in a request: value\nsecond line"  # escaped: one line
    lines = as_text.getvalue().splitlines()
    assert lines[0].endswith("concordia.test: outside any request")
    assert lines[-1] == "second line [req-7]"


def test_tokens_are_masked_in_arguments_fields_and_messages(
    configured: tuple[io.StringIO, io.StringIO],
) -> None:
    as_json, as_text = configured
    log = logging.getLogger("concordia.access")
    target = "/auth/callback?code=SECRETCODE&state=abc"
    log.info('"GET %s HTTP/1.1" 302', target, extra={"path": target, "status": 302})
    log.info("plain message /login?token=SECRETTOKEN")
    record, plain = (json.loads(line) for line in as_json.getvalue().splitlines())
    assert record["path"] == "/auth/callback?code=***&state=abc" and record["status"] == 302
    assert record["message"] == '"GET /auth/callback?code=***&state=abc HTTP/1.1" 302'
    assert plain["message"] == "plain message /login?token=***"
    for text in (as_json.getvalue(), as_text.getvalue()):
        assert "SECRET" not in text


def test_a_token_in_an_argument_of_any_type_is_masked(
    configured: tuple[io.StringIO, io.StringIO],
) -> None:
    as_json, _ = configured
    url = httpx.URL("https://iam.example.org/authorize?code=SECRETCODE")
    logging.getLogger("concordia.test").warning("redirected to %s", url)
    [record] = (json.loads(line) for line in as_json.getvalue().splitlines())
    assert record["message"] == "redirected to https://iam.example.org/authorize?code=***"


def test_an_exception_is_kept_in_its_line(configured: tuple[io.StringIO, io.StringIO]) -> None:
    as_json, _ = configured
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("concordia.test").exception("it failed")
    [record] = (json.loads(line) for line in as_json.getvalue().splitlines())
    assert record["level"] == "ERROR" and "ValueError: boom" in record["exception"]


async def test_the_middleware_puts_the_request_id_in_every_record(
    configured: tuple[io.StringIO, io.StringIO],
) -> None:
    as_json, _ = configured

    async def endpoint(request: Request) -> PlainTextResponse:
        logging.getLogger("concordia.handler").info("handling %s", request.url.path)
        return PlainTextResponse("ok")

    app = RequestContext(Starlette(routes=[Route("/things/{n:int}", endpoint)]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/things/3", headers={"X-Request-ID": "abc.123"})
    assert response.headers["x-request-id"] == "abc.123"
    records = [json.loads(line) for line in as_json.getvalue().splitlines()]
    handled, access = (r for r in records if r["logger"].startswith("concordia."))
    assert handled["message"] == "handling /things/3" and handled["request_id"] == "abc.123"
    assert access["logger"] == "concordia.access" and access["request_id"] == "abc.123"
    assert access["path"] == "/things/3" and access["status"] == 200
    assert REQUEST_ID.get() is None  # not left behind for what runs next
