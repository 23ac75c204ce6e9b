"""The whole suite on PostgreSQL: with CONCORDIA_TEST_DATABASE=postgresql, every test gets a
database of its own in the server at 127.0.0.1:5432 (CONCORDIA_DATABASE_URL, which the
settings of in-process apps and of live servers alike read); otherwise the embedded SQLite."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import pytest

from concordia.db.migrate import upgrade

PG_HOST = "postgres@127.0.0.1:5432"
PG_ADMIN = f"postgresql://{PG_HOST}/postgres"
ON_POSTGRESQL = os.environ.get("CONCORDIA_TEST_DATABASE", "sqlite") == "postgresql"
_T = TypeVar("_T")


def pg_url(name: str) -> str:
    return f"postgresql+asyncpg://{PG_HOST}/{name}"


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """A coroutine run to its end from sync code, also where an event loop is running."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(*statements: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()


def fetch_value(database_url: str, sql: str) -> Any:
    """One value from the test's database, whichever kind it is (read-only use)."""
    if database_url.startswith("sqlite"):
        import sqlite3
        from contextlib import closing

        path = database_url.split(":///", 1)[1]
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            return db.execute(sql).fetchone()[0]

    async def fetch() -> Any:
        dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetchval(sql)
        finally:
            await connection.close()

    return run_sync(fetch())


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    """A database at the newest schema that each test's is copied from (a copy takes a few
    milliseconds; the migrations take a second)."""
    if not ON_POSTGRESQL:
        yield None
        return
    name = f"concordia_template_{uuid.uuid4().hex[:12]}"
    run_sync(_admin(f'CREATE DATABASE "{name}"'))
    try:
        with ThreadPoolExecutor(1) as pool:  # alembic runs its own event loop
            pool.submit(upgrade, pg_url(name)).result()
        yield name
    finally:
        run_sync(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(autouse=True)
def test_database(pg_template: str | None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if pg_template is None:
        yield
        return
    name = f"concordia_test_{uuid.uuid4().hex[:12]}"
    run_sync(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    monkeypatch.setenv("CONCORDIA_DATABASE_URL", pg_url(name))
    try:
        yield
    finally:
        run_sync(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
