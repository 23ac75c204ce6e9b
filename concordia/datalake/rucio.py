"""Concordia's client of one Rucio server: a file's uploads, registrations and downloads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from concordia.datalake import storage
from concordia.datalake.errors import DatalakeError, NotFound
from concordia.datalake.rucio_dids import DataFile, RucioDids

__all__ = ["DatalakeError", "NotFound", "Rucio"]


class Rucio(RucioDids):
    """One Rucio server, as one account, over its REST API."""

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
        pfn = await self.pfn(scope, name, rse)
        target = storage.local_path(pfn)
        if target is not None:
            await self._upload_here(path, target, scope, name, rse)
        else:
            size, adler32 = await asyncio.to_thread(storage.checksum, path)
            if await self._claim(scope, name, rse, size, adler32) != "A":
                await self._store(path, pfn, scope, name, rse, size, adler32)
                await self._available(scope, name, rse)
        return await self._finish(scope, name, rse, dataset, meta)

    async def _upload_here(self, path: Path, target: Path, scope: str, name: str, rse: str) -> None:
        """To storage on this machine: the bytes copied once beside their PFN, checksummed
        as they are copied, then registered, and put in place only if Rucio has this
        content under the name (another one is never overwritten)."""
        staged = await asyncio.to_thread(storage.stage, path, target)
        try:
            if await self._claim(scope, name, rse, staged.size, staged.adler32) != "A":
                await asyncio.to_thread(staged.place)
                await self._available(scope, name, rse)
        finally:
            await asyncio.to_thread(staged.discard)

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
        found = await self._storage.stat(pfn, await self._read_token(rse, pfn))
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

    async def _read_token(self, rse: str, pfn: str) -> str | None:
        """A WLCG token that may read ``pfn`` on ``rse``, where this client was given a
        source of them (Concordia's own upload-token issuer); None otherwise, or for a PFN
        not under the RSE's WebDAV base."""
        if self._storage_tokens is None or urlsplit(pfn).scheme not in storage.WEBDAV:
            return None
        base = await self.rse_url(rse)
        url, root = storage.https_url(pfn), storage.https_url(base)
        if not url.startswith(root + "/"):
            return None
        return self._storage_tokens(base, url[len(root) :])

    async def pfn(self, scope: str, name: str, rse: str) -> str:
        """Where ``rse`` keeps ``scope:name`` (the server's lfns2pfns): what a wrapper writes."""
        return await self._pfn(scope, name, rse, "write")

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

    async def _store(
        self, path: Path, pfn: str, scope: str, name: str, rse: str, size: int, adler32: str
    ) -> None:
        """Write the bytes of ``path`` to the replica's remote PFN and check the storage has
        them: the size it reports, the adler32 of what was sent (and the storage's own
        adler32 where it gives one)."""
        stored, sent = await self._storage.write(path, pfn, size)
        if stored != size or sent != adler32:
            raise DatalakeError(
                f"{scope}:{name} on {rse} is {stored} bytes with adler32 {sent}, not "
                f"{size} bytes with {adler32}: did the file change while it was uploaded?"
            )

    # --- downloads --------------------------------------------------------------------------

    async def open(self, scope: str, name: str) -> AsyncIterator[bytes]:
        """The bytes of an available replica of ``scope:name``, streamed."""
        replicas = (await self._replicas([{"scope": scope, "name": name}])).get(f"{scope}:{name}")
        if not replicas:
            raise NotFound(f"Rucio: no replica of {scope}:{name}")
        states = replicas.get("states") or {}
        pfns = [
            (pfn, str(about.get("rse")))
            for pfn, about in sorted(
                (replicas.get("pfns") or {}).items(), key=lambda item: item[1].get("priority", 0)
            )
            if states.get(about.get("rse")) == "AVAILABLE"
        ]
        for pfn, rse in pfns:
            if self._storage.can_read(pfn):
                token = await self._read_token(rse, pfn)
                async for chunk in self._storage.read(pfn, token):
                    yield chunk
                return
        raise DatalakeError(f"no available replica of {scope}:{name} Concordia can read")
