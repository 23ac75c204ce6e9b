"""The image store: one directory per image id, published atomically, with its build log."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ID = re.compile(r"^[0-9a-f]{64}$")
#: What an image directory holds: the rootfs jobs run on here, and the published formats.
ROOTFS = "rootfs"
META = "image.json"
FORMAT_FILES = {"squashfs": "image.sqsh", "oci": "image.oci.tar"}


@dataclass(frozen=True)
class StoredImage:
    id: str
    path: Path
    meta: dict[str, Any]

    @property
    def rootfs(self) -> Path:
        return self.path / ROOTFS

    def format_path(self, fmt: str) -> Path:
        return self.path / FORMAT_FILES[fmt]


class ImageStore:
    """``root/ID/`` exists only once complete (a build happens in ``root/.tmp/`` and is
    renamed in); ``root/logs/ID.log`` is the latest build's log, kept after a failure."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self) -> None:
        """Create the store (every process that opens it; several may at once)."""
        for path in (self.root, self.root / "logs"):
            path.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)  # the jobs' sandboxes (another uid) pass through to a rootfs
        for name in (".tmp", ".trash"):
            (self.root / name).mkdir(mode=0o700, exist_ok=True)

    def clear_leftovers(self) -> None:
        """Forget half-made builds of a process that died (never published): only where no
        build runs (the process that builds, as it starts to)."""
        for name in (".tmp", ".trash"):
            unmount_below(self.root / name)
            shutil.rmtree(self.root / name, ignore_errors=True)
            (self.root / name).mkdir(mode=0o700, exist_ok=True)

    def path(self, image_id: str) -> Path:
        if not _ID.match(image_id):
            raise ValueError(f"invalid image id {image_id!r}")
        return self.root / image_id

    def log_path(self, image_id: str) -> Path:
        return self.root / "logs" / f"{self.path(image_id).name}.log"

    def get(self, image_id: str) -> StoredImage | None:
        path = self.path(image_id)
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError):
            return None
        return StoredImage(image_id, path, meta)

    def complete(self, image_id: str) -> bool:
        return (self.path(image_id) / META).is_file()

    def workspace(self, image_id: str) -> Path:
        """A fresh private directory to build ``image_id`` in."""
        work = self.root / ".tmp" / f"{self.path(image_id).name}-{uuid.uuid4().hex[:8]}"
        work.mkdir(mode=0o700)
        return work

    def publish(self, image_id: str, work: Path, meta: dict[str, Any]) -> StoredImage:
        """Move a finished build into place (replacing an older build of the same id)."""
        (work / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        work.chmod(0o711)
        target = self.path(image_id)
        if target.exists():
            self._discard(target)
        os.rename(work, target)
        return StoredImage(image_id, target, meta)

    def forget_log(self, image_id: str) -> None:
        """The log of an earlier build gone: the next build's log starts empty."""
        self.log_path(image_id).unlink(missing_ok=True)

    def delete(self, image_id: str) -> None:
        target = self.path(image_id)
        if target.exists():
            self._discard(target)
        self.forget_log(image_id)

    def _discard(self, path: Path) -> None:
        # Renamed away first: the id disappears at once, the slow removal comes after.
        trash = self.root / ".trash" / f"{path.name}-{uuid.uuid4().hex[:8]}"
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def unmount_below(path: Path) -> None:
    """Unmount whatever is mounted below ``path``, deepest first: a build command killed
    before its clean-up (mmdebstrap as root mounts /proc, /sys and /dev in its target) must
    not lead a removal of its workspace into the host's file systems."""
    try:
        table = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return
    top = str(path.resolve()).rstrip("/") + "/"
    # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
    points = [
        re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        for line in table.splitlines()
        if len(line.split()) > 4
    ]
    for point in sorted((p for p in points if p.startswith(top)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
