"""Concordia's Rucio client against a real Rucio server with a POSIX and a WebDAV RSE."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from concordia.datalake import storage
from concordia.datalake.rucio import DatalakeError, NotFound, Rucio
from concordia.datalake.rucio_dids import DataFile
from tests.rucio import RucioServer

SCOPE = "user.jane"
SIZE = 3 * 1024 * 1024 + 17  # a few MB, not a whole number of chunks


class Crash(BaseException):
    """Concordia dying mid-upload (not an Exception: nothing may catch it)."""


class Probe:
    """Rucio as its root account sees it, over plain REST: what the client under test
    really left behind (replicas in every state, rules)."""

    def __init__(self, server: RucioServer) -> None:
        self.url = server.url
        answer = httpx.get(
            f"{server.url}/auth/userpass",
            headers={
                "X-Rucio-Account": "root",
                "X-Rucio-Username": "root",
                "X-Rucio-Password": server.password("root"),
            },
        )
        answer.raise_for_status()
        self.headers = {"X-Rucio-Auth-Token": answer.headers["X-Rucio-Auth-Token"]}

    def replicas(self, scope: str, name: str) -> dict[str, str]:
        """The DID's replicas: RSE -> state name, in every state."""
        answer = httpx.post(
            f"{self.url}/replicas/list",
            headers=self.headers,
            json={"dids": [{"scope": scope, "name": name}], "all_states": True},
        )
        answer.raise_for_status()
        rows = [line for line in answer.text.splitlines() if line.strip()]
        if not rows:
            return {}
        states: dict[str, str] = httpx.Response(200, content=rows[0]).json()["states"]
        return states

    def rules(self, scope: str, name: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/dids/{scope}/{name}/rules", headers=self.headers)
        answer.raise_for_status()
        return [httpx.Response(200, content=line).json() for line in answer.text.splitlines()]


@pytest.fixture(scope="module")
def probe(rucio_server: RucioServer) -> Probe:
    return Probe(rucio_server)


@pytest.fixture
async def rucio(rucio_server: RucioServer) -> AsyncIterator[Rucio]:
    """Concordia's client as its service account; jane's scope exists."""
    client = Rucio(
        rucio_server.url,
        rucio_server.service,
        password=rucio_server.password(rucio_server.service),
        verify=rucio_server.ca,
    )
    await client.ensure_scope(SCOPE, "jane")
    yield client
    await client.aclose()


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "output.dat"
    path.write_bytes(os.urandom(SIZE))
    yield path


def adler32(path: Path) -> str:
    return f"{zlib.adler32(path.read_bytes()):08x}"


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


async def read(rucio: Rucio, scope: str, name: str) -> bytes:
    return b"".join([chunk async for chunk in rucio.open(scope, name)])


async def test_files_of_a_dataset_on_both_rses_with_metadata(
    rucio: Rucio, rucio_server: RucioServer, tmp_path: Path
) -> None:
    assert await rucio.whoami() == "concordia"
    dataset = unique("showermodel")
    meta: dict[str, str | int | float] = {"application": "showermodel", "submission": 7}
    assert await rucio.add_dataset(SCOPE, dataset, meta) is True
    assert await rucio.add_dataset(SCOPE, dataset, {**meta, "site": "LCG.Test"}) is False
    sources = {}
    for rse in (rucio_server.posix_rse, rucio_server.webdav_rse):
        path = tmp_path / f"{rse}.dat"
        path.write_bytes(os.urandom(SIZE))
        name = unique(f"{dataset}.{rse.lower()}")
        file_meta: dict[str, str | int | float] = {
            "application": "showermodel",
            "run_number": 12,
            "job_id": "42",
        }
        stored = await rucio.upload(
            path, SCOPE, name, rse, dataset=(SCOPE, dataset), meta=file_meta
        )
        assert stored == DataFile(SCOPE, name, SIZE, adler32(path), rse, "A")
        sources[name] = path

    listed = await rucio.files(SCOPE, dataset)
    assert {(f.name, f.bytes, f.adler32, f.state) for f in listed} == {
        (name, SIZE, adler32(path), "A") for name, path in sources.items()
    }
    assert {f.rse for f in listed} == {rucio_server.posix_rse, rucio_server.webdav_rse}
    for name, path in sources.items():
        found = await rucio.metadata(SCOPE, name)
        assert (found["application"], found["run_number"], found["job_id"]) == (
            "showermodel",
            12,
            "42",
        )
        assert await read(rucio, SCOPE, name) == path.read_bytes()
    dataset_meta = await rucio.metadata(SCOPE, dataset)
    assert (dataset_meta["application"], dataset_meta["site"]) == ("showermodel", "LCG.Test")


@pytest.mark.parametrize("rse_kind", ["posix", "webdav"])
async def test_uploading_again_creates_nothing_new(
    rucio: Rucio, rucio_server: RucioServer, probe: Probe, source: Path, rse_kind: str
) -> None:
    rse = rucio_server.posix_rse if rse_kind == "posix" else rucio_server.webdav_rse
    dataset, name = unique("ds"), unique("again")
    await rucio.add_dataset(SCOPE, dataset, {})
    first = await rucio.upload(source, SCOPE, name, rse, dataset=(SCOPE, dataset))
    second = await rucio.upload(source, SCOPE, name, rse, dataset=(SCOPE, dataset))
    assert second == first
    assert probe.replicas(SCOPE, name) == {rse: "AVAILABLE"}
    assert len(probe.rules(SCOPE, name)) == 1
    assert [f.name for f in await rucio.files(SCOPE, dataset)] == [name]


async def test_two_uploads_of_one_file_at_once_store_it_once(
    rucio: Rucio, rucio_server: RucioServer, probe: Probe, source: Path
) -> None:
    dataset, name = unique("ds"), unique("twice")
    await rucio.add_dataset(SCOPE, dataset, {})
    rse = rucio_server.webdav_rse
    both = await asyncio.gather(
        *(rucio.upload(source, SCOPE, name, rse, dataset=(SCOPE, dataset)) for _ in range(2))
    )
    assert both[0] == both[1] == DataFile(SCOPE, name, SIZE, adler32(source), rse, "A")
    assert probe.replicas(SCOPE, name) == {rse: "AVAILABLE"}
    assert len(probe.rules(SCOPE, name)) == 1
    assert [f.name for f in await rucio.files(SCOPE, dataset)] == [name]
    assert await read(rucio, SCOPE, name) == source.read_bytes()


@pytest.mark.parametrize("rse_kind", ["posix", "webdav"])
async def test_an_upload_cut_after_registration_is_finished_by_the_next(
    rucio: Rucio,
    rucio_server: RucioServer,
    probe: Probe,
    source: Path,
    rse_kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rse = rucio_server.posix_rse if rse_kind == "posix" else rucio_server.webdav_rse
    dataset, name = unique("ds"), unique("cut")
    await rucio.add_dataset(SCOPE, dataset, {})

    def crash(*args: object) -> None:
        raise Crash  # as if Concordia died between registering and writing

    async def crash_sending(*args: object) -> None:
        crash()

    with monkeypatch.context() as patch:
        # Where the bytes reach the PFN: a local file put in place, a remote one sent.
        patch.setattr(storage.Staged, "place", crash)
        patch.setattr(Rucio, "_store", crash_sending)
        with pytest.raises(Crash):
            await rucio.upload(source, SCOPE, name, rse, dataset=(SCOPE, dataset))
    assert probe.replicas(SCOPE, name) == {rse: "COPYING"}
    assert (await rucio.file(SCOPE, name)).state == "C"

    done = await rucio.upload(source, SCOPE, name, rse, dataset=(SCOPE, dataset))
    assert done == DataFile(SCOPE, name, SIZE, adler32(source), rse, "A")
    assert probe.replicas(SCOPE, name) == {rse: "AVAILABLE"}
    assert len(probe.rules(SCOPE, name)) == 1
    assert [f.name for f in await rucio.files(SCOPE, dataset)] == [name]
    assert await read(rucio, SCOPE, name) == source.read_bytes()


async def test_other_content_under_an_existing_name_is_refused(
    rucio: Rucio, rucio_server: RucioServer, source: Path, tmp_path: Path
) -> None:
    name = unique("taken")
    await rucio.upload(source, SCOPE, name, rucio_server.posix_rse)
    other = tmp_path / "other.dat"
    other.write_bytes(os.urandom(SIZE))
    with pytest.raises(DatalakeError, match="exists in Rucio with other content"):
        await rucio.upload(other, SCOPE, name, rucio_server.posix_rse)
    assert await read(rucio, SCOPE, name) == source.read_bytes()


async def test_a_file_changed_while_sent_is_never_made_available(
    rucio: Rucio,
    rucio_server: RucioServer,
    probe: Probe,
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rse = rucio_server.webdav_rse
    name = unique("changing")
    checksum = storage.checksum

    def then_changed(path: Path) -> tuple[int, str]:
        measured = checksum(path)
        path.write_bytes(os.urandom(SIZE))  # a job still writing its output
        return measured

    monkeypatch.setattr(storage, "checksum", then_changed)
    with pytest.raises(DatalakeError, match="did the file change while it was uploaded"):
        await rucio.upload(source, SCOPE, name, rse)
    assert probe.replicas(SCOPE, name) == {rse: "COPYING"}
    assert probe.rules(SCOPE, name) == []


async def test_a_file_stored_on_this_machine_is_registered_as_copied(
    rucio: Rucio,
    rucio_server: RucioServer,
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Copied once and checksummed as copied: a source that changes afterwards changes
    nothing of what Rucio holds."""
    name = unique("copied")
    original = source.read_bytes()
    stage = storage.stage

    def then_changed(path: Path, target: Path) -> storage.Staged:
        staged = stage(path, target)
        path.write_bytes(os.urandom(SIZE))
        return staged

    monkeypatch.setattr(storage, "stage", then_changed)
    done = await rucio.upload(source, SCOPE, name, rucio_server.posix_rse)
    assert done.adler32 == f"{zlib.adler32(original):08x}" and done.bytes == len(original)
    assert await read(rucio, SCOPE, name) == original
    assert not list(rucio_server.posix_prefix.rglob("*.part"))


async def test_a_token_rucio_no_longer_accepts_is_renewed(rucio: Rucio) -> None:
    assert await rucio.whoami() == "concordia"
    # As after a restart of Rucio that forgot its tokens, long before their expiry.
    rucio._session = ("concordia-forgotten-token", time.time() + 3600)
    assert await rucio.whoami() == "concordia"


async def test_a_user_uploads_into_her_scope_and_not_into_another(
    rucio_server: RucioServer, source: Path
) -> None:
    clients = {
        user: Rucio(rucio_server.url, user, password=rucio_server.password(user))
        for user in ("jane", "john")
    }
    try:
        name = unique("own")
        stored = await clients["jane"].upload(source, SCOPE, name, rucio_server.posix_rse)
        assert stored == DataFile(SCOPE, name, SIZE, adler32(source), rucio_server.posix_rse, "A")
        with pytest.raises(DatalakeError, match="AccessDenied"):
            await clients["john"].upload(source, SCOPE, unique("theirs"), rucio_server.posix_rse)
    finally:
        for client in clients.values():
            await client.aclose()


async def test_a_wrong_password_is_a_clear_error_without_the_password(
    rucio_server: RucioServer,
) -> None:
    wrong = "not-the-password-" + uuid.uuid4().hex
    client = Rucio(rucio_server.url, rucio_server.service, password=wrong)
    try:
        with pytest.raises(DatalakeError) as caught:
            await client.whoami()
    finally:
        await client.aclose()
    message = str(caught.value)
    assert "refused the password of account concordia" in message
    assert "Cannot authenticate" in message
    assert wrong not in message


async def test_an_unknown_did_is_not_found(rucio: Rucio) -> None:
    name = unique("nothing")
    with pytest.raises(NotFound):
        await rucio.file(SCOPE, name)
    with pytest.raises(NotFound):
        await rucio.metadata(SCOPE, name)
