"""The async engine and session factory, with SQLite tuned for a server's concurrent use."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from functools import partial
from typing import Any

import aiosqlite
from sqlalchemy import Connection, event, make_url
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import PoolResetState

log = logging.getLogger(__name__)


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url, _sqlite_pragmas, connect_args={"timeout": 30})
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _sqlite_engine(url: str, pragmas: Callable[[Any, Any], None], **kwargs: Any) -> AsyncEngine:
    # As many connections kept as a busy server uses at once (50 clients polling): a
    # connection made and dropped per burst costs a thread, an open and the pragmas.
    # Handed back, a connection is rolled back only if its transaction is still open
    # (_sqlite_reset): the session already ended it, and each call is a thread hand-over.
    engine = create_async_engine(
        url, pool_size=20, max_overflow=20, pool_reset_on_return=None, **kwargs
    )
    event.listen(engine.sync_engine, "connect", pragmas)
    event.listen(engine.sync_engine, "begin", _sqlite_begin)
    event.listen(engine.sync_engine.pool, "reset", _sqlite_reset)
    event.listen(engine.sync_engine, "handle_error", _name_sqlite_failure)
    return engine


#: SQLite's failures of the file, the disk or memory (not a constraint, a busy lock or a
#: mistake in a statement, which their callers handle).
_FAILURES = ("SQLITE_IOERR", "SQLITE_CORRUPT", "SQLITE_FULL", "SQLITE_CANTOPEN", "SQLITE_NOMEM")


def _name_sqlite_failure(context: ExceptionContext) -> None:
    # SQLite's message ("disk I/O error") does not say which operation failed; its extended
    # code does (SQLITE_IOERR_SHMMAP, _FSYNC, _SHORT_READ...): the operator gets it in the
    # log. The error itself goes on unchanged.
    error: BaseException | None = context.original_exception
    while error is not None and not isinstance(error, sqlite3.Error):
        error = error.__cause__
    name = getattr(error, "sqlite_errorname", "")
    if name.startswith(_FAILURES):
        log.error("SQLite failed: %s (%s)", name, error)


#: How long a read waits on SQLite's lock (rare in WAL mode: a reader waits only while the
#: database is recovered or locked exclusively) before it fails, as it holds the event loop.
READ_BUSY_MS = 1000


def make_read_engine(url: str) -> AsyncEngine | None:
    """For a SQLite file, an engine for reads only (Platform.reading), whose statements run
    on the event loop's own thread; None for other databases (their drivers are async).

    aiosqlite hands each call to a thread of its own: a statement is four calls (cursor,
    execute, fetch, close), each a turn of the event loop to come back. Under load a
    request of a few statements waited more for those turns than for SQLite (bench/load.py
    on SQLite, p95 of GET /api/v1/jobs: 117-187 ms in five runs with hand-overs, 53.9 in
    one without). In WAL mode a read does not wait for writers, and the monitor's reads
    are indexed pages of rows.
    Writes keep the threads: they may wait seconds for another process's write lock."""
    database = make_url(url).database
    if not url.startswith("sqlite") or database in (None, "", ":memory:"):
        return None

    async def connect() -> aiosqlite.Connection:
        opened = partial(sqlite3.connect, database, check_same_thread=False)
        connection = _InlineConnection(opened, iter_chunk_size=64)
        connection._thread.daemon = True  # as SQLAlchemy makes aiosqlite's (closed at exit)
        return await connection

    return _sqlite_engine(url, _sqlite_read_pragmas, async_creator=connect)


class _InlineConnection(aiosqlite.Connection):
    """aiosqlite's connection with its calls made on the caller's thread, not handed to
    its own (which still opens and closes the database). SQLAlchemy's adapter keeps one
    call at a time per connection; the database is opened with check_same_thread off."""

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)


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


def _sqlite_read_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # query_only: a write by mistake through a read session fails at once, rather than
    # taking the write lock on the event loop's thread (and around Platform.write_lock).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={READ_BUSY_MS}")
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
