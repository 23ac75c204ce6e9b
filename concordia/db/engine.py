"""The async engine and session factory, with SQLite tuned for a server's concurrent use."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import PoolResetState


def make_engine(url: str) -> AsyncEngine:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
        # As many connections kept as a busy server uses at once (50 clients polling): a
        # connection made and dropped per burst costs a thread, an open and the pragmas.
        # Handed back, a connection is rolled back only if its transaction is still open
        # (_sqlite_reset): the session already ended it, and each call is a thread hand-over.
        kwargs.update(pool_size=20, max_overflow=20, pool_reset_on_return=None)
    else:
        kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        event.listen(engine.sync_engine.pool, "reset", _sqlite_reset)
    return engine


#: Execution option of a connection whose transaction writes (Platform.writing).
WRITES = "concordia_writes"


def _sqlite_begin(conn: Connection) -> None:
    # A transaction that reads, then writes, takes the write lock at its start: a deferred
    # one would fail on its first write if another process (a web process, the worker) had
    # committed since its read began (SQLite cannot upgrade that snapshot; busy_timeout does
    # not help). Readers stay deferred: WAL lets them run beside the writer.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITES) else "BEGIN")


def _sqlite_reset(dbapi_conn: Any, _record: Any, state: PoolResetState) -> None:
    # The pool's own reset, minus its second rollback of what the session already ended.
    usable = state.asyncio_safe and not state.terminate_only
    if usable and dbapi_conn.driver_connection.in_transaction:
        dbapi_conn.rollback()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (the API) run while the reconciler writes; NORMAL sync stays
    # crash-safe in WAL mode (a power cut may lose the last commit, never corrupt).
    # The driver's own implicit BEGIN is off: _sqlite_begin emits each transaction's.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
