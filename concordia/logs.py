"""Logging of the server: request ids carried in context, secrets masked, text or JSON lines."""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

#: The id of the HTTP request being handled, set by the web layer's middleware; tasks started
#: while handling a request (an image build, say) inherit it, so their lines name it too.
REQUEST_ID: ContextVar[str | None] = ContextVar("concordia_request_id", default=None)

#: Secrets that travel in query strings: the one-time login link's token, IAM's
#: authorization code (single use and PKCE-bound, but a secret until used).
TOKEN_IN_QUERY = re.compile(r"((?:^|[?&])(?:token|code)=)[^&\s]+")

#: Fields an access-log record carries besides its message (passed as ``extra``).
ACCESS_FIELDS = ("method", "path", "status", "duration_ms", "client")
#: The record attributes that may hold a request target, masked like the arguments.
_TARGET_FIELDS = ("path",)

LogFormat = Literal["text", "json"]


def mask_secrets(text: str) -> str:
    return TOKEN_IN_QUERY.sub(r"\1***", text)


class RedactTokens(logging.Filter):
    """Masks `token=...` and `code=...` in a record's message and request target (the
    request lines of the one-time login link and of IAM's redirect back). On a handler it
    sees every record written, whichever logger made it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            # The message as it will be written: arguments of any type (a URL object) count.
            message = record.getMessage()
        except Exception:
            return True  # a bad logging call: the handler reports it as logging does
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        for name in _TARGET_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, mask_secrets(value))
        return True


class AddRequestId(logging.Filter):
    """Gives every record the request id of the context it was made in (None outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, the access
    fields where the record has them, and the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a message argument of any type still makes a line, never an error.
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """For a console: level, logger and message, with the request id where there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-8s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{text} [{request_id}]" if request_id else text


def logging_config(log_format: LogFormat, level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for the server: everything to stderr through one
    handler, whose filters mask secrets and add request ids to every record, uvicorn's
    included (its loggers then propagate to it instead of keeping handlers of their own)."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "redact": {"()": RedactTokens},
            "request_id": {"()": AddRequestId},
        },
        "formatters": {"main": {"()": formatter}},
        "handlers": {
            "main": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "main",
                "filters": ["redact", "request_id"],
            }
        },
        "root": {"handlers": ["main"], "level": level},
        "loggers": {
            **{
                name: {"handlers": [], "level": level, "propagate": True}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "concordia")
            },
            # A line per call to IAM or DiracX (polled every few seconds) is noise.
            **{name: {"level": "WARNING"} for name in ("httpx", "httpcore")},
        },
    }
