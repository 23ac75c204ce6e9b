"""Run the Alembic migrations up to head (called at start-up and by `concordia db upgrade`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from concordia.db.engine import make_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: PostgreSQL advisory lock key held while a process migrates the schema.
MIGRATION_KEY = 0x636F6E636F72646D  # "concordm"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str) -> None:
    """Blocking: run in a thread from async code (Alembic's env runs its own event loop).
    Alone: processes that may start together migrate with `upgrade_in_turn`."""
    command.upgrade(alembic_config(database_url), "head")


@asynccontextmanager
async def migrating(engine: AsyncEngine) -> AsyncIterator[None]:
    """Held while the schema is migrated: on PostgreSQL, processes starting together (units
    running `concordia db upgrade` before they start, workers on several hosts) migrate in
    turn, each after the last, which finds it done; two at once both create the version
    table, and one fails. On SQLite the worker's file lock already makes it one."""
    if engine.url.get_backend_name() != "postgresql":
        yield
        return
    async with engine.connect() as connection:
        await connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_KEY})
        await connection.commit()
        try:
            yield
        finally:
            await connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_KEY})
            await connection.commit()


async def upgrade_in_turn(engine: AsyncEngine, database_url: str) -> None:
    """The schema brought to the latest, one process at a time (``migrating``)."""
    async with migrating(engine):
        await asyncio.to_thread(upgrade, database_url)


async def upgrade_database(database_url: str) -> None:
    """`concordia db upgrade`: ``upgrade_in_turn`` on an engine of its own."""
    engine = make_engine(database_url)
    try:
        await upgrade_in_turn(engine, database_url)
    finally:
        await engine.dispose()


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
