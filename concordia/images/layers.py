"""OCI layers from root filesystems: a whole tree, or what changed between two (whiteouts)."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import IO

from concordia.images.builders import run_logged

#: Seconds each umoci or tar command may take.
_TIMEOUT = 1800
TAG = "latest"


def stage_layout(
    rootfs: Path, layout: Path, lower: Path | None, base: Path | None, log: IO[str]
) -> None:
    """An OCI layout at ``layout`` whose layers make ``rootfs``: the whole tree as one layer,
    or, on top of ``base`` (the layout of ``lower``), one layer of what changed since."""
    image = f"{layout}:{TAG}"
    if base is None or lower is None:
        run_logged(["umoci", "init", "--layout", str(layout)], log, timeout=_TIMEOUT)
        run_logged(["umoci", "new", "--image", image], log, timeout=_TIMEOUT)
    else:
        run_logged(["cp", "-a", "--", str(base), str(layout)], log, timeout=_TIMEOUT)
    layer = layout.parent / f".{layout.name}-layer.tar"
    try:
        if lower is None:
            run_logged(["tar", "-C", str(rootfs), "-cf", str(layer), "."], log, timeout=_TIMEOUT)
        else:
            count = write_changes(lower, rootfs, layer)
            log.write(f"layer of the changes since the stage below: {count} entries\n")
        cmd = ["umoci", "raw", "add-layer", "--image", image, str(layer)]
        run_logged(cmd, log, timeout=_TIMEOUT)
        if base is not None:  # the manifest replaced goes: the layout holds one image
            run_logged(["umoci", "gc", "--layout", str(layout)], log, timeout=_TIMEOUT)
    finally:
        layer.unlink(missing_ok=True)


def write_changes(lower: Path, upper: Path, target: Path) -> int:
    """A layer tar of what ``upper`` changed from ``lower``: new or changed entries (a
    directory alone, not its content), and a whiteout for each entry removed. How many."""
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        return _changes(tar, lower, upper, "")


def _changes(tar: tarfile.TarFile, lower: Path | None, upper: Path, prefix: str) -> int:
    names = sorted(os.listdir(upper))
    before = set(os.listdir(lower)) if lower is not None else set()
    count = 0
    for gone in sorted(before - set(names)):
        whiteout = tarfile.TarInfo(f"{prefix}.wh.{gone}")
        tar.addfile(whiteout)
        count += 1
    for name in names:
        path = upper / name
        now = os.lstat(path)
        old = os.lstat(lower / name) if lower is not None and name in before else None
        if old is None or not _same(now, old, path, lower / name if lower else path):
            tar.add(path, arcname=prefix + name, recursive=False, filter=_numeric)
            count += 1
        if stat.S_ISDIR(now.st_mode):
            was_dir = old is not None and stat.S_ISDIR(old.st_mode)
            below = lower / name if lower is not None and was_dir else None
            count += _changes(tar, below, path, f"{prefix}{name}/")
    return count


def _same(now: os.stat_result, old: os.stat_result, path: Path, old_path: Path) -> bool:
    """Whether an entry is unchanged: a copy of the stage keeps owners, modes and times, so
    any write since shows in them (a file's content in its size or modification time)."""
    keys = ("st_mode", "st_uid", "st_gid", "st_mtime_ns", "st_size", "st_rdev")
    if any(getattr(now, k) != getattr(old, k) for k in keys):
        return False
    if stat.S_ISLNK(now.st_mode):
        return os.readlink(path) == os.readlink(old_path)
    return True


def _numeric(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The image's owners by number: this machine's user names mean nothing in it.
    info.uname = info.gname = ""
    return info
