"""On SQLite, reads (Database.reading) run on the event loop's thread, see what writes
committed, and cannot write."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from concordia.db.engine import make_engine, make_read_engine, make_sessionmaker
from concordia.db.migrate import upgrade
from concordia.db.tables import User
from concordia.logic.database import Database
from concordia.logic.identity import ensure_user


async def test_reads_run_on_the_loop_thread_see_commits_and_cannot_write(tmp_path: Path) -> None:
    # SQLite whatever the suite's database: the read engine is SQLite's alone.
    url = f"sqlite+aiosqlite:///{tmp_path / 'concordia.db'}"
    await asyncio.to_thread(upgrade, url)
    engine, read_engine = make_engine(url), make_read_engine(url)
    assert read_engine is not None
    db = Database(sessions=make_sessionmaker(engine), read_sessions=make_sessionmaker(read_engine))
    try:
        async with db.writing() as session:
            await ensure_user(session, "jane")
        threads: set[int] = set()
        async with db.reading() as session:
            raw = await (await session.connection()).get_raw_connection()
            sqlite = raw.driver_connection._conn  # type: ignore[union-attr]
            # Called by SQLite on the thread that runs each statement.
            sqlite.set_trace_callback(lambda _sql: threads.add(threading.get_ident()))
            names = (await session.scalars(select(User.username))).all()
            sqlite.set_trace_callback(None)
        assert names == ["jane"]
        assert threads == {threading.get_ident()}

        async with db.reading() as session:
            with pytest.raises(OperationalError, match="readonly"):
                await session.execute(text("DELETE FROM users"))
        async with db.reading() as session:
            assert await session.scalar(select(func.count()).select_from(User)) == 1
    finally:
        await read_engine.dispose()
        await engine.dispose()


def test_other_databases_have_no_read_engine() -> None:
    assert make_read_engine("postgresql+asyncpg://postgres@127.0.0.1:5432/x") is None
    assert make_read_engine("sqlite+aiosqlite:///:memory:") is None


@pytest.mark.parametrize("reads", [False, True], ids=["write engine", "read engine"])
async def test_a_failure_of_sqlite_s_file_is_logged_by_its_exact_name(
    tmp_path: Path, reads: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """ "unable to open database file" alone does not say what failed: SQLite's extended code
    is logged (an operator reads which operation of the disk it was)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'concordia.db'}"  # no such directory
    engine = make_read_engine(url) if reads else make_engine(url)
    assert engine is not None
    before = set(threading.enumerate())
    try:
        with pytest.raises(OperationalError, match="unable to open database file"):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
        # aiosqlite's thread of the connection that failed stops on its own, and tells this
        # event loop: it must not outlive the test's loop.
        for thread in set(threading.enumerate()) - before:
            if thread.name.endswith("(_connection_worker_thread)"):
                await asyncio.to_thread(thread.join, 10)
    assert "SQLite failed: SQLITE_CANTOPEN (unable to open database file)" in caplog.text


async def test_a_constraint_is_not_logged_as_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'concordia.db'}"
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (a INTEGER UNIQUE)"))
            await connection.execute(text("INSERT INTO t VALUES (1)"))
            with pytest.raises(IntegrityError):
                await connection.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        await engine.dispose()
    assert "SQLite failed" not in caplog.text
