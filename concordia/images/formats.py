"""The published forms of an image: SquashFS (Apptainer on grid nodes) and an OCI layout."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import IO, Any

from concordia.images.builders import run_logged
from concordia.images.store import FORMAT_FILES

#: The programs each format needs (and the Debian package that brings them).
FORMAT_TOOLS = {"squashfs": [("mksquashfs", "squashfs-tools")], "oci": [("umoci", "umoci")]}


def missing_tools(formats: list[str]) -> list[str]:
    """The Debian packages to install before these formats can be made."""
    return [pkg for fmt in formats for tool, pkg in FORMAT_TOOLS[fmt] if shutil.which(tool) is None]


def make_formats(
    rootfs: Path, out: Path, formats: list[str], env: dict[str, str], workdir: str,
    log: IO[str], timeout: float,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Write each format beside the rootfs; file name, size and sha256 of each."""
    made = {}
    for fmt in formats:
        target = out / FORMAT_FILES[fmt]
        if fmt == "squashfs":
            cmd = ["mksquashfs", str(rootfs), str(target), "-noappend", "-comp", "zstd"]
            run_logged([*cmd, "-no-progress", "-quiet"], log, timeout=timeout)
        else:
            _oci_archive(rootfs, target, env, workdir, log, timeout)
        made[fmt] = {"file": target.name, "size": target.stat().st_size, "sha256": _sha256(target)}
    return made


def _oci_archive(
    rootfs: Path, target: Path, env: dict[str, str], workdir: str, log: IO[str], timeout: float
) -> None:
    # umoci makes the layout; the rootfs goes in as one layer (umoci compresses it).
    layout = target.parent / ".oci"
    layer = target.parent / ".layer.tar"
    image = f"{layout}:latest"
    try:
        run_logged(["umoci", "init", "--layout", str(layout)], log, timeout=timeout)
        run_logged(["umoci", "new", "--image", image], log, timeout=timeout)
        run_logged(["tar", "-C", str(rootfs), "-cf", str(layer), "."], log, timeout=timeout)
        run_logged(
            ["umoci", "raw", "add-layer", "--image", image, str(layer)], log, timeout=timeout
        )
        config = ["umoci", "config", "--image", image, "--config.workingdir", workdir]
        config += [f"--config.env={k}={v}" for k, v in env.items()]
        run_logged(config, log, timeout=timeout)
        run_logged(["tar", "-C", str(layout), "-cf", str(target), "."], log, timeout=timeout)
    finally:
        layer.unlink(missing_ok=True)
        shutil.rmtree(layout, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
