"""Two processes on one database (the web process and the worker) change the same job: the
second waits for the first's commit and sees it, on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.util import greenlet_spawn

from concordia.core.states import JobStatus
from concordia.db.engine import make_engine, make_sessionmaker
from concordia.db.job_rows import rows_where, store_rows
from concordia.db.migrate import upgrade
from concordia.db.tables import Application, Job, Submission, User
from concordia.logic.database import Database
from concordia.logic.identity import ensure_user
from concordia.logic.jobs import get_owned_job, transition
from concordia.settings import Settings

pytestmark = pytest.mark.sql


@asynccontextmanager
async def process(settings: Settings) -> AsyncIterator[Database]:
    """What one process has of the database: its own engine and its own write lock."""
    engine = make_engine(settings.database_url)
    try:
        yield Database(sessions=make_sessionmaker(engine))
    finally:
        await engine.dispose()


async def running_job(db: Database) -> tuple[int, int]:
    async with db.writing() as session:
        user = await ensure_user(session, "jane")
        app = Application(name="hello", fingerprint="0" * 64, definition={})
        session.add(app)
        await session.flush()
        submission = Submission(
            owner_id=user.id, application_id=app.id, application="hello", parameters={},
            backend="local", job_count=1,
        )  # fmt: skip
        session.add(submission)
        await session.flush()
        job = Job(
            uuid="0" * 32, submission_id=submission.id, owner_id=user.id, application="hello",
            index=0, name="hello 0", parameters={}, argv=["true"], jdl="[]",
            status=JobStatus.RUNNING.value, backend="local", backend_ref="0" * 32,
        )  # fmt: skip
        session.add(job)
        await session.flush()
        return user.id, job.id


async def test_a_kill_waits_for_the_workers_round_and_sees_its_result(
    settings: Settings,
) -> None:
    await asyncio.to_thread(upgrade, settings.database_url)
    async with process(settings) as worker, process(settings) as web:
        owner, job_id = await running_job(worker)
        round_has_read = asyncio.Event()

        async def worker_round() -> None:  # the job ended: the round records Done
            async with worker.writing() as session:
                [row] = await rows_where(session, Job.id == job_id)
                round_has_read.set()
                await asyncio.sleep(0.5)  # the round's other work
                transition(session, row, JobStatus.DONE, source="local backend")
                await store_rows(session, [row])

        async def user_kill() -> str:  # meanwhile, in the web process, the user kills it
            await round_has_read.wait()
            async with web.writing() as session:
                job = await get_owned_job(session, owner, job_id, lock=True)
                if job.status == JobStatus.RUNNING.value:
                    transition(session, job, JobStatus.KILLED, source="User")
                return job.status

        _, seen = await asyncio.gather(worker_round(), user_kill())
        # The kill waited for the round: it saw Done (a Running job would have been killed
        # and Done lost); SQLite let it in without "database is locked".
        assert seen == JobStatus.DONE.value
        async with web.reading() as session:
            job = await get_owned_job(session, owner, job_id)
            assert job.status == JobStatus.DONE.value


async def test_a_connection_handed_back_mid_transaction_is_rolled_back(
    settings: Settings,
) -> None:
    """The pool rolls back only what is still open (SQLite skips a second rollback of what
    the session ended): a connection given back with its transaction open (a task
    cancelled mid-query, say) neither keeps its write nor lends the open transaction on."""
    await asyncio.to_thread(upgrade, settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        connection = await engine.connect()
        fairy = await connection.get_raw_connection()
        await connection.execute(insert(User).values(username="ghost", display_name=""))
        record = fairy._connection_record
        assert record is not None
        assert connection.sync_connection is not None
        connection.sync_connection._dbapi_connection = None  # not through Connection.close
        await greenlet_spawn(fairy._checkin)
        assert not _in_transaction(record.dbapi_connection)
        async with engine.connect() as other:  # the pool's next loan: no open transaction
            count = await other.scalar(select(func.count()).select_from(User))
            assert count == 0
            await other.execute(insert(User).values(username="real", display_name=""))
            await other.commit()
        async with engine.connect() as other:
            assert await other.scalar(select(User.username)) == "real"
    finally:
        await engine.dispose()


def _in_transaction(dbapi_connection: Any) -> bool:
    driver = dbapi_connection.driver_connection
    if hasattr(driver, "is_in_transaction"):  # asyncpg
        return bool(driver.is_in_transaction())
    return bool(driver.in_transaction)
