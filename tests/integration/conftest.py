"""Fixtures of the integration tests: local backends started on a temporary data dir, a
listener on this machine's addresses for sandboxes to try."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from concordia.backends.local import LocalBackend
from concordia.settings import Settings

Factory = Callable[..., Awaitable[LocalBackend]]


@pytest.fixture
async def make_backend(tmp_path: Path) -> AsyncIterator[Factory]:
    """Started backends on tmp_path/var (made 0700, as older versions did); closed after."""
    started: list[LocalBackend] = []

    async def make(**overrides: Any) -> LocalBackend:
        values: dict[str, Any] = {"local_slots": 2, "kill_grace_seconds": 0.5}
        values.update(overrides)
        data_dir = tmp_path / "var"
        data_dir.mkdir(mode=0o700, exist_ok=True)
        backend = LocalBackend(Settings(data_dir=data_dir, **values))
        await asyncio.wait_for(backend.start(), 60)  # a podman probe run may take seconds
        started.append(backend)
        return backend

    yield make
    for backend in started:
        await asyncio.wait_for(backend.close(), 15)


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on every address of this machine that greets whoever connects."""
    server = socket.create_server(("0.0.0.0", 0))  # noqa: S104 (loopback and the host address)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(f"reached {port}\n".encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join(5)
    server.close()


def host_address() -> str:
    """This machine's own non-loopback address (the route lookup sends nothing)."""
    route = subprocess.run(
        ["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"\bsrc (\S+)", route)
    assert found, route
    return found.group(1)
