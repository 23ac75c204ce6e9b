"""The FastAPI app factory: start-up (migrations, backends, reconciler) and the routes."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from concordia import __version__
from concordia.auth.oidc import Iam
from concordia.auth.vault import open_vault
from concordia.backends.base import Backend
from concordia.backends.diracx import DiracXBackend
from concordia.backends.local import LocalBackend
from concordia.db.engine import make_engine, make_sessionmaker
from concordia.db.migrate import upgrade
from concordia.images.builders import stop_running_builds
from concordia.logic.applications import ApplicationCatalog
from concordia.logic.diracx_accounts import per_user, user_tokens
from concordia.logic.identity import create_token, ensure_user, local_api_token, write_secret_file
from concordia.logic.images import open_image_builds, recover_builds
from concordia.logic.platform import Platform
from concordia.settings import Settings
from concordia.web.api import router as api_router
from concordia.web.errors import install_error_handlers
from concordia.web.limits import BodyLimit
from concordia.web.oauth import diracx_client, web_client
from concordia.web.observe import RequestContext
from concordia.web.ops import router as ops_router
from concordia.web.pages import router as pages_router
from concordia.worker import Reconciler, cancel

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


def _secret_key(settings: Settings) -> str:
    path = settings.secret_key_file
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(48)
    write_secret_file(path, key + "\n")
    return key


def create_app(
    settings: Settings, on_ready: Callable[[str, Platform], None] | None = None
) -> FastAPI:
    """``on_ready`` receives the one-time login URL and the platform once it is up."""
    settings.make_data_dir()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(upgrade, settings.database_url)
        engine = make_engine(settings.database_url)
        local = LocalBackend(settings)
        await local.start()
        backends: dict[str, Backend] = {"local": local}
        grid = DiracXBackend(settings) if settings.diracx_url else None
        if grid is not None:
            backends["diracx"] = grid
        platform = Platform(
            settings=settings,
            sessions=make_sessionmaker(engine),
            catalog=ApplicationCatalog(settings.applications_dir).load(),
            backends=backends,
            images=await asyncio.to_thread(open_image_builds, settings),
            vault=open_vault(settings.encryption_keys, settings.encryption_key_file),
            iam=Iam(settings) if settings.iam_mode else None,
        )
        await recover_builds(platform)
        login_url = f"{settings.public_url}/login"
        if not settings.iam_mode:  # local mode: the machine's user, a one-time sign-in link
            async with platform.writing() as session:
                user = await ensure_user(session, settings.local_user)
                await local_api_token(session, user, settings.api_token_file)
                login_token = await create_token(session, user, kind="login", name="start-up")
            login_url += f"?token={login_token}"
        app.state.platform = platform
        app.state.oauth = web_client(settings) if settings.iam_mode else None
        app.state.diracx_oauth = None
        if per_user(platform):  # users connect their own DiracX accounts
            user_tokens(platform)
            app.state.diracx_oauth = diracx_client(settings)
        reconciler = asyncio.create_task(Reconciler(platform).run(), name="reconciler")
        if on_ready is not None:
            on_ready(login_url, platform)
        app.state.ready = True  # /readyz: started
        try:
            yield
        finally:
            app.state.ready = False  # stopping: no new traffic
            await cancel(reconciler)
            for build in list(platform.images.tasks.values()):  # left "building": resumed
                await cancel(build)
            stop_running_builds()
            await local.close()
            if grid is not None:
                await grid.close()
            if platform.iam is not None:
                await platform.iam.close()
            await engine.dispose()

    app = FastAPI(
        title="Concordia",
        version=__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.add_middleware(
        SessionMiddleware,
        secret_key=_secret_key(settings),
        session_cookie="concordia_session",
        same_site="lax",
        https_only=settings.public_url.startswith("https://"),
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    # Added last, so the outermost: its request id and access line cover a refused body too.
    app.add_middleware(RequestContext)
    app.state.settings = settings
    app.state.ready = False
    install_error_handlers(app)
    app.include_router(ops_router)
    app.include_router(api_router)
    app.include_router(pages_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
