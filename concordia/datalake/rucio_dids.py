"""Rucio's catalogue as one account sees it: scopes, datasets and their metadata, files and
their replicas, rules, and where an RSE is written to."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from concordia.datalake.errors import DatalakeError
from concordia.datalake.rucio_api import RucioApi

#: Rucio's replica states, by the names its replica listing gives, as the letters it stores.
STATES = {
    "AVAILABLE": "A",
    "UNAVAILABLE": "U",
    "COPYING": "C",
    "BEING_DELETED": "B",
    "BAD": "D",
    "TEMPORARY_UNAVAILABLE": "T",
}
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


class RucioDids(RucioApi):
    """What Rucio holds of DIDs, replicas and rules, read and added through its REST API."""

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

    async def rse_url(self, rse: str) -> str:
        """The WebDAV base URL of ``rse`` (scheme://host:port/prefix, no trailing slash): under
        it a grid job's wrapper writes each file at Rucio's deterministic path, as pfn says.
        Kept for RSE_URL_SECONDS."""
        if (known := self._rse_urls.get(rse)) is not None:
            return known
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
        url = f"{best['scheme']}://{host}" + (f"/{prefix}" if prefix else "")
        self._rse_urls[rse] = url
        return url

    async def _pfn(self, scope: str, name: str, rse: str, operation: str) -> str:
        """Where the RSE keeps ``scope:name``: the server's own lfn2pfn."""
        params = {"lfn": f"{scope}:{name}", "operation": operation}
        response = await self._request(
            "GET", f"rses/{quote(rse, safe='')}/lfns2pfns", params=params
        )
        return str(response.json()[f"{scope}:{name}"])

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
