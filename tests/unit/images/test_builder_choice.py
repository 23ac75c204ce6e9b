"""The builder's version, asked of the program once and again only once its file changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from concordia.images.build import choose_builder

#: A stand-in mmdebstrap that says its version and counts how often it was asked.
STAND_IN = """#!/bin/sh
echo asked >> "{count}"
echo "mmdebstrap {version}"
"""


def install(bin_dir: Path, count: Path, version: str) -> None:
    program = bin_dir / "mmdebstrap"
    program.write_text(STAND_IN.format(count=count, version=version))
    program.chmod(0o755)


def test_a_builder_is_asked_its_version_once_until_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, count = tmp_path / "bin", tmp_path / "asked"
    bin_dir.mkdir()
    install(bin_dir, count, "1.3.5")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    for _ in range(3):  # three platforms started by one process
        assert choose_builder(["mmdebstrap"], []).summary == "mmdebstrap 1.3.5"
    assert count.read_text().count("asked") == 1

    # An upgrade while the process runs: the new file is asked, and its version is shown. Its
    # size is the old one's and its inode may be too: the time it was written tells them apart
    # (set a second later, as a filesystem's clock may not have moved yet).
    old = (bin_dir / "mmdebstrap").stat().st_mtime_ns
    (bin_dir / "mmdebstrap").unlink()
    install(bin_dir, count, "1.5.0")
    os.utime(bin_dir / "mmdebstrap", ns=(old + 10**9, old + 10**9))
    assert choose_builder(["mmdebstrap"], []).summary == "mmdebstrap 1.5.0"
    assert count.read_text().count("asked") == 2
