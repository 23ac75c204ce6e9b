"""The FastAPI app factory: the platform started for the app (concordia.service) and the routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from concordia import __version__
from concordia.backends.base import Backend
from concordia.logic import operations
from concordia.logic.diracx_accounts import per_user
from concordia.logic.identity import local_sign_in
from concordia.logic.platform import Platform
from concordia.service import end_with_parent, running_platform, tune_server_process
from concordia.settings import Settings
from concordia.web.api import router as api_router
from concordia.web.errors import install_error_handlers
from concordia.web.headers import SecurityHeaders
from concordia.web.issuer import router as issuer_router
from concordia.web.limits import BodyLimit, NoNul
from concordia.web.oauth import diracx_client, web_client
from concordia.web.observe import RequestContext
from concordia.web.ops import router as ops_router
from concordia.web.pages import router as pages_router
from concordia.web.sessions import ServerSessions
from concordia.web.timeouts import BodyReadTimeout

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


def create_app(
    settings: Settings,
    on_ready: Callable[[str, Platform], None] | None = None,
    role: Literal["all", "web"] = "all",
    backends: dict[str, Backend] | None = None,
) -> FastAPI:
    """``on_ready`` receives the one-time login URL and the platform once it is up. A "web"
    app leaves the background work to `concordia worker` (`concordia serve --workers N`,
    whose parent process made the local user's sign-in link). ``backends``: the jobs'
    backends instead of those the settings configure (the tests' fakes)."""
    settings.make_data_dir()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_platform(settings, role, backends=backends) as platform:
            login_url = f"{settings.public_url}/login"
            if not settings.iam_mode and role == "all":  # local mode: the machine's user
                async with platform.writing() as session:
                    login_url = await local_sign_in(session, settings)
            app.state.platform = platform
            iam, timeout = platform.keyring.iam, settings.oidc_http_timeout
            app.state.oauth = web_client(settings, iam, settings.login_scopes()) if iam else None
            per_user_grid = (
                diracx_client(settings, timeout) if per_user(platform.backends) else None
            )
            app.state.diracx_oauth = per_user_grid
            if on_ready is not None:
                on_ready(login_url, platform)
            app.state.ready = True  # /readyz: started
            try:
                yield
            finally:
                app.state.ready = False  # stopping: no new traffic

    app = FastAPI(
        title="Concordia",
        version=__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.add_middleware(ServerSessions, https_only=settings.public_url.startswith("https://"))
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(BodyReadTimeout, seconds=settings.request_read_timeout)
    app.add_middleware(NoNul)
    app.add_middleware(SecurityHeaders, docs_path=app.docs_url)
    # Added last, so the outermost: its request id and access line cover a refused body too.
    app.add_middleware(RequestContext)
    app.state.settings = settings
    app.state.ready = False
    app.state.worker_watch = operations.WorkerWatch()  # /readyz?workers=true
    install_error_handlers(app)
    app.include_router(ops_router)
    app.include_router(api_router)
    app.include_router(issuer_router)
    app.include_router(pages_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def web_app() -> FastAPI:
    """One web process of `concordia serve --workers N` (made in each by uvicorn)."""
    end_with_parent()
    app = create_app(Settings(), role="web")
    tune_server_process()
    return app
