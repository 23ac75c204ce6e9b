"""Queries of submissions themselves: the last id given, the stored application they run."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.application import ApplicationDef
from concordia.db.tables import Application, Submission


async def last_id(session: AsyncSession) -> int:
    """The highest submission id given so far (0 before the first)."""
    return await session.scalar(select(func.max(Submission.id))) or 0


async def application_row(session: AsyncSession, app: ApplicationDef) -> Application:
    """The stored row of the application's definition (by its fingerprint), added if new."""
    fingerprint = app.fingerprint()
    row = await session.scalar(select(Application).where(Application.fingerprint == fingerprint))
    if row is None:
        row = Application(
            name=app.name, fingerprint=fingerprint, definition=app.model_dump(mode="json")
        )
        session.add(row)
        await session.flush()
    return row
