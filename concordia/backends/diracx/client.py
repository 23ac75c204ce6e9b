"""DiracX's REST API, called as jobs' owners: access tokens, requests and their errors, job
searches page by page, job hand-overs and status changes, sandbox uploads and downloads."""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from concordia.backends.base import (
    BackendError,
    BackendUnreachable,
    Owner,
    SignInEnded,
    Token,
    UserTokenSource,
)
from concordia.backends.sandboxes import Sandbox
from concordia.core.states import JobStatus
from concordia.settings import GridSettings

SEARCH_PAGE = 1000
#: Answers that say "not now" (timeout, too many requests): tried again, never final.
_TRY_AGAIN = (408, 429)
_CONTENT_RANGE = re.compile(r"jobs (\d+)-(\d+)/(\d+)")
#: A token is renewed this long before it expires.
TOKEN_MARGIN = 60.0


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


class DiracXClient:
    """One DiracX, called as each job's owner under the submission's VO and DIRAC group (a
    token per owner and group); ``unreachable`` says why its last call went unanswered."""

    def __init__(self, settings: GridSettings) -> None:
        self.settings = settings
        self.url = settings.diracx_url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.url, timeout=60)
        self._tokens: dict[Owner, tuple[float, str]] = {}
        self._token_locks: defaultdict[Owner, asyncio.Lock] = defaultdict(asyncio.Lock)
        #: Chunks of JDLs sent at once (all hand-overs together). A single-process DiracX on
        #: SQLite serves two side by side slower than one after the other (its writers wait
        #: on each other); the reconciler's next hand-over is ready meanwhile.
        self._inserting = asyncio.Semaphore(settings.diracx_calls_at_once)
        #: Set by a call that found DiracX unreachable (the UI says so); None when fine.
        self.unreachable: str | None = None
        #: Per-user mode: jobs act with their owners' own tokens, from where the platform
        #: says (use_user_tokens); else with tokens obtained as a trusted service.
        self.needs_user_token = settings.diracx_auth == "user"
        self._user_tokens: UserTokenSource | None = None

    async def close(self) -> None:
        await self.http.aclose()

    # --- requests

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

    async def call(self, method: str, path: str, owner: Owner, **kwargs: Any) -> Any:
        """One call as the owner; DiracX's answer (JSON), None when it is empty."""
        headers = {"Authorization": f"Bearer {await self._token(owner)}"}
        response = await self._send(method, path, path, headers=headers, **kwargs)
        return response.json() if response.content else None

    # --- tokens

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
        after this, and using it again would end all the user's sign-ins). SignInEnded when
        DiracX ended the sign-in (401: revoked, expired or replayed; 403: the user left the
        group); another refusal is Concordia's own (its client id)."""
        try:
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
        except DiracXError as exc:  # unreachable: no status, raised as it is
            if exc.status in (401, 403):
                raise SignInEnded(str(exc)) from None
            raise
        return Token.model_validate(response.json())

    def forget_token(self, owner: Owner) -> None:
        """A user connected or disconnected: their cached access token goes."""
        self._tokens.pop(owner, None)

    # --- jobs

    async def insert(self, owner: Owner, jdls: list[str]) -> list[int]:
        """The jobs these JDLs describe, handed over as the owner: their DiracX ids."""
        async with self._inserting:
            inserted = await self.call("POST", "/api/jobs/jdl", owner, json=jdls)
        return [Inserted.model_validate(i).JobID for i in inserted]

    async def find_by_name(self, owner: Owner, names: list[str]) -> dict[str, int]:
        """The owner's jobs of these names (JobName), by name: their DiracX ids."""
        body = {
            "parameters": ["JobID", "JobName"],
            "search": [{"parameter": "JobName", "operator": "in", "values": names}],
        }
        rows = await self.search(owner, body)
        return {str(r["JobName"]): int(r["JobID"]) for r in rows}

    async def search(self, owner: Owner, body: dict[str, Any]) -> list[Any]:
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

    async def set_status(
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
        answer = await self.call("PATCH", "/api/jobs/status", owner, json=body)
        success = answer.get("success", {}) if isinstance(answer, dict) else {}
        return {int(job_id): row for job_id, row in success.items() if isinstance(row, dict)}

    # --- sandboxes

    async def upload(self, owner: Owner, sandbox: Sandbox) -> str:
        """Content-addressed: DiracX answers with no URL when it has the sandbox already."""
        request = {
            "checksum_algorithm": "sha256",
            "checksum": sandbox.sha256,
            "size": sandbox.size,
            "format": "tar.bz2",
        }
        slot = SandboxSlot.model_validate(
            await self.call("POST", "/api/jobs/sandbox", owner, json=request)
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

    async def download(self, url: str, target: Path) -> None:
        """An output sandbox from its (presigned) URL into ``target``, no larger than
        diracx_max_output_bytes."""
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


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    detail = body.get("detail") if isinstance(body, dict) else body
    return str(detail)[:300]
