"""The bytes of data-lake files: written to and read from an RSE's PFNs (local files, WebDAV)."""

from __future__ import annotations

import asyncio
import os
import ssl
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from concordia.datalake.errors import DatalakeError

CHUNK = 1 << 20
WEBDAV = ("https", "davs")


def ssl_context(verify: bool | str, cert: str | None = None) -> ssl.SSLContext | bool:
    """httpx's ``verify``: a CA file or the system's (or none), with a client certificate."""
    if verify is False and cert is None:
        return False
    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert:
        context.load_cert_chain(cert)  # an X.509 proxy: certificate and key in one file
    return context


class Adler32:
    """Size and adler32 of bytes as they pass (8 lowercase hex digits, as Rucio stores it)."""

    def __init__(self) -> None:
        self.size, self.value = 0, 1

    def add(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        self.value = zlib.adler32(chunk, self.value)
        return chunk

    @property
    def hex(self) -> str:
        return f"{self.value:08x}"


def checksum(path: Path) -> tuple[int, str]:
    """Size and adler32 of the file at ``path``."""
    seen = Adler32()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            seen.add(chunk)
    return seen.size, seen.hex


@dataclass
class Staged:
    """A file's bytes copied beside a local PFN under a temporary name, with the size and
    adler32 of what was copied: placed under the PFN once Rucio knows them, else discarded."""

    part: Path
    target: Path
    size: int
    adler32: str

    def place(self) -> None:
        """The copy under its final name, in one step: a crash never leaves a partial file
        there."""
        self.part.replace(self.target)

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)


def local_path(pfn: str) -> Path | None:
    """The path of a PFN on this machine (``file``), None for a remote storage."""
    parts = urlsplit(pfn)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def stage(source: Path, target: Path) -> Staged:
    """Copy ``source`` beside ``target`` (same directory, so that placing it is a rename),
    checksummed as it is read: one pass over the bytes, and the adler32 is that of the bytes
    stored even if the source changes meanwhile."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    copied = Adler32()
    try:
        with source.open("rb") as reader, part.open("wb") as writer:
            while chunk := reader.read(CHUNK):
                writer.write(copied.add(chunk))
            writer.flush()
            os.fsync(writer.fileno())
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return Staged(part, target, copied.size, copied.hex)


def _adler32(digests: str) -> str | None:
    """The adler32 of an RFC 3230 Digest header, if it has one."""
    for digest in digests.split(","):
        kind, _, value = digest.strip().partition("=")
        if kind.lower() == "adler32" and value:
            return value.lower().zfill(8)
    return None


async def chunks(path: Path) -> AsyncIterator[bytes]:
    """The bytes of a local file, read off the event loop."""
    stream = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(stream.read, CHUNK):
            yield chunk
    finally:
        stream.close()


#: Where a storage wants a WLCG token to read: (its audience, the base URL of its RSE; the
#: path below it, from /) -> a token that may read that path.
StorageTokens = Callable[[str, str], str]


class Storage:
    """An RSE's storage, reached as its PFNs say: ``file`` on this machine, ``https`` or
    ``davs`` (WebDAV) with an X.509 proxy where given."""

    def __init__(self, *, verify: bool | str, cert: str | None, timeout: float) -> None:
        self._http = httpx.AsyncClient(
            timeout=timeout, verify=ssl_context(verify, cert), follow_redirects=True
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    @staticmethod
    def can_read(pfn: str) -> bool:
        parts = urlsplit(pfn)
        return parts.scheme in WEBDAV or (
            parts.scheme == "file" and Path(unquote(parts.path)).is_file()
        )

    async def write(self, path: Path, pfn: str, size: int) -> tuple[int, str]:
        """Send the file at ``path`` to the remote ``pfn``; the size the storage then holds
        and the adler32 of the bytes sent (the storage's own, where it tells it). Files on
        this machine are staged instead (``stage``)."""
        parts = urlsplit(pfn)
        if parts.scheme in WEBDAV:
            return await self._put(path, https_url(pfn), size)
        raise DatalakeError(f"Concordia cannot write to {parts.scheme} storage")

    async def _put(self, path: Path, url: str, size: int) -> tuple[int, str]:
        sent = Adler32()

        async def body() -> AsyncIterator[bytes]:
            async for chunk in chunks(path):
                yield sent.add(chunk)

        headers = {"Content-Length": str(size)}
        try:
            response = await self._http.put(url, content=body(), headers=headers)
            if response.status_code not in (200, 201, 204):
                raise DatalakeError(f"the storage refused the upload: HTTP {response.status_code}")
            # Storages that keep checksums (dCache, StoRM, XRootD) answer Want-Digest.
            head = await self._http.head(url, headers={"Want-Digest": "adler32"})
        except httpx.HTTPError as error:
            raise DatalakeError(f"cannot write to the storage: {error}") from None
        if head.status_code != 200:
            raise DatalakeError(f"the storage lost the upload: HTTP {head.status_code}")
        adler32 = _adler32(head.headers.get("Digest", "")) or sent.hex
        return int(head.headers.get("Content-Length", -1)), adler32

    async def stat(self, pfn: str, token: str | None = None) -> tuple[int, str | None] | None:
        """How many bytes the storage holds at ``pfn`` and their adler32 where the storage
        keeps one (dCache, StoRM, XRootD; nginx does not); None if it holds nothing there.
        ``token``: a WLCG token that may read it, for a storage that wants one."""
        parts = urlsplit(pfn)
        if parts.scheme == "file":
            path = Path(unquote(parts.path))
            return (path.stat().st_size, None) if path.is_file() else None
        if parts.scheme not in WEBDAV:
            raise DatalakeError(f"Concordia cannot read {parts.scheme} storage")
        url = https_url(pfn)
        headers = {"Want-Digest": "adler32", **_bearer(token)}
        try:
            head = await self._http.head(url, headers=headers)
        except httpx.HTTPError as error:
            raise DatalakeError(f"cannot reach the storage: {error}") from None
        if head.status_code == 404:
            return None
        if head.status_code != 200 or "Content-Length" not in head.headers:
            raise DatalakeError(f"the storage cannot say the file's size: HTTP {head.status_code}")
        return int(head.headers["Content-Length"]), _adler32(head.headers.get("Digest", ""))

    async def read(self, pfn: str, token: str | None = None) -> AsyncIterator[bytes]:
        """The bytes at ``pfn``, streamed (``token``: as for stat)."""
        parts = urlsplit(pfn)
        if parts.scheme == "file":
            async for chunk in chunks(Path(unquote(parts.path))):
                yield chunk
            return
        url = https_url(pfn)
        try:
            async with self._http.stream("GET", url, headers=_bearer(token)) as response:
                if response.status_code != 200:
                    raise DatalakeError(f"the storage cannot give it: HTTP {response.status_code}")
                async for chunk in response.aiter_bytes(CHUNK):
                    yield chunk
        except httpx.HTTPError as error:
            raise DatalakeError(f"cannot read from the storage: {error}") from None


def https_url(url: str) -> str:
    """A WebDAV URL as HTTP reaches it (davs:// is https://)."""
    return url.replace("davs://", "https://", 1)


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
