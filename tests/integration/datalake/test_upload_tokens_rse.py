"""A grid job's data uploaded with Concordia's token: the wrapper fetches a token per file
with its job's signed link from a real `concordia serve`, and PUTs to the real nginx WebDAV
RSE of tests/rucio.py, which lets in only what a storage's WLCG token check allows (its
verifier fetches Concordia's keys over HTTP)."""

from __future__ import annotations

import os
import signal
import ssl
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography.fernet import Fernet

from concordia.auth.upload_tokens import UPLOAD_LINK, UPLOAD_LINKS, UploadIssuer
from concordia.auth.vault import Vault
from concordia.backends.wrapper.concordia_job_lake import lake_path
from concordia.images.publication import link_signature
from concordia.logic.datalake_choice import name_prefix
from concordia.logic.datalake_tokens import link_path
from concordia.logic.keyring import UPLOAD_SIGNING_KEY
from tests.conftest import LiveServer, free_port
from tests.integration.datalake.test_datalake_grid import (
    SCOPE,
    job_dir,
    lake,
    manifest,
    random_file,
)
from tests.integration.datalake.test_datalake_grid import run_job as run_wrapper
from tests.integration.datalake.test_upload_tokens import APP
from tests.rucio import RucioServer
from tests.wlcg_verifier import rse_trust, running_verifier

pytestmark = pytest.mark.real

MB = 1024 * 1024


@pytest.fixture
def concordia(tmp_path: Path, rucio_server: RucioServer) -> Iterator[tuple[LiveServer, Vault]]:
    """`concordia serve` (as jane) whose data lake is the real Rucio and whose RSEs trust it
    as an upload-token issuer; its vault, to sign links as it does."""
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "held.yaml").write_text(APP)
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    port, key = free_port(), Fernet.generate_key().decode()
    env = {
        **os.environ,
        "CONCORDIA_DATA_DIR": data_dir.name,
        "CONCORDIA_PORT": str(port),
        "CONCORDIA_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "CONCORDIA_POLL_INTERVAL": "0.5",
        "CONCORDIA_APPLICATIONS_DIR": str(apps),
        "CONCORDIA_LOCAL_USER": "jane",
        "CONCORDIA_ENCRYPTION_KEYS": f'["{key}"]',
        "CONCORDIA_DATALAKE_URL": rucio_server.url,
        "CONCORDIA_DATALAKE_ACCOUNT": rucio_server.service,
        "CONCORDIA_DATALAKE_PASSWORD": rucio_server.password(rucio_server.service),
        "CONCORDIA_DATALAKE_VERIFY": rucio_server.ca,
        "CONCORDIA_DATALAKE_RSE": rucio_server.webdav_rse,
        "CONCORDIA_DATALAKE_UPLOAD_TOKENS": "true",
    }
    server = LiveServer(data_dir=data_dir, port=port, env=env)
    server.start()
    try:
        yield server, Vault([key.encode()])
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill(signal.SIGTERM)


def running_job(server: LiveServer) -> dict[str, Any]:
    """A data-lake job of jane's, running in Concordia (as a grid job would be)."""
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=30) as api:
        made = api.post("/submissions", json={"application": "held"})
        assert made.status_code == 201, made.text
        sub = made.json()
        deadline = time.monotonic() + 60
        while (job := api.get(f"/jobs/{sub['job_ids'][0]}").json())["status"] != "Running":
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
    job["names"] = name_prefix("held", sub["id"], 0, job["uuid"])
    return job


def token_link(server: LiveServer, vault: Vault, job_uuid: str, expires: int) -> str:
    signature = link_signature(vault.derived_keys(UPLOAD_LINKS)[0], UPLOAD_LINK, job_uuid, expires)
    return f"{server.url}{link_path(job_uuid)}?expires={expires}&sig={signature}"


async def test_a_grid_job_uploads_with_its_token_and_the_rse_refuses_any_other_use(
    concordia: tuple[LiveServer, Vault], rucio_server: RucioServer, tmp_path: Path
) -> None:
    server, vault = concordia
    job = running_job(server)
    names = job["names"]
    link = token_link(server, vault, job["uuid"], int(time.time()) + 3600)
    settings = lake(rucio_server, names, url=rucio_server.token_webdav_url)
    trust = await rse_trust(rucio_server, server.url, rucio_server.webdav_rse)
    https = httpx.Client(verify=ssl.create_default_context(cafile=rucio_server.ca), timeout=30)
    with running_verifier(trust, rucio_server.verifier_port), https:
        # Without a token (the proxy's way, anonymous here) the storage refuses it.
        work = job_dir(tmp_path / "anonymous", settings)
        done = run_wrapper(work, "head -c 1000 /dev/urandom > a.zst", names)
        assert done.returncode != 0
        assert "upload of a.zst refused: HTTP 401 Unauthorized" in done.stderr

        # With the job's link: a token per file, each stored where Rucio says.
        work = job_dir(tmp_path / "tokens", settings)
        shower = random_file(tmp_path / "shower.bin", 20 * MB)
        script = "cp ../../shower.bin DAT000001.zst && echo x > second.zst"
        done = run_wrapper(work, script, names, datalake_token_url=link)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        entries = manifest(work)
        assert [(e["name"], e["adler32"]) for e in entries] == [
            (names + "DAT000001.zst", shower),
            (names + "second.zst", f"{zlib.adler32(b'x' + bytes([10])):08x}"),
        ]
        # The same storage without tokens (/rucio/, Rucio's own) holds it: read it back.
        stored = https.get(entries[0]["url"].replace("/token/", "/rucio/", 1))
        assert stored.content == (tmp_path / "shower.bin").read_bytes()
        assert [status for status, _ in trust.decisions] == [401, 204, 204]

        # What else the job's token may not do, each refused by the storage.
        name = names + "DAT000001.zst"
        token = httpx.get(f"{link}&name={quote(name)}").text
        bearer = {"Authorization": f"Bearer {token}"}
        mine = rucio_server.token_webdav_url + quote(lake_path(SCOPE, name))
        assert https.get(mine, headers=bearer).status_code == 403  # read
        assert https.put(mine, content=b"other", headers=bearer).status_code == 403  # overwrite
        assert "does not overwrite" in trust.decisions[-1][1]
        other = rucio_server.token_webdav_url + lake_path(SCOPE, "held.9.0.deadbeef.x.zst")
        assert https.put(other, content=b"x", headers=bearer).status_code == 403
        assert "does not allow PUT" in trust.decisions[-1][1]
        issuer = UploadIssuer(server.data_dir / UPLOAD_SIGNING_KEY, vault, server.url)
        fresh = names + "late.zst"
        path = "/" + lake_path(SCOPE, fresh)
        expired = issuer.mint("jane", trust.audience, [path], lifetime=-10)
        late = rucio_server.token_webdav_url + lake_path(SCOPE, fresh)
        answer = https.put(late, content=b"x", headers={"Authorization": f"Bearer {expired}"})
        assert answer.status_code == 401 and "expired" in trust.decisions[-1][1]
        elsewhere = issuer.mint("jane", "https://other.example.org/", [path], lifetime=60)
        answer = https.put(late, content=b"x", headers={"Authorization": f"Bearer {elsewhere}"})
        assert answer.status_code == 401  # another storage's audience

        # A link with a wrong or an expired signature: the job fails with Concordia's reason.
        for bad in (link.replace("sig=", "sig=0"), token_link(server, vault, job["uuid"], 1)):
            work = job_dir(tmp_path / f"bad{len(trust.decisions)}{bad[-4:]}", settings)
            done = run_wrapper(work, "echo x > b.zst", names, datalake_token_url=bad)
            assert done.returncode != 0 and "Traceback" not in done.stderr
            assert done.stderr.splitlines()[-1] == (
                f"[concordia] data lake: Concordia gave no upload token for {names}b.zst: "
                "HTTP 403 this upload-token link is not valid: wrong signature, expired, "
                "or its job is over"
            )
    assert token not in server.output() and token not in done.stdout + done.stderr
