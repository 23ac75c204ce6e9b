"""A user's secrets in the database, encrypted by the platform's vault: one row per kind."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.auth.vault import Vault
from concordia.db import user_secrets as db
from concordia.db.tables import UserSecret, utcnow


async def put_secret(
    session: AsyncSession,
    vault: Vault,
    user_id: int,
    kind: str,
    secret: bytes,
    info: dict[str, Any],
    expires_at: datetime | None = None,
) -> None:
    """Store (or replace) the user's secret of this kind; ``info`` is what may be shown."""
    row = await db.secret_row(session, user_id, kind)
    if row is None:
        row = UserSecret(user_id=user_id, kind=kind, ciphertext="")
        session.add(row)
    row.ciphertext = vault.encrypt(secret)
    row.info = info
    row.expires_at = expires_at
    row.updated_at = utcnow()
    await session.flush()


async def read_secret(
    session: AsyncSession, vault: Vault, user_id: int, kind: str
) -> tuple[bytes, UserSecret] | None:
    row = await db.secret_row(session, user_id, kind)
    return None if row is None else (vault.decrypt(row.ciphertext), row)


async def secret_rows(session: AsyncSession, user_id: int) -> dict[str, UserSecret]:
    """The user's secrets by kind, still encrypted: for what their ``info`` may show."""
    return {row.kind: row for row in await db.secret_rows_of(session, user_id)}


async def drop_secret(session: AsyncSession, user_id: int, kind: str) -> bool:
    return await db.delete_secret(session, user_id, kind)
