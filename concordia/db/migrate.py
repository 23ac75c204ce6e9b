"""Run the Alembic migrations up to head (called at start-up and by `concordia db upgrade`)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str) -> None:
    """Blocking: run in a thread from async code (Alembic's env runs its own event loop)."""
    command.upgrade(alembic_config(database_url), "head")


@cache
def schema_heads() -> frozenset[str]:
    """The revisions a database at the latest schema is at (read from the migration files)."""
    return frozenset(ScriptDirectory.from_config(alembic_config("")).get_heads())


async def schema_revisions(connection: AsyncConnection | AsyncSession) -> frozenset[str]:
    """The revisions the database is at (one cheap query: also whether it answers)."""
    rows = await connection.scalars(text("SELECT version_num FROM alembic_version"))
    return frozenset(rows.all())


async def schema_behind(engine: AsyncEngine) -> bool:
    """Whether the database is not (yet) at the newest schema."""
    try:
        async with engine.connect() as connection:
            return await schema_revisions(connection) != schema_heads()
    except DBAPIError:  # no version table yet (or no database answering)
        return True
