"""Images where grid worker nodes get them: signed per-job links to Concordia's own copy, and
the unpacked tree a CVMFS stratum-0 publishes (the layout of unpacked.cern.ch)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

#: What the keys of image links are derived for (the server's own keys stay its own).
IMAGE_LINKS = b"concordia grid image links v1"
#: Where an image's root filesystem sits in an unpacked tree, and its human name beside.
FLAT = ".flat"
METADATA = ".metadata"
NAMESPACE = "concordia"


def link_signature(key: bytes, image_id: str, job: str, expires: int) -> str:
    """The HMAC of an image link: it names one image, one job and until when."""
    message = f"{image_id}\n{job}\n{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def link_valid(
    keys: list[bytes], image_id: str, job: str, expires: int, signature: str, now: float
) -> bool:
    """Signed by one of ``keys`` (the newest signs, older ones still check) and not expired."""
    if expires < now:
        return False
    given = signature.encode()  # as bytes: compare_digest refuses non-ASCII text (a 500)
    return any(
        hmac.compare_digest(link_signature(key, image_id, job, expires).encode(), given)
        for key in keys
    )


class UnpackedTree:
    """``root`` as a CVMFS repository's publication directory holds images as DUCC lays
    them out: each root filesystem under .flat/<2 hex>/<id> (content addressed: a name
    moved to a newer image never changes what a running job sees), a readable name
    concordia/<application>:<id 12> linking to it, and .metadata/ with its manifest.
    ``node_root`` is where worker nodes see the same tree (e.g. /cvmfs/<repository>)."""

    def __init__(self, root: Path, node_root: str) -> None:
        self.root = root
        self.node_root = node_root.rstrip("/")

    def flat(self, image_id: str) -> Path:
        return self.root / FLAT / image_id[:2] / image_id

    def node_path(self, image_id: str) -> str:
        return f"{self.node_root}/{FLAT}/{image_id[:2]}/{image_id}"

    def publish(self, image_id: str, rootfs: Path, name: str, manifest: dict[str, Any]) -> str:
        """Write the image once (a copy made aside and renamed in: whole or absent); the
        path nodes run it from."""
        target = self.flat(image_id)
        if not target.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            making = target.parent / f".{image_id}.{uuid.uuid4().hex[:8]}"
            try:
                # cp -a keeps what a root filesystem holds (links, modes, fifos, devices).
                subprocess.run(
                    ["cp", "-a", "--reflink=auto", str(rootfs), str(making)],
                    check=True, capture_output=True, timeout=3600,
                )  # fmt: skip
                os.rename(making, target)
            except OSError:  # another process published it first
                if not target.is_dir():
                    raise
            finally:
                shutil.rmtree(making, ignore_errors=True)
        label = f"{name}:{image_id[:12]}"
        named = self.root / NAMESPACE / label
        named.parent.mkdir(parents=True, exist_ok=True)
        if not named.is_symlink():
            named.symlink_to(Path("..") / FLAT / image_id[:2] / image_id)
        meta = self.root / METADATA / NAMESPACE / label
        meta.mkdir(parents=True, exist_ok=True)
        (meta / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        return self.node_path(image_id)
