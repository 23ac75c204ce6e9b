"""The SQL of users (tables.User) and their bearer tokens (tables.ApiToken)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.db.tables import ApiToken, User


async def user_named(session: AsyncSession, username: str) -> User | None:
    """The user of this username."""
    user: User | None = await session.scalar(select(User).where(User.username == username))
    return user


async def user_id_named(session: AsyncSession, username: str) -> int | None:
    """The id of the user of this username."""
    user_id: int | None = await session.scalar(select(User.id).where(User.username == username))
    return user_id


async def iam_account(session: AsyncSession, issuer: str, subject: str) -> User | None:
    """The user of an IAM subject at this issuer."""
    user: User | None = await session.scalar(
        select(User).where(User.issuer == issuer, User.subject == subject)
    )
    return user


async def iam_subject(session: AsyncSession, user_id: int) -> str | None:
    """The IAM subject of the user (None for a local user, or no such user)."""
    subject: str | None = await session.scalar(select(User.subject).where(User.id == user_id))
    return subject


async def api_token_holder(
    session: AsyncSession, digest: str, now: datetime
) -> tuple[User, datetime | None] | None:
    """The user of the API token of this digest and when the token expires; None for an
    unknown token or one expired by ``now``."""
    row = (
        await session.execute(
            select(User, ApiToken.expires_at)
            .join(ApiToken, ApiToken.user_id == User.id)
            .where(
                ApiToken.digest == digest,
                ApiToken.kind == "api",
                or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now),
            )
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1])


async def use_login_token(session: AsyncSession, digest: str, now: datetime) -> int | None:
    """Marks the one-time login token of this digest used at ``now``, in one statement (two
    requests cannot both use it); its user's id, None for one unknown, used or expired."""
    result = await session.execute(
        update(ApiToken)
        .where(
            ApiToken.digest == digest,
            ApiToken.kind == "login",
            ApiToken.used_at.is_(None),
            ApiToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(ApiToken.user_id)
    )
    user_id: int | None = result.scalar_one_or_none()
    return user_id


async def clear_spent_login_tokens(session: AsyncSession, now: datetime) -> None:
    """Deletes the one-time login tokens used, or expired by ``now``."""
    await session.execute(
        delete(ApiToken).where(
            ApiToken.kind == "login",
            or_(ApiToken.used_at.is_not(None), ApiToken.expires_at <= now),
        )
    )
