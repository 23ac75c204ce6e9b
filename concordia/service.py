"""The platform running in one kind of process: all of it (`concordia serve`), a web process
of several (`concordia serve --workers N`), or the background work (`concordia worker`)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from concordia.auth.oidc import Iam
from concordia.auth.vault import Vault, open_vault
from concordia.backends.base import Backend
from concordia.backends.diracx import DiracXBackend
from concordia.backends.local import LocalBackend
from concordia.datalake.store import connect as connect_datalake
from concordia.db.changes import ChangeFeed, notifies
from concordia.db.engine import WRITES, make_engine, make_read_engine, make_sessionmaker
from concordia.db.lease import Lease, worker_lease
from concordia.db.migrate import schema_behind, upgrade_in_turn
from concordia.images.builders import stop_running_builds
from concordia.images.publication import IMAGE_LINKS
from concordia.logic.applications import ApplicationCatalog
from concordia.logic.database import Database
from concordia.logic.datalake_tokens import storage_reader
from concordia.logic.diracx_accounts import per_user, user_tokens
from concordia.logic.identity import local_sign_in, login_link
from concordia.logic.image_builds import clear_build_leftovers, open_image_builds, start_builds
from concordia.logic.keyring import Keyring, upload_issuer
from concordia.logic.platform import Platform
from concordia.logic.process import Process
from concordia.logic.relay import Relay
from concordia.settings import ServerSettings, Settings
from concordia.worker import Reconciler, cancel

log = logging.getLogger(__name__)

#: all: one process does everything (the embedded default); web: pages and API only, beside
#: a worker; worker: the reconciler, local jobs and image builds, no HTTP.
Role = Literal["all", "web", "worker"]


# The whole Settings here and in its callers (run_worker, create_app): the platform keeps them
# all (Platform.settings) for the logic, which reads every concern.
@asynccontextmanager
async def running_platform(
    settings: Settings,
    role: Role,
    *,
    on_standby: Callable[[], None] | None = None,
    backends: dict[str, Backend] | None = None,
) -> AsyncIterator[Platform]:
    """The platform, up for the body. Workers run side by side on PostgreSQL, each with its
    own jobs; on SQLite a worker waits as a standby while another runs the work
    (``on_standby`` is told). `serve` refuses to start beside a worker (LeaseHeld). A worker
    whose lease is lost stops (LeaseLost: its jobs are adopted by the others).

    ``backends``: the jobs' backends instead of those the settings configure (the tests'
    fakes), closed as the platform stops as those would be."""
    tasks: list[asyncio.Task[None]] = []  # cancelled first as the platform stops
    async with AsyncExitStack() as stack:
        engine, read_engine = _open_engines(stack, settings.database_url)
        works = role != "web"
        lease = await _hold_lease(stack, engine, settings, role, on_standby)
        vault = open_vault(settings.encryption_keys, settings.encryption_key_file)
        backends = await _open_backends(stack, settings, works, vault, backends)
        platform = Platform(
            settings=settings,
            db=Database(
                sessions=make_sessionmaker(engine),
                read_sessions=make_sessionmaker(read_engine) if read_engine else None,
                tells_others=role != "all" and notifies(settings.database_url),
            ),
            catalog=ApplicationCatalog(settings.applications_dir).load(),
            backends=backends,
            images=await asyncio.to_thread(open_image_builds, settings, settings, here=works),
            keyring=Keyring(
                vault=vault,
                iam=Iam(settings) if settings.iam_mode else None,
                upload_issuer=upload_issuer(settings, settings, vault),
            ),
            process=Process(runs_work=works, lease=lease, shared=role != "all"),
        )
        _open_services(stack, platform, role)
        reconciler = await _start_work(stack, platform, tasks) if works else None
        await _follow_other_processes(stack, engine, platform, role, reconciler, tasks)
        try:
            yield platform
        finally:
            for task in tasks:
                await cancel(task)


def _open_engines(stack: AsyncExitStack, url: str) -> tuple[AsyncEngine, AsyncEngine | None]:
    """The database's engine, and one for reads only where the database has one; each
    disposed with the ``stack``."""
    engine = make_engine(url)
    stack.push_async_callback(engine.dispose)
    read_engine = make_read_engine(url)
    if read_engine is not None:
        stack.push_async_callback(read_engine.dispose)
    return engine, read_engine


async def _hold_lease(
    stack: AsyncExitStack,
    engine: AsyncEngine,
    settings: ServerSettings,
    role: Role,
    on_standby: Callable[[], None] | None,
) -> Lease:
    """A process that works holds a slot (one leads: it builds images), given up with the
    ``stack``, and brings the schema up to date in turn; a web process holds none."""
    if role == "web":
        return Lease(slot=0, leads=False)
    lease = await stack.enter_async_context(
        worker_lease(engine, settings.data_dir, on_standby, alone=role == "all")
    )
    await upgrade_in_turn(engine, settings.database_url)
    return lease


# The whole Settings: every backend's (the local backend's LocalBackendSettings, the grid's
# GridSettings and the server's public URL its image links lead to).
async def _open_backends(
    stack: AsyncExitStack,
    settings: Settings,
    works: bool,
    vault: Vault,
    given: dict[str, Backend] | None,
) -> dict[str, Backend]:
    """The jobs' backends, each closed with the ``stack``: the ``given`` ones, else this
    machine, started (only probed in a web process), and the grid where configured."""
    if given is not None:
        for backend in given.values():
            stack.push_async_callback(backend.close)
        return given
    local = LocalBackend(settings)
    await (local.start() if works else local.probe())
    stack.push_async_callback(local.close)
    backends: dict[str, Backend] = {"local": local}
    if settings.diracx_url:
        grid = DiracXBackend(
            settings, settings.public_url, image_keys=vault.derived_keys(IMAGE_LINKS)
        )
        stack.push_async_callback(grid.close)
        backends["diracx"] = grid
    return backends


def _open_services(stack: AsyncExitStack, platform: Platform, role: Role) -> None:
    """The platform's services, each closed with the ``stack``: its work threads, the data
    lake's client and the IAM client. A worker stops when its lease is lost; backends that
    send jobs with their owners' own tokens are told where those come from."""
    stack.callback(platform.work.shutdown)
    if platform.settings.datalake_enabled:
        platform.datalake = connect_datalake(
            platform.settings, storage_reader(platform.settings, platform.keyring)
        )
        stack.push_async_callback(platform.datalake.aclose)
    if role == "worker":
        platform.process.stopping = platform.process.lease.lost
    if platform.keyring.iam is not None:
        stack.push_async_callback(platform.keyring.iam.close)
    if per_user(platform.backends):  # jobs go to DiracX with their owners' own tokens
        user_tokens(platform.db, platform.backends, platform.keyring)


async def _start_work(
    stack: AsyncExitStack, platform: Platform, tasks: list[asyncio.Task[None]]
) -> Reconciler:
    """The background work: the leader's image builds (first those a restart interrupted),
    stopped with the ``stack``, and the reconciler, running among the ``tasks``."""
    if platform.process.lease.leads:  # those a restart interrupted
        await asyncio.to_thread(clear_build_leftovers, platform.images)
        await start_builds(platform)
    stack.push_async_callback(_stop_builds, platform)  # those it started on leading
    reconciler = Reconciler(platform)
    tasks.append(asyncio.create_task(reconciler.run(), name="reconciler"))
    return reconciler


async def _follow_other_processes(
    stack: AsyncExitStack,
    engine: AsyncEngine,
    platform: Platform,
    role: Role,
    reconciler: Reconciler | None,
    tasks: list[asyncio.Task[None]],
) -> None:
    """Where the work is shared between processes, each follows the others' changes in the
    database (a feed closed with the ``stack``); a process doing everything needs none."""
    if role == "web":  # the worker's changes reach this process's live pages
        relay = Relay(platform.settings, platform.db, platform.bus)
        await relay.start()
        tasks.append(asyncio.create_task(relay.run(), name="relay"))
        feed = ChangeFeed(engine, relay.wake.set)
    elif role == "worker":  # what web processes asked for
        assert reconciler is not None  # every worker runs one
        feed = ChangeFeed(engine, reconciler.another_process_wrote)
    else:  # everything happens here
        return
    feed.start()
    stack.push_async_callback(feed.close)


#: What a server process makes is its own: the database and its -wal/-shm, logs, keys, job
#: files. What another uid must read (a job's sandbox: the data dir's path to its work
#: directory and image) is given its mode explicitly where it is made.
SERVER_UMASK = 0o077


def keep_files_private() -> None:
    """Files and directories a server process makes are for its user only (umask 077); the
    processes it starts inherit it (uvicorn's web processes, builds, jobs). First thing, before
    anything is written."""
    os.umask(SERVER_UMASK)


def tune_server_process() -> None:
    """For a server process, once its modules and app are made (its files private, as
    `keep_files_private`, for a web process started by uvicorn's factory).

    Its modules and app (most of the heap, kept until the end) are left out of the
    collector's full passes, each of which would walk it all: a pause of about 100 ms in the
    middle of a submission (bench/diracx_submit.py's timeline). Not for a process that makes
    apps again and again (the tests): what it froze stays.

    Threads hand the GIL over after 0.5 ms rather than Python's 5: the event loop shares it
    with the SQLite driver's threads (each statement is several hand-overs to one), and
    under load a request can wait up to 5 ms at each while the loop ran other work
    (bench/load.py, three runs each way on this 2-core machine: p95 of GET /api/v1/jobs
    151, 197, 171 ms against 238, 231, 193 ms).
    """
    keep_files_private()
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(0.0005)


#: prctl's option: the signal the kernel sends a process when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def end_with_parent() -> None:
    """For a web process of `serve --workers N`: it stops (SIGTERM, a clean stop) when the
    parent that started it dies, as by SIGKILL or the OOM killer; else it served on as an
    orphan, holding the port that the next `serve` needs, out of systemd's stop. Its parent
    replaces a web process that dies; nothing replaced a parent."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning(
            "this web process will outlive its parent: prctl: %s", os.strerror(ctypes.get_errno())
        )
        return
    if os.getppid() != parent.pid:  # it died before the kernel was told
        os.kill(os.getpid(), signal.SIGTERM)


async def _stop_builds(platform: Platform) -> None:
    for build in list(platform.images.tasks.values()):  # left "building": resumed later
        await cancel(build)
    stop_running_builds()


class LeaseLost(RuntimeError):
    """A worker whose lease was lost stops: the next holder runs the work."""


async def run_worker(settings: Settings, on_standby: Callable[[], None]) -> None:
    """`concordia worker`: until SIGTERM or SIGINT (its jobs stopped, its lease given up,
    as `serve` does), or until its lease is lost (LeaseLost)."""
    loop, this = asyncio.get_running_loop(), asyncio.current_task()
    assert this is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, this.cancel)
    try:
        async with running_platform(settings, "worker", on_standby=on_standby) as platform:
            lease = platform.process.lease
            log.info(
                "worker running: worker %d%s, pid %d on %s; backends %s",
                lease.slot, " (leader: image builds)" if lease.leads else "", os.getpid(),
                socket.gethostname(), ", ".join(platform.backends),
            )  # fmt: skip
            await platform.process.stopping.wait()
    except asyncio.CancelledError:
        log.info("worker stopped")
        return
    raise LeaseLost("the worker lease was lost (another worker may hold it): stopping")


async def prepare_web_processes(
    settings: ServerSettings, iam_mode: bool, on_wait: Callable[[], None]
) -> str:
    """Before `serve --workers N` starts its processes: the database at the newest schema
    (made by `concordia db upgrade` or a worker starting; waited for, ``on_wait`` told), and
    in local mode (not ``iam_mode``) the machine's user's sign-in link, made once. The login
    URL."""
    engine = make_engine(settings.database_url)
    try:
        told = False
        while await schema_behind(engine):
            if not told:
                on_wait()
                told = True
            await asyncio.sleep(1)
        if iam_mode:
            return f"{settings.public_url}/login"
        async with _writing(engine) as session:
            return await local_sign_in(session, settings)
    finally:
        await engine.dispose()


@asynccontextmanager
async def _writing(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A writing transaction from its start (SQLite: BEGIN IMMEDIATE): reads then writes
    beside a running server or worker would fail as "database is locked"."""
    async with make_sessionmaker(engine)() as session, session.begin():
        await session.connection(execution_options={WRITES: True})
        yield session


class NotSetUp(RuntimeError):
    """The database is missing or behind the code: the server has not been started on it."""


async def new_login_link(settings: ServerSettings) -> str:
    """`concordia login-link`: a one-time sign-in link for the local user, written into the
    database a running server reads (no restart), from a process of its own."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        raise NotSetUp("it has no database yet")  # connecting would make an empty one
    engine = make_engine(settings.database_url)
    try:
        if await schema_behind(engine):
            raise NotSetUp("its database is not set up (or older than this Concordia)")
        async with _writing(engine) as session:
            return await login_link(session, settings, "concordia login-link")
    finally:
        await engine.dispose()
