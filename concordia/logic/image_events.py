"""Image change events: whom an image's changes reach, and telling them."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db import images as image_queries
from concordia.db.tables import Image
from concordia.logic.events import Event, EventBus
from concordia.settings import ImageSettings

#: (user ids, VOs) an image's events reach.
Audience = tuple[list[int], list[str]]


async def audience(settings: ImageSettings, session: AsyncSession, image: str) -> Audience:
    """Whom an image's changes reach: its users, and with images_shared_in_vo their VOs."""
    rows = await image_queries.claims_on(session, image)
    shared = settings.images_shared_in_vo
    return sorted({user for user, _ in rows}), sorted({vo for _, vo in rows if vo and shared})


def publish(bus: EventBus, row: Image, reached: Audience) -> None:
    """Tell ``reached`` of the image's state (once the change is committed)."""
    data = {"id": row.id, "application": row.application, "status": row.status}
    viewers, vos = reached
    event = Event(kind="image", owner_id=None, data=data, viewers=viewers, vos=vos)
    bus.publish(event)


async def announce_image(
    settings: ImageSettings, bus: EventBus, session: AsyncSession, row: Image
) -> None:
    """Tell the image's audience of its state (a web process, of a build in the worker)."""
    publish(bus, row, await audience(settings, session, row.id))
