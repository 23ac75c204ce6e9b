"""Pytest fixtures: the IAM test double served on a loopback port for the whole session."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from tests.iam.server import IamDouble

STARTUP_SECONDS = 15.0


@contextmanager
def serving_iam() -> Iterator[IamDouble]:
    """The double in a uvicorn server on a thread of its own (its own event loop, so the
    tests' loops come and go freely), on a free 127.0.0.1 port, until the block ends."""
    # Bound here and handed over: no window in which another process takes the port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    double = IamDouble(f"http://127.0.0.1:{port}")
    config = uvicorn.Config(
        double.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="iam-double", daemon=True
    )
    thread.start()
    try:
        _wait_until_answering(double, thread)
        yield double
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _wait_until_answering(double: IamDouble, thread: threading.Thread) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    url = f"{double.url}/.well-known/openid-configuration"
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the IAM test double's server thread died while starting")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"the IAM test double did not answer at {url}")


@pytest.fixture(scope="session")
def iam_server() -> Iterator[IamDouble]:
    """The one running double of the session; tests want ``iam``, which resets it."""
    with serving_iam() as double:
        yield double


@pytest.fixture
def iam(iam_server: IamDouble) -> Iterator[IamDouble]:
    """The IAM test double with fresh state: default clients, no users, the wlcg profile."""
    iam_server.reset()
    yield iam_server
    iam_server.reset()
