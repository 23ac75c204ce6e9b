"""The SQL of browser sessions (tables.BrowserSession): find, create, update, end, clean up."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db.tables import BrowserSession


async def live_session(session: AsyncSession, digest: str, now: datetime) -> BrowserSession | None:
    """The session whose cookie has this digest, unless it has expired."""
    row: BrowserSession | None = await session.scalar(
        select(BrowserSession).where(
            BrowserSession.digest == digest, BrowserSession.expires_at > now
        )
    )
    return row


async def add_session(
    session: AsyncSession,
    digest: str,
    user_id: int | None,
    data: dict[str, Any],
    iam_tokens: str | None,
    now: datetime,
    expires_at: datetime,
) -> int:
    row = BrowserSession(
        digest=digest,
        user_id=user_id,
        data=data,
        iam_tokens=iam_tokens,
        created_at=now,
        last_seen=now,
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    return row.id


async def save_session(
    session: AsyncSession,
    row_id: int,
    data: dict[str, Any] | None,
    now: datetime,
    expires_at: datetime,
) -> None:
    """Seen now, valid until ``expires_at``, with new ``data`` unless None. A session ended
    meanwhile (signed out in another tab) stays ended: nothing is created."""
    values: dict[str, Any] = {"last_seen": now, "expires_at": expires_at}
    if data is not None:
        values["data"] = data
    await session.execute(update(BrowserSession).where(BrowserSession.id == row_id).values(values))


async def end_session(session: AsyncSession, row_id: int) -> None:
    await session.execute(delete(BrowserSession).where(BrowserSession.id == row_id))


async def end_expired(session: AsyncSession, now: datetime) -> int:
    result = await session.execute(delete(BrowserSession).where(BrowserSession.expires_at <= now))
    return int(getattr(result, "rowcount", 0) or 0)


async def session_tokens(
    session: AsyncSession, user_id: int, row_id: int | None, now: datetime
) -> tuple[int, str] | None:
    """The IAM tokens (ciphertext) of one live session of the user, or with no ``row_id``
    of their newest live session that has some; with the row's id."""
    query = select(BrowserSession.id, BrowserSession.iam_tokens).where(
        BrowserSession.user_id == user_id,
        BrowserSession.expires_at > now,
        BrowserSession.iam_tokens.is_not(None),
    )
    if row_id is not None:
        query = query.where(BrowserSession.id == row_id)
    found = (
        await session.execute(
            query.order_by(BrowserSession.created_at.desc(), BrowserSession.id.desc())
        )
    ).first()
    return None if found is None or found[1] is None else (found[0], found[1])


async def set_session_tokens(session: AsyncSession, row_id: int, iam_tokens: str | None) -> None:
    await session.execute(
        update(BrowserSession).where(BrowserSession.id == row_id).values(iam_tokens=iam_tokens)
    )
