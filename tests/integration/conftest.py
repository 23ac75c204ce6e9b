"""Fixtures of the integration tests: local backends started on a temporary data dir."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
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
