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
from concordia.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, Any]:
    """Alive: the process answers (a restart is the cure when it does not)."""
    return {"status": "ok", "version": __version__}


@router.get("/readyz", responses={503: {"description": "Not ready, and why"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready: started, the database answers and its schema is the latest (send traffic)."""
    platform: Platform | None = getattr(request.app.state, "platform", None)
    if platform is None or not getattr(request.app.state, "ready", False):
        return _unready("the platform is starting or stopping")
    reason = await operations.unready_reason(platform)
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
    settings: Settings = request.app.state.settings
    if not settings.metrics_enabled:
        return JSONResponse({"detail": "metrics are disabled"}, status_code=404)
    wanted = settings.metrics_token.get_secret_value()
    if wanted:
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {wanted}".encode()):
            return JSONResponse(
                {"detail": "metrics need the metrics token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
    platform: Platform | None = getattr(request.app.state, "platform", None)
    if platform is None:
        return JSONResponse({"detail": "the platform is starting"}, status_code=503)
    counts = await operations.job_counts(platform)
    # The 0.0.4 text format: what every Prometheus server reads.
    body = exposition(counts, platform.backends)
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)
