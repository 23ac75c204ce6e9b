"""The running platform's shared parts, handed to every use case."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from cachetools import TLRUCache
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.auth.oidc import Iam
from concordia.auth.upload_tokens import UploadIssuer
from concordia.auth.vault import Vault
from concordia.backends.base import Backend
from concordia.datalake.store import DataLake
from concordia.db.lease import Lease
from concordia.images.build import BuilderChoice
from concordia.images.stages import StageCache
from concordia.images.store import ImageStore
from concordia.logic.applications import ApplicationCatalog
from concordia.logic.database import Database
from concordia.logic.events import EventBus
from concordia.logic.identity import Identity
from concordia.logic.limits import WorkPools
from concordia.settings import Settings

#: API tokens a process trusts at once, at most (each a few hundred bytes): the clients of
#: a collaboration, with room to spare; the least recently used go first.
TRUSTED_TOKENS = 4096


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


#: The upload-token signing key in the data dir (encrypted with the vault).
UPLOAD_SIGNING_KEY = "upload-signing-key"


@dataclass
class Platform:
    settings: Settings
    db: Database
    catalog: ApplicationCatalog
    backends: dict[str, Backend]
    images: ImageBuilds
    #: Encrypts users' secrets at rest (IAM tokens, credentials, proxies).
    vault: Vault
    #: The IAM issuer; None in local mode.
    iam: Iam | None = None
    #: The data lake (Rucio, as the operator's service account); None: not configured.
    datalake: DataLake | None = None
    bus: EventBus = field(default_factory=EventBus)
    #: Set to make the reconciler look for work now rather than at its next tick (through
    #: look_again; the worker's loop clears it).
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    #: Whether this process runs the background work (reconciler, local jobs, image builds);
    #: a web process of `concordia serve --workers N` leaves it to `concordia worker`.
    runs_work: bool = True
    #: A worker's slot (its jobs carry the number) and whether it leads (builds images);
    #: slot 0 in a web process.
    lease: Lease = field(default_factory=lambda: Lease(slot=1, leads=True))
    #: Other processes share the database (web processes and workers).
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
    #: IAM tokens Rucio took as their users' own (logic.datalake_identity): user id ->
    #: (the token, until when on the monotonic clock).
    lake_tokens: TLRUCache[int, tuple[str, float]] = field(
        default_factory=lambda: TLRUCache(maxsize=TRUSTED_TOKENS, ttu=lambda _k, v, _now: v[1])
    )
    #: Threads of their own for heavy work (zips, output listings, credentials).
    work: WorkPools = field(init=False)
    #: Signs grid jobs' upload tokens; None: the RSEs do not trust Concordia as an issuer.
    upload_issuer: UploadIssuer | None = field(init=False)

    def __post_init__(self) -> None:
        self.work = WorkPools(self.settings)
        self.upload_issuer = None
        if self.settings.datalake_upload_tokens:
            self.upload_issuer = UploadIssuer(
                self.settings.data_dir / UPLOAD_SIGNING_KEY, self.vault, self.settings.public_url
            )

    def reading(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A session for reads only (Database.reading)."""
        return self.db.reading()

    def writing(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A transaction of this process's one writer at a time (Database.writing)."""
        return self.db.writing()

    def look_again(self) -> None:
        """Something changed that the worker acts on (work to start, a build ended, a kill):
        this process's worker looks now; other processes learn it from the commit
        (Database.tells_others)."""
        self.wakeup.set()
