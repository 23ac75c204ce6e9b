"""The Alembic migrations build exactly the schema the tables declare, on both databases."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from concordia.db.migrate import upgrade
from concordia.db.tables import Base
from concordia.settings import Settings

pytestmark = pytest.mark.sql


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": False})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_match_the_tables(settings: Settings) -> None:
    await asyncio.to_thread(upgrade, settings.database_url)
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()
