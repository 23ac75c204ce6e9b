"""What load balancers and Prometheus ask: /healthz (alive), /readyz (can serve), /metrics."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from concordia import __version__
from concordia.logic import operations
from concordia.logic.platform import Platform
from concordia.metrics import exposition
from concordia.settings import OperationSettings

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, Any]:
    """Alive: the process answers (a restart is the cure when it does not)."""
    return {"status": "ok", "version": __version__}


@router.get("/readyz", responses={503: {"description": "Not ready, and why"}})
async def readyz(request: Request, workers: bool = False) -> JSONResponse:
    """Ready: started, the database answers and its schema is the latest (send traffic).
    With ``workers=true`` (for monitoring, not for a load balancer: the pages serve without
    workers), also that a worker has held its lease within worker_absence_seconds."""
    platform: Platform | None = getattr(request.app.state, "platform", None)
    if platform is None or not getattr(request.app.state, "ready", False):
        return _unready("the platform is starting or stopping")
    reason = await operations.unready_reason(platform.db)
    if reason is None and workers:
        reason = await operations.workers_absent_reason(
            platform.settings, platform.db, platform.process, request.app.state.worker_watch
        )
    if reason is not None:
        return _unready(reason)
    return JSONResponse({"status": "ready", "version": __version__})


def _unready(reason: str) -> JSONResponse:
    return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}}, 401: {}, 404: {}},
)
async def metrics(request: Request) -> Response:
    """Prometheus's text format: this process's latencies and requests, and the jobs by
    state and backend counted from the database (the same from every process)."""
    settings: OperationSettings = request.app.state.settings
    refused = metrics_refusal(settings, request.headers.get("authorization", ""))
    if refused is not None:
        status, detail = refused
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    platform: Platform | None = getattr(request.app.state, "platform", None)
    if platform is None:
        return JSONResponse({"detail": "the platform is starting"}, status_code=503)
    counts = await operations.job_counts(platform.db)
    workers = await operations.workers_alive(platform.settings, platform.db, platform.process)
    # The 0.0.4 text format: what every Prometheus server reads.
    body = exposition(counts, platform.backends, works=platform.process.runs_work, workers=workers)
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)


def metrics_refusal(settings: OperationSettings, authorization: str) -> tuple[int, str] | None:
    """Why a scrape is refused (its status code and reason), the same on the web processes'
    port and on a worker's; None: it is served."""
    if not settings.metrics_enabled:
        return 404, "metrics are disabled"
    wanted = settings.metrics_token.get_secret_value()
    if wanted and not secrets.compare_digest(authorization.encode(), f"Bearer {wanted}".encode()):
        return 401, "metrics need the metrics token"
    return None
