"""A `concordia worker`'s /metrics: a small HTTP server of its own port, on a thread."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from concordia.metrics import work_exposition
from concordia.settings import OperationSettings
from concordia.web.ops import metrics_refusal

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape under way does not hold the worker's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """A scrape every few seconds is not worth a log line."""


class WorkerMetrics:
    """Served on a thread, not on the worker's event loop: a scrape is answered even while a
    round holds the loop, and uvicorn would take over the worker's signal handling. On the
    address ``host`` (the server's setting)."""

    def __init__(self, settings: OperationSettings, host: str) -> None:
        self.settings = settings
        family = socket.getaddrinfo(host, settings.worker_metrics_port)[0][0]
        server_class = type("_Server", (_Server,), {"address_family": family})
        self.server: WSGIServer = make_server(
            host,
            settings.worker_metrics_port,
            self.app,
            server_class=server_class,
            handler_class=_QuietHandler,
        )
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="worker-metrics", daemon=True
        )

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            return _answer(start_response, "404 Not Found", _detail("Not Found"))
        refused = metrics_refusal(self.settings, environ.get("HTTP_AUTHORIZATION", ""))
        if refused is not None:
            status, detail = refused
            reason = "401 Unauthorized" if status == 401 else "404 Not Found"
            headers = [("WWW-Authenticate", "Bearer")] if status == 401 else []
            return _answer(start_response, reason, _detail(detail), headers=headers)
        body = work_exposition()
        return _answer(start_response, "200 OK", body, content_type=CONTENT_TYPE_PLAIN_0_0_4)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _detail(text: str) -> bytes:
    return json.dumps({"detail": text}).encode()


def _answer(
    start_response: StartResponse,
    status: str,
    body: bytes,
    *,
    content_type: str = "application/json",
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    start_response(
        status,
        [("Content-Type", content_type), ("Content-Length", str(len(body))), *(headers or [])],
    )
    return [body]


def serve_worker_metrics(settings: OperationSettings, host: str) -> WorkerMetrics | None:
    """The worker's /metrics on ``host``, served until ``close``; None when off (no port,
    metrics disabled) or when its port is taken (another worker on this host): the worker
    runs on, its metrics are what is lost."""
    if not settings.metrics_enabled or not settings.worker_metrics_port:
        return None
    where = f"{host}:{settings.worker_metrics_port}"
    try:
        metrics = WorkerMetrics(settings, host)
    except OSError as exc:
        log.warning("worker metrics not served at %s: %s", where, exc)
        return None
    metrics.thread.start()
    log.info("worker metrics at http://%s/metrics", where)
    return metrics
