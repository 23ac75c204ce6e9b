"""The published forms of an image: SquashFS (Apptainer on grid nodes) and an OCI layout."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import IO, Any

from concordia.images.builders import run_logged
from concordia.images.layers import TAG, stage_layout
from concordia.images.store import FORMAT_FILES

#: The programs each format needs (and the Debian package that brings them).
FORMAT_TOOLS = {"squashfs": [("mksquashfs", "squashfs-tools")], "oci": [("umoci", "umoci")]}


def missing_tools(formats: list[str]) -> list[str]:
    """The Debian packages to install before these formats can be made."""
    return [pkg for fmt in formats for tool, pkg in FORMAT_TOOLS[fmt] if shutil.which(tool) is None]


#: zstd level of the SquashFS form: 3 makes it 20 times faster than the default (15) for a
#: sixth more bytes, and reading it is as fast.
SQUASHFS_ZSTD_LEVEL = 3


def make_formats(
    rootfs: Path, out: Path, formats: list[str], env: dict[str, str], workdir: str,
    log: IO[str], timeout: float, below: tuple[Path, Path] | None = None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Write each format beside the rootfs; file name, size and sha256 of each. ``below``:
    the rootfs and OCI layout of the cached stage the rootfs was made from (its layers are
    reused, the OCI form adds one of what changed since)."""
    made = {}
    for fmt in formats:
        target = out / FORMAT_FILES[fmt]
        if fmt == "squashfs":
            cmd = ["mksquashfs", str(rootfs), str(target), "-noappend", "-comp", "zstd"]
            cmd += ["-Xcompression-level", str(SQUASHFS_ZSTD_LEVEL)]
            run_logged([*cmd, "-no-progress", "-quiet"], log, timeout=timeout)
        else:
            _oci_archive(rootfs, target, env, workdir, log, timeout, below)
        made[fmt] = {"file": target.name, "size": target.stat().st_size, "sha256": _sha256(target)}
    return made


def _oci_archive(
    rootfs: Path, target: Path, env: dict[str, str], workdir: str, log: IO[str], timeout: float,
    below: tuple[Path, Path] | None,
) -> None:  # fmt: skip
    layout = target.parent / ".oci"
    image = f"{layout}:{TAG}"
    try:
        lower, base = below if below is not None else (None, None)
        stage_layout(rootfs, layout, lower, base, log)
        config = ["umoci", "config", "--image", image, "--config.workingdir", workdir]
        config += [f"--config.env={k}={v}" for k, v in env.items()]
        run_logged(config, log, timeout=timeout)
        run_logged(["umoci", "gc", "--layout", str(layout)], log, timeout=timeout)
        run_logged(["tar", "-C", str(layout), "-cf", str(target), "."], log, timeout=timeout)
    finally:
        shutil.rmtree(layout, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
