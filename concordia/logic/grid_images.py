"""Grid image links: a worker node fetching a job's image from Concordia, with no session."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from concordia.core.states import JobStatus
from concordia.db.grid_images import job_image
from concordia.images.publication import IMAGE_LINKS, link_valid
from concordia.images.store import FORMAT_FILES
from concordia.logic.database import Database
from concordia.logic.errors import Forbidden, NotFound
from concordia.logic.image_views import checked_id
from concordia.logic.keyring import Keyring
from concordia.logic.platform import ImageBuilds

#: One answer for every refused link: it says why without telling what exists.
REFUSED = "this image link is not valid: wrong signature, expired, or its job is over"


@dataclass(frozen=True)
class NodeImage:
    path: Path
    sha256: str


async def node_image(
    db: Database,
    images: ImageBuilds,
    keyring: Keyring,
    image_id: str,
    job: str,
    expires: int,
    signature: str,
) -> NodeImage:
    """The SquashFS a link names, for the job it was signed for while that job is not over:
    an image licensed to some users never reaches anyone else's job."""
    image_id = checked_id(image_id)
    keys = keyring.vault.derived_keys(IMAGE_LINKS)
    if not link_valid(keys, image_id, job, expires, signature, time.time()):
        raise Forbidden(REFUSED)
    async with db.reading() as session:
        found = await job_image(session, job)
    if found is None or found[0] != image_id or JobStatus(found[1]).is_final:
        raise Forbidden(REFUSED)
    stored = await asyncio.to_thread(images.store.get, image_id)
    squashfs = stored.meta.get("formats", {}).get("squashfs") if stored else None
    if stored is None or not squashfs:
        raise NotFound(f"image {image_id[:12]} has no SquashFS here any more")
    return NodeImage(stored.path / FORMAT_FILES["squashfs"], str(squashfs["sha256"]))
