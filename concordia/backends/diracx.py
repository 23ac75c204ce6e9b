"""The DiracX backend: jobs on the grid through DIRAC's REST API (over HTTP only: DiracX is
GPL-3.0 and none of its packages is imported here)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from pydantic import BaseModel, Field

from concordia.backends.base import (
    BackendError,
    BackendRef,
    BackendUnreachable,
    JobRefused,
    JobSpec,
    Owner,
    StatusUpdate,
    Token,
    UserTokenSource,
)
from concordia.backends.grid_images import GridImages, ImageNotPublished, exit_code_of
from concordia.backends.sandboxes import Sandbox, UnsafeArchive, extract_outputs, input_sandbox
from concordia.backends.wrapper.concordia_job_base import SH_SETTINGS, WRAPPER_FILES
from concordia.backends.wrapper.concordia_job_lake import DATALAKE_MANIFEST
from concordia.backends.wrapper.concordia_job_shell import sh_argument, shell_settings
from concordia.core.jdl import job_jdl
from concordia.core.states import JobStatus
from concordia.settings import Settings

log = logging.getLogger(__name__)

WRAPPER = "concordia-job.sh"
WRAPPER_PY = "concordia_job.py"
JOB_CONFIG = "concordia-job.json"
STD_OUTPUT, STD_ERROR = "std.out", "std.err"
#: Written in a job's directory once its output sandbox is unpacked in outputs/.
FETCHED = ".outputs-fetched"
#: Polls ask for jobs updated since the last poll minus this (DiracX's clock may differ).
POLL_MARGIN = timedelta(seconds=5)
SEARCH_PAGE = 1000
#: Answers that say "not now" (timeout, too many requests): tried again, never final.
_TRY_AGAIN = (408, 429)
_CONTENT_RANGE = re.compile(r"jobs (\d+)-(\d+)/(\d+)")
#: A token is renewed this long before it expires.
TOKEN_MARGIN = 60.0
#: DIRAC states a Concordia job passes itself before it reaches DiracX: there, they are
#: steps of its Waiting (DiracX's minor statuses and sources say which).
_BEFORE_US = {JobStatus.RECEIVED, JobStatus.CHECKING}
#: DiracX states after which a job does nothing more.
_ENDED = {s.value for s in (JobStatus.DONE, JobStatus.FAILED, JobStatus.KILLED, JobStatus.DELETED)}
_SEARCH_FIELDS = [
    "JobID", "JobName", "Status", "MinorStatus", "ApplicationStatus", "Site", "LoggingInfo",
]  # fmt: skip
#: What DIRAC says of a job not at a site yet.
_NO_SITE = frozenset({"", "ANY", "Unknown"})
#: What a description shows for the input sandbox until it is uploaded, at hand-over.
PENDING_SANDBOX = "<input sandbox: uploaded at hand-over>"
#: DIRAC's JobManager refuses a CPUTime outside this range (seconds).
CPU_TIME_RANGE = (100, 500_000)
#: DiracX's JobDB holds a JobGroup of at most this many characters.
JOB_GROUP_LENGTH = 32


class DiracXError(BackendError):
    """DiracX refused or failed a call; the message is its reason, ``status`` its HTTP code."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DiracXUnreachable(DiracXError, BackendUnreachable):
    """DiracX does not answer: jobs keep their last known state, nothing is decided."""


class SandboxSlot(BaseModel):
    pfn: str
    url: str | None = None
    fields: dict[str, str] = Field(default_factory=dict)


class Inserted(BaseModel):
    JobID: int
    Status: str = ""


def unverified_claims(token: str) -> dict[str, Any]:
    """A DiracX token's claims, read without checking the signature: only to show whom it
    names and until when (it came from DiracX's own token endpoint, and DiracX checks it)."""
    try:
        claims = json.loads(jws.extract_compact(token.encode()).payload)
    except (ValueError, JoseError):
        return {}
    return claims if isinstance(claims, dict) else {}


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

    def __init__(self, settings: Settings, image_keys: list[bytes] | None = None) -> None:
        self.settings = settings
        #: Where jobs' images are published and what their wrappers are told of them.
        self.images = GridImages(settings, image_keys or [])
        self.url = settings.diracx_url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.url, timeout=60)
        self._tokens: dict[Owner, tuple[float, str]] = {}
        self._token_locks: defaultdict[Owner, asyncio.Lock] = defaultdict(asyncio.Lock)
        #: Input sandboxes DiracX has (sha256 -> PFN): one upload per content, ever.
        self._sandboxes: dict[str, str] = {}
        #: Chunks of JDLs sent at once (all hand-overs together). A single-process DiracX on
        #: SQLite serves two side by side slower than one after the other (its writers wait
        #: on each other); the reconciler's next hand-over is ready meanwhile.
        self._inserting = asyncio.Semaphore(settings.diracx_calls_at_once)
        #: Jobs sent in a round that may not have been recorded (it failed half way).
        self._maybe_sent: set[str] = set()
        #: The sandbox of each submission (job group, image): its jobs need it built once.
        self._sandbox_of: dict[tuple[str, str], str] = {}
        self._sandbox_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        #: When each owner's jobs were last polled: the next asks what changed since.
        self._polled: dict[Owner, datetime] = {}
        self._last_poll = -float("inf")
        #: Set by a poll that found DiracX unreachable (the UI says so); None when fine.
        self.unreachable: str | None = None
        #: Per-user mode: jobs act with their owners' own tokens, from where the platform
        #: says (use_user_tokens); else with tokens obtained as a trusted service.
        self.needs_user_token = settings.diracx_auth == "user"
        self._user_tokens: UserTokenSource | None = None

    async def close(self) -> None:
        """Its connections close; its jobs go on in DiracX."""
        await self.http.aclose()
        self.images.close()

    # --- calls

    async def _send(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        """One request; DiracXUnreachable when it does not answer (or fails on its side),
        DiracXError with DiracX's reason when it refuses."""
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(f"DiracX did not answer: {type(exc).__name__}") from None
        if response.status_code >= 500 or response.status_code in _TRY_AGAIN:
            raise self._unreachable(f"DiracX answered {response.status_code} to {what}")
        self.unreachable = None  # it answers, if only to refuse
        if response.is_error:
            raise DiracXError(
                f"DiracX refused {what} ({response.status_code}): {_detail(response)}",
                response.status_code,
            )
        return response

    def _unreachable(self, why: str) -> DiracXUnreachable:
        """Said at once, whatever the call: a hand-over as much as a poll (the UI says so)."""
        self.unreachable = why
        return DiracXUnreachable(why)

    async def _call(self, method: str, path: str, owner: Owner, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {await self._token(owner)}"}
        response = await self._send(method, path, path, headers=headers, **kwargs)
        return response.json() if response.content else None

    async def _token(self, owner: Owner) -> str:
        """A DiracX access token for the owner in their VO and group: their own (per-user
        mode), or obtained as a trusted service."""
        async with self._token_locks[owner]:
            cached = self._tokens.get(owner)
            if cached is not None and cached[0] - TOKEN_MARGIN > time.time():
                return cached[1]
            user, vo, group = owner.user, owner.vo, owner.group
            if self.needs_user_token:
                if self._user_tokens is None:
                    raise DiracXError("users' DiracX sign-ins are not available here")
                access, expires_at = await self._user_tokens(owner)
                self._tokens[owner] = (expires_at, access)
                return access
            secret = self.settings.diracx_legacy_secret.get_secret_value()
            if not secret:
                raise DiracXError("no DiracX exchange secret is configured (diracx_legacy_secret)")
            response = await self._send(
                "GET",
                "/api/auth/legacy-exchange",
                f"a token for {user} in {vo}/{group}",
                params={"preferred_username": user, "scope": f"vo:{vo} group:{group}"},
                headers={"Authorization": f"Bearer diracx:legacy:{secret}"},
            )
            token = Token.model_validate(response.json())
            self._tokens[owner] = (time.time() + token.expires_in, token.access_token)
            return token.access_token

    def use_user_tokens(self, source: UserTokenSource) -> None:
        """Per-user mode: where owners' own tokens come from (users' DiracX sign-ins)."""
        self._user_tokens = source

    async def refresh_user_token(self, refresh_token: str) -> Token:
        """New tokens for a user's refresh token (DiracX rotates them: the old one is dead
        after this, and using it again would end all the user's sign-ins)."""
        response = await self._send(
            "POST",
            "/api/auth/token",
            "a token refresh",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": self.settings.diracx_client_id,
            },
        )
        return Token.model_validate(response.json())

    def forget_token(self, owner: Owner) -> None:
        """A user connected or disconnected: their cached access token goes."""
        self._tokens.pop(owner, None)

    # --- submit

    def capacity(self) -> None:
        """DiracX queues what it is given (its matcher decides where jobs run)."""
        return None

    async def submit(self, jobs: list[JobSpec]) -> list[BackendRef]:
        """Each job once: jobs DiracX already has (a JobName is Concordia's job uuid: a crash
        between DiracX accepting and Concordia recording finds them) are adopted."""
        refs: list[BackendRef] = []
        by_owner: dict[Owner, list[JobSpec]] = defaultdict(list)
        for spec in jobs:
            by_owner[spec.run_as].append(spec)
        for owner, specs in by_owner.items():
            try:
                refs += await self._submit_as(owner, specs)
            except DiracXUnreachable:
                raise  # nothing decided: the round is tried again
            except DiracXError as exc:  # refused for this user (their sign-in, their group)
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
        unsure = [_job_name(s) for s in specs if s.maybe_submitted or s.uuid in self._maybe_sent]
        found = await self._find_by_name(owner, unsure) if unsure else {}
        known = {s.uuid: found[_job_name(s)] for s in specs if _job_name(s) in found}
        # Nothing is sent of a job DIRAC would refuse, or would not run as described.
        refused = {
            s.uuid: "; ".join(p) for s in specs if s.uuid not in known and (p := _refusals(s))
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
        jdls = {uuid: self._jdl(s, pfns[s.uuid]) for s in specs if (uuid := s.uuid) in pfns}
        size = self.settings.diracx_chunk_size
        self._maybe_sent.update(s.uuid for s in todo)  # until DiracX's answer is recorded
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
        # A few chunks at once: DiracX serves them side by side.
        answers = await asyncio.gather(
            *(self._insert(owner, [jdls[s.uuid] for s in c]) for c in chunks),
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

    async def _insert(self, owner: Owner, jdls: list[str]) -> list[int]:
        async with self._inserting:
            inserted = await self._call("POST", "/api/jobs/jdl", owner, json=jdls)
        return [Inserted.model_validate(i).JobID for i in inserted]

    async def _find_by_name(self, owner: Owner, names: list[str]) -> dict[str, int]:
        body = {
            "parameters": ["JobID", "JobName"],
            "search": [{"parameter": "JobName", "operator": "in", "values": names}],
        }
        rows = await self._search(owner, body)
        return {str(r["JobName"]): int(r["JobID"]) for r in rows}

    async def _search(self, owner: Owner, body: dict[str, Any]) -> list[Any]:
        """Every page of a job search."""
        rows: list[Any] = []
        page = 1
        while True:
            headers = {"Authorization": f"Bearer {await self._token(owner)}"}
            response = await self._send(
                "POST", "/api/jobs/search", "/api/jobs/search", headers=headers,
                params={"page": page, "per_page": SEARCH_PAGE}, json=body,
            )  # fmt: skip
            rows += response.json()
            # 206 with "Content-Range: jobs 0-999/2500" while rows remain after this page.
            span = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
            if response.status_code != 206 or not span or int(span[2]) + 1 >= int(span[3]):
                return rows
            page += 1

    def describe(self, spec: JobSpec) -> str:
        """The JDL DiracX is sent for the job, its input sandbox still to be uploaded."""
        return self._jdl(spec, PENDING_SANDBOX)

    def _jdl(self, spec: JobSpec, pfn: str) -> str:
        if problems := _refusals(spec):
            raise JobRefused(problems)
        # The job's own signed link to its image, if it has one.
        url = self.images.link(spec.image, spec.uuid) if spec.image is not None else None
        return job_jdl(
            executable=WRAPPER,
            arguments=wrapper_arguments(
                spec.argv, url, image=spec.image is not None, datalake_names=_names(spec)
            ),
            job_name=_job_name(spec),
            job_group=spec.job_group or "concordia",
            input_sandbox=[pfn],
            output_sandbox=[STD_OUTPUT, STD_ERROR, *spec.outputs, *_manifest(spec)],
            std_output=STD_OUTPUT,
            std_error=STD_ERROR,
            cpu_time=spec.cpu_time,
            priority=spec.priority,
            tags=spec.tags,
        )

    async def _sandbox_for(self, owner: Owner, spec: JobSpec) -> str:
        """The PFN of the job's input sandbox: made once per submission (its jobs share it),
        uploaded once per content."""
        submission = (spec.job_group, spec.image.id if spec.image else "")
        async with self._sandbox_locks[submission]:  # its hand-overs side by side: made once
            sha256 = self._sandbox_of.get(submission)
            if sha256 is None or sha256 not in self._sandboxes:
                sandbox = await asyncio.to_thread(self._input_sandbox, spec)
                if sandbox.sha256 not in self._sandboxes:
                    self._sandboxes[sandbox.sha256] = await self._upload(owner, sandbox)
                self._sandbox_of[submission] = sha256 = sandbox.sha256
        return self._sandboxes[sha256]

    def _input_sandbox(self, spec: JobSpec) -> Sandbox:
        """The wrapper, the submission's settings and the application's input files: the same
        for every job of a submission (its arguments are in the JDL), so uploaded once."""
        image = self.images.publish(spec.image, spec.vo) if spec.image is not None else None
        config = wrapper_config(
            image,
            spec.network,
            self.images.wrapper_settings(),
            datalake=_lake_config(spec),
        )
        files = wrapper_files(config)
        for path in spec.input_files:
            files[path.name] = path.read_bytes()
        return input_sandbox(files, executables=frozenset({WRAPPER, WRAPPER_PY}))

    async def _upload(self, owner: Owner, sandbox: Sandbox) -> str:
        """Content-addressed: DiracX answers with no URL when it has the sandbox already."""
        request = {
            "checksum_algorithm": "sha256",
            "checksum": sandbox.sha256,
            "size": sandbox.size,
            "format": "tar.bz2",
        }
        slot = SandboxSlot.model_validate(
            await self._call("POST", "/api/jobs/sandbox", owner, json=request)
        )
        if slot.url is not None:
            try:
                response = await self.http.post(
                    slot.url, data=slot.fields, files={"file": ("sandbox.tar.bz2", sandbox.data)}
                )
            except httpx.HTTPError as exc:
                raise self._unreachable(f"the sandbox store did not answer: {exc}") from None
            if response.is_error:
                raise DiracXError(f"the sandbox store refused the upload ({response.status_code})")
        return slot.pfn

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
            for owner, jobs in _by_owner(refs).items():
                started = datetime.now(UTC)
                search: list[dict[str, Any]] = [
                    {"parameter": "JobID", "operator": "in", "values": list(jobs)}
                ]
                since = self._polled.get(owner)
                if since is not None:  # only what changed since (clocks drift: a margin)
                    search.append(
                        {
                            "parameter": "LastUpdateTime",
                            "operator": "gt",
                            # DiracX's own form: UTC, no offset.
                            "value": (since - POLL_MARGIN).strftime("%Y-%m-%d %H:%M:%S"),
                        }
                    )
                body = {"parameters": _SEARCH_FIELDS, "search": search}
                try:
                    rows = await self._search(owner, body)
                except DiracXUnreachable:
                    raise
                except DiracXError as exc:  # this user's (a sign-in ended): not the others'
                    log.warning(
                        "DiracX poll for %s in %s/%s refused: %s",
                        owner.user, owner.vo, owner.group, exc,
                    )  # fmt: skip
                    continue
                self._polled[owner] = started
                for row in rows:
                    known = jobs.get(int(row["JobID"]))
                    if known is not None:
                        updates += _news(known, row)
        except DiracXUnreachable as exc:
            log.warning("DiracX unreachable: %s", exc)
            return updates
        return updates

    # --- act

    async def kill(self, refs: list[BackendRef]) -> list[StatusUpdate]:
        """Killed in DiracX, with the earlier runs of a rescheduled job still going. DiracX
        keeps a job that ended meanwhile as it ended (it answers 200 all the same): that job
        comes back, with its state, and the next poll is not put off."""
        too_late: list[StatusUpdate] = []
        for owner, jobs in _by_owner(refs).items():
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
                await self._set_status(owner, {job_id: steps for job_id in going}) if going else {}
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
        for owner, jobs in _by_owner(refs).items():
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
            await self._set_status(owner, changes)

    async def _runs(self, owner: Owner, jobs: dict[int, BackendRef]) -> dict[int, Any]:
        """DiracX's rows (status, minor status) of these jobs and of the earlier runs of
        those rescheduled, found by their names (the job's uuid and run)."""
        fields = ["JobID", "Status", "MinorStatus"]
        rows = await self._search(
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
            rows += await self._search(owner, {"parameters": fields, "search": search})
        return {int(row["JobID"]): row for row in rows}

    async def _set_status(
        self, owner: Owner, changes: dict[int, list[tuple[JobStatus, str]]]
    ) -> dict[int, Any]:
        """Each job through its steps (one after the other, a millisecond apart); what DiracX
        says each job's state is now."""
        now = datetime.now(UTC)
        body = {
            str(job_id): {
                (now + timedelta(milliseconds=i)).isoformat(): {
                    "Status": status.value, "MinorStatus": minor, "Source": "Concordia",
                }
                for i, (status, minor) in enumerate(steps)
            }
            for job_id, steps in changes.items()
        }  # fmt: skip
        answer = await self._call("PATCH", "/api/jobs/status", owner, json=body)
        success = answer.get("success", {}) if isinstance(answer, dict) else {}
        return {int(job_id): row for job_id, row in success.items() if isinstance(row, dict)}

    async def fetch_outputs(self, ref: BackendRef, dest: Path) -> list[Path]:
        """The job's output sandbox, downloaded (presigned URL), checked and unpacked safely
        into ``dest`` once; its std.out and std.err go beside it, where logs are read."""
        marker = dest.parent / FETCHED
        if marker.exists():
            return sorted(p for p in dest.rglob("*") if p.is_file())
        owner = _owner(ref)
        pfns = await self._call("GET", f"/api/jobs/{ref.ref}/sandbox/output", owner)
        if not pfns:  # not uploaded yet (the job is not over)
            return []
        files: list[Path] = []
        for pfn in pfns or []:
            link = await self._call("GET", "/api/jobs/sandbox", owner, params={"pfn": pfn})
            url = link["url"] if isinstance(link, dict) else str(link)
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / "outputs.tar"
                await self._download(url, archive)
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

    async def _download(self, url: str, target: Path) -> None:
        limit = self.settings.diracx_max_output_bytes
        size = 0
        async with self.http.stream("GET", url) as response:
            if response.is_error:
                raise DiracXError(f"the sandbox store answered {response.status_code}")
            with target.open("wb") as fh:
                async for block in response.aiter_bytes():
                    size += len(block)
                    if size > limit:
                        raise DiracXError(f"the output sandbox is larger than {limit} bytes")
                    fh.write(block)


def _refusals(spec: JobSpec) -> list[str]:
    """What DIRAC or DiracX would refuse in the job, each with its rule."""
    problems = []
    low, high = CPU_TIME_RANGE
    if not low <= spec.cpu_time <= high:
        problems.append(
            f"CPUTime {spec.cpu_time} s is outside DIRAC's {low}-{high} s, which its job "
            "manager refuses: the application's cpu_time must change to run on the grid"
        )
    group = spec.job_group or "concordia"
    if len(group) > JOB_GROUP_LENGTH:
        problems.append(
            f"JobGroup {group!r} is {len(group)} characters, more than the {JOB_GROUP_LENGTH} "
            "DiracX holds: the application needs a shorter name to run on the grid"
        )
    return problems


def _by_owner(refs: list[BackendRef]) -> dict[Owner, dict[int, BackendRef]]:
    """The jobs by whom they run as in DiracX, each by its DiracX id."""
    by_owner: dict[Owner, dict[int, BackendRef]] = defaultdict(dict)
    for ref in refs:
        by_owner[_owner(ref)][int(ref.ref)] = ref
    return by_owner


def _owner(ref: BackendRef) -> Owner:
    """Whom a job runs as in DiracX: its owner, VO and DIRAC group (kept in its state)."""
    return Owner(ref.state.get("owner", ""), ref.state.get("vo", ""), ref.state.get("group", ""))


def _job_name(spec: JobSpec) -> str:
    """Concordia's job and run: what finds a job DiracX accepted before Concordia recorded it,
    and no earlier run of a rescheduled job."""
    return f"{spec.uuid}.{spec.attempt}"


def _news(ref: BackendRef, row: dict[str, Any]) -> list[StatusUpdate]:
    """The history entries Concordia has not seen yet, as updates with DiracX's minor status
    and source (its Received and Checking as steps of Concordia's Waiting)."""
    history = row.get("LoggingInfo") or []
    seen = int(ref.state.get("seen", 0))
    # Where it runs, once matched (the data lake records it with the job's files).
    site = str(row.get("Site") or "")
    where = {} if site in _NO_SITE else {"site": site}
    updates = []
    for index, entry in enumerate(history[seen:], start=seen):
        try:
            status = JobStatus(entry["Status"])
        except (KeyError, ValueError):
            continue
        if index and _step(history[index - 1]) == _step(entry):
            continue  # the application status alone changed (the wrapper's word): no step
        minor, application = (
            str(entry.get("MinorStatus", "")),
            str(entry.get("ApplicationStatus", "")),
        )
        # The job wrapper's word on its command, as a local job's: its exit code and why.
        code = exit_code_of(application) if status.is_final else None
        if code is not None and status == JobStatus.FAILED:
            minor = application
        updates.append(
            StatusUpdate(
                uuid=ref.uuid,
                status=JobStatus.WAITING if status in _BEFORE_US else status,
                minor_status=minor,
                application_status=application,
                exit_code=code,
                timestamp=_when(entry.get("StatusTime")),
                source=str(entry.get("Source") or ""),
                state={"seen": index + 1, **where},
            )
        )
    ref.state["seen"] = len(history)
    return updates


def _step(entry: dict[str, Any]) -> tuple[object, object]:
    """What a history entry says of the job's state: its status and minor status."""
    return entry.get("Status"), entry.get("MinorStatus")


def _when(value: object) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return datetime.now(UTC)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.now(UTC)


def wrapper_arguments(
    argv: list[str], image_url: str | None, *, image: bool, datalake_names: str | None = None
) -> list[str]:
    """The wrapper's arguments in a job's JDL: the job as base64 JSON (for concordia_job.py)
    and, for a job in an image, the command as concordia-job.sh reads it, when it can."""
    job: dict[str, Any] = {"argv": argv}
    if image:
        job["image_url"] = image_url
    if datalake_names is not None:
        job["datalake_names"] = datalake_names  # the job's own: its sandbox is shared
    arguments = [base64.urlsafe_b64encode(json.dumps(job).encode()).decode()]
    sh_form: str | None = sh_argument(argv, image_url) if image else None
    return arguments if sh_form is None else [*arguments, sh_form]


def wrapper_config(
    image: dict[str, Any] | None,
    network: bool,
    settings: dict[str, Any],
    *,
    datalake: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A submission's concordia-job.json: its image, network, the site-wide settings and,
    given, where its jobs store their data (concordia_job.py's "datalake" keys: url, scope,
    data, outputs, sandbox_max_bytes, ca, token)."""
    config = {"image": image, "network": network, **settings}
    if datalake is not None:
        config["datalake"] = datalake
    return config


def _lake_config(spec: JobSpec) -> dict[str, Any] | None:
    """The submission's data-lake settings for its wrapper: the job's own name prefix goes
    in its arguments instead; the output-sandbox globs, for files too big for it."""
    if spec.datalake is None:
        return None
    lake = {key: value for key, value in spec.datalake.items() if key != "names"}
    lake.setdefault("outputs", list(spec.outputs))
    return lake


def _names(spec: JobSpec) -> str | None:
    return None if spec.datalake is None else str(spec.datalake.get("names", ""))


def _manifest(spec: JobSpec) -> list[str]:
    """What the wrapper stored in the data lake comes back in the sandbox, to be registered."""
    return [DATALAKE_MANIFEST] if spec.datalake is not None else []


def wrapper_files(config: dict[str, Any]) -> dict[str, bytes]:
    """The wrapper and a submission's settings, as a job's directory on a node has them."""
    files = {name: _wrapper_file(name) for name in WRAPPER_FILES}
    files[JOB_CONFIG] = json.dumps(config, sort_keys=True).encode()
    settings: str | None = shell_settings(config)
    if settings is not None:
        files[SH_SETTINGS] = settings.encode()
    return files


def _wrapper_file(name: str) -> bytes:
    return (resources.files("concordia.backends") / "wrapper" / name).read_bytes()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    detail = body.get("detail") if isinstance(body, dict) else body
    return str(detail)[:300]
