"""Concordia's client of one Rucio server: scopes, datasets, uploads, replicas and metadata."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from concordia.datalake import storage
from concordia.datalake.errors import DatalakeError, NotFound

__all__ = ["DataFile", "DatalakeError", "NotFound", "Rucio"]

#: Seconds of validity a cached token must still have to be used.
TOKEN_MARGIN = 60.0
#: How long a token whose expiry Rucio did not say is kept (Rucio's default lifetime is 1 h).
TOKEN_DEFAULT_SECONDS = 3000.0
#: Rucio's replica states, by the names its replica listing gives, as the letters it stores.
STATES = {
    "AVAILABLE": "A",
    "UNAVAILABLE": "U",
    "COPYING": "C",
    "BEING_DELETED": "B",
    "BAD": "D",
    "TEMPORARY_UNAVAILABLE": "T",
}
#: Rucio's exceptions that mean "there is no such thing".
NOT_FOUND = {"DataIdentifierNotFound", "ReplicaNotFound", "RSENotFound", "ScopeNotFound"}
#: What Rucio answers when two requests on one DID collide in its database (a unique violation,
#: a deadlock): the same request again then passes.
TRANSIENT = {"DatabaseException", "RucioException"}
RETRIES = 4
#: What Rucio answers when a file is already in the dataset it is attached to again.
ALREADY_ATTACHED = {"FileAlreadyExists"}
#: The schemes of a WebDAV protocol on an RSE (davs: Rucio's name for WebDAV over TLS).
WEBDAV = ("https", "davs")


@dataclass(frozen=True, slots=True)
class DataFile:
    """A file in Rucio and one of its replicas."""

    scope: str
    name: str
    bytes: int
    adler32: str  # 8 lowercase hex digits, as Rucio stores it
    rse: str  # the RSE of its replica ("" if none)
    state: str  # replica state: "A" available, "C" copying, "U" unavailable ...

    @property
    def did(self) -> str:
        return f"{self.scope}:{self.name}"


def _did(scope: str, name: str) -> str:
    return f"{quote(scope, safe='')}/{quote(name, safe='')}"


def _write_priority(protocol: dict[str, Any]) -> int:
    wan = (protocol.get("domains") or {}).get("wan") or {}
    return int(wan.get("write") or 0)


def _lines(body: str) -> list[dict[str, Any]]:
    """Rucio's streamed listings: one JSON object a line."""
    return [json.loads(line) for line in body.splitlines() if line.strip()]


class Rucio:
    """One Rucio server, as one account, over its REST API."""

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
        # The storage (WebDAV) may want the X.509 proxy the server never sees.
        self._storage = storage.Storage(verify=verify, cert=cert, token=token, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._storage.aclose()

    # --- the REST API -------------------------------------------------------------------

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

    # --- accounts, scopes, DIDs -------------------------------------------------------------

    async def whoami(self) -> str:
        response = await self._request("GET", "accounts/whoami")
        return str(response.json()["account"])

    async def ensure_scope(self, scope: str, account: str) -> None:
        """Add ``scope`` for ``account`` unless it exists already."""
        path = f"accounts/{quote(account, safe='')}/scopes/{quote(scope, safe='')}"
        try:
            await self._request("POST", path)
        except DatalakeError as error:
            if error.kind != "Duplicate":
                raise

    async def add_dataset(
        self, scope: str, name: str, meta: Mapping[str, str | int | float]
    ) -> bool:
        """Create the dataset (True) or find it (False); its metadata set either way."""
        created = True
        try:
            await self._request("POST", f"dids/{_did(scope, name)}", json={"type": "DATASET"})
        except DatalakeError as error:
            if error.kind != "DataIdentifierAlreadyExists":
                raise
            created = False
        await self._settle(lambda: self._set_meta(scope, name, meta))
        return created

    async def _set_meta(self, scope: str, name: str, meta: Mapping[str, Any]) -> None:
        if meta:
            await self._request("POST", f"dids/{_did(scope, name)}/meta", json={"meta": meta})

    async def metadata(self, scope: str, name: str) -> dict[str, Any]:
        """All of a DID's metadata: Rucio's own columns and the free-form keys."""
        path = f"dids/{_did(scope, name)}/meta"
        response = await self._request("GET", path, params={"plugin": "ALL"})
        found: dict[str, Any] = response.json()
        return found

    async def _did(self, scope: str, name: str) -> dict[str, Any]:
        response = await self._request("GET", f"dids/{_did(scope, name)}")
        found: dict[str, Any] = response.json()
        return found

    async def _replicas(self, dids: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
        """The replica listing of these file DIDs, in every state, by "scope:name"."""
        if not dids:
            return {}
        body = {"dids": dids, "all_states": True, "ignore_availability": True}
        response = await self._request("POST", "replicas/list", json=body)
        return {f"{row['scope']}:{row['name']}": row for row in _lines(response.text)}

    @staticmethod
    def _data_file(
        did: Mapping[str, Any], replicas: Mapping[str, Any] | None, rse: str = ""
    ) -> DataFile:
        """A DataFile of a DID's row and its replica on ``rse`` (or the best one: available
        first)."""
        states: dict[str, str] = {
            name: STATES.get(str(state), str(state)[:1])
            for name, state in ((replicas or {}).get("states") or {}).items()
        }
        if not rse and states:
            rse = min(states, key=lambda name: (states[name] != "A", name))
        return DataFile(
            scope=str(did["scope"]),
            name=str(did["name"]),
            bytes=int(did["bytes"]),
            adler32=str(did["adler32"] or "").zfill(8),
            rse=rse if rse in states else "",
            state=states.get(rse, ""),
        )

    async def file(self, scope: str, name: str) -> DataFile:
        """The file ``scope:name`` and its (best) replica; NotFound if there is no such DID."""
        did = await self._did(scope, name)
        if did.get("type") != "FILE":
            raise DatalakeError(f"{scope}:{name} is a {str(did.get('type')).lower()}, not a file")
        replicas = await self._replicas([{"scope": scope, "name": name}])
        return self._data_file(did, replicas.get(f"{scope}:{name}"))

    async def files(self, scope: str, dataset: str) -> list[DataFile]:
        """The dataset's files, each with its (best) replica."""
        response = await self._request("GET", f"dids/{_did(scope, dataset)}/files")
        rows = _lines(response.text)
        replicas = await self._replicas([{"scope": r["scope"], "name": r["name"]} for r in rows])
        return [self._data_file(row, replicas.get(f"{row['scope']}:{row['name']}")) for row in rows]

    # --- uploads ----------------------------------------------------------------------------

    async def upload(
        self,
        path: Path,
        scope: str,
        name: str,
        rse: str,
        *,
        dataset: tuple[str, str] | None = None,
        meta: Mapping[str, str | int | float] = {},
    ) -> DataFile:
        """Store the file at ``path`` as ``scope:name`` on ``rse``, attached to ``dataset``.

        Idempotent, so that an upload cut by a crash is finished by doing it again: a DID
        that exists with the same size and adler32 is reused (its replica written again if
        still being copied); with other content it is an error, never overwritten. The
        replica is marked available only after the storage holds all its bytes."""
        size, adler32 = await asyncio.to_thread(storage.checksum, path)
        state = await self._claim(scope, name, rse, size, adler32)
        if state != "A":
            await self._store(path, scope, name, rse, size, adler32)
            await self._available(scope, name, rse)
        return await self._finish(scope, name, rse, dataset, meta)

    async def register(
        self,
        scope: str,
        name: str,
        rse: str,
        *,
        bytes: int,  # Rucio's own word for a file's size
        adler32: str,
        dataset: tuple[str, str] | None = None,
        meta: Mapping[str, str | int | float] = {},
    ) -> DataFile:
        """Register as ``scope:name`` the replica a grid job's wrapper already wrote on
        ``rse`` (at the RSE's own PFN of that name), with the size and adler32 the wrapper
        computed as it sent it; attached to ``dataset``, with ``meta``.

        The storage must hold exactly ``bytes`` bytes there (and their adler32, where it
        keeps one), else nothing is registered.
        Idempotent as upload is: the same DID with the same content is found again."""
        adler32 = adler32.lower().zfill(8)
        pfn = await self.pfn(scope, name, rse)
        found = await self._storage.stat(pfn)
        if found is None:
            raise DatalakeError(f"{scope}:{name} is not on {rse}: nothing at {pfn}")
        stored, stored_adler32 = found
        if stored != bytes:
            raise DatalakeError(
                f"{scope}:{name} on {rse} is {stored} bytes, not the {bytes} the job sent"
            )
        if stored_adler32 is not None and stored_adler32 != adler32:
            raise DatalakeError(
                f"{scope}:{name} on {rse} has adler32 {stored_adler32}, not the {adler32} "
                "of the bytes the job sent"
            )
        if await self._claim(scope, name, rse, bytes, adler32) != "A":
            await self._available(scope, name, rse)
        return await self._finish(scope, name, rse, dataset, meta)

    async def pfn(self, scope: str, name: str, rse: str) -> str:
        """Where ``rse`` keeps ``scope:name`` (the server's lfns2pfns): what a wrapper writes."""
        return await self._pfn(scope, name, rse, "write")

    async def rse_url(self, rse: str) -> str:
        """The WebDAV base URL of ``rse`` (scheme://host:port/prefix, no trailing slash): under
        it a grid job's wrapper writes each file at Rucio's deterministic path, as pfn says."""
        response = await self._request("GET", f"rses/{quote(rse, safe='')}")
        # The protocol Rucio writes with: https or davs, of the lowest wan write priority
        # (1 first; 0 means it is not written to).
        usable = sorted(
            (priority, n, p)
            for n, p in enumerate(response.json().get("protocols") or [])
            if p.get("scheme") in WEBDAV and (priority := _write_priority(p)) > 0
        )
        if not usable:
            raise DatalakeError(f"{rse} offers no WebDAV (https, davs) protocol to write to")
        best = usable[0][2]
        port = int(best.get("port") or 0)
        host = str(best["hostname"]) + (f":{port}" if port else "")
        prefix = str(best.get("prefix") or "").strip("/")
        return f"{best['scheme']}://{host}" + (f"/{prefix}" if prefix else "")

    async def _claim(self, scope: str, name: str, rse: str, size: int, adler32: str) -> str:
        """The DID registered with this content and a replica on ``rse``: the replica's state
        (a new one is "C", copying); an error if the DID exists with other content."""
        did = {"scope": scope, "name": name}
        state = await self._registered(scope, name, rse, size, adler32)
        if state is None:
            replica = {**did, "bytes": size, "adler32": adler32, "state": "C"}
            try:
                await self._request("POST", "replicas", json={"rse": rse, "files": [replica]})
            except DatalakeError:
                # An upload beside this one registered the name first (Rucio answers with a
                # unique violation): go on with its registration if it is this content.
                if await self._registered(scope, name, rse, size, adler32) is None:
                    raise
            # Read back what Rucio holds: a registration beside this one with other content
            # may have passed silently (Rucio then keeps the first).
            state = await self._registered(scope, name, rse, size, adler32)
        return state or ""

    async def _available(self, scope: str, name: str, rse: str) -> None:
        """The replica on ``rse`` marked available: only once the storage holds its bytes."""
        body = {"rse": rse, "files": [{"scope": scope, "name": name, "state": "A"}]}
        await self._settle(lambda: self._request("PUT", "replicas", json=body))

    async def _finish(
        self,
        scope: str,
        name: str,
        rse: str,
        dataset: tuple[str, str] | None,
        meta: Mapping[str, str | int | float],
    ) -> DataFile:
        """A rule keeps it, the dataset has it, its metadata set: the file as Rucio has it."""
        did = {"scope": scope, "name": name}
        await self._settle(lambda: self._protect(scope, name, rse))
        if dataset is not None:
            await self._settle(lambda: self._attach(dataset, scope, name))
        await self._settle(lambda: self._set_meta(scope, name, meta))
        found = await self._did(scope, name)
        replicas = await self._replicas([did])
        return self._data_file(found, replicas.get(f"{scope}:{name}"), rse)

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

    async def _registered(
        self, scope: str, name: str, rse: str, size: int, adler32: str
    ) -> str | None:
        """The state of the replica on ``rse`` of an existing DID with this content ("" if
        it has none there), None if there is no such DID; an error if its content differs."""
        try:
            did = await self._did(scope, name)
        except NotFound:
            return None
        if did.get("type") != "FILE":
            raise DatalakeError(f"{scope}:{name} exists in Rucio and is not a file")
        if int(did["bytes"]) != size or str(did["adler32"]).zfill(8) != adler32:
            raise DatalakeError(
                f"{scope}:{name} exists in Rucio with other content "
                f"({did['bytes']} bytes, adler32 {did['adler32']}; "
                f"this file: {size} bytes, adler32 {adler32})"
            )
        replicas = await self._replicas([{"scope": scope, "name": name}])
        state = self._data_file(did, replicas.get(f"{scope}:{name}"), rse).state
        if not state:
            # Known, but with no replica on this RSE: register one to write.
            replica = {"scope": scope, "name": name, "bytes": size, "adler32": adler32}
            body = {"rse": rse, "files": [{**replica, "state": "C"}]}
            await self._request("POST", "replicas", json=body)
            state = "C"
        return state

    async def _pfn(self, scope: str, name: str, rse: str, operation: str) -> str:
        """Where the RSE keeps ``scope:name``: the server's own lfn2pfn."""
        params = {"lfn": f"{scope}:{name}", "operation": operation}
        response = await self._request(
            "GET", f"rses/{quote(rse, safe='')}/lfns2pfns", params=params
        )
        return str(response.json()[f"{scope}:{name}"])

    async def _store(
        self, path: Path, scope: str, name: str, rse: str, size: int, adler32: str
    ) -> None:
        """Write the bytes of ``path`` to the replica's PFN and check the storage has them:
        the size it reports, the adler32 of what was sent (and the storage's own adler32
        where it gives one)."""
        pfn = await self._pfn(scope, name, rse, "write")
        stored, sent = await self._storage.write(path, pfn, size)
        if stored != size or sent != adler32:
            raise DatalakeError(
                f"{scope}:{name} on {rse} is {stored} bytes with adler32 {sent}, not "
                f"{size} bytes with {adler32}: did the file change while it was uploaded?"
            )

    async def _protect(self, scope: str, name: str, rse: str) -> None:
        """A rule of the account keeping the file on ``rse``: nothing deletes it."""
        if await self._protected(scope, name, rse):
            return
        body = {
            "dids": [{"scope": scope, "name": name}],
            "account": self.account,
            "copies": 1,
            "rse_expression": rse,
            "grouping": "NONE",
        }
        try:
            await self._request("POST", "rules/", json=body)
        except DatalakeError:
            # An upload beside this one may have added it first (DuplicateRule, or a unique
            # violation when both were at it at once).
            if not await self._protected(scope, name, rse):
                raise

    async def _protected(self, scope: str, name: str, rse: str) -> bool:
        response = await self._request("GET", f"dids/{_did(scope, name)}/rules")
        return any(
            rule.get("account") == self.account and rule.get("rse_expression") == rse
            for rule in _lines(response.text)
        )

    async def _attach(self, dataset: tuple[str, str], scope: str, name: str) -> None:
        body = {"dids": [{"scope": scope, "name": name}]}
        try:
            await self._request("POST", f"dids/{_did(*dataset)}/dids", json=body)
        except DatalakeError as error:
            if error.kind in ALREADY_ATTACHED:
                return
            # Attached by an upload beside this one at the same moment (a unique violation).
            response = await self._request("GET", f"dids/{_did(*dataset)}/dids")
            if not any(
                (row.get("scope"), row.get("name")) == (scope, name)
                for row in _lines(response.text)
            ):
                raise

    # --- downloads --------------------------------------------------------------------------

    async def open(self, scope: str, name: str) -> AsyncIterator[bytes]:
        """The bytes of an available replica of ``scope:name``, streamed."""
        replicas = (await self._replicas([{"scope": scope, "name": name}])).get(f"{scope}:{name}")
        if not replicas:
            raise NotFound(f"Rucio: no replica of {scope}:{name}")
        states = replicas.get("states") or {}
        pfns = [
            pfn
            for pfn, about in sorted(
                (replicas.get("pfns") or {}).items(), key=lambda item: item[1].get("priority", 0)
            )
            if states.get(about.get("rse")) == "AVAILABLE"
        ]
        for pfn in pfns:
            if self._storage.can_read(pfn):
                async for chunk in self._storage.read(pfn):
                    yield chunk
                return
        raise DatalakeError(f"no available replica of {scope}:{name} Concordia can read")
