"""Queries of the images being built, as a web process watches them for their ends."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.image_status import ImageStatus
from concordia.db.tables import Image


async def building_ids(session: AsyncSession) -> list[str]:
    """The ids of the images being built."""
    return list(await session.scalars(select(Image.id).where(Image.status == ImageStatus.BUILDING)))


async def building_or_among(session: AsyncSession, image_ids: Collection[str]) -> Sequence[Image]:
    """The images being built, and those of ``image_ids`` whatever their status."""
    rows = await session.scalars(
        select(Image).where(or_(Image.status == ImageStatus.BUILDING, Image.id.in_(image_ids)))
    )
    return rows.all()
