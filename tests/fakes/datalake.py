"""An in-directory fake of the data lake client (concordia.datalake.rucio.Rucio): the same
behaviour where Concordia relies on it (idempotent uploads, adler32, NotFound), no server."""

from __future__ import annotations

import asyncio
import shutil
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from concordia.datalake.errors import DatalakeError, NotFound
from concordia.datalake.rucio_dids import DataFile


def adler32_of(path: Path) -> str:
    value = 1
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            value = zlib.adler32(chunk, value)
    return f"{value:08x}"


@dataclass
class FakeLake:
    """Files kept under ``root``/<scope>/<name>; what was called, for the tests to read."""

    root: Path
    rses: tuple[str, ...] = ("TEST_DISK",)
    files_: dict[tuple[str, str], DataFile] = field(default_factory=dict)
    meta: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    datasets: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    scopes: dict[str, str] = field(default_factory=dict)
    #: Uploads that really wrote a file (an idempotent one that found it does not count).
    writes: int = 0
    #: Set: every upload fails with this message (an RSE refusing, say).
    refuse: str | None = None
    #: Set: uploads wait for it once the file is stored, before answering (a test stops
    #: Concordia there).
    gate: asyncio.Event | None = None
    #: Set by an upload waiting at the gate.
    waiting: asyncio.Event = field(default_factory=asyncio.Event)

    async def aclose(self) -> None:
        return None

    async def ensure_scope(self, scope: str, account: str) -> None:
        self.scopes.setdefault(scope, account)

    async def add_dataset(
        self, scope: str, name: str, meta: Mapping[str, str | int | float]
    ) -> bool:
        if (scope, name) in self.datasets:
            return False
        self.datasets[(scope, name)] = []
        self.meta[(scope, name)] = dict(meta)
        return True

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
        if self.refuse is not None:
            raise DatalakeError(self.refuse)
        if rse not in self.rses:
            raise DatalakeError(f"RSE {rse} not found")
        if scope not in self.scopes:
            raise DatalakeError(f"scope {scope} not found")
        checksum = await asyncio.to_thread(adler32_of, path)
        existing = self.files_.get((scope, name))
        if existing is not None:
            if existing.adler32 != checksum:
                raise DatalakeError(f"{scope}:{name} exists with another checksum")
            stored = existing
        else:
            target = self.root / scope / name
            target.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(shutil.copyfile, path, target)
            self.writes += 1
            stored = DataFile(scope, name, path.stat().st_size, checksum, rse, "A")
            self.files_[(scope, name)] = stored
            self.meta[(scope, name)] = dict(meta)
        if self.gate is not None:  # stored, not yet answered: where a crash hurts most
            self.waiting.set()
            await self.gate.wait()
        if dataset is not None:
            members = self.datasets.setdefault(dataset, [])
            if (scope, name) not in members:
                members.append((scope, name))
        return stored

    async def rse_url(self, rse: str) -> str:
        if rse not in self.rses:
            raise DatalakeError(f"RSE {rse} not found")
        return f"https://{rse.lower()}.invalid/lake"

    async def register(
        self,
        scope: str,
        name: str,
        rse: str,
        *,
        bytes: int,
        adler32: str,
        dataset: tuple[str, str] | None = None,
        meta: Mapping[str, str | int | float] = {},
    ) -> DataFile:
        """A file a grid job's wrapper wrote: here, put under ``root`` by the test first."""
        path = self.root / scope / name
        if not path.is_file():
            raise DatalakeError(f"{scope}:{name} is not on {rse}")
        if path.stat().st_size != bytes or await asyncio.to_thread(adler32_of, path) != adler32:
            raise DatalakeError(f"{scope}:{name} on {rse} differs from what the job sent")
        stored = DataFile(scope, name, bytes, adler32, rse, "A")
        self.files_[(scope, name)] = stored
        self.meta[(scope, name)] = dict(meta)
        if dataset is not None:
            members = self.datasets.setdefault(dataset, [])
            if (scope, name) not in members:
                members.append((scope, name))
        return stored

    async def file(self, scope: str, name: str) -> DataFile:
        try:
            return self.files_[(scope, name)]
        except KeyError:
            raise NotFound(f"{scope}:{name} not found") from None

    async def files(self, scope: str, dataset: str) -> list[DataFile]:
        if (scope, dataset) not in self.datasets:
            raise NotFound(f"{scope}:{dataset} not found")
        return [self.files_[did] for did in self.datasets[(scope, dataset)]]

    async def metadata(self, scope: str, name: str) -> dict[str, Any]:
        if (scope, name) not in self.meta:
            raise NotFound(f"{scope}:{name} not found")
        return dict(self.meta[(scope, name)])

    async def open(self, scope: str, name: str) -> AsyncIterator[bytes]:
        await self.file(scope, name)
        with (self.root / scope / name).open("rb") as fh:
            while chunk := fh.read(64 * 1024):
                yield chunk
