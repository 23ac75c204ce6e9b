"""The running platform's shared parts, handed to every use case."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.backends.base import Backend
from concordia.datalake.store import DataLake
from concordia.images.build import BuilderChoice
from concordia.images.stages import StageCache
from concordia.images.store import ImageStore
from concordia.logic.applications import ApplicationCatalog
from concordia.logic.database import Database
from concordia.logic.events import EventBus
from concordia.logic.keyring import Keyring
from concordia.logic.limits import WorkPools
from concordia.logic.process import Process
from concordia.settings import Settings


@dataclass
class ImageBuilds:
    """The image store, the builder chosen at start, and the builds running now."""

    store: ImageStore
    choice: BuilderChoice
    #: Whether builds run in this process; else in the leading worker, which learns of a
    #: build asked for here from the commit.
    here: bool = True
    #: Stages of earlier builds, reused by the next that shares them.
    stages: StageCache | None = None
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    #: Builds started by this process (each select-or-build that found nothing).
    started: int = 0
    #: Builds at once: each wants cores, network and gigabytes of disk.
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))


@dataclass
class Platform:
    """The composition root: what `concordia serve` and `concordia worker` open once and hand
    to the web app and the worker. A use case takes the parts it uses, or the whole platform
    when it uses most of them."""

    settings: Settings
    db: Database
    catalog: ApplicationCatalog
    backends: dict[str, Backend]
    images: ImageBuilds
    keyring: Keyring
    #: The data lake (Rucio, as the operator's service account); None: not configured.
    datalake: DataLake | None = None
    bus: EventBus = field(default_factory=EventBus)
    process: Process = field(default_factory=Process)
    #: Threads of their own for heavy work (zips, output listings, credentials).
    work: WorkPools = field(init=False)

    def __post_init__(self) -> None:
        self.work = WorkPools(self.settings)

    def reading(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A session for reads only (Database.reading)."""
        return self.db.reading()

    def writing(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A transaction of this process's one writer at a time (Database.writing)."""
        return self.db.writing()

    def look_again(self) -> None:
        """Something changed that the worker acts on (Process.look_again)."""
        self.process.look_again()
