"""The database as use cases see it: reads, and writes one at a time that record their
status history and tell the other processes sharing it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from concordia.db.changes import notify
from concordia.db.engine import WRITES
from concordia.db.job_history import add_history

#: The session.info key under which logic.jobs.record_status keeps pending history rows.
HISTORY_KEY = "concordia.history"


@dataclass
class Database:
    sessions: async_sessionmaker[AsyncSession]
    #: Sessions for reads (db.engine.make_read_engine); None: the sessions above.
    read_sessions: async_sessionmaker[AsyncSession] | None = None
    #: Other processes share the database and listen (PostgreSQL's NOTIFY): each writing
    #: transaction tells them.
    tells_others: bool = False
    #: One writer of job state at a time in this process: the reconciler and user actions
    #: read-modify-write the same rows, and a lost update would lose a kill or a result.
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only (on SQLite its statements fail if they write)."""
        async with (self.read_sessions or self.sessions)() as session:
            yield session

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncSession]:
        """A transaction under the write lock, committed on success, with the status-history
        rows its transitions recorded (logic.jobs.record_status) written in one statement."""
        async with self.write_lock, self.sessions() as session, session.begin():
            await session.connection(execution_options={WRITES: True})
            yield session
            history = session.info.pop(HISTORY_KEY, None)
            if history:
                await session.flush()
                await add_history(session, history)
            if self.tells_others:
                await notify(session)
