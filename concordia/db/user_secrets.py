"""The SQL of users' stored secrets (tables.UserSecret), still encrypted: one row per kind."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db.tables import UserSecret


async def secret_row(session: AsyncSession, user_id: int, kind: str) -> UserSecret | None:
    """The user's secret of this kind."""
    row: UserSecret | None = await session.scalar(
        select(UserSecret).where(UserSecret.user_id == user_id, UserSecret.kind == kind)
    )
    return row


async def secret_rows_of(session: AsyncSession, user_id: int) -> list[UserSecret]:
    """Every secret of the user."""
    return list(await session.scalars(select(UserSecret).where(UserSecret.user_id == user_id)))


async def delete_secret(session: AsyncSession, user_id: int, kind: str) -> bool:
    """Deletes the user's secret of this kind; whether there was one."""
    result = await session.execute(
        delete(UserSecret).where(UserSecret.user_id == user_id, UserSecret.kind == kind)
    )
    return bool(getattr(result, "rowcount", 0))
