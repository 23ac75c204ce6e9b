"""Shared fixtures: settings on a temporary data dir, the app in-process, a live server."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from concordia.backends.base import Backend
from concordia.logic.identity import create_token, ensure_user
from concordia.logic.platform import Platform
from concordia.settings import Settings
from concordia.web.app import create_app
from tests.database import pg_template, test_database
from tests.tls import share_default_context

pytest_plugins = ["tests.iam.fixtures", "tests.diracx.fixtures", "tests.registry", "tests.rucio"]
__all__ = ["pg_template", "test_database"]  # every test's database (tests/database.py)
share_default_context()  # the suite's many short-lived httpx clients (tests/tls.py)


#: Fixtures that start real parts (image builds and jobs, servers, a browser): a test using
#: one is marked ``real`` and left out of `make test-fast`, as are the files marked so.
REAL_PARTS = frozenset(
    {"image_seed", "make_backend", "live_server", "diracx_server", "rucio_server", "registry",
     "browser", "image_settings", "models_settings", "podman_settings", "toy_server",
     "bare_server", "json_server", "server"}
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_PARTS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real)
    # The slow tests first: spread over the workers (scripts/run-tests), none is left to run
    # alone at the end while the others wait.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


#: The lines of a live server's log shown under a test that failed with it.
LOG_TAIL = 80


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's live server says what it did: the tail of its log under the failure
    (a browser test's timeout alone does not tell a refused request from a lost click)."""
    report = yield
    server = getattr(item, "funcargs", {}).get("live_server")
    if report.failed and isinstance(server, LiveServer):
        tail = server.output().splitlines()[-LOG_TAIL:]
        report.sections.append(("live server log (its end)", "\n".join(tail)))
    return report


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """pytest's own, made traversable: jobs of a server running as root run as an
    unprivileged uid that must pass through the data dir's parents (o+x lists nothing)."""
    return traversable(tmp_path)


def traversable(path: Path) -> Path:
    """Give o+x to ``path`` and its parents, where a server running as root needs it."""
    if os.geteuid() == 0:
        for part in [path, *path.parents]:
            mode = part.stat().st_mode
            if not mode & 0o001:
                part.chmod(mode | 0o011)
    return path


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "local_slots": 2,
        "poll_interval": 0.5,
        "kill_grace_seconds": 1.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


#: A directory the suite's processes share (scripts/run-tests sets it for both passes and
#: all their workers): the hello image is built once there, not once per process.
SHARED_VARIABLE = "CONCORDIA_TEST_SHARED"


@pytest.fixture(scope="session")
def image_seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An image store holding the hello image, built for real once per run of the suite
    (the tests of builds themselves build in their own store)."""
    shared = os.environ.get(SHARED_VARIABLE)
    if not shared:
        yield _seed(traversable(tmp_path_factory.mktemp("image-seed")))
        return
    root = traversable(Path(shared)) / "image-seed"
    with (root.parent / "image-seed.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first process builds, the others wait
        try:
            if not root.exists():  # built aside and moved in whole: never half there
                built = traversable(tmp_path_factory.mktemp("image-seed"))
                _seed(built)
                shutil.move(built, root)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    yield make_settings(root / "var").images_dir


def _seed(root: Path) -> Path:
    """The hello image built in a store under ``root``; the store."""
    settings = make_settings(root / "var")

    async def build() -> None:
        async with running_app(settings) as app:
            response = await app.client.post("/api/v1/images", json={"application": "hello"})
            assert response.status_code in (200, 202), response.text
            url = f"/api/v1/images/{response.json()['image']['id']}"
            deadline = time.monotonic() + 300
            while (image := (await app.client.get(url)).json())["status"] == "building":
                assert time.monotonic() < deadline, "the hello image took over 5 minutes"
                await asyncio.sleep(0.2)
            assert image["status"] == "ready", image["error"]

    asyncio.run(build())
    return settings.images_dir


def seed_images(settings: Settings, seed: Path) -> Settings:
    """Put the seed's images in the settings' store (hard links: instant, no copy)."""
    for image in seed.iterdir():
        if (image / "image.json").is_file():
            target = settings.images_dir / image.name
            shutil.copytree(image, target, symlinks=True, copy_function=os.link)
    return settings


@pytest.fixture
def settings(tmp_path: Path, image_seed: Path) -> Settings:
    return seed_images(make_settings(tmp_path / "var"), image_seed)


@dataclass
class Running:
    """The app running in-process, with a client for the local user and a way to add users."""

    platform: Platform
    client: httpx.AsyncClient
    settings: Settings
    new_client: Callable[[str], AbstractAsyncContextManager[httpx.AsyncClient]]
    login_url: str


@asynccontextmanager
async def running_app(
    settings: Settings, backends: dict[str, Backend] | None = None
) -> AsyncIterator[Running]:
    """``backends``: jobs run there instead of in those the settings configure (fakes)."""
    ready: list[str] = []
    app = create_app(settings, on_ready=lambda url, _platform: ready.append(url), backends=backends)
    async with app.router.lifespan_context(app):
        platform: Platform = app.state.platform
        transport = httpx.ASGITransport(app=app)

        @asynccontextmanager
        async def new_client(username: str) -> AsyncIterator[httpx.AsyncClient]:
            async with platform.writing() as session:
                user = await ensure_user(session, username)
                token = await create_token(session, user, name="test")
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://testserver",
                headers={"Authorization": f"Bearer {token}"},
            ) as client:
                yield client

        # In IAM mode there is no local user: the client then has no token.
        local = settings.api_token_file
        token = local.read_text().strip() if local.exists() else None
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {token}"} if token else {},
        ) as client:
            yield Running(platform, client, settings, new_client, ready[0])


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Running]:
    async with running_app(settings) as running:
        yield running


@pytest.fixture
async def signed_in(app: Running) -> AsyncIterator[httpx.AsyncClient]:
    """A client signed in through the one-time link, keeping the session cookie (a browser)."""
    async with httpx.AsyncClient(
        transport=app.client._transport, base_url="http://testserver"
    ) as client:
        login = urlsplit(app.login_url)
        assert (await client.get(f"{login.path}?{login.query}")).status_code == 303
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    """`concordia serve` as a real process, as a user starts it."""

    data_dir: Path
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    #: The command's arguments: `concordia serve`, or e.g. serve --workers 2.
    args: tuple[str, ...] = ("serve",)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.data_dir / "api-token").read_text().strip()

    @property
    def database_url(self) -> str:
        default = f"sqlite+aiosqlite:///{self.data_dir.absolute() / 'concordia.db'}"
        return self.env.get("CONCORDIA_DATABASE_URL") or default

    def start(self, timeout: float = 60) -> None:
        self.log_path = self.data_dir.parent / f"server-{time.monotonic_ns()}.log"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "concordia", *self.args],
            env=self.env,
            cwd=self.data_dir.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    # Local mode writes the CLI's token at start; IAM mode has none.
                    iam_mode = bool(self.env.get("CONCORDIA_OIDC_ISSUER"))
                    if iam_mode or (self.data_dir / "api-token").exists():
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path else ""


@pytest.fixture
def live_server_env() -> dict[str, str]:
    """Extra environment for the live server (e.g. CONCORDIA_APPLICATIONS_DIR); a test module
    overrides this fixture to start it otherwise configured."""
    return {}


@pytest.fixture
def live_server(
    tmp_path: Path, image_seed: Path, live_server_env: dict[str, str]
) -> Iterator[LiveServer]:
    data_dir = tmp_path / "var"
    seed_images(make_settings(data_dir), image_seed)
    port = free_port()
    env = {
        **os.environ,
        # Relative, as with `make run` (the default is ./var).
        "CONCORDIA_DATA_DIR": data_dir.name,
        "CONCORDIA_PORT": str(port),
        "CONCORDIA_LOCAL_SLOTS": "2",
        "CONCORDIA_POLL_INTERVAL": "0.5",
        "CONCORDIA_KILL_GRACE_SECONDS": "1",
        **live_server_env,
    }
    server = LiveServer(data_dir=data_dir, port=port, env=env)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill(signal.SIGTERM)
