"""The running platform's shared parts, handed to every use case."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from cachetools import TLRUCache
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from concordia.auth.oidc import Iam
from concordia.auth.vault import Vault
from concordia.backends.base import Backend
from concordia.datalake.store import DataLake
from concordia.db.changes import notifies, notify
from concordia.db.engine import WRITES
from concordia.db.job_history import add_history
from concordia.db.lease import Lease
from concordia.images.build import BuilderChoice
from concordia.images.stages import StageCache
from concordia.images.store import ImageStore
from concordia.logic.applications import ApplicationCatalog
from concordia.logic.events import EventBus
from concordia.logic.identity import Identity
from concordia.logic.limits import WorkPools
from concordia.settings import Settings

#: API tokens a process trusts at once, at most (each a few hundred bytes): the clients of
#: a collaboration, with room to spare; the least recently used go first.
TRUSTED_TOKENS = 4096
#: The session.info key under which logic.jobs.record_status keeps pending history rows.
HISTORY_KEY = "concordia.history"


@dataclass
class ImageBuilds:
    """The image store, the builder chosen at start, and the builds running now."""

    store: ImageStore
    choice: BuilderChoice
    #: Stages of earlier builds, reused by the next that shares them.
    stages: StageCache | None = None
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    #: Builds started by this process (each select-or-build that found nothing).
    started: int = 0
    #: Builds at once: each wants cores, network and gigabytes of disk.
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))


@dataclass
class Platform:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    catalog: ApplicationCatalog
    backends: dict[str, Backend]
    images: ImageBuilds
    #: Encrypts users' secrets at rest (IAM tokens, credentials, proxies).
    vault: Vault
    #: The IAM issuer; None in local mode.
    iam: Iam | None = None
    #: The data lake (Rucio, as the operator's service account); None: not configured.
    datalake: DataLake | None = None
    #: Sessions for reads (db.engine.make_read_engine); None: the sessions above.
    read_sessions: async_sessionmaker[AsyncSession] | None = None
    bus: EventBus = field(default_factory=EventBus)
    #: One writer of job state at a time in this process: the reconciler and user actions
    #: read-modify-write the same rows, and a lost update would lose a kill or a result.
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Set to make the reconciler look for work now rather than at its next tick.
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    #: Whether this process runs the background work (reconciler, local jobs, image builds);
    #: a web process of `concordia serve --workers N` leaves it to `concordia worker`.
    runs_work: bool = True
    #: A worker's slot (its jobs carry the number) and whether it leads (builds images);
    #: slot 0 in a web process.
    lease: Lease = field(default_factory=lambda: Lease(slot=1, leads=True))
    #: Other processes share the database: each writing transaction tells them (NOTIFY).
    shared: bool = False
    #: Set when this process must stop: a worker whose lease was lost (another may run the
    #: work now).
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: Per user: one IAM token refresh at a time, one proxy creation at a time.
    token_locks: defaultdict[int, asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )
    proxy_locks: defaultdict[int, asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )
    #: API tokens checked lately (logic.accounts.api_token_identity): token digest ->
    #: (the caller, until when, on the monotonic clock).
    trusted_tokens: TLRUCache[str, tuple[Identity, float]] = field(
        default_factory=lambda: TLRUCache(maxsize=TRUSTED_TOKENS, ttu=lambda _k, v, _now: v[1])
    )
    #: Threads of their own for heavy work (zips, output listings, credentials).
    work: WorkPools = field(init=False)

    def __post_init__(self) -> None:
        self.work = WorkPools(self.settings)

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
            if self.shared and notifies(self.settings.database_url):
                await notify(session)
