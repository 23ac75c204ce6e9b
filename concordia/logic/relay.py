"""A web process of `concordia serve --workers N`: the changes other processes made (job
states, image builds) read from the database and told to this process's subscribers (SSE)."""

from __future__ import annotations

import asyncio
import logging
import time

from concordia.core.image_status import ImageStatus
from concordia.db import images as image_queries
from concordia.db import job_history
from concordia.logic.database import Database
from concordia.logic.events import EventBus
from concordia.logic.image_events import announce_image
from concordia.logic.jobs import publish_jobs
from concordia.settings import ImageSettings

log = logging.getLogger(__name__)

#: How long a missing history id is looked for again: PostgreSQL hands out ids when rows
#: are written, so a transaction that commits late shows a lower id after higher ones.
GAP_SECONDS = 30.0
#: At most one read this often: on PostgreSQL every transaction of the worker wakes the
#: relay (NOTIFY), many a second under a big batch; one read then takes them all, instead of
#: reads back to back that would hold up the requests this process answers (bench/load.py).
MIN_INTERVAL = 0.25


class HistoryCursor:
    """How far the status history was read: the last id seen, and the ids below it not seen
    yet (transactions that may still commit), each given up after GAP_SECONDS."""

    def __init__(self, last: int) -> None:
        self.last = last
        self.gaps: dict[int, float] = {}  # id -> since when it is missing

    def note(self, ids: list[int]) -> None:
        """Advance past what was read (``ids`` in order); remember the ids skipped."""
        now = time.monotonic()
        for history_id in ids:
            self.gaps.pop(history_id, None)
        for history_id in ids:
            if history_id > self.last:
                self.gaps.update(dict.fromkeys(range(self.last + 1, history_id), now))
                self.last = history_id
        self.gaps = {i: t for i, t in self.gaps.items() if now - t < GAP_SECONDS}


class Relay:
    """Woken (``wake``) when the database may have changed: tails the status history (every
    change of a job adds a row) and watches the images being built."""

    def __init__(self, settings: ImageSettings, db: Database, bus: EventBus) -> None:
        self.settings, self.db, self.bus = settings, db, bus
        self.wake = asyncio.Event()
        self._cursor: HistoryCursor | None = None
        self._images: dict[str, str] = {}  # building when last seen: id -> status

    async def start(self) -> None:
        """From the changes after now (before this process serves anyone: none is missed)."""
        async with self.db.reading() as session:
            self._cursor = HistoryCursor(await job_history.last_history_id(session))
            building = await image_queries.images_building(session)
            self._images = dict.fromkeys((i.id for i in building), ImageStatus.BUILDING)

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            started = time.monotonic()
            try:
                await self.step()
            except Exception:  # the next change tries again
                log.exception("relaying changes failed")
            await asyncio.sleep(MIN_INTERVAL - (time.monotonic() - started))

    async def step(self) -> None:
        cursor = self._cursor
        assert cursor is not None, "Relay.start() first"
        async with self.db.reading() as session:
            changes = await job_history.changes_after(session, cursor.last, cursor.gaps)
            images = await image_queries.images_building_or_among(session, self._images)
            changed_images = [
                i for i in images if self._images.get(i.id, ImageStatus.BUILDING) != i.status
            ]
            for image in changed_images:
                await announce_image(self.settings, self.bus, session, image)
        self._images = {i.id: i.status for i in images if i.status == ImageStatus.BUILDING}
        cursor.note([history_id for history_id, _ in changes])  # in id order
        jobs = {job.id: job for _, job in changes}  # each job once, as it is now
        publish_jobs(self.bus, list(jobs.values()))
