"""The reconciler's rules with fake backends (tests/fakes/backends.py), in-process, in
milliseconds: hand-overs, refusals, restarts, reschedules, kills, room and fair share."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import update

from concordia import worker
from concordia.auth.vault import Vault
from concordia.backends.base import BackendRef, StatusUpdate
from concordia.core.states import JobStatus
from concordia.db import owned_jobs
from concordia.db.engine import make_engine, make_sessionmaker
from concordia.db.migrate import upgrade
from concordia.db.tables import Job
from concordia.images.build import BuilderChoice
from concordia.images.store import ImageStore
from concordia.logic import job_updates
from concordia.logic.applications import ApplicationCatalog
from concordia.logic.database import Database
from concordia.logic.dispatch import dispatch_round
from concordia.logic.job_updates import store_updates
from concordia.logic.jobs import transition
from concordia.logic.keyring import Keyring
from concordia.logic.platform import ImageBuilds, Platform
from concordia.settings import Settings
from concordia.worker import Reconciler
from tests.conftest import Running, make_settings, running_app
from tests.fakes.backends import (
    FailingBackend,
    FakeBackend,
    FastBackend,
    LosingBackend,
    NeverStartingBackend,
    SlowBackend,
    StartingBackend,
)
from tests.integration.db.test_write_safety import running_job

pytestmark = pytest.mark.sql

APPLICATION = """\
name: noop
title: Nothing, in a fake backend
command: /bin/true
cpu_time: 60
batch: {count: jobs}
parameters:
  jobs: {type: int, default: 1, min: 1, max: 100}
"""
#: What every job goes through here before its backend has it.
QUEUED = ["Received", "Checking", "Waiting"]


@pytest.fixture(scope="session")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite database at the newest schema, made once: each test starts on a copy
    (migrating one takes longer than most tests here)."""
    path = tmp_path_factory.mktemp("schema") / "concordia.db"
    with ThreadPoolExecutor(1) as pool:  # alembic runs its own event loop
        pool.submit(upgrade, f"sqlite+aiosqlite:///{path}").result()
    return path


@pytest.fixture
def fake_settings(tmp_path: Path, schema: Path) -> Callable[..., Settings]:
    """Settings with ``overrides``: the application above, jobs in the fake backend, a short
    poll interval, no image builder (none is probed at start: the application runs in no
    image), the database a copy of ``schema`` (on PostgreSQL, the test's own)."""

    def make(**overrides: object) -> Settings:
        apps = tmp_path / "apps"
        apps.mkdir(exist_ok=True)
        (apps / "noop.yaml").write_text(APPLICATION)
        values: dict[str, object] = {
            "default_backend": "diracx", "poll_interval": 0.05, "image_builders": [],
        }  # fmt: skip
        settings = make_settings(tmp_path / "var", applications_dir=apps, **values | overrides)
        database = settings.data_dir / "concordia.db"
        if settings.database_url.endswith(str(database)) and not database.exists():
            settings.make_data_dir()
            shutil.copyfile(schema, database)
        return settings

    return make


@pytest.fixture
def settings(fake_settings: Callable[..., Settings]) -> Settings:
    return fake_settings()


@asynccontextmanager
async def started(settings: Settings, backend: FakeBackend) -> AsyncIterator[Running]:
    """The platform up with ``backend`` its only one (a start, or a restart)."""
    async with running_app(settings, {backend.name: backend}) as app:
        yield app


async def submit(client: httpx.AsyncClient, jobs: int = 1) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/submissions", json={"application": "noop", "parameters": {"jobs": jobs}}
    )
    assert response.status_code == 201, response.text
    submission: dict[str, Any] = response.json()
    return submission


async def job(client: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    found: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    return found


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5) -> None:
    """Until ``check()`` is true, or fail after ``timeout`` seconds saying ``what``."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


async def status_of(client: httpx.AsyncClient) -> dict[int, str]:
    """The status of each of the client's jobs, by id (one request: a request a job would
    take the loop from the reconciler)."""
    page = (await client.get("/api/v1/jobs", params={"per_page": 500})).json()
    return {item["id"]: item["status"] for item in page["items"]}


async def until_status(
    client: httpx.AsyncClient, job_ids: list[int], *statuses: str
) -> list[dict[str, Any]]:
    """The jobs, once each is in one of ``statuses``."""

    async def reached() -> bool:
        now = await status_of(client)
        return all(now[i] in statuses for i in job_ids)

    await until(reached, f"jobs {job_ids} {' or '.join(statuses)}")
    return [await job(client, i) for i in job_ids]


def handed(fake: FakeBackend, count: int) -> Callable[[], Awaitable[bool]]:
    """Whether ``fake`` was handed ``count`` jobs."""

    async def check() -> bool:
        return len(fake.handed) == count

    return check


def statuses(found: dict[str, Any]) -> list[str]:
    return [entry["status"] for entry in found["history"]]


async def rounds(app: Running, count: int = 3) -> None:
    """Time for a few reconciler rounds (each woken at once)."""
    for _ in range(count):
        app.platform.look_again()
        await asyncio.sleep(0.02)


async def test_a_batch_is_handed_over_once_each_and_ends_done(settings: Settings) -> None:
    fake = FastBackend()
    async with started(settings, fake) as app:
        batch = await submit(app.client, jobs=5)
        jobs = await until_status(app.client, batch["job_ids"], "Done")
    assert sorted(fake.handed) == sorted(j["uuid"] for j in jobs)
    for done in jobs:
        assert statuses(done) == [*QUEUED, "Matched", "Running", "Completing", "Done"]
        assert done["exit_code"] == 0 and done["backend"] == "diracx"


async def test_an_unreachable_backend_keeps_jobs_waiting_then_takes_them_once(
    settings: Settings,
) -> None:
    fake = FastBackend()
    fake.unreachable = "connection refused"
    async with started(settings, fake) as app:
        batch = await submit(app.client, jobs=3)

        async def tried_again() -> bool:
            return fake.attempts >= 2

        await until(tried_again, "a second hand-over")  # at the next poll, still down
        for waiting in await until_status(app.client, batch["job_ids"], "Waiting"):
            assert waiting["backend_ref"] is None
        assert fake.handed == []

        fake.unreachable = None
        jobs = await until_status(app.client, batch["job_ids"], "Done")
    assert sorted(fake.handed) == sorted(j["uuid"] for j in jobs)
    assert all(statuses(done).count("Matched") == 1 for done in jobs)


async def test_a_refused_job_fails_with_the_backends_reason(settings: Settings) -> None:
    fake = FailingBackend(reason="no site offers the tag GPU")
    async with started(settings, fake) as app:
        batch = await submit(app.client, jobs=2)
        jobs = await until_status(app.client, batch["job_ids"], "Failed")
    for failed in jobs:
        assert failed["minor_status"] == "Refused by diracx: no site offers the tag GPU"
        assert failed["backend_ref"] is None
        assert statuses(failed) == [*QUEUED, "Failed"]
    assert fake.handed == []


async def test_a_job_failing_in_its_backend_keeps_its_exit_code(settings: Settings) -> None:
    async with started(settings, FailingBackend(exit_code=3)) as app:
        batch = await submit(app.client)
        [failed] = await until_status(app.client, batch["job_ids"], "Failed")
    assert failed["exit_code"] == 3
    assert failed["minor_status"] == "Application exited with status 3"
    assert statuses(failed) == [*QUEUED, "Matched", "Running", "Failed"]


async def test_a_job_lost_in_a_restart_is_rescheduled_until_none_are_left(
    fake_settings: Callable[..., Settings],
) -> None:
    """Its backend loses its jobs with the server's process: each restart stalls it, and
    reschedules it while it has reschedules left (max_reschedules), then fails it."""
    settings = fake_settings(max_reschedules=1)
    first, second, third = LosingBackend(), LosingBackend(), LosingBackend()
    async with started(settings, first) as app:
        [job_id] = (await submit(app.client))["job_ids"]
        [running] = await until_status(app.client, [job_id], "Running")
    assert first.closed and first.handed == [running["uuid"]]

    async with started(settings, second) as app:

        async def running_again() -> bool:
            return bool(second.handed) and (await job(app.client, job_id))["status"] == "Running"

        await until(running_again, "the job running again")
        rerun = await job(app.client, job_id)
    after_first_run = statuses(rerun)[len(statuses(running)) :]
    assert after_first_run == [
        "Stalled", "Failed", "Rescheduled", *QUEUED, "Matched", "Running",
    ]  # fmt: skip
    assert rerun["reschedule_count"] == 1 and second.handed == [rerun["uuid"]]

    async with started(settings, third) as app:
        [failed] = await until_status(app.client, [job_id], "Failed")
        await rounds(app)
        failed = await job(app.client, job_id)
    assert failed["status"] == "Failed" and failed["minor_status"] == "Stalled"
    assert statuses(failed)[-2:] == ["Stalled", "Failed"]
    assert failed["reschedule_count"] == 1 and third.handed == []


async def test_a_backend_that_survives_a_restart_keeps_its_jobs(settings: Settings) -> None:
    fake = StartingBackend()
    async with started(settings, fake) as app:
        [job_id] = (await submit(app.client))["job_ids"]
        await until_status(app.client, [job_id], "Running")
    async with started(settings, fake) as app:  # the same grid, after the restart
        await rounds(app)
        assert (await job(app.client, job_id))["status"] == "Running"
        fake.end(fake.handed[0])
        [done] = await until_status(app.client, [job_id], "Done")
    assert "Stalled" not in statuses(done) and done["reschedule_count"] == 0
    assert len(fake.handed) == 1  # followed, not handed over again


async def test_news_of_many_jobs_is_stored_a_few_jobs_at_a_time(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll's news of many jobs is stored in several transactions: another write (a user's
    kill, a hand-over's record) waiting meanwhile gets its turn after the first, not after
    all of them."""
    monkeypatch.setattr(job_updates, "JOBS_PER_WRITE", 3)
    fake = FakeBackend()
    async with started(settings, fake) as app:
        batch = await submit(app.client, jobs=7)

        async def handed_over() -> bool:
            return len(fake.handed) == 7

        await until(handed_over, "7 jobs in their backend")
        writes: list[str] = []
        others: list[asyncio.Task[None]] = []

        async def another_write() -> None:
            async with app.platform.writing():
                writes.append("another write")

        async def store(*args: Any) -> Any:
            if not writes:  # while the first group is stored, another write waits its turn
                others.append(asyncio.create_task(another_write()))
                await asyncio.sleep(0)
            writes.append(f"news of {len({u.uuid for u in args[-1]})} jobs")
            return await store_updates(*args)

        monkeypatch.setattr(worker, "store_updates", store)
        for uuid in fake.handed:  # all at once: one poll brings the news of 7 jobs
            fake.start(uuid)
        await until_status(app.client, batch["job_ids"], "Running")
        await asyncio.gather(*others)
    assert writes == ["news of 3 jobs", "another write", "news of 3 jobs", "news of 1 jobs"]


async def test_a_submission_is_handed_over_before_the_rest_of_a_big_poll_is_stored(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs submitted while a poll's news of many jobs is stored go to their backend between
    two groups of that news, not after all of it."""
    monkeypatch.setattr(job_updates, "JOBS_PER_WRITE", 3)
    fake = FakeBackend()
    async with started(settings, fake) as app:
        first = await submit(app.client, jobs=7)

        await until(handed(fake, 7), "7 jobs in their backend")
        events: list[str] = []
        later: list[asyncio.Task[dict[str, Any]]] = []

        async def store(*args: Any) -> Any:
            if not events:  # a user submits while the first group is stored
                later.append(asyncio.create_task(submit(app.client, jobs=2)))
                await asyncio.sleep(0)
            events.append(f"news of {len({u.uuid for u in args[-1]})} jobs")
            return await store_updates(*args)

        async def dispatched(*args: Any, **kwargs: Any) -> Any:
            done = await dispatch_round(*args, **kwargs)
            if done is not None and done.specs:
                events.append(f"{len(done.specs)} jobs handed over")
            return done

        monkeypatch.setattr(worker, "store_updates", store)
        monkeypatch.setattr(worker, "dispatch_round", dispatched)
        for uuid in fake.handed:  # all at once: one poll brings the news of 7 jobs
            fake.start(uuid)
        await until_status(app.client, first["job_ids"], "Running")
        await asyncio.gather(*later)
        await until(handed(fake, 9), "the 2 new jobs in their backend")
    news = [event for event in events if event.startswith("news")]
    assert news == ["news of 3 jobs", "news of 3 jobs", "news of 1 jobs"]
    assert events.index("2 jobs handed over") < events.index("news of 1 jobs"), events


async def test_a_backend_with_nothing_to_take_has_no_round_until_new_work_comes(
    fake_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend's news wake the worker many times a second. A backend whose last round
    found no job though it had room has no dispatch round (a write transaction each) at
    that news; a new submission still goes to it at once."""
    settings = fake_settings(poll_interval=30)  # no timed round during the test
    fake = FakeBackend()
    names: list[str] = []

    async def counted(*args: Any, **kwargs: Any) -> Any:
        names.append(args[2])
        return await dispatch_round(*args, **kwargs)

    monkeypatch.setattr(worker, "dispatch_round", counted)
    async with started(settings, fake) as app:
        first = await submit(app.client, jobs=3)

        await until(handed(fake, 3), "3 jobs in their backend")
        looked = len(names)
        app.platform.look_again()  # as a hand-over's end does: a round finds the queue empty

        async def looked_again() -> bool:
            return len(names) > looked

        await until(looked_again, "a round after the hand-over")
        await asyncio.sleep(0.1)
        before = len(names)
        for uuid, job_id in zip(fake.handed, first["job_ids"], strict=True):
            fake.start(uuid)  # news: a round of their own
            await until_status(app.client, [job_id], "Running")
        assert len(names) == before
        await submit(app.client, jobs=1)
        await until(handed(fake, 4), "the new job in its backend")
    assert len(names) > before


async def test_another_backends_hand_overs_bring_an_idle_backend_no_round(
    fake_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submission may bring work to any backend: each has a round. The end of a hand-over
    to one backend brings none to the others."""
    settings = fake_settings(poll_interval=30)  # no timed round during the test
    busy, idle = FakeBackend(), FakeBackend("local")
    names: list[str] = []

    async def counted(*args: Any, **kwargs: Any) -> Any:
        names.append(args[2])
        return await dispatch_round(*args, **kwargs)

    monkeypatch.setattr(worker, "dispatch_round", counted)
    async with running_app(settings, {busy.name: busy, idle.name: idle}) as app:
        for submitted in range(1, 4):
            await submit(app.client, jobs=1)

            await until(handed(busy, submitted), f"{submitted} jobs in their backend")
            await asyncio.sleep(0.1)  # the round the hand-over's end asks for
    assert names.count("diracx") >= 6  # a round each submission, and one after its hand-over
    assert names.count("local") <= 4  # one at the start, one at each submission


@pytest.mark.parametrize(
    ("backend", "status"),
    [(StartingBackend, "Running"), (NeverStartingBackend, "Waiting")],
    ids=["running", "waiting-for-a-site"],
)
async def test_a_kill_reaches_the_backend_once_and_the_job_ends_killed(
    settings: Settings, backend: type[FakeBackend], status: str
) -> None:
    fake = backend()
    async with started(settings, fake) as app:
        [job_id] = (await submit(app.client))["job_ids"]

        async def handed_over() -> bool:
            found = await job(app.client, job_id)
            return found["status"] == status and found["backend_ref"] is not None

        await until(handed_over, f"job {status} in its backend")
        killed = await app.client.post(f"/api/v1/jobs/{job_id}/kill")
        assert killed.status_code == 200, killed.text
        assert killed.json()["status"] == "Killed"
        assert (await app.client.post(f"/api/v1/jobs/{job_id}/kill")).status_code == 409
        await rounds(app)
        found = await job(app.client, job_id)
    assert fake.kills == [found["uuid"]]
    assert found["status"] == "Killed" and statuses(found)[-1] == "Killed"
    assert not fake.held()


async def test_a_job_killed_too_late_keeps_the_state_it_ended_in(settings: Settings) -> None:
    """The job ends in its backend just as the kill reaches it, the reconciler not told yet:
    the kill is refused, and the job is Done, as it ended."""
    fake = StartingBackend()
    async with started(settings, fake) as app:
        [job_id] = (await submit(app.client))["job_ids"]
        [running] = await until_status(app.client, [job_id], "Running")
        fake.ending_at_kill.add(running["uuid"])
        refused = await app.client.post(f"/api/v1/jobs/{job_id}/kill")
        assert refused.status_code == 409, refused.text
        assert "too late" in refused.json()["detail"]
        [done] = await until_status(app.client, [job_id], "Done", "Killed")
    assert done["status"] == "Done" and done["exit_code"] == 0
    assert "Killed" not in statuses(done)


class CountingKills(StartingBackend):
    """Starts its jobs at once, and counts the calls that kill them."""

    def __init__(self) -> None:
        super().__init__()
        self.kill_calls = 0

    async def kill(self, refs: list[BackendRef]) -> list[StatusUpdate]:
        self.kill_calls += 1
        return await super().kill(refs)


async def test_a_submission_is_killed_in_one_call_to_its_backend(settings: Settings) -> None:
    """A whole batch killed at once tells its backend once (a grid call per job would take
    minutes for a thousand), and a job that ended just before is refused alone, as it ended."""
    fake = CountingKills()
    async with started(settings, fake) as app:
        submission = await submit(app.client, jobs=30)
        ids = submission["job_ids"]
        runs = await until_status(app.client, ids, "Running")
        fake.ending_at_kill.add(runs[7]["uuid"])
        answer = await app.client.post(f"/api/v1/submissions/{submission['id']}/kill")
        assert answer.status_code == 200, answer.text
        outcome = answer.json()
        assert fake.kill_calls == 1
        assert sorted(outcome["succeeded"]) == sorted(i for i in ids if i != ids[7])
        [refused] = outcome["refused"]
        assert f"job {ids[7]} was not killed: the kill came too late" in refused
        now = await status_of(app.client)
        assert [now[i] for i in ids if i != ids[7]] == ["Killed"] * 29
        await until_status(app.client, [ids[7]], "Done")


class CountingDeletes(FastBackend):
    delete_calls = 0

    async def delete(self, refs: list[BackendRef]) -> None:
        self.delete_calls += 1
        await super().delete(refs)


async def test_a_submission_is_deleted_in_one_call_to_its_backend(settings: Settings) -> None:
    """Deleting a whole batch tells its backend once (a grid call per job would take minutes
    for a thousand); the jobs' rows are read in statements small enough for the database,
    however many ids ("all jobs matching" may name 100,000)."""
    fake = CountingDeletes()
    async with started(settings, fake) as app:
        submission = await submit(app.client, jobs=30)
        ids = submission["job_ids"]
        uuids = [j["uuid"] for j in await until_status(app.client, ids, "Done")]
        async with app.platform.reading() as session:
            owner_id = (await session.get(Job, ids[0])).owner_id  # type: ignore[union-attr]
            many = [*range(10**6, 10**6 + 40_000), *ids]  # more than asyncpg's 32,767 values
            assert sorted(await owned_jobs.owned(session, owner_id, many)) == sorted(ids)
        answer = await app.client.delete(f"/api/v1/submissions/{submission['id']}")
        assert answer.status_code == 200, answer.text
        assert sorted(answer.json()["succeeded"]) == sorted(ids)
        assert fake.delete_calls == 1 and sorted(fake.deletes) == sorted(uuids)
        assert {(await job(app.client, i))["status"] for i in ids} == {"Deleted"}


async def test_a_job_killed_while_being_handed_over_is_killed_in_its_backend(
    settings: Settings,
) -> None:
    """The kill is recorded at once; the backend, which takes the job after it, is told."""
    fake = SlowBackend()
    async with started(settings, fake) as app:
        [job_id] = (await submit(app.client))["job_ids"]
        await asyncio.wait_for(fake.waiting.wait(), 5)
        killed = await app.client.post(f"/api/v1/jobs/{job_id}/kill")
        assert killed.status_code == 200 and killed.json()["status"] == "Killed", killed.text
        assert fake.kills == []  # not the backend's yet: nothing to stop there
        fake.gate.set()

        async def told() -> bool:
            return bool(fake.kills)

        await until(told, "the kill told to the backend")
        await rounds(app)
        found = await job(app.client, job_id)
    assert fake.handed == fake.kills == [found["uuid"]] and not fake.held()
    assert found["status"] == "Killed" and "Running" not in statuses(found)


async def test_a_backend_is_handed_no_more_jobs_than_it_has_room_for(
    settings: Settings,
) -> None:
    fake = StartingBackend(room=2)
    async with started(settings, fake) as app:
        batch = await submit(app.client, jobs=5)
        ids = batch["job_ids"]

        async def two_run_three_wait() -> bool:
            found = list((await status_of(app.client)).values())
            return found.count("Running") == 2 and found.count("Waiting") == 3

        await until(two_run_three_wait, "two jobs running, three waiting")
        await rounds(app)
        assert len(fake.handed) == 2
        waiting = [j for j in [await job(app.client, i) for i in ids] if j["status"] == "Waiting"]
        assert {j["minor_status"] for j in waiting} == {"Waiting for a diracx slot"}

        while len(fake.handed) < len(ids):  # each end makes room for one more
            handed = len(fake.handed)
            fake.end(fake.held()[0].spec.uuid)

            async def one_more(handed: int = handed) -> bool:
                return len(fake.handed) > handed

            await until(one_more, "the next job handed over")
        for run in fake.held():
            fake.end(run.spec.uuid)
        await until_status(app.client, ids, "Done")
    assert fake.most_held == 2 and len(set(fake.handed)) == 5


async def test_one_users_queue_does_not_keep_anothers_job_waiting(settings: Settings) -> None:
    """Room for one job: Bob's one job, submitted after Alice's four, is the next to run."""
    fake = StartingBackend(room=1)
    async with (
        started(settings, fake) as app,
        app.new_client("alice") as alice,
        app.new_client("bob") as bob,
    ):
        hers = (await submit(alice, jobs=4))["job_ids"]
        await until_status(alice, hers[:1], "Running")
        [his] = (await submit(bob))["job_ids"]
        await until_status(bob, [his], "Waiting")
        fake.end(fake.handed[0])
        [running] = await until_status(bob, [his], "Running")
    assert fake.handed[1] == running["uuid"]
    assert fake.most_held == 1


async def test_a_kill_recorded_elsewhere_is_carried_out_even_after_a_timed_reread(
    settings: Settings,
) -> None:
    """A web process records the kill of a job the worker runs (it cannot stop it itself).
    When the worker's timed re-read of its jobs comes before word of that write, it reads
    the job Killed and stops following it: it must stop the job first, not forget it
    running (a full run's split test saw a killed job's sandbox live 20 s on)."""
    await asyncio.to_thread(upgrade, settings.database_url)
    engine = make_engine(settings.database_url)
    backend = LosingBackend()
    try:
        platform = Platform(
            settings=settings,
            db=Database(sessions=make_sessionmaker(engine)),
            catalog=ApplicationCatalog(settings.applications_dir).load(),
            backends={"local": backend},
            images=ImageBuilds(ImageStore(settings.images_dir), BuilderChoice(None)),
            keyring=Keyring(vault=Vault([Fernet.generate_key()])),
        )
        _, job_id = await running_job(platform.db)
        async with platform.writing() as session:
            await session.execute(update(Job).where(Job.id == job_id).values(worker=1))
        reconciler = Reconciler(platform)
        await reconciler.step(resync=True)  # it follows its running job
        async with platform.writing() as session:  # as a web process records a kill
            job = await session.get(Job, job_id)
            assert job is not None
            transition(session, job, JobStatus.KILLED, minor="Killed by user", source="User")
        await reconciler.step(resync=True)  # a timed re-read, before word of that write
        reconciler.another_process_wrote()
        await reconciler.step(resync=False)
        assert backend.kills == [job.uuid]
    finally:
        await engine.dispose()
