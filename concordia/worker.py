"""The reconciler: hands new jobs to their backend, stores what backends report, heals restarts.
It loops, schedules and calls logic; every state decision and every statement is elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

from concordia.backends.base import (
    Backend,
    BackendRef,
    BackendUnreachable,
    JobSpec,
    StatusUpdate,
)
from concordia.core.states import JobStatus
from concordia.db.job_rows import JobRow
from concordia.db.tables import Job
from concordia.logic import adoption, datalake_uploads
from concordia.logic.adoption import HELD_STATES, LeaseNotHeld
from concordia.logic.dispatch import dispatch_round, end_late, record_hand_over
from concordia.logic.image_builds import clear_build_leftovers, start_builds
from concordia.logic.job_ends import TOLD_ENDS, end_recorded
from concordia.logic.job_specs import RoundMemory
from concordia.logic.job_updates import followed, once_each, per_write, store_updates
from concordia.logic.jobs import backend_ref, publish_jobs
from concordia.logic.platform import Platform
from concordia.metrics import RECONCILE_ROUND_FAILURES, RECONCILE_ROUND_SECONDS

__all__ = ["COALESCE_SECONDS", "HANDOVERS_AT_ONCE", "LeaseNotHeld", "Reconciler", "cancel"]

log = logging.getLogger(__name__)

#: After a backend's news, wait this long for more: one round then stores many updates in one
#: transaction, instead of a round per update taking CPU from the jobs themselves.
COALESCE_SECONDS = 0.02
#: Hand-overs under way at once: the next round is made ready while a backend (a grid far
#: away) answers the last one, so that it is never idle waiting for Concordia.
HANDOVERS_AT_ONCE = 2


class Reconciler:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        #: What dispatch rounds keep: application definitions, RSE addresses, users' turns.
        self._memory = RoundMemory()
        #: Per backend, the jobs it holds (Waiting or active), by uuid. Kept up to date as
        #: rounds go, and read again from the database at every timed poll, so that jobs
        #: killed or deleted by users drop out; a round then needs no query to know them.
        self._watched: dict[str, dict[str, BackendRef]] = {}
        #: The newest job when this process started: an older job may have been handed to
        #: its backend by a process that died before recording it.
        self._last_before_start = 0
        #: Slots seen free, adopted from once their holder must have stopped.
        self._free = adoption.free_slots(platform.process)
        #: Whether the log told that jobs to adopt at start were held by a transaction.
        self._busy_told = False
        #: Hand-overs under way: their backend and the ids of their jobs (no round takes
        #: those again).
        self._handing: dict[asyncio.Task[None], tuple[str, set[int]]] = {}
        #: Set when a hand-over failed: no dispatch until the next poll interval.
        self._backoff = False
        #: Per backend being re-read: the jobs handed over meanwhile (kept in the new list).
        self._loading: dict[str, set[str]] = {}
        #: Per backend, jobs that left ``_watched`` because the database no longer holds them
        #: as its (a timed re-read, or news stored after another process's write): a kill
        #: or delete a web process recorded is told to a backend that runs them here.
        self._left: dict[str, dict[str, BackendRef]] = {}
        #: Set by another_process_wrote: the next round looks for other processes' requests.
        self._other_writes = False
        #: Per backend, news a failed round could not store (its database down): offered
        #: again first, as the local backend tells each only once.
        self._unstored: dict[str, list[StatusUpdate]] = {}
        #: Jobs whose data outputs are being uploaded to the data lake, by id.
        self._uploads: dict[int, asyncio.Task[None]] = {}
        #: Backends whose last round found no job to hand over though they had room: none
        #: has a round again until new work is told (look_again) or a timed poll comes. A
        #: busy backend's news and hand-overs wake the worker many times a second; an idle
        #: one's round is a write transaction each time.
        self._idle: set[str] = set()
        self._work_told = 0

    async def run(self) -> None:
        recovered = False
        resync = True
        try:
            while True:
                try:
                    if not recovered:  # a backend down at start: tried again, as rounds are
                        await self.recover()
                        recovered = True
                    started = time.perf_counter()
                    await self.step(resync=resync)
                    RECONCILE_ROUND_SECONDS.observe(time.perf_counter() - started)
                    resync = False
                except Exception:
                    # One bad round must not stop the platform; the next round retries.
                    log.exception("reconciler round failed")
                    RECONCILE_ROUND_FAILURES.inc()
                    resync = True
                    # Not at once: a backend's news would wake it, and while the database
                    # is down every round fails (a busy loop writing tracebacks).
                    await asyncio.sleep(self.platform.settings.poll_interval)
                self._forget_finished_hand_overs()
                if self._backoff:  # a backend failing: its jobs again at the next poll only
                    self._backoff = False
                    self.platform.process.wakeup.clear()
                    resync = True
                if not await self._wait():  # the poll interval passed without news
                    resync = True
        finally:
            # Cut short as by a crash: what the backend took is found by the next process.
            # A finished hand-over's failure is logged, not raised here.
            self._forget_finished_hand_overs()
            tasks = [*self._handing, *self._uploads.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def another_process_wrote(self) -> None:
        """Another process (a web process) may have changed the database: its users' image
        builds and kills are looked for at the next round, which starts now."""
        self._other_writes = True
        self.platform.look_again()

    async def step(self, *, resync: bool = True) -> None:
        process = self.platform.process
        if resync or process.work_told != self._work_told:  # new work, for any backend
            self._idle.clear()
            self._work_told = process.work_told
        process.wakeup.clear()
        # Only after word from another process: the rounds a backend's news starts (many a
        # second while local jobs run) need not look.
        look_wider, self._other_writes = self._other_writes, False
        lease = self.platform.process.lease
        if lease.now_leads.is_set():  # the last leader died: its builds are resumed here
            lease.now_leads.clear()
            await asyncio.to_thread(clear_build_leftovers, self.platform.images)
            look_wider = True
        if look_wider and lease.leads:  # web processes leave image builds to the leader
            await start_builds(self.platform)
        if resync:  # a worker that died: its jobs are this one's now
            await self.adopt()
            # Uploads that stopped (a grid's sandbox or the data lake not answering): again,
            # rather than at the next start only.
            self._upload(await datalake_uploads.held_jobs(self.platform.db, lease.slot))
        for name, backend in self.platform.backends.items():
            if resync:
                await self._load_watched(name)
            left = self._left.pop(name, {})
            if not backend.survives_restart:
                await self._stop_killed_by_web_processes(name, backend, left, look_wider)
            await self.dispatch(name, backend)
            await self.apply_updates(name, backend)

    async def _stop_killed_by_web_processes(
        self, name: str, backend: Backend, left: dict[str, BackendRef], look_wider: bool
    ) -> None:
        """Jobs of a backend that runs them in this process, killed or deleted by a user in a
        web process (which recorded it and could not stop them): stopped here. Looked for
        among the jobs that just left the watched ones, and among all of them after word of
        another process's write (the jobs it killed may still look held here)."""
        if left:
            await end_recorded(self.platform.db, backend, left)
        watched = self._watched.get(name)
        if look_wider and watched:
            await end_recorded(self.platform.db, backend, watched)

    async def _load_watched(self, name: str) -> None:
        added: set[str] = set()
        self._loading[name] = added
        try:
            fresh = await followed(self.platform.db, self.platform.process, name, HELD_STATES)
            # A hand-over recorded while the query ran: it may not be in what it read.
            current = self._watched.get(name, {})
            fresh.update({u: current[u] for u in added if u in current})
            self._watched[name] = fresh
            gone = {u: ref for u, ref in current.items() if u not in fresh}
            self._left.setdefault(name, {}).update(gone)
        finally:
            del self._loading[name]

    async def _wait(self) -> bool:
        """Until news or the poll interval; True if woken by news."""
        events = [self.platform.process.wakeup]
        events += [e for b in self.platform.backends.values() if (e := b.changed) is not None]
        waiters = [asyncio.create_task(e.wait()) for e in events]
        try:
            done, _ = await asyncio.wait(
                waiters,
                timeout=self.platform.settings.poll_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for w in waiters:
                w.cancel()
        if done - {waiters[0]}:  # a backend's news: more may follow; new work starts at once
            await asyncio.sleep(COALESCE_SECONDS)
        return bool(done)

    async def dispatch(self, name: str, backend: Backend) -> None:
        """Received -> Checking -> Waiting (the queue all workers share), and from there into
        this worker's backend, as many as it has room for, once the job's image is ready
        ("Waiting for image" until then; a failed build fails the job)."""
        self._forget_finished_hand_overs()
        mine = [ids for backend_name, ids in self._handing.values() if backend_name == name]
        if self._backoff or len(mine) >= HANDOVERS_AT_ONCE or name in self._idle:
            return  # the end of a hand-over wakes the loop; a failure waits for the next poll
        being_handed = set().union(*mine)
        room = backend.capacity()
        if room is not None:
            room = max(0, room - len(being_handed))
        try:
            done = await dispatch_round(
                self.platform, self._memory, name, backend, room=room,
                being_handed=being_handed, last_before_start=self._last_before_start,
            )  # fmt: skip
        finally:
            if self._memory.retry_later:  # a data lake not answering: at the next poll
                self._memory.retry_later = False
                self._backoff = True
        if done is None:
            if room != 0:  # none waits for it
                self._idle.add(name)
            return
        self._watch(name, done.jobs)
        publish_jobs(self.platform.bus, done.jobs)
        if done.specs:
            task = asyncio.create_task(self._hand_over(name, backend, done.specs))
            task.add_done_callback(lambda _: self.platform.process.wake())
            self._handing[task] = (name, {spec.job_id for spec in done.specs})

    def _forget_finished_hand_overs(self) -> None:
        """Forget finished hand-overs. A failed one's jobs are Waiting without a ref: a later
        round takes them again (after a back-off)."""
        for task in [t for t in self._handing if t.done()]:
            name, _ = self._handing.pop(task)
            if not task.cancelled() and (exc := task.exception()) is not None:
                self._backoff = True
                if isinstance(exc, BackendUnreachable):  # its jobs wait: one line a retry
                    log.warning("%s unreachable, jobs handed over at the next poll: %s", name, exc)
                else:
                    log.error("handing jobs over failed", exc_info=exc)

    async def _hand_over(self, name: str, backend: Backend, specs: list[JobSpec]) -> None:
        """The backend's calls run outside the write lock: users' actions and other rounds'
        news are not held up by a grid's answer. The jobs stay Waiting without a ref until
        it comes; if this process dies meanwhile, the next one finds what the backend took
        (JobSpec.maybe_submitted) rather than handing it over again."""
        refs = {ref.uuid: ref for ref in await backend.submit(specs)}
        if len(refs) < len(specs):  # some left waiting by the backend: not again at once
            self._backoff = True
        jobs = await record_hand_over(self.platform.db, name, refs)
        publish_jobs(self.platform.bus, jobs)  # the submission page counts them handed over
        self._watch(name, jobs)
        await end_late(name, backend, jobs)

    def _watch(self, name: str, jobs: Sequence[Job | JobRow]) -> None:
        watched = self._watched.setdefault(name, {})
        for job in jobs:
            if JobStatus(job.status) not in HELD_STATES:
                ref = watched.pop(job.uuid, None)
                if ref is not None and JobStatus(job.status) in TOLD_ENDS:
                    self._left.setdefault(name, {})[job.uuid] = ref
            elif job.backend_ref is None:  # waiting for its image: not in the backend yet
                continue
            elif job.uuid not in watched:  # a ref names a job; it does not follow its state
                watched[job.uuid] = backend_ref(job)
                if (added := self._loading.get(name)) is not None:
                    added.add(job.uuid)

    async def apply_updates(self, name: str, backend: Backend) -> None:
        watched = self._watched.get(name)
        if not watched:
            return
        kept = self._unstored.pop(name, [])
        updates = once_each([*kept, *await backend.poll(list(watched.values()))])
        groups = per_write(updates)
        for done, group in enumerate(groups):
            try:
                if done and self.platform.process.wakeup.is_set():
                    # New work does not wait for the news of thousands of jobs: a hand-over
                    # that ended, a submission, take their turn between two groups (one
                    # committed but not yet told among them).
                    self._idle.discard(name)
                    await self.dispatch(name, backend)
                async with self.platform.writing() as session:
                    slot = self.platform.process.lease.slot
                    rows, held = await store_updates(session, name, slot, group)
            except BaseException:
                self._unstored[name] = [u for g in groups[done:] for u in g]
                raise
            self._stored(name, group, rows, held)

    def _stored(
        self, name: str, updates: list[StatusUpdate], rows: dict[str, JobRow], held: list[int]
    ) -> None:
        # The watched refs follow what was stored (a resync read them before these news:
        # the backend would otherwise tell them again); a job not found is not watched.
        watched = self._watched.get(name, {})
        for update in updates:
            if update.uuid not in rows:
                watched.pop(update.uuid, None)
            elif (ref := watched.get(update.uuid)) is not None:
                ref.state.update(update.state)
        self._watch(name, list(rows.values()))
        publish_jobs(self.platform.bus, list(rows.values()))
        self._upload(held)

    def _upload(self, job_ids: Sequence[int]) -> None:
        """Store the held jobs' data in the data lake, each in a task of its own (a file of
        gigabytes must not hold up the rounds); a job already under way is left to it."""
        for job_id in job_ids:
            task = self._uploads.get(job_id)
            if task is None or task.done():
                task = asyncio.create_task(datalake_uploads.store_job_data(self.platform, job_id))
                task.add_done_callback(functools.partial(self._uploaded, job_id))
                self._uploads[job_id] = task

    def _uploaded(self, job_id: int, task: asyncio.Task[None]) -> None:
        if self._uploads.get(job_id) is task:
            del self._uploads[job_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Left Completing: tried again at the next timed poll, as after a crash.
            log.error("job %s: data lake upload stopped: %r", job_id, exc)

    async def recover(self) -> None:
        """At start: the jobs this worker's slot had (its last holder died or stopped), and
        those of workers that died meanwhile, are adopted."""
        # The slots' last holders may be alive for a moment, cut off from the database: their
        # jobs are taken once they must have stopped (this worker's own slot's only now).
        # (A wait for time to pass, not for an event: the holder stops unseen.)
        while (wait := await self.adopt(at_start=True)) is not None:  # noqa: ASYNC110
            await asyncio.sleep(wait)
        # Uploads a crash or stop cut short are taken up by the first round (a resync).

    async def adopt(self, *, at_start: bool = False) -> float | None:
        """Jobs under way whose worker is gone (no live worker holds their slot) become this
        worker's (logic.adoption says what becomes of them); a grid's are watched here.
        At start, this worker's own slot counts as gone (it held it just now). The seconds
        until a slot seen free may be adopted from, or until jobs to adopt at start that
        another transaction holds are looked for again; None if none waits."""
        if not (at_start or self.platform.process.lease.side_by_side):
            return None  # one worker at a time (SQLite): none is gone while it runs
        now = time.monotonic()
        async with self.platform.writing() as session:
            live = await adoption.others_alive(self.platform.process, session, at_start=at_start)
            newest = await adoption.newest_job_id(session)
            adopted = busy = False
            waits = []
            for name, backend in self.platform.backends.items():
                found = await adoption.adopt_from(
                    self.platform.settings, self.platform.process, session, name, backend,
                    live, self._free, now, at_start=at_start,
                )  # fmt: skip
                busy |= found.busy
                if found.wait is not None:
                    waits.append(found.wait)
                if not found.jobs:
                    continue
                adopted = True
                self._watch(name, found.jobs)
                publish_jobs(self.platform.bus, found.jobs)
                self._upload(found.held)
            if at_start or adopted:  # any job may have been handed over, unrecorded
                self._last_before_start = newest
        if busy and not self._busy_told:
            self._busy_told = True
            log.warning(
                "jobs of gone workers are locked by another transaction (a killed "
                "process's, not yet ended by the database?): looking again until it ends"
            )
        return min(waits, default=None)


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
