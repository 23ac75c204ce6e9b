"""Adoption on PostgreSQL, where workers run side by side: a worker takes the jobs of a slot
no live worker holds, and never its own while it lives, even when its own slot is not held
for a moment (the database restarted, and the worker has not seen it yet)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text, update

from concordia.auth.vault import Vault
from concordia.backends.base import BackendRef
from concordia.backends.local import LocalBackend
from concordia.core.states import JobStatus
from concordia.db.engine import make_engine, make_sessionmaker
from concordia.db.lease import SLOT_CLASS, Lease
from concordia.db.migrate import upgrade
from concordia.db.tables import Job
from concordia.images.build import BuilderChoice
from concordia.images.store import ImageStore
from concordia.logic.adoption import ADOPT_AFTER
from concordia.logic.applications import ApplicationCatalog
from concordia.logic.database import Database
from concordia.logic.keyring import Keyring
from concordia.logic.platform import ImageBuilds, Platform
from concordia.logic.process import Process
from concordia.settings import Settings
from concordia.worker import LeaseNotHeld, Reconciler
from tests.database import ON_POSTGRESQL
from tests.integration.db.test_write_safety import running_job

pytestmark = [
    pytest.mark.sql,
    pytest.mark.skipif(
        not ON_POSTGRESQL, reason="slots are PostgreSQL's: on SQLite one worker runs at a time"
    ),
]
SLOT = 5


@asynccontextmanager
async def worker(settings: Settings) -> AsyncIterator[tuple[Platform, int]]:
    """A worker's platform in slot SLOT (not held yet), and a job of its, Running."""
    await asyncio.to_thread(upgrade, settings.database_url)
    lease = Lease(slot=SLOT, leads=False, side_by_side=True)
    engine = make_engine(settings.database_url)
    try:
        platform = Platform(
            settings=settings,
            db=Database(sessions=make_sessionmaker(engine)),
            catalog=ApplicationCatalog(settings.applications_dir).load(),
            backends={"local": LocalBackend(settings)},
            # What a worker has of images and secrets (this test builds and decrypts none).
            images=ImageBuilds(ImageStore(settings.images_dir), BuilderChoice(None)),
            keyring=Keyring(vault=Vault([Fernet.generate_key()])),
            process=Process(lease=lease),
        )
        _, job_id = await running_job(platform.db)
        await assign(platform, job_id, SLOT)
        yield platform, job_id
    finally:
        await engine.dispose()


@asynccontextmanager
async def holding(settings: Settings, slot: int) -> AsyncIterator[None]:
    """The slot held as a live worker holds it: an advisory lock of a connection's."""
    engine = make_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            await connection.execute(
                text("SELECT pg_advisory_lock(:c, :n)"), {"c": SLOT_CLASS, "n": slot}
            )
            await connection.commit()
            yield
    finally:
        await engine.dispose()


async def assign(platform: Platform, job_id: int, slot: int | None, **values: object) -> None:
    async with platform.writing() as session:
        await session.execute(update(Job).where(Job.id == job_id).values(worker=slot, **values))


async def status_of(platform: Platform, job_id: int) -> tuple[str, int | None]:
    async with platform.reading() as session:
        row = (await session.execute(select(Job.status, Job.worker).where(Job.id == job_id))).one()
    return row[0], row[1]


async def test_a_worker_whose_slot_is_not_held_adopts_nothing(settings: Settings) -> None:
    async with worker(settings) as (platform, job_id):
        reconciler = Reconciler(platform)
        with pytest.raises(LeaseNotHeld):  # it would have found its own job "gone"
            await reconciler.adopt()
        with pytest.raises(LeaseNotHeld):
            await reconciler.adopt(at_start=True)
        assert await status_of(platform, job_id) == ("Running", SLOT)
        async with holding(settings, SLOT):
            await reconciler.adopt()  # its own, alive: left running
            assert await status_of(platform, job_id) == ("Running", SLOT)
            await assign(platform, job_id, SLOT + 1)  # another worker's, which died
            # Seen free now: its holder may be alive, cut off, and still running the job.
            assert 0 < (await reconciler.adopt() or 0) <= ADOPT_AFTER
            assert await status_of(platform, job_id) == ("Running", SLOT + 1)
            await asyncio.sleep(ADOPT_AFTER)  # by now it has seen that, and stopped
            assert await reconciler.adopt() is None
            assert await status_of(platform, job_id) == (JobStatus.RECEIVED.value, SLOT)


async def test_a_restarted_worker_takes_its_slot_s_jobs_once_their_holder_has_stopped(
    settings: Settings,
) -> None:
    """A worker that starts in a slot whose jobs are under way (its last holder died, or is
    cut off from the database and has not seen it yet, its jobs still running) takes them
    only once that holder must have stopped: the two would run them side by side, in the
    same job directories (a crash test saw one job's run fail as the other's prepared)."""
    async with worker(settings) as (platform, job_id), holding(settings, SLOT):
        recovering = asyncio.ensure_future(Reconciler(platform).recover())
        await asyncio.sleep(ADOPT_AFTER / 3)
        assert not recovering.done()
        assert await status_of(platform, job_id) == ("Running", SLOT)
        await asyncio.wait_for(recovering, ADOPT_AFTER * 3)
        assert await status_of(platform, job_id) == (JobStatus.RECEIVED.value, SLOT)


async def test_a_job_under_way_with_no_worker_is_adopted(settings: Settings) -> None:
    """What earlier versions could leave: a job a worker's backend ran after its row was put
    back in the shared queue, Running with no worker and no backend ref."""
    async with worker(settings) as (platform, job_id):
        await assign(platform, job_id, None, backend_ref=None)
        async with holding(settings, SLOT):
            await Reconciler(platform).adopt()
        assert await status_of(platform, job_id) == (JobStatus.RECEIVED.value, SLOT)


async def test_news_of_a_job_another_worker_adopted_is_not_recorded(settings: Settings) -> None:
    """A worker's backend may still tell of a job another worker took over (its row names
    the other's slot): the news is not this worker's to record, and the job is no longer
    watched; once the row names this worker again, its news is."""
    async with worker(settings) as (platform, job_id):
        backend = platform.backends["local"]
        assert isinstance(backend, LocalBackend)
        reconciler = Reconciler(platform)
        async with platform.reading() as session:
            uuid, ref = (await session.execute(select(Job.uuid, Job.backend_ref))).one()
        await assign(platform, job_id, SLOT + 1)  # adopted by another worker
        reconciler._watched["local"] = {uuid: BackendRef(uuid=uuid, ref=ref)}
        backend._emit(uuid, JobStatus.DONE, "Execution Complete")
        await reconciler.apply_updates("local", backend)
        assert await status_of(platform, job_id) == ("Running", SLOT + 1)
        assert uuid not in reconciler._watched["local"]
        await assign(platform, job_id, SLOT)  # this worker's again
        reconciler._watched["local"] = {uuid: BackendRef(uuid=uuid, ref=ref)}
        backend._emit(uuid, JobStatus.DONE, "Execution Complete")
        await reconciler.apply_updates("local", backend)
        assert await status_of(platform, job_id) == ("Done", SLOT)


async def test_a_restarted_worker_takes_its_jobs_once_a_dead_transaction_lets_go(
    settings: Settings,
) -> None:
    """A worker killed in a transaction leaves its jobs' rows locked until the database sees
    its connection closed, which may be after the restarted worker looks for them: it looks
    again until it has them (it never would later: its own slot's jobs are gone only at
    start), and they are not left Running for ever."""
    async with worker(settings) as (platform, job_id), holding(settings, SLOT):
        engine = make_engine(settings.database_url)
        try:
            async with engine.connect() as dead:  # the killed worker's open transaction
                await dead.execute(select(Job.id).where(Job.id == job_id).with_for_update())
                recovering = asyncio.ensure_future(Reconciler(platform).recover())
                await asyncio.sleep(ADOPT_AFTER * 1.5)
                assert not recovering.done()
                assert await status_of(platform, job_id) == ("Running", SLOT)
                await dead.rollback()  # the database ends it
            await asyncio.wait_for(recovering, ADOPT_AFTER * 3)
        finally:
            await engine.dispose()
        assert await status_of(platform, job_id) == (JobStatus.RECEIVED.value, SLOT)


async def test_a_restarted_worker_takes_its_jobs_though_its_timer_fires_early(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvloop's timers (uvicorn runs on uvloop) have a millisecond's resolution: a worker
    waiting for its slot's jobs to be free long enough may look a moment too soon. It looks
    again then, rather than stop looking with the jobs left Running for ever."""
    sleep = asyncio.sleep

    async def early(delay: float) -> None:
        # Far too early, so that the worker looks many times over and one of its looks
        # begins before the slot's time is up and ends after.
        await sleep(max(0.0, delay - ADOPT_AFTER / 6))

    monkeypatch.setattr(asyncio, "sleep", early)
    async with worker(settings) as (platform, job_id), holding(settings, SLOT):
        await asyncio.wait_for(Reconciler(platform).recover(), ADOPT_AFTER * 3)
        assert await status_of(platform, job_id) == (JobStatus.RECEIVED.value, SLOT)
