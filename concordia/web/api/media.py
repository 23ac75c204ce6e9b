"""OpenAPI descriptions of the API's answers that are not JSON: files, text and events."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response

#: The response class of such routes: it declares no media type of its own, so FastAPI
#: neither documents a JSON body for them nor files their JSON errors under theirs.
RAW = Response
#: A job's output file, typed by its name (text, PNG, CSV, ...).
ANY_FILE = "*/*"


def event_stream(description: str, *kinds: str) -> dict[int | str, Any]:
    """The answer of a Server-Sent Events route: each event one of ``kinds``, its data JSON."""
    event = {
        "type": "object",
        "properties": {
            "event": {"type": "string", "enum": list(kinds)},
            "data": {"type": "string", "contentMediaType": "application/json"},
        },
        "required": ["event", "data"],
    }
    return {
        200: {"description": description, "content": {"text/event-stream": {"itemSchema": event}}}
    }


def raw(
    description: str, *media_types: str, headers: dict[str, str] | None = None
) -> dict[int | str, Any]:
    """The successful answer of a route sending ``media_types`` rather than JSON, with the
    ``headers`` (name: what it says) it always carries."""
    schema = {"type": "string", "format": "binary"}
    answer: dict[str, Any] = {
        "description": description,
        "content": {media: {"schema": schema} for media in media_types},
    }
    if headers:
        answer["headers"] = {
            name: {"description": text, "required": True, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return {200: answer}
