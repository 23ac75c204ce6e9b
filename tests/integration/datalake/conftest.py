"""Fixtures of the data-lake tests: the fake data lake with one RSE, and a backend that
uploads its jobs' data itself (as DiracX's wrapper does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from concordia.backends.base import BackendRef, JobSpec
from concordia.backends.local import LocalBackend
from concordia.datalake.store import DataLake
from tests.fakes.datalake import FakeLake
from tests.integration.datalake.test_datalake import RSE


@pytest.fixture
def one_rse_lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeLake:
    fake = FakeLake(tmp_path / "lake", rses=(RSE,))
    checked: DataLake = fake  # the fake has the client's interface
    monkeypatch.setattr("concordia.service.connect_datalake", lambda *_args: checked)
    return fake


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[JobSpec]:
    """The local backend as one that uploads its jobs' data; the specs it was given."""
    specs: list[JobSpec] = []
    submit = LocalBackend.submit

    async def recording(self: LocalBackend, jobs: list[JobSpec]) -> list[BackendRef]:
        specs.extend(jobs)
        return await submit(self, jobs)

    monkeypatch.setattr(LocalBackend, "uploads_data", True)
    monkeypatch.setattr(LocalBackend, "submit", recording)
    return specs
