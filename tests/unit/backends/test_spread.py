"""The jobs directory marked for ext4 as holding unrelated hierarchies, read back with
e2fsprogs' lsattr; on a filesystem without such flags nothing changes and nothing fails."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from concordia.backends.spread import spread_subdirectories
from tests.fsflags import EXT4, attributes, filesystem

pytestmark = pytest.mark.skipif(shutil.which("lsattr") is None, reason="needs e2fsprogs")


@pytest.fixture
def ext4_dir(tmp_path: Path) -> Path:
    if filesystem(tmp_path) != EXT4:
        pytest.skip(f"the temporary directory is on {filesystem(tmp_path)}, not ext4")
    (tmp_path / "jobs").mkdir()
    return tmp_path / "jobs"


def test_an_ext4_jobs_directory_is_marked_and_keeps_its_other_flags(ext4_dir: Path) -> None:
    subprocess.run(["chattr", "+A", str(ext4_dir)], check=True)  # noatime, set by an admin
    assert "T" not in attributes(ext4_dir)
    assert spread_subdirectories(ext4_dir) is True
    flags = attributes(ext4_dir)
    assert "T" in flags and "A" in flags
    assert spread_subdirectories(ext4_dir) is True  # again at the next start: unchanged
    assert attributes(ext4_dir) == flags
    (ext4_dir / "job").mkdir()
    assert "T" not in attributes(ext4_dir / "job")  # the job directories are ordinary


def test_a_filesystem_without_the_flag_is_left_as_it_is(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or filesystem(shm) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    jobs = shm.resolve() / f"concordia-test-{tmp_path.name}"
    jobs.mkdir()
    try:
        assert spread_subdirectories(jobs) is False
        assert jobs.is_dir()
    finally:
        jobs.rmdir()
