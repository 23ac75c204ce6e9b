"""Heavy work a user can ask for stays bounded: PKCS#12 key-derivation bombs, zips of huge
outputs, zips abandoned half-way, one user's downloads against another's."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import time
import zipfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from asn1crypto import pkcs12 as asn1_pkcs12

from concordia.auth.x509 import CredentialError, load_credential
from concordia.db.engine import WRITES, make_engine, make_sessionmaker
from concordia.logic.identity import create_token, ensure_user
from tests.conftest import LiveServer, make_settings, running_app, seed_images
from tests.iam.pki import TestCA
from tests.integration.auth.test_proxies import upload
from tests.integration.web.test_api import FINAL, wait_status

pytestmark = pytest.mark.real

BOMB = 2**31 - 1


def with_iterations(p12: bytes, *, mac: int | None = None, key: int | None = None) -> bytes:
    """The PFX with its MAC's or its key bag's iteration count changed in the DER (making
    such a file with openssl would itself take minutes)."""
    pfx = asn1_pkcs12.Pfx.load(p12)
    if mac is not None:
        pfx["mac_data"]["iterations"] = mac
    if key is not None:
        safe = next(i for i in pfx.authenticated_safe if i["content_type"].native == "data")
        bags = asn1_pkcs12.SafeContents.load(safe["content"].native)
        bag = next(b for b in bags if b["bag_id"].native == "pkcs8_shrouded_key_bag")
        params = bag["bag_value"]["encryption_algorithm"]["parameters"]
        params["key_derivation_func"]["parameters"]["iteration_count"] = key
        safe["content"] = bags.dump(force=True)
        pfx["auth_safe"]["content"] = pfx.authenticated_safe.dump(force=True)
    return bytes(pfx.dump(force=True))


@pytest.mark.parametrize("where", ["mac", "key"])
async def test_a_pkcs12_bomb_is_refused_at_once(
    tmp_path: Path, image_seed: Path, where: str
) -> None:
    cert = TestCA().issue_user("Local Person", dc=("org", "example"))
    p12 = cert.pkcs12("x")
    bomb = with_iterations(p12, **{where: BOMB})
    settings = seed_images(make_settings(tmp_path / "var"), image_seed)
    async with running_app(settings) as running:
        started = time.monotonic()
        answer = await asyncio.wait_for(upload(running.client, {}, {"file": bomb}, "x"), 30)
        assert time.monotonic() - started < 5
        assert answer.status_code == 422, answer.text
        assert f"{BOMB} key-derivation iterations" in answer.text
        assert (await running.client.get("/api/v1/me")).json().get("certificate") is None
        # The file as exported is taken: the check reads it as OpenSSL would.
        assert (await upload(running.client, {}, {"file": p12}, "x")).status_code == 201


def test_the_pem_encrypted_key_bomb_is_refused() -> None:
    cert = TestCA().issue_user("Local Person", dc=("org", "example"))
    # A million and one: enough to pass the bound, still quick for openssl to make.
    pem = subprocess.run(
        ["openssl", "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-iter", "1000001",
         "-passout", "pass:x"],
        input=cert.key_pem, capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    started = time.monotonic()
    with pytest.raises(CredentialError, match="1000001 key-derivation iterations"):
        load_credential(cert.cert_pem + pem, "x")
    assert time.monotonic() - started < 5


MANY_YAML = """
name: many
title: Many outputs
description: Leaves a hundred thousand empty files, and a sparse one.
vos: []
cpu_time: 120
command: "python3 -c {script}"
outputs: ["out/*", "big.dat"]
parameters:
  script:
    type: str
    default: "x"
    max_length: 400
    help: What the job runs.
"""
MANY = "import os; os.mkdir('out'); [open(f'out/f{i:06d}', 'w').close() for i in range(100000)]"


async def test_a_job_leaving_100000_files_fails_and_the_server_stays_responsive(
    tmp_path: Path,
) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "many.yaml").write_text(MANY_YAML)
    async with running_app(make_settings(tmp_path / "var", applications_dir=apps)) as app:
        sub = await app.client.post(
            "/api/v1/submissions", json={"application": "many", "parameters": {"script": MANY}}
        )
        assert sub.status_code == 201, sub.text
        job = await wait_status(app.client, sub.json()["job_ids"][0], FINAL, timeout=120)
        assert job["status"] == "Failed"
        assert job["minor_status"] == "Output limit exceeded: more than 10000 files"
        base = f"/api/v1/jobs/{job['id']}/outputs"

        async def health() -> float:
            started = time.monotonic()
            assert (await app.client.get("/healthz")).status_code == 200
            return time.monotonic() - started

        pages = [app.client.get(base, params={"page": p, "per_page": 500}) for p in (1, 21)]
        first, last, took = await asyncio.gather(*pages, health())
        assert took < 1
        assert first.json()["total"] == 10002  # the files collected, std.out and std.err
        assert len(first.json()["items"]) == 500
        assert [o["path"] for o in last.json()["items"]] == ["std.err", "std.out"]
        too_many = await app.client.get(base, params={"per_page": 501})
        assert too_many.status_code == 422
        transport = app.client._transport
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as web:
            login = urlsplit(app.login_url)
            await web.get(f"{login.path}?{login.query}")
            html = (await web.get(f"/jobs/{job['id']}?outputs_page=2")).text
        assert "Page 2 of 101 (10002 files)" in html and html.count("out/f") >= 100


SPARSE = "open('big.dat', 'wb').truncate({size})"  # no block allocated: no work bound hit
#: Outputs whose zip keeps its thread busy for seconds (2 GB of zeros to deflate) and cannot
#: end unread: the zeros deflate to 2 MB, which the sockets' buffers would hold whole, the
#: random bytes do not shrink.
BIG = (
    "import os; os.mkdir('out'); open('out/random', 'wb').write(os.urandom(64 << 20)); "
    + SPARSE.format(size=2 << 30)
)
FILES = (
    "import os; os.mkdir('out'); open('out/a.txt', 'w').write('hello'); "
    "open('out/b.bin', 'wb').write(os.urandom(3 << 19)); print('done')"
)


async def run_job(client: httpx.AsyncClient, script: str) -> int:
    """A job of the "many" application running ``script``, over and Done."""
    sub = await client.post(
        "/api/v1/submissions", json={"application": "many", "parameters": {"script": script}}
    )
    assert sub.status_code == 201, sub.text
    job = await wait_status(client, sub.json()["job_ids"][0], FINAL, timeout=60)
    if job["status"] != "Done":
        log = await client.get(f"/api/v1/jobs/{job['id']}/logs", params={"stream": "stderr"})
        pytest.fail(f"{job['status']}, {job['minor_status']}: {log.text[-2000:]}")
    return int(job["id"])


def many_apps(tmp_path: Path) -> Path:
    apps = tmp_path / "apps"
    apps.mkdir(exist_ok=True)
    (apps / "many.yaml").write_text(MANY_YAML)
    return apps


async def test_a_zip_of_outputs_over_the_cap_is_refused_at_once(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "var", applications_dir=many_apps(tmp_path), max_zip_bytes=1 << 20
    )
    async with running_app(settings) as app:
        job = await run_job(app.client, SPARSE.format(size=10 << 30))
        started = time.monotonic()
        async with asyncio.timeout(30):  # compressing 10 GB would take minutes
            answer = await app.client.get(f"/api/v1/jobs/{job}/outputs.zip")
        assert time.monotonic() - started < 5
        assert answer.status_code == 413, answer.text[:200]
        assert "download the files one by one" in answer.json()["detail"]
        # The file itself is still there to download.
        listing = (await app.client.get(f"/api/v1/jobs/{job}/outputs")).json()
        assert {"path": "big.dat", "size": 10 << 30} in listing["items"]


async def test_the_zip_holds_every_output_as_downloaded_one_by_one(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "var", applications_dir=many_apps(tmp_path))
    async with running_app(settings) as app:
        job = await run_job(app.client, FILES)
        answer = await app.client.get(f"/api/v1/jobs/{job}/outputs.zip")
        assert answer.status_code == 200, answer.text[:200]
        assert answer.headers["content-type"] == "application/zip"
        assert f'filename="job-{job}-outputs.zip"' in answer.headers["content-disposition"]
        with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
            assert archive.testzip() is None
            names = sorted(archive.namelist())
            assert names == [
                f"job-{job}/{p}" for p in ("out/a.txt", "out/b.bin", "std.err", "std.out")
            ]
            for name in names:
                path = name.split("/", 1)[1]
                one = await app.client.get(f"/api/v1/jobs/{job}/outputs/{path}")
                assert archive.read(name) == one.content, path
        assert b"done" in one.content  # std.out, last: the job's own output


# Live servers: httpx's in-process transport reads a whole answer before handing it over,
# only a real server streams and sees its client go. One zip thread, two turns a user.
@pytest.fixture
def live_server_env(tmp_path: Path) -> dict[str, str]:
    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    return {
        "CONCORDIA_APPLICATIONS_DIR": str(many_apps(tmp_path)),
        "CONCORDIA_ZIP_THREADS": "1",
        "CONCORDIA_ZIP_PER_USER": "2",
        "TMPDIR": str(server_tmp),
    }


@asynccontextmanager
async def api(server: LiveServer, token: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


async def other_user_token(server: LiveServer, username: str) -> str:
    engine = make_engine(server.database_url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            # Writing from its start (SQLite: BEGIN IMMEDIATE), as the server's writes are:
            # a read then a write fails at once if the server committed in between.
            await session.connection(execution_options={WRITES: True})
            return await create_token(session, await ensure_user(session, username))
    finally:
        await engine.dispose()


class Download:
    """A zip download begun (its first bytes read), closed with the stack it was opened on:
    a reader that stops half-way closes its connection."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.chunks = response.aiter_raw()

    @classmethod
    async def open(cls, client: httpx.AsyncClient, job: int, stack: AsyncExitStack) -> Download:
        url = f"/api/v1/jobs/{job}/outputs.zip"
        download = cls(await stack.enter_async_context(client.stream("GET", url)))
        stack.push_async_callback(download.chunks.aclose)  # type: ignore[attr-defined]
        if download.response.status_code == 200:
            for _ in range(3):
                await anext(download.chunks)
        else:
            await download.response.aread()
        return download

    async def read_all(self) -> None:
        async for _chunk in self.chunks:
            pass


def files_under(*roots: Path) -> set[Path]:
    return {Path(d, f) for root in roots for d, _dirs, files in os.walk(root) for f in files}


async def test_an_abandoned_zip_download_stops_and_leaves_no_file(
    live_server: LiveServer, tmp_path: Path
) -> None:
    async with api(live_server, live_server.token) as client:
        big = await run_job(client, BIG)
        small = await run_job(client, FILES)
        roots = live_server.data_dir, tmp_path / "server-tmp"
        before = files_under(*roots)
        async with AsyncExitStack() as kept:
            assert (await Download.open(client, big, kept)).response.status_code == 200
            async with AsyncExitStack() as abandoned:
                second = await Download.open(client, big, abandoned)
                assert second.response.status_code == 200
                # Both turns held while both stream, and nothing is written to disk.
                refused = await Download.open(client, small, abandoned)
                assert refused.response.status_code == 429
                assert files_under(*roots) == before
            # The second client left: its turn comes back long before its zip could end.
            deadline = time.monotonic() + 5
            while (
                again := await client.get(f"/api/v1/jobs/{small}/outputs.zip")
            ).status_code == 429:
                assert time.monotonic() < deadline, "an abandoned zip kept its turn"
                await asyncio.sleep(0.1)
            assert again.status_code == 200
            assert zipfile.ZipFile(io.BytesIO(again.content)).testzip() is None
            assert files_under(*roots) == before


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_one_users_zips_leave_the_others_answered(live_server: LiveServer) -> None:
    bob_token = await other_user_token(live_server, "bob")
    async with (
        api(live_server, live_server.token) as alice,
        api(live_server, bob_token) as bob,
        AsyncExitStack() as downloads,
    ):
        big, small = await asyncio.gather(run_job(alice, BIG), run_job(bob, FILES))
        # Alice opens two zips: each holds a turn while it streams, and a third is refused.
        opened = [await Download.open(alice, big, downloads) for _ in range(2)]
        assert [d.response.status_code for d in opened] == [200, 200]
        third = await alice.get(f"/api/v1/jobs/{big}/outputs.zip")
        assert third.status_code == 429
        detail = third.json()["detail"]
        assert detail == "too many downloads at once (at most 2): wait for one to end"
        # Then she reads both as fast as she can: the one zip thread is always busy.
        for download in opened:
            reader = asyncio.create_task(download.read_all())
            downloads.push_async_callback(stop, reader)

        for _ in range(5):
            for url in ("/healthz", "/api/v1/jobs", "/api/v1/me"):
                started = time.monotonic()
                answer = await bob.get(url)
                assert answer.status_code == 200, answer.text
                assert time.monotonic() - started < 1, url
            await asyncio.sleep(0.1)
        # Bob's own zip takes turns with hers on the thread: it is not refused, nor starved.
        started = time.monotonic()
        answer = await bob.get(f"/api/v1/jobs/{small}/outputs.zip")
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started < 5
        assert zipfile.ZipFile(io.BytesIO(answer.content)).testzip() is None
