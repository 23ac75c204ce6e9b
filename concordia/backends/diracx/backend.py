"""The DiracX backend: Concordia's jobs handed over to DiracX, followed, killed, deleted and
their outputs fetched, as the Backend protocol says."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from concordia.backends.base import (
    BackendError,
    BackendRef,
    BackendUnreachable,
    JobSpec,
    Owner,
    SignIn,
    StatusUpdate,
    Token,
    UserTokenSource,
)
from concordia.backends.diracx.client import DiracXClient, DiracXError, DiracXUnreachable
from concordia.backends.diracx.jobs import (
    PENDING_SANDBOX,
    STD_ERROR,
    STD_OUTPUT,
    jdl_of,
    job_name,
    refusals,
    submission_sandbox,
)
from concordia.backends.diracx.news import by_owner, news, news_search, owner_of
from concordia.backends.grid_images import GridImages, ImageNotPublished
from concordia.backends.sandboxes import UnsafeArchive, extract_outputs
from concordia.core.states import JobStatus
from concordia.core.tokens import unverified_claims
from concordia.settings import GridSettings

log = logging.getLogger(__name__)

#: Written in a job's directory once its output sandbox is unpacked in outputs/.
FETCHED = ".outputs-fetched"
#: DiracX states after which a job does nothing more.
_ENDED = {s.value for s in (JobStatus.DONE, JobStatus.FAILED, JobStatus.KILLED, JobStatus.DELETED)}


class DiracXBackend:
    """Submit, follow, kill and fetch the outputs of jobs in DiracX, acting as each job's
    owner under the submission's VO and DIRAC group (a token per owner and group)."""

    name = "diracx"
    title = "The grid (DIRAC)"
    isolated = True
    isolation_problem: str | None = None
    runtime_summary = "apptainer or singularity on grid worker nodes (bubblewrap where neither)"
    limits_summary = "the grid site's, from each job's CPUTime"
    survives_restart = True
    uploads_data = True
    #: DiracX is asked at its poll interval: it tells no news of its own.
    changed: asyncio.Event | None = None

    def __init__(
        self, settings: GridSettings, public_url: str, image_keys: list[bytes] | None = None
    ) -> None:
        self.settings = settings
        #: Where jobs' images are published (links lead to ``public_url``, the server's) and
        #: what their wrappers are told of them.
        self.images = GridImages(settings, public_url, image_keys or [])
        self.client = DiracXClient(settings)
        #: Input sandboxes DiracX has (sha256 -> PFN): one upload per content, ever.
        self._sandboxes: dict[str, str] = {}
        #: Jobs sent in a round that may not have been recorded (it failed half way).
        self._maybe_sent: set[str] = set()
        #: The sandbox of each submission (job group, image): its jobs need it built once.
        self._sandbox_of: dict[tuple[str, str], str] = {}
        self._sandbox_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        #: When each owner's jobs were last polled: the next asks what changed since.
        self._polled: dict[Owner, datetime] = {}
        self._last_poll = -float("inf")
        self.needs_user_token = self.client.needs_user_token

    @property
    def unreachable(self) -> str | None:
        """Why DiracX did not answer its last call (the UI says so); None when fine."""
        return self.client.unreachable

    async def close(self) -> None:
        """Its connections close; its jobs go on in DiracX."""
        await self.client.close()
        self.images.close()

    # --- tokens

    def use_user_tokens(self, source: UserTokenSource) -> None:
        """Per-user mode: where owners' own tokens come from (users' DiracX sign-ins)."""
        self.client.use_user_tokens(source)

    async def refresh_user_token(self, refresh_token: str) -> Token:
        """New tokens for a user's refresh token, from DiracX (which rotates them)."""
        return await self.client.refresh_user_token(refresh_token)

    def forget_token(self, owner: Owner) -> None:
        """A user connected or disconnected: their cached access token goes."""
        self.client.forget_token(owner)

    def sign_in_of(self, token: Token) -> SignIn:
        """DiracX's claims: its VO and DIRAC group, the user, and its subject
        "<vo>:<IAM subject>"; a refresh token that is a JWT says until when."""
        claims = unverified_claims(token.access_token) or {}
        subject = str(claims.get("sub", ""))
        expires = (unverified_claims(token.refresh_token or "") or {}).get("exp")
        return SignIn(
            vo=str(claims.get("vo", "")),
            group=str(claims.get("dirac_group", "")),
            user=str(claims.get("preferred_username") or subject),
            iam_subject=subject.partition(":")[2],
            usable_until=float(expires) if isinstance(expires, int | float) else None,
        )

    # --- submit

    def capacity(self) -> None:
        """DiracX queues what it is given (its matcher decides where jobs run)."""
        return None

    async def submit(self, jobs: list[JobSpec]) -> list[BackendRef]:
        """Each job once: jobs DiracX already has (a JobName is Concordia's job uuid: a crash
        between DiracX accepting and Concordia recording finds them) are adopted."""
        refs: list[BackendRef] = []
        specs_by_owner: dict[Owner, list[JobSpec]] = defaultdict(list)
        for spec in jobs:
            specs_by_owner[spec.run_as].append(spec)
        for owner, specs in specs_by_owner.items():
            try:
                refs += await self._submit_as(owner, specs)
            except BackendUnreachable:
                raise  # nothing decided: the round is tried again
            except BackendError as exc:  # refused for this user (their sign-in, their group)
                # Jobs DiracX may hold already are not failed: they wait, and are found once
                # DiracX answers for the user again.
                refs += [
                    BackendRef(uuid=s.uuid, ref="", error=str(exc))
                    for s in specs
                    if not (s.maybe_submitted or s.uuid in self._maybe_sent)
                ]
        return refs

    async def _submit_as(self, owner: Owner, specs: list[JobSpec]) -> list[BackendRef]:
        # Look only where it may be: jobs older than this process, or sent in a round that
        # failed after DiracX accepted part of it.
        unsure = [job_name(s) for s in specs if s.maybe_submitted or s.uuid in self._maybe_sent]
        found = await self.client.find_by_name(owner, unsure) if unsure else {}
        known = {s.uuid: found[job_name(s)] for s in specs if job_name(s) in found}
        # Nothing is sent of a job DIRAC would refuse, or would not run as described.
        refused = {
            s.uuid: "; ".join(p) for s in specs if s.uuid not in known and (p := refusals(s))
        }
        todo = [s for s in specs if s.uuid not in known and s.uuid not in refused]
        pfns: dict[str, str] = {}
        for s in specs:
            if s.uuid not in refused:
                try:
                    pfns[s.uuid] = await self._sandbox_for(owner, s)
                except ImageNotPublished as exc:  # named in each job's minor status
                    if s.uuid not in known:  # DiracX has the others: they run as sent
                        refused[s.uuid] = str(exc)
        todo = [s for s in todo if s.uuid in pfns]
        # What is sent is what the job's page shows; an adopted job was sent the same (its
        # sandbox is content addressed: the same files, the same address).
        jdls = {
            uuid: jdl_of(s, pfns[s.uuid], self.images) for s in specs if (uuid := s.uuid) in pfns
        }
        size = self.settings.diracx_chunk_size
        self._maybe_sent.update(s.uuid for s in todo)  # until DiracX's answer is recorded
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
        # A few chunks at once: DiracX serves them side by side.
        answers = await asyncio.gather(
            *(self.client.insert(owner, [jdls[s.uuid] for s in c]) for c in chunks),
            return_exceptions=True,
        )
        for chunk, answer in zip(chunks, answers, strict=True):
            if isinstance(answer, DiracXError) and not isinstance(answer, DiracXUnreachable):
                refused.update({s.uuid: str(answer) for s in chunk})  # they fail with why
            elif isinstance(answer, BaseException):
                raise answer  # the accepted chunks are in doubt: adopted next round
            else:
                known.update({s.uuid: job_id for s, job_id in zip(chunk, answer, strict=True)})
        state = {"owner": owner.user, "vo": owner.vo, "group": owner.group, "seen": 0}
        return [
            BackendRef(uuid=s.uuid, ref="", error=refused[s.uuid])
            if s.uuid in refused
            else BackendRef(
                uuid=s.uuid,
                ref=str(known[s.uuid]),
                state={**state, "attempt": s.attempt},
                jdl=jdls.get(s.uuid),
            )
            for s in specs
        ]

    def describe(self, spec: JobSpec) -> str:
        """The JDL DiracX is sent for the job, its input sandbox still to be uploaded."""
        return jdl_of(spec, PENDING_SANDBOX, self.images)

    async def _sandbox_for(self, owner: Owner, spec: JobSpec) -> str:
        """The PFN of the job's input sandbox: made once per submission (its jobs share it),
        uploaded once per content."""
        submission = (spec.job_group, spec.image.id if spec.image else "")
        async with self._sandbox_locks[submission]:  # its hand-overs side by side: made once
            sha256 = self._sandbox_of.get(submission)
            if sha256 is None or sha256 not in self._sandboxes:
                sandbox = await asyncio.to_thread(submission_sandbox, spec, self.images)
                if sandbox.sha256 not in self._sandboxes:
                    self._sandboxes[sandbox.sha256] = await self.client.upload(owner, sandbox)
                self._sandbox_of[submission] = sha256 = sandbox.sha256
        return self._sandboxes[sha256]

    # --- follow

    async def poll(self, refs: list[BackendRef]) -> list[StatusUpdate]:
        """What changed in DiracX for these jobs: every new entry of their status history
        (LoggingInfo), in order. DiracX unreachable: nothing, and ``unreachable`` says why."""
        updates: list[StatusUpdate] = []
        # The reconciler comes by after every round of work; DiracX is asked at its interval.
        now = time.monotonic()
        if now - self._last_poll < self.settings.diracx_poll_interval:
            return updates
        self._last_poll = now
        # Recorded: no doubt left. Not at every round, as it goes through every job watched
        # (a twentieth of Concordia's CPU while it hands 1,000 jobs over, with 5,000 known);
        # a doubt kept a little longer costs no more than a search should the job come again.
        self._maybe_sent.difference_update(ref.uuid for ref in refs)
        try:
            for owner, jobs in by_owner(refs).items():
                started = datetime.now(UTC)
                body = news_search(list(jobs), self._polled.get(owner))
                try:
                    rows = await self.client.search(owner, body)
                except BackendUnreachable:
                    raise
                except BackendError as exc:  # this user's (a sign-in ended): not the others'
                    log.warning(
                        "DiracX poll for %s in %s/%s refused: %s",
                        owner.user, owner.vo, owner.group, exc,
                    )  # fmt: skip
                    continue
                self._polled[owner] = started
                for row in rows:
                    known = jobs.get(int(row["JobID"]))
                    if known is not None:
                        updates += news(known, row)
        except BackendUnreachable as exc:
            log.warning("DiracX unreachable: %s", exc)
            return updates
        return updates

    # --- act

    async def kill(self, refs: list[BackendRef]) -> list[StatusUpdate]:
        """Killed in DiracX, with the earlier runs of a rescheduled job still going. DiracX
        keeps a job that ended meanwhile as it ended (it answers 200 all the same): that job
        comes back, with its state, and the next poll is not put off."""
        too_late: list[StatusUpdate] = []
        for owner, jobs in by_owner(refs).items():
            runs = await self._runs(owner, jobs)
            # Only what is still going: a kill of an ended job changes nothing but its minor
            # status ("Marked for termination"), which would then hide how it ended.
            going = [
                job_id
                for job_id in {*jobs, *runs}
                if runs.get(job_id, {}).get("Status") not in _ENDED
            ]
            steps = [(JobStatus.KILLED, "Marked for termination")]
            reached = (
                await self.client.set_status(owner, {job_id: steps for job_id in going})
                if going
                else {}
            )
            for job_id, ref in jobs.items():
                row = reached.get(job_id) or runs.get(job_id, {})
                status = row.get("Status")
                if status != JobStatus.KILLED.value and status in _ENDED:
                    too_late.append(
                        StatusUpdate(
                            uuid=ref.uuid, status=JobStatus(status),
                            minor_status=str(row.get("MinorStatus") or ""),
                            timestamp=datetime.now(UTC),
                        )
                    )  # fmt: skip
        if too_late:
            self._last_poll = -float("inf")
        return too_late

    async def delete(self, refs: list[BackendRef]) -> None:
        """Deleted in DiracX too (DIRAC's final state: out of the task queue, its sandboxes
        left to DiracX's clean-up), with every earlier run of a rescheduled job (one still
        going is killed first: DIRAC deletes only what has ended)."""
        for owner, jobs in by_owner(refs).items():
            runs = await self._runs(owner, jobs)
            deleted = (JobStatus.DELETED, "Deleted by user")
            changes = {job_id: [deleted] for job_id in jobs}
            for job_id, row in runs.items():
                if job_id not in jobs:
                    ended = row.get("Status") in _ENDED
                    changes[job_id] = (
                        [deleted]
                        if ended
                        else [(JobStatus.KILLED, "Marked for termination"), deleted]
                    )
            await self.client.set_status(owner, changes)

    async def _runs(self, owner: Owner, jobs: dict[int, BackendRef]) -> dict[int, Any]:
        """DiracX's rows (status, minor status) of these jobs and of the earlier runs of
        those rescheduled, found by their names (the job's uuid and run)."""
        fields = ["JobID", "Status", "MinorStatus"]
        rows = await self.client.search(
            owner,
            {
                "parameters": fields,
                "search": [{"parameter": "JobID", "operator": "in", "values": list(jobs)}],
            },
        )
        earlier = [
            f"{ref.uuid}.{run}"
            for ref in jobs.values()
            for run in range(int(ref.state.get("attempt", 0)))
        ]
        if earlier:
            search = [{"parameter": "JobName", "operator": "in", "values": earlier}]
            rows += await self.client.search(owner, {"parameters": fields, "search": search})
        return {int(row["JobID"]): row for row in rows}

    async def fetch_outputs(self, ref: BackendRef, dest: Path) -> list[Path]:
        """The job's output sandbox, downloaded (presigned URL), checked and unpacked safely
        into ``dest`` once; its std.out and std.err go beside it, where logs are read."""
        marker = dest.parent / FETCHED
        if marker.exists():
            return sorted(p for p in dest.rglob("*") if p.is_file())
        owner = owner_of(ref)
        pfns = await self.client.call("GET", f"/api/jobs/{ref.ref}/sandbox/output", owner)
        if not pfns:  # not uploaded yet (the job is not over)
            return []
        files: list[Path] = []
        for pfn in pfns or []:
            link = await self.client.call("GET", "/api/jobs/sandbox", owner, params={"pfn": pfn})
            url = link["url"] if isinstance(link, dict) else str(link)
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / "outputs.tar"
                await self.client.download(url, archive)
                try:
                    files += await asyncio.to_thread(
                        extract_outputs, archive, dest, self.settings.diracx_max_output_bytes
                    )
                except UnsafeArchive as exc:
                    raise DiracXError(f"the output sandbox was refused: {exc}") from None
        for name in (STD_OUTPUT, STD_ERROR):
            if (dest / name).is_file():
                (dest / name).replace(dest.parent / name)
        marker.touch()
        return [f for f in files if f.name not in (STD_OUTPUT, STD_ERROR) or f.parent != dest]
