"""Image build logs: read from an offset, replay the progress so far, follow them live."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from concordia.core.build_progress import BuildProgress
from concordia.core.image_status import ImageStatus
from concordia.logic.database import Database
from concordia.logic.errors import Invalid
from concordia.logic.identity import Identity
from concordia.logic.image_views import get_image
from concordia.logic.outputs import read_chunk
from concordia.logic.platform import ImageBuilds, Platform
from concordia.settings import Settings


async def read_log(
    settings: Settings,
    db: Database,
    images: ImageBuilds,
    user: Identity,
    image: str,
    offset: int = 0,
) -> tuple[str, int, ImageStatus]:
    """The build log from byte ``offset``: (text, next offset, the image's status)."""
    if offset < 0:
        raise Invalid("offset", "must be >= 0", location="query")
    view = await get_image(settings, db, user, image)
    path, limit = images.store.log_path(image), settings.max_log_chunk
    text, next_offset, _ = await asyncio.to_thread(read_chunk, path, offset, limit)
    return text, next_offset, view.status


async def progress_until(
    settings: Settings, db: Database, images: ImageBuilds, user: Identity, image: str, offset: int
) -> BuildProgress:
    """Where the build was when its log reached byte ``offset`` (a follower reconnecting)."""
    progress, at = BuildProgress(), 0
    while at < offset:
        text, next_offset, _ = await read_log(settings, db, images, user, image, at)
        if next_offset <= at:
            break
        progress.advance(text.encode()[: offset - at].decode(errors="ignore"))
        at = next_offset
    return progress


async def follow_log(
    platform: Platform, user: Identity, image: str, offset: int = 0
) -> AsyncIterator[str]:
    """The build log as it grows, until the build ends (then the rest, and stop)."""
    async with platform.bus.subscribe() as events:
        while True:
            text, offset, status = await read_log(
                platform.settings, platform.db, platform.images, user, image, offset
            )
            if text:
                yield text
                continue
            if status != ImageStatus.BUILDING:
                return
            try:  # a line written or the build's end, whichever comes first
                await asyncio.wait_for(events.get(), timeout=0.25)
            except TimeoutError:
                pass
