"""This process's part in the work: whether it runs it, its lease, and the worker's wake-up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from concordia.db.lease import Lease


@dataclass
class Process:
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
    #: Set to make the reconciler look for work now rather than at its next tick (through
    #: look_again; the worker's loop clears it).
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    #: How many times look_again was called: work may have come for any backend since.
    work_told: int = 0

    def look_again(self) -> None:
        """Something changed that the worker acts on (work to start, a build ended, a kill):
        this process's worker looks now; other processes learn it from the commit
        (Database.tells_others)."""
        self.work_told += 1
        self.wakeup.set()

    def wake(self) -> None:
        """Wake the worker for its own next step with one backend (a hand-over ended, a round
        left jobs for the next): no other backend has new work from it."""
        self.wakeup.set()

    def worker_alive(self) -> int | None:
        """Whether this process's worker holds its lease (1) or lost it (0); None in a web
        process, which runs no work."""
        if not self.runs_work:
            return None
        return 0 if self.lease.lost.is_set() else 1
