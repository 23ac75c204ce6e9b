"""A zip download made a step at a time holds every byte of every output, whatever the
machine's speed: a step that ends on its time with nothing yet written is not the end."""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from concordia.logic import outputs
from concordia.logic.limits import WorkPool


async def zipped(jobs_dir: Path, job: object) -> bytes:
    """The zip's bytes as a download streams them, on a pool of one thread."""
    pool = WorkPool("zip", 1, 1, "too many")
    try:
        chunks = outputs._ZipChunks(jobs_dir, [job], 1 << 40, 100)  # type: ignore[list-item]
        stream = outputs._stream(pool, chunks, contextlib.ExitStack())
        return b"".join([chunk async for chunk in stream])
    finally:
        pool.executor.shutdown()


@pytest.mark.parametrize("step_seconds", [0.2, 0.0])
async def test_every_output_is_in_the_zip_however_slow_each_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step_seconds: float
) -> None:
    # 0 s: each step ends after its first piece, as on a loaded machine, where compressing
    # a run of zeros gives nothing for longer than a step lasts.
    monkeypatch.setattr(outputs, "ZIP_STEP_SECONDS", step_seconds)
    job = SimpleNamespace(id=7, uuid="0f4e9d8c-1b2a-4c3d-8e7f-6a5b4c3d2e1f")
    root = tmp_path / job.uuid / "outputs"
    root.mkdir(parents=True)
    with (root / "a-zeros.dat").open("wb") as sparse:
        sparse.truncate(64 << 20)
    (root / "b-random.bin").write_bytes(random := os.urandom(1 << 20))
    with zipfile.ZipFile(io.BytesIO(await zipped(tmp_path, job))) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == ["job-7/a-zeros.dat", "job-7/b-random.bin"]
        assert archive.read("job-7/b-random.bin") == random
        assert archive.getinfo("job-7/a-zeros.dat").file_size == 64 << 20
