"""Concordia as the issuer of grid jobs' upload tokens: its key kept encrypted, its keys
published, a token per file of a running job fetched with the job's signed link, and every
other link refused."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import stat
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from joserfc import jwt
from joserfc.jwk import KeySet

from concordia.auth.upload_tokens import UPLOAD_LINK, UPLOAD_LINKS
from concordia.auth.vault import Vault
from concordia.backends.base import JobSpec
from concordia.backends.diracx.jobs import JOB_CONFIG, jdl_of, submission_sandbox
from concordia.backends.grid_images import GridImages
from concordia.backends.wrapper.concordia_job_lake import lake_path
from concordia.core.jdl import parse_jdl
from concordia.images.publication import link_signature
from concordia.logic import datalake_tokens
from concordia.logic.datalake_choice import name_prefix
from concordia.logic.keyring import UPLOAD_SIGNING_KEY
from tests.conftest import Running, make_settings, running_app
from tests.fakes.datalake import FakeLake
from tests.integration.datalake.test_datalake import RSE
from tests.integration.web.test_api import wait_status

pytestmark = pytest.mark.real

PUBLIC_URL = "https://concordia.example.org"
APP = """\
name: held
title: A job that runs until it is killed
command: "sleep 300"
outputs: ["*.txt", "*.bin"]
datalake:
  default: true
  data: ["*.bin"]
"""


def settings(tmp_path: Path, **overrides: Any) -> Any:
    apps = tmp_path / "apps"
    apps.mkdir(parents=True, exist_ok=True)
    (apps / "held.yaml").write_text(APP)
    shutil.copy(Path("applications/hello.yaml"), apps / "hello.yaml")
    shutil.copy(Path("applications/hello.sh"), apps / "hello.sh")
    values: dict[str, Any] = {
        "applications_dir": apps,
        "public_url": PUBLIC_URL,
        "datalake_url": "https://rucio.invalid",
        "datalake_account": "concordia",
        "datalake_password": "service-pw",
        "datalake_rse": RSE,
        "datalake_upload_tokens": True,
        "datalake_upload_token_lifetime": 600,
    }
    return make_settings(tmp_path / "var", **(values | overrides))


async def held_job(app: Running) -> tuple[dict[str, Any], dict[str, Any]]:
    """A data-lake job running (it sleeps), and its submission."""
    made = await app.client.post("/api/v1/submissions", json={"application": "held"})
    assert made.status_code == 201, made.text
    sub = made.json()
    job = await wait_status(app.client, sub["job_ids"][0], {"Running"})
    return sub, job


def link(app: Running, job_uuid: str, expires: int | None = None) -> str:
    """The job's link as its arguments carry it (made as Concordia makes it), as a path."""
    keys = app.platform.keyring.vault.derived_keys(UPLOAD_LINKS)
    if expires is None:
        url = datalake_tokens.upload_link(app.settings, app.settings.public_url, keys, job_uuid)
    else:
        signature = link_signature(keys[0], UPLOAD_LINK, job_uuid, expires)
        url = f"{PUBLIC_URL}{datalake_tokens.link_path(job_uuid)}?expires={expires}&sig={signature}"
    return url.removeprefix(PUBLIC_URL)


async def test_the_signing_key_is_made_once_encrypted_and_its_keys_published(
    tmp_path: Path, one_rse_lake: FakeLake
) -> None:
    config = settings(tmp_path)
    async with running_app(config) as app:
        found = await app.client.get("/.well-known/openid-configuration")
        assert found.status_code == 200, found.text
        assert found.json()["issuer"] == PUBLIC_URL
        assert found.json()["jwks_uri"] == f"{PUBLIC_URL}/.well-known/jwks.json"
        [key] = (await app.client.get("/.well-known/jwks.json")).json()["keys"]
        assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
        assert "d" not in key  # the public half only
        vault: Vault = app.platform.keyring.vault

    key_file = config.data_dir / UPLOAD_SIGNING_KEY
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    sealed = key_file.read_text()
    assert "PRIVATE KEY" not in sealed and "BEGIN" not in sealed
    assert vault.decrypt(sealed.strip()).startswith(b"-----BEGIN PRIVATE KEY-----")

    # Restarted: the same key (storages keep trusting what they fetched).
    async with running_app(config) as app:
        [again] = (await app.client.get("/.well-known/jwks.json")).json()["keys"]
    assert again == key

    # An operator who did not say the RSEs trust Concordia: no issuer, no key made.
    off = settings(tmp_path / "off", datalake_upload_tokens=False)
    async with running_app(off) as app:
        for path in ("/.well-known/openid-configuration", "/.well-known/jwks.json"):
            answer = await app.client.get(path)
            assert answer.status_code == 404 and "issues no upload tokens" in answer.text
    assert not (off.data_dir / UPLOAD_SIGNING_KEY).exists()


async def test_a_running_job_gets_a_fresh_upload_only_token_per_file(
    tmp_path: Path, one_rse_lake: FakeLake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_app(settings(tmp_path)) as app:
        sub, job = await held_job(app)
        prefix = name_prefix("held", sub["id"], 0, job["uuid"])
        name = prefix + "DAT000001.zst"
        url = link(app, job["uuid"])
        answer = await app.client.get(f"{url}&name={name}")
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == "no-store"
        token = answer.text
        keys = KeySet.import_key_set((await app.client.get("/.well-known/jwks.json")).json())
        claims = jwt.decode(token, keys, algorithms=["ES256"]).claims
        assert claims["iss"] == PUBLIC_URL and claims["sub"] == "local"
        assert claims["aud"] == await one_rse_lake.rse_url(RSE)
        assert claims["scope"] == "storage.create:/" + lake_path("user.local", name)
        assert claims["wlcg.ver"] == "1.0" and claims["exp"] - claims["iat"] == 600
        assert abs(claims["iat"] - time.time()) < 60

        # Each fetch a new token (its lifetime starts as the job uploads).
        second = (await app.client.get(f"{url}&name={name}")).text
        assert jwt.decode(second, keys).claims["jti"] != claims["jti"]

        # A wrong or an expired signature, a name not the job's: refused, no token.
        forged = url.replace("sig=", "sig=0")
        expired = link(app, job["uuid"], expires=int(time.time()) - 1)
        for bad in (forged, expired):
            refused = await app.client.get(f"{bad}&name={name}")
            assert refused.status_code == 403, refused.text
            assert "not valid: wrong signature, expired, or its job is over" in refused.text
        foreign = await app.client.get(f"{url}&name=held.{sub['id']}.1.deadbeef.x.zst")
        assert foreign.status_code == 422 and "not a file name of this job" in foreign.text
        unknown = link(app, "0" * 8 + job["uuid"][8:])
        assert (await app.client.get(f"{unknown}&name={name}")).status_code == 403

        # The job over: its link fetches nothing more.
        assert (await app.client.post(f"/api/v1/jobs/{job['id']}/kill")).status_code == 200
        await wait_status(app.client, job["id"], {"Killed"})
        over = await app.client.get(f"{url}&name={name}")
        assert over.status_code == 403 and "its job is over" in over.text
    assert token not in caplog.text and second not in caplog.text


async def test_the_jdl_carries_the_jobs_link_never_a_token(
    tmp_path: Path, one_rse_lake: FakeLake
) -> None:
    async with running_app(settings(tmp_path)) as app:
        sub, job = await held_job(app)
        names = name_prefix("held", sub["id"], 0, job["uuid"])
        url = PUBLIC_URL + link(app, job["uuid"])
        spec = JobSpec(
            job_id=job["id"], uuid=job["uuid"], name="held", argv=["sleep", "1"], cpu_time=3600,
            datalake={"url": "https://rse.example.org/lake", "scope": "user.local",
                      "names": names, "data": ["*.bin"], "token_url": url},
        )  # fmt: skip
        images = GridImages(app.settings, app.settings.public_url, keys=[])
        jdl = jdl_of(spec, "SB:x", images)
        sandbox = submission_sandbox(spec, images)
        answer = await app.client.get(f"{url.removeprefix(PUBLIC_URL)}&name={names}a.bin")
        assert answer.status_code == 200, answer.text
    [argument] = parse_jdl(jdl)["Arguments"].split()  # type: ignore[union-attr]
    carried = json.loads(base64.urlsafe_b64decode(argument + "=" * (-len(argument) % 4)))
    assert carried["datalake_token_url"] == url and carried["datalake_names"] == names
    with tarfile.open(fileobj=io.BytesIO(sandbox.data), mode="r:bz2") as tar:
        member = tar.extractfile(JOB_CONFIG)
        assert member is not None
        shared = json.loads(member.read())["datalake"]
    # The link is the job's own: not in the sandbox its submission's jobs share.
    assert "token_url" not in shared and "token" not in shared
    assert answer.text.count(".") == 2 and answer.text not in jdl


async def test_a_job_whose_backend_uploads_is_given_its_own_link(
    tmp_path: Path, one_rse_lake: FakeLake, sent: list[JobSpec]
) -> None:
    """The specs a backend that uploads its jobs' data is given carry the job's link; the
    link fetches tokens for that job's names."""
    async with running_app(settings(tmp_path)) as app:
        _, job = await held_job(app)
        [spec] = sent
        assert spec.datalake is not None
        url = spec.datalake["token_url"]
        assert url.startswith(f"{PUBLIC_URL}/api/v1/grid/jobs/{job['uuid']}/upload-token?")
        name = spec.datalake["names"] + "a.zst"
        answer = await app.client.get(f"{url.removeprefix(PUBLIC_URL)}&name={name}")
        assert answer.status_code == 200, answer.text


async def test_a_key_the_vault_cannot_open_is_said_not_replaced(
    tmp_path: Path, one_rse_lake: FakeLake
) -> None:
    config = settings(tmp_path)
    key_file = config.data_dir / UPLOAD_SIGNING_KEY
    config.data_dir.mkdir(parents=True)
    sealed = Vault([Fernet.generate_key()]).encrypt(b"another server's key")
    key_file.write_text(sealed)
    async with running_app(config) as app:
        answer = await app.client.get("/.well-known/jwks.json")
    assert answer.status_code == 503 and "cannot be decrypted" in answer.text
    assert "another server" not in answer.text
    assert key_file.read_text() == sealed  # kept: never replaced by a new key
