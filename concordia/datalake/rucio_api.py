"""One Rucio account's connections: the REST API (tokens, requests, errors), the storage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from cachetools import TTLCache

from concordia.datalake import storage
from concordia.datalake.errors import DatalakeError, NotFound

#: Seconds of validity a cached token must still have to be used.
TOKEN_MARGIN = 60.0
#: How long a token whose expiry Rucio did not say is kept (Rucio's default lifetime is 1 h).
TOKEN_DEFAULT_SECONDS = 3000.0
#: Rucio's exceptions that mean "there is no such thing".
NOT_FOUND = {"DataIdentifierNotFound", "ReplicaNotFound", "RSENotFound", "ScopeNotFound"}
#: What Rucio answers when two requests on one DID collide in its database (a unique violation,
#: a deadlock): the same request again then passes.
TRANSIENT = {"DatabaseException", "RucioException"}
RETRIES = 4
#: How long an RSE's WebDAV base URL (rse_url) is used before Rucio is asked again: it is
#: needed for every file a grid job stores and every token for it, and rarely changes.
RSE_URL_SECONDS = 300.0


class RucioApi:
    """One Rucio server's REST API, as one account, and the storage its RSEs keep files in:
    every request is made with a valid token of the account's (renewed when Rucio refuses
    it), every refusal is a DatalakeError."""

    def __init__(
        self,
        url: str,
        account: str,
        *,
        password: str | None = None,
        username: str | None = None,
        token: str | None = None,
        auth_url: str | None = None,
        verify: bool | str = True,
        timeout: float = 60.0,
        cert: str | None = None,
        storage_tokens: storage.StorageTokens | None = None,
    ) -> None:
        if password is None and token is None:
            raise DatalakeError(f"no credentials for the Rucio account {account}")
        self.url = url.rstrip("/")
        self.account = account
        self._username = username or account
        self._password = password
        self._token = token  # given: an IAM access token (audience rucio), never renewed
        self._auth_url = (auth_url or url).rstrip("/")
        self._session: tuple[str, float] | None = None  # a token of /auth/userpass, expiry
        self._lock = asyncio.Lock()
        context = storage.ssl_context(verify)
        self._http = httpx.AsyncClient(timeout=timeout, verify=context, follow_redirects=True)
        # The storage (WebDAV) may want the X.509 proxy the server never sees; never the
        # token, whose audience is Rucio: a storage has no use for it and must not hold it.
        self._storage = storage.Storage(verify=verify, cert=cert, timeout=timeout)
        self._storage_tokens = storage_tokens
        self._rse_urls: TTLCache[str, str] = TTLCache(maxsize=64, ttl=RSE_URL_SECONDS)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._storage.aclose()

    async def _auth_token(self, *, renew: bool = False) -> str:
        if self._token is not None:
            return self._token
        async with self._lock:
            if self._session and not renew and self._session[1] - time.time() > TOKEN_MARGIN:
                return self._session[0]
            headers = {
                "X-Rucio-Account": self.account,
                "X-Rucio-Username": self._username,
                "X-Rucio-Password": self._password or "",
            }
            response = await self._send("GET", f"{self._auth_url}/auth/userpass", headers)
            if response.status_code != 200 or "X-Rucio-Auth-Token" not in response.headers:
                raise DatalakeError(
                    f"Rucio refused the password of account {self.account}: "
                    f"{self._message(response)}"
                )
            token = response.headers["X-Rucio-Auth-Token"]
            expires = time.time() + TOKEN_DEFAULT_SECONDS
            if stamp := response.headers.get("X-Rucio-Auth-Token-Expires"):
                try:
                    expires = parsedate_to_datetime(stamp).timestamp()
                except (TypeError, ValueError):
                    pass
            self._session = (token, expires)
            return token

    async def _send(
        self, method: str, url: str, headers: dict[str, str], **kwargs: Any
    ) -> httpx.Response:
        try:
            return await self._http.request(method, url, headers=headers, **kwargs)
        except httpx.HTTPError as error:
            raise DatalakeError(f"cannot reach Rucio at {self.url}: {error}") from None

    async def _request(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201), **kwargs: Any
    ) -> httpx.Response:
        """A call of the REST API as the account; a refused cached token is renewed once."""
        for attempt in (0, 1):
            headers = {"X-Rucio-Auth-Token": await self._auth_token(renew=attempt == 1)}
            if "json" in kwargs or method == "POST":
                headers["Content-Type"] = "application/json"
            headers["Accept"] = "application/x-json-stream, application/json"
            response = await self._send(method, f"{self.url}/{path}", headers, **kwargs)
            if response.status_code == 401 and attempt == 0 and self._token is None:
                continue
            break
        if response.status_code not in ok:
            raise self._error(response)
        return response

    @staticmethod
    def _exception(response: httpx.Response) -> tuple[str, str]:
        """Rucio's exception class and message: in headers, else in a JSON body."""
        name = response.headers.get("ExceptionClass", "")
        message = response.headers.get("ExceptionMessage", "")
        if not name:
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                name = str(body.get("ExceptionClass", ""))
                message = str(body.get("ExceptionMessage", ""))
        return name, message

    @classmethod
    def _message(cls, response: httpx.Response) -> str:
        name, message = cls._exception(response)
        if not name:
            return f"HTTP {response.status_code}"
        return f"{name}: {message}" if message else name

    @classmethod
    def _error(cls, response: httpx.Response) -> DatalakeError:
        name, _ = cls._exception(response)
        error_type = NotFound if name in NOT_FOUND else DatalakeError
        return error_type(f"Rucio: {cls._message(response)}", kind=name)

    @staticmethod
    async def _settle(step: Callable[[], Awaitable[object]]) -> None:
        """Run an idempotent step, again if it collided with an upload of the same file
        beside it in Rucio's database."""
        for attempt in range(RETRIES):
            try:
                await step()
                return
            except DatalakeError as error:
                if error.kind not in TRANSIENT or attempt == RETRIES - 1:
                    raise
            await asyncio.sleep(0.1 * 2**attempt)
