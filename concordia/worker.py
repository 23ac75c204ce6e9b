"""The reconciler: hands new jobs to their backend, stores what backends report, heals restarts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.backends.base import (
    Backend,
    BackendError,
    BackendRef,
    BackendUnreachable,
    JobImage,
    JobSpec,
    Owner,
    StatusUpdate,
)
from concordia.core.application import ApplicationDef
from concordia.core.image_status import BUILDING, CANCELLED, FAILED
from concordia.core.states import ACTIVE_STATES, InvalidTransition, JobStatus
from concordia.db.lease import live_slots
from concordia.db.queue import heads, held_by_owner, take
from concordia.db.tables import Application, Image, Job, Submission, User
from concordia.images.store import StoredImage
from concordia.logic import datalake
from concordia.logic.image_builds import clear_build_leftovers, start_builds
from concordia.logic.job_ends import TOLD_ENDS, end_in_backend, end_recorded
from concordia.logic.jobs import (
    ROW_COLUMNS,
    JobRow,
    backend_ref,
    publish_jobs,
    record_status,
    requeue,
    rows_where,
    store_rows,
    transition,
)
from concordia.logic.platform import Platform
from concordia.logic.proxies import usable_proxy
from concordia.logic.scheduling import Choice, FairShare, user_limit_minor
from concordia.logic.submissions import job_spec
from concordia.metrics import RECONCILE_ROUND_FAILURES, RECONCILE_ROUND_SECONDS

log = logging.getLogger(__name__)

#: Jobs handed to a backend per round: small enough that the first jobs start while the
#: rest of a big submission is still being handed over, and no round stalls the loop; a
#: multiple of 20, DiracX's most JDLs per call. 120 rather than 60: half the rounds, each
#: with its queries and its transaction (bench/diracx_submit.py, three runs of each,
#: interleaved: ratio 1.25, 1.19, 1.17 against 1.23, 1.34, 1.29).
DISPATCH_BATCH = 120
#: After a backend's news, wait this long for more: one round then stores many updates in one
#: transaction, instead of a round per update taking CPU from the jobs themselves.
COALESCE_SECONDS = 0.02
_WATCHED = (JobStatus.WAITING, *ACTIVE_STATES)
#: Hand-overs under way at once: the next round is made ready while a backend (a grid far
#: away) answers the last one, so that it is never idle waiting for Concordia.
HANDOVERS_AT_ONCE = 2
WAITING_FOR_IMAGE = "Waiting for image"
#: A job's minor status when its image's build ended without an image: cancelled builds
#: fail their jobs as failed ones do, rather than leave them waiting for a retry that may
#: never come (holding their queue places and the image against deletion).
IMAGE_ENDED = {FAILED: "Image build failed", CANCELLED: "Image build cancelled"}


class Reconciler:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self._definitions: dict[int, ApplicationDef] = {}
        #: Per backend, the jobs it holds (Waiting or active), by uuid. Kept up to date as
        #: rounds go, and read again from the database at every timed poll, so that jobs
        #: killed or deleted by users drop out; a round then needs no query to know them.
        self._watched: dict[str, dict[str, BackendRef]] = {}
        #: The newest job when this process started: an older job may have been handed to
        #: its backend by a process that died before recording it.
        self._last_before_start = 0
        #: Hand-overs under way: their backend and the ids of their jobs (no round takes
        #: those again).
        self._handing: dict[asyncio.Task[None], tuple[str, set[int]]] = {}
        #: Set when a hand-over failed: no dispatch until the next poll interval.
        self._backoff = False
        #: Per backend being re-read: the jobs handed over meanwhile (kept in the new list).
        self._loading: dict[str, set[str]] = {}
        #: Set by changed_elsewhere: the next round looks for other processes' requests.
        self._elsewhere = False
        #: Per backend, news a failed round could not store (its database down): offered
        #: again first, as the local backend tells each only once.
        self._unstored: dict[str, list[StatusUpdate]] = {}
        #: Per backend with a room limit, the turns of its users.
        self._shares: dict[str, FairShare] = {}
        #: Jobs whose data outputs are being uploaded to the data lake, by id.
        self._uploads: dict[int, asyncio.Task[None]] = {}
        #: Each RSE's WebDAV base URL, as Rucio said it (grid jobs write their data there).
        self._rse_urls: dict[str, str] = {}

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
                self._reap()
                if self._backoff:  # a backend failing: its jobs again at the next poll only
                    self._backoff = False
                    self.platform.wakeup.clear()
                    resync = True
                if not await self._wait():  # the poll interval passed without news
                    resync = True
        finally:
            # Cut short as by a crash: what the backend took is found by the next process.
            self._reap()  # a finished one's failure is logged, not raised here
            tasks = [*self._handing, *self._uploads.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def changed_elsewhere(self) -> None:
        """Another process (a web process) may have changed the database: its users' image
        builds and kills are looked for at the next round, which starts now."""
        self._elsewhere = True
        self.platform.wakeup.set()

    async def step(self, *, resync: bool = True) -> None:
        self.platform.wakeup.clear()
        # Only after word from another process: the rounds a backend's news starts (many a
        # second while local jobs run) need not look.
        elsewhere, self._elsewhere = self._elsewhere, False
        lease = self.platform.lease
        if lease.now_leads.is_set():  # the last leader died: its builds are resumed here
            lease.now_leads.clear()
            await asyncio.to_thread(clear_build_leftovers, self.platform.images)
            elsewhere = True
        if elsewhere and lease.leads:  # web processes leave image builds to the leader
            await start_builds(self.platform)
        if resync:  # a worker that died: its jobs are this one's now
            await self.adopt()
            # Uploads that stopped (a grid's sandbox or the data lake not answering): again,
            # rather than at the next start only.
            self._upload(await datalake.held_jobs(self.platform, self.platform.lease.slot))
        for name, backend in self.platform.backends.items():
            if resync:
                await self._load_watched(name)
            if elsewhere and not backend.survives_restart:
                await self._stop_ended_elsewhere(name, backend)
            await self.dispatch(name, backend)
            await self.apply_updates(name, backend)

    async def _stop_ended_elsewhere(self, name: str, backend: Backend) -> None:
        """Jobs of a backend that runs them in this process, killed or deleted by a user in a
        web process (which recorded it and could not stop them): stopped here."""
        watched = self._watched.get(name)
        if watched:
            await end_recorded(self.platform, backend, watched)

    async def _load_watched(self, name: str) -> None:
        added: set[str] = set()
        self._loading[name] = added
        try:
            async with self.platform.reading() as session:
                rows = await session.execute(
                    select(Job.uuid, Job.backend_ref, Job.backend_state).where(
                        Job.status.in_([s.value for s in _WATCHED]),
                        Job.backend == name,
                        Job.backend_ref.is_not(None),
                        Job.worker == self.platform.lease.slot,
                    )
                )
            fresh = {u: BackendRef(uuid=u, ref=r, state=s) for u, r, s in rows.all()}
            # A hand-over recorded while the query ran: it may not be in what it read.
            current = self._watched.get(name, {})
            fresh.update({u: current[u] for u in added if u in current})
            self._watched[name] = fresh
        finally:
            del self._loading[name]

    async def _wait(self) -> bool:
        """Until news or the poll interval; True if woken by news."""
        events = [self.platform.wakeup]
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
        self._reap()
        mine = [ids for backend_name, ids in self._handing.values() if backend_name == name]
        if self._backoff or len(mine) >= HANDOVERS_AT_ONCE:
            return  # the end of a hand-over wakes the loop; a failure waits for the next poll
        being_handed = set().union(*mine)
        room = backend.capacity()
        if room is not None:
            room = max(0, room - len(being_handed))
        slot = self.platform.lease.slot
        async with self.platform.writing() as session:
            # Waiting without a ref: in the shared queue (no worker), or this worker's, whose
            # hand-over failed or was cut short by a crash; not another's, which may be being
            # handed over now (no image: no Image row, a NULL status).
            to_hand_over = and_(
                Job.status == JobStatus.WAITING.value,
                Job.backend_ref.is_(None),
                or_(Job.worker.is_(None), Job.worker == slot),
                or_(Image.status.is_(None), Image.status != BUILDING),
            )
            received = Job.status == JobStatus.RECEIVED.value
            ours = Job.backend == name
            # New jobs, each into the queue; from the queue, as many as there is room for:
            # with no room limit (the grid) the oldest; else shared fairly between users.
            new = await take(
                session, _COLUMNS, ours, received, limit=DISPATCH_BATCH, leave=being_handed
            )
            choice = None
            if room is None:
                old = await take(
                    session, _COLUMNS, ours, to_hand_over, limit=DISPATCH_BATCH, leave=being_handed
                )
            else:
                choice = await self._choose(session, name, room, to_hand_over, new, being_handed)
                picked = {*choice.chosen, *choice.held_back} - {row.id for row in new}
                old = await take(session, _COLUMNS, Job.id.in_(picked), limit=len(picked), leave=())
            if not old and not new:
                return
            # More than a round takes (not only more than there is room for): back at once.
            if len(new) == DISPATCH_BATCH or (room is None and len(old) == DISPATCH_BATCH):
                self.platform.wakeup.set()
            rows = [(_Ready(*row[:-1]), row[-1]) for row in old + new]
            before = {job.id: (job.status, job.minor_status) for job, _ in rows}
            ready: list[_Ready] = []
            for job, image_status in rows:
                if job.status == JobStatus.RECEIVED.value:
                    transition(
                        session, job, JobStatus.CHECKING, minor="JobSanity", source="JobSanity"
                    )
                if image_status in (FAILED, CANCELLED):
                    transition(
                        session, job, JobStatus.FAILED, minor=IMAGE_ENDED[image_status],
                        source="JobScheduling",
                    )  # fmt: skip
                elif image_status == BUILDING:
                    transition(
                        session, job, JobStatus.WAITING, minor=WAITING_FOR_IMAGE,
                        source="JobScheduling",
                    )  # fmt: skip
                else:
                    minor = f"Waiting for a {name} slot"
                    if choice is not None and job.id in choice.held_back:
                        minor = user_limit_minor(self.platform.settings.max_running_jobs_per_user)
                    if job.minor_status == minor:  # queued already, or a failed hand-over
                        pass
                    elif job.status == JobStatus.WAITING.value:  # image ready, or a user limit
                        source = (
                            "Images" if job.minor_status == WAITING_FOR_IMAGE else "JobScheduling"
                        )
                        record_status(session, job, JobStatus.WAITING, minor=minor, source=source)
                    else:
                        transition(
                            session, job, JobStatus.WAITING, minor=minor, source="JobScheduling"
                        )
                    if choice is None or job.id in choice.chosen:
                        ready.append(job)
            if choice is not None:  # in the order chosen: the backend starts them in it
                order = {job_id: n for n, job_id in enumerate(choice.chosen)}
                ready.sort(key=lambda job: order[job.id])
            specs = await self._specs(session, ready, backend.uploads_data) if ready else []
            jobs = [job for job, _ in rows if (job.status, job.minor_status) != before[job.id]]
            await store_rows(session, jobs)
            if specs:  # this worker's now: no other takes them, or adopts them while it lives
                await session.execute(
                    update(Job)
                    .where(
                        Job.id.in_([spec.job_id for spec in specs]),
                        Job.worker.is_distinct_from(slot),
                    )
                    .values(worker=slot)
                )
        self._watch(name, jobs)
        publish_jobs(self.platform.bus, jobs)
        if specs:
            task = asyncio.create_task(self._hand_over(name, backend, specs))
            task.add_done_callback(lambda _: self.platform.wakeup.set())
            self._handing[task] = (name, {spec.job_id for spec in specs})

    async def _choose(
        self,
        session: AsyncSession,
        name: str,
        room: int,
        queued: ColumnElement[bool],
        new: Sequence[Any],
        being_handed: set[int],
    ) -> Choice:
        """The jobs of the queue (and the new ones) to hand over, shared between users."""
        room = min(room, DISPATCH_BATCH)
        waiting = await heads(
            session, Job.backend == name, queued, per_owner=room, leave=being_handed
        )
        # A new job whose image is ready joins the queue now; its owner may be next.
        waiting += [(row.id, row.owner_id) for row in new if row[-1] not in (FAILED, BUILDING)]
        owners = {owner for _, owner in waiting}
        held = await held_by_owner(session, name, owners, being_handed)
        limit = self.platform.settings.max_running_jobs_per_user
        return self._shares.setdefault(name, FairShare()).choose(waiting, room, held, limit)

    def _reap(self) -> None:
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
        async with self.platform.writing() as session:
            jobs = await rows_where(session, Job.uuid.in_(refs))
            for job in jobs:
                ref = refs[job.uuid]
                if ref.error is not None:
                    if job.status == JobStatus.WAITING.value and job.backend_ref is None:
                        minor = f"Refused by {name}: {ref.error}"
                        transition(session, job, JobStatus.FAILED, minor=minor, source=name)
                    continue
                job.backend_ref = ref.ref
                job.backend_state = {**job.backend_state, **ref.state}
            await store_rows(session, jobs)
            # The JDL the backend was sent is the job's, as its page shows it.
            sent = [{"id": j.id, "jdl": jdl} for j in jobs if (jdl := refs[j.uuid].jdl) is not None]
            if sent:
                await session.execute(update(Job), sent)
        publish_jobs(self.platform.bus, jobs)  # the submission page counts them handed over
        self._watch(name, jobs)
        # Killed or deleted while being handed over: the backend has it now, so tell it too.
        for status in TOLD_ENDS:
            late = [backend_ref(j) for j in jobs if j.status == status.value and j.backend_ref]
            if late:
                try:
                    await end_in_backend(backend, status, late)
                except BackendError as exc:
                    log.warning("%d %s jobs not told to %s: %s", len(late), status, name, exc)

    async def _specs(
        self, session: AsyncSession, jobs: Sequence[Job | _Ready], uploads_data: bool
    ) -> list[JobSpec]:
        """What the backend needs of each job; a job that cannot run fails here, with why.
        A backend that ``uploads_data`` is told where a data-lake submission's jobs store
        their data; such a job waits while Rucio does not say where its RSE is."""
        submission_ids = {job.submission_id for job in jobs}
        runs = await self._runs_of(session, submission_ids)
        lakes = {}
        if uploads_data:
            urls = self._rse_urls
            lakes = await datalake.grid_lakes(self.platform, session, submission_ids, urls)
        proxies: dict[tuple[int, str, int], tuple[bytes | None, str]] = {}
        groups = await self._groups_of(session, {job.submission_id for job in jobs})
        specs = []
        for job in jobs:
            app, image_id, image = runs[job.submission_id]
            if image_id is not None and image is None:  # removed from the store by hand
                minor = "Image files missing from the store: rebuild the image"
                transition(session, job, JobStatus.FAILED, minor=minor, source="JobScheduling")
                continue
            proxy = None
            if app.proxy:  # checked at submission; it may have been replaced or run out since
                key = (job.owner_id, groups[job.submission_id].group, app.cpu_time)
                if key not in proxies:
                    proxies[key] = await usable_proxy(self.platform, *key)
                proxy, why = proxies[key]
                if proxy is None:
                    minor = f"No usable proxy ({why}): get one on the account page, then reschedule"
                    transition(session, job, JobStatus.FAILED, minor=minor, source="JobScheduling")
                    continue
            spec = self._spec(job, app, image, proxy, groups[job.submission_id])
            if (lake := lakes.get(job.submission_id)) is not None:
                if lake.error:
                    minor = f"Data lake: {lake.error}"
                    transition(session, job, JobStatus.FAILED, minor=minor, source="JobScheduling")
                    continue
                if lake.url is None:  # Rucio did not answer: the next round tries again
                    self._backoff = True
                    continue
                spec.datalake = datalake.grid_settings(
                    self.platform.settings, lake.url, lake.choice, app,
                    submission_id=job.submission_id, index=job.index, job_uuid=job.uuid,
                    attempt=job.reschedule_count, ca=lake.ca,
                )  # fmt: skip
            specs.append(spec)
        return specs

    async def _groups_of(self, session: AsyncSession, submission_ids: set[int]) -> dict[int, Owner]:
        """Each submission's owner, VO and DIRAC group (a grid backend acts as them; their
        jobs' proxies must carry the group)."""
        rows = await session.execute(
            select(Submission.id, User.username, Submission.vo, Submission.group)
            .join(User, User.id == Submission.owner_id)
            .where(Submission.id.in_(submission_ids))
        )
        return {sid: Owner(owner, vo, group) for sid, owner, vo, group in rows.all()}

    async def _runs_of(
        self, session: AsyncSession, submission_ids: set[int]
    ) -> dict[int, tuple[ApplicationDef, str | None, JobImage | None]]:
        """Each submission's application definition (as stored when it was first used), its
        image id, and the image its jobs run in (None too when its files are gone)."""
        rows = (
            await session.execute(
                select(Submission.id, Submission.application_id, Submission.image_id).where(
                    Submission.id.in_(submission_ids)
                )
            )
        ).all()
        missing = {app_id for _, app_id, _ in rows} - set(self._definitions)
        if missing:
            stored = await session.execute(
                select(Application.id, Application.definition).where(Application.id.in_(missing))
            )
            for app_id, definition in stored.all():
                self._definitions[app_id] = ApplicationDef.model_validate(definition)
        store = self.platform.images.store
        return {
            sid: (self._definitions[app_id], image, _job_image(store.get(image)) if image else None)
            for sid, app_id, image in rows
        }

    def _spec(
        self,
        job: Job | _Ready,
        app: ApplicationDef,
        image: JobImage | None,
        proxy: bytes | None,
        run_as: Owner,
    ) -> JobSpec:
        return job_spec(
            app,
            self.platform.catalog.directory,
            uuid=job.uuid,
            job_id=job.id,
            name=job.name,
            argv=job.argv,
            submission_id=job.submission_id,
            jdl=job.jdl,
            image=image,
            proxy=proxy,
            owner=run_as.user,
            vo=run_as.vo,
            group=run_as.group,
            attempt=job.reschedule_count,
            maybe_submitted=job.id <= self._last_before_start,
        )

    def _watch(self, name: str, jobs: Sequence[Job | JobRow]) -> None:
        watched = self._watched.setdefault(name, {})
        for job in jobs:
            if JobStatus(job.status) not in _WATCHED:
                watched.pop(job.uuid, None)
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
        # A backend that keeps its history (a grid) may tell kept news again: once each.
        fresh = {_news_key(u): u for u in [*kept, *await backend.poll(list(watched.values()))]}
        updates = list(fresh.values())
        if not updates:
            return
        try:
            async with self.platform.writing() as session:
                # A job adopted by another worker (its row no longer names this one's slot) is
                # not this worker's to record, as a deleted job is not.
                uuids = Job.uuid.in_({u.uuid for u in updates})
                found = await rows_where(session, uuids, Job.worker == self.platform.lease.slot)
                rows = {row.uuid: row for row in found}
                with_data: set[int] = set()
                # Concordia stores the data of these jobs: Done after that (one query, only in
                # a round where some job ended well).
                done = {u.uuid for u in updates if u.status is JobStatus.DONE}
                if done:
                    ended = {r.submission_id for r in found if r.uuid in done}
                    with_data = await datalake.with_data(session, ended)
                held: list[int] = []
                for update in updates:
                    row = rows.get(update.uuid)
                    if row is None:
                        continue
                    if update.status is JobStatus.DONE and row.submission_id in with_data:
                        update = update.model_copy(
                            update={"status": JobStatus.COMPLETING, "source": datalake.SOURCE,
                                    "minor_status": datalake.UPLOADING}
                        )  # fmt: skip
                        held.append(row.id)
                    self._apply(session, name, row, update)
                await store_rows(session, found)
        except BaseException:
            self._unstored[name] = updates
            raise
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
                task = asyncio.create_task(datalake.store_job_data(self.platform, job_id))
                task.add_done_callback(functools.partial(self._uploaded, job_id))
                self._uploads[job_id] = task

    def _uploaded(self, job_id: int, task: asyncio.Task[None]) -> None:
        if self._uploads.get(job_id) is task:
            del self._uploads[job_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Left Completing: tried again at the next timed poll, as after a crash.
            log.error("job %s: data lake upload stopped: %r", job_id, exc)

    @staticmethod
    def _apply(session: AsyncSession, backend: str, job: JobRow, update: StatusUpdate) -> None:
        # The same status again is news of its minor status (DIRAC logs those too).
        same = JobStatus(job.status) == update.status
        try:
            (record_status if same else transition)(
                session,
                job,
                update.status,
                minor=update.minor_status,
                app_status=update.application_status,
                source=update.source or f"{backend} backend",
                at=update.timestamp,
            )
        except InvalidTransition as exc:
            # A user's kill or delete may overtake what the backend saw; anything else
            # is a backend bug worth shouting about, but never worth stopping for.
            level = logging.INFO if JobStatus(job.status).is_final else logging.ERROR
            log.log(level, "job %s: update ignored: %s", job.id, exc)
            return
        job.backend_state = {**job.backend_state, **update.state}
        if update.exit_code is not None:
            job.exit_code = update.exit_code

    async def recover(self) -> None:
        """At start: the jobs this worker's slot had (its last holder died or stopped), and
        those of workers that died meanwhile, are adopted."""
        await self.adopt(at_start=True)
        # Uploads a crash or stop cut short are taken up by the first round (a resync).

    async def adopt(self, *, at_start: bool = False) -> None:
        """Jobs under way whose worker is gone (no live worker holds their slot) become this
        worker's: those whose process died with it are Stalled, then rescheduled or Failed;
        those queued in it go back into the shared queue; a grid's are watched here.
        At start, this worker's own slot counts as gone (it held it just now)."""
        max_reschedules = self.platform.settings.max_reschedules
        slot = self.platform.lease.slot
        if not (at_start or self.platform.lease.side_by_side):
            return  # one worker at a time (SQLite): none is gone while it runs
        async with self.platform.writing() as session:
            live: set[int] = set()
            if self.platform.lease.side_by_side:
                live = await live_slots(session)
                if slot not in live:
                    # The database restarted (or cut the lease's connection) and the lease
                    # watcher has not seen it yet: this worker's own jobs would look gone, and
                    # be taken from the backend that still runs them. It stops (or takes its
                    # slot again, `serve`): its jobs are adopted then, by the slot's holder.
                    raise LeaseNotHeld(f"worker slot {slot} not held: no jobs adopted")
            others = live - {slot} if at_start else live
            # A job with no worker is in the shared queue, but for those of before workers
            # had slots, handed over already, and those under way without one (before
            # LeaseNotHeld a worker could put its own queued jobs back, then run them).
            unqueued = or_(Job.backend_ref.is_not(None), Job.status != JobStatus.WAITING.value)
            gone = or_(
                and_(Job.worker.is_not(None), Job.worker.not_in(others)),
                and_(Job.worker.is_(None), unqueued),
            )
            newest = await session.scalar(select(func.max(Job.id))) or 0
            adopted = False
            for name, backend in self.platform.backends.items():
                rows = await session.scalars(
                    select(Job)
                    .where(Job.backend == name, Job.status.in_([s.value for s in _WATCHED]), gone)
                    .with_for_update(skip_locked=True)
                )
                jobs = list(rows)
                if not jobs:
                    continue
                adopted = True
                shared = self.platform.shared
                gone_from = {job.id: _process_name(job.worker, shared) for job in jobs}
                for job in jobs:
                    job.worker = slot
                lost: list[Job] = []
                held: list[Job] = []
                queued = 0
                if not backend.survives_restart:  # its jobs died with their worker
                    # Those whose data were being uploaded are not lost: their process had
                    # ended; their uploads are resumed here.
                    held = [j for j in jobs if _held(j)]
                    lost = [j for j in jobs if j.status != JobStatus.WAITING.value and not _held(j)]
                    await end_in_backend(backend, JobStatus.KILLED, [backend_ref(j) for j in lost])
                    for job in lost:
                        _stall(session, job, max_reschedules, gone_from[job.id])
                    # Queued in the process that died: back in the shared queue.
                    for job in jobs:
                        if job.status == JobStatus.WAITING.value and job.backend_ref is not None:
                            job.backend_ref, job.worker = None, None
                            queued += 1
                log.warning(
                    "%s adopted %d %s job(s) of %s, gone: %d stalled, %d back in the queue, "
                    "%d followed here",
                    _process_name(slot, shared), len(jobs), name,
                    ", ".join(sorted(set(gone_from.values()))), len(lost), queued,
                    len(jobs) - len(lost) - queued,
                )  # fmt: skip
                self._watch(name, jobs)
                publish_jobs(self.platform.bus, jobs)
                self._upload([j.id for j in held])
            if at_start or adopted:  # any job may have been handed over, unrecorded
                self._last_before_start = newest


class LeaseNotHeld(RuntimeError):
    """The worker's slot is not held in the database: its round is not done."""


@dataclass
class _Ready(JobRow):
    """A job being dispatched: its row and what its backend needs of it."""

    name: str
    argv: list[str]
    jdl: str
    reschedule_count: int
    index: int


_READY_COLUMNS = (Job.name, Job.argv, Job.jdl, Job.reschedule_count, Job.index)
_COLUMNS = (*ROW_COLUMNS, *_READY_COLUMNS)


def _news_key(update: StatusUpdate) -> tuple[str, str, str, datetime]:
    """What makes one piece of news: a job's status and minor status at a time."""
    return (update.uuid, update.status.value, update.minor_status, update.timestamp)


def _job_image(image: StoredImage | None) -> JobImage | None:
    if image is None:
        return None
    squashfs = image.format_path("squashfs")
    oci_archive = image.format_path("oci")
    return JobImage(
        id=image.id,
        rootfs=image.rootfs,
        squashfs=squashfs if squashfs.exists() else None,
        squashfs_sha256=image.meta.get("formats", {}).get("squashfs", {}).get("sha256"),
        oci_archive=oci_archive if oci_archive.exists() else None,
        env=image.meta.get("env", {}),
        workdir=image.meta.get("workdir", "/work"),
        application=image.meta.get("application", ""),
        redistributable=image.meta.get("redistributable", False),
    )


def _process_name(worker: int | None, shared: bool) -> str:
    """A process that runs jobs, as jobs' histories and the log name it: a worker by its slot
    (its start-up line in the log gives its pid and host), or `serve` running alone."""
    return f"worker {worker}" if shared and worker is not None else "the server"


def _stall(session: AsyncSession, job: Job, max_reschedules: int, gone: str) -> None:
    if job.status != JobStatus.MATCHED.value:  # a Matched job never started: nothing stalled
        transition(
            session,
            job,
            JobStatus.STALLED,
            minor=f"Job process lost: {gone} stopped while it ran",
            source="StalledJobAgent",
        )
    transition(session, job, JobStatus.FAILED, minor="Stalled", source="StalledJobAgent")
    if job.reschedule_count < max_reschedules:
        requeue(session, job, minor="Rescheduled after a stall", source="StalledJobAgent")


def _held(job: Job) -> bool:
    """Whether a job's process has ended and its data are going to the data lake."""
    return job.status == JobStatus.COMPLETING.value and job.minor_status == datalake.UPLOADING


async def cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
