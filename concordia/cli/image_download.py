"""Downloading one format of an image: streamed to FILE.part, checked against its sha256,
then given its name."""

from __future__ import annotations

import hashlib
import os
from email.message import Message
from enum import StrEnum
from pathlib import Path
from typing import Any

from rich.progress import Progress

from concordia.cli.common import Api, download_bar, fail


class ImageFormat(StrEnum):
    squashfs = "squashfs"
    oci = "oci"


SUFFIXES = {ImageFormat.squashfs: "sqsh", ImageFormat.oci: "oci.tar"}


def _attachment_name(header: str | None) -> str | None:
    """The file name a Content-Disposition offers, if it is a plain name (no directory)."""
    if not header:
        return None
    message = Message()
    message["content-disposition"] = header
    name = message.get_filename()
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        return None
    return name


def _publish(partial: Path, target: Path, force: bool) -> None:
    """Give the finished download its name; without --force never over an existing file
    (a hard link fails if the name exists, at the moment it is made)."""
    if force:
        partial.replace(target)
        return
    try:
        os.link(partial, target)
    except FileExistsError:
        fail(f"{target} exists: not overwritten (--force overwrites it)")
    except OSError:  # a file system without hard links
        if target.exists():
            fail(f"{target} exists: not overwritten (--force overwrites it)")
        partial.replace(target)


def download(
    api: Api, image: dict[str, Any], fmt: ImageFormat, output: Path | None, force: bool
) -> tuple[Path, int, str]:
    """Stream the format's file to FILE.part, check its sha256 against the catalogue, then
    name it FILE: an interrupted or damaged download leaves nothing behind."""
    expected = image["formats"][fmt.value]
    default = f"{image['application']}-{image['id'][:12]}.{SUFFIXES[fmt]}"
    with api.stream(f"/images/{image['id']}/download/{fmt.value}") as r:
        name = _attachment_name(r.headers.get("content-disposition")) or default
        target = output / name if output and output.is_dir() else (output or Path(name))
        if target.exists() and not force:
            fail(f"{target} exists: not overwritten (--force overwrites it)")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        digest, size = hashlib.sha256(), 0
        try:
            with download_bar() as bar, partial.open("wb") as fh:
                task = _add_task(bar, target.name, r.headers.get("content-length"))
                for data in r.iter_bytes(1 << 16):
                    fh.write(data)
                    digest.update(data)
                    size += len(data)
                    bar.advance(task, len(data))
            if digest.hexdigest() != expected["sha256"]:
                fail(
                    f"the download of {target.name} is damaged (sha256 {digest.hexdigest()}, "
                    f"expected {expected['sha256']}); nothing was written"
                )
            _publish(partial, target, force)
        finally:
            partial.unlink(missing_ok=True)
    return target, size, digest.hexdigest()


def _add_task(bar: Progress, name: str, length: str | None) -> Any:
    return bar.add_task(name, total=int(length) if length and length.isdigit() else None)
