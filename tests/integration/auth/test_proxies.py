"""proxy-init against the IAM double and a test CA: credential upload and its refusals, proxies
signed here or IAM's managed ones (checked by openssl), lifetime checks before submissions,
proxy files for jobs, secrets encrypted at rest."""

from __future__ import annotations

import asyncio
import base64
import logging
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from concordia.auth.proxy_certificates import proxy_info
from concordia.db.tables import Submission, UserSecret, utcnow
from concordia.logic.proxies import PROXY
from concordia.logic.secrets import read_secret
from concordia.settings import Settings
from tests.conftest import Running, make_settings, running_app, seed_images
from tests.iam.pki import TestCA, UserCert, key_pem, new_key
from tests.iam.server import IamDouble
from tests.integration.auth.test_iam import IamApp, iam_settings

PASSWORD = "correct horse"


def bearer(iam: IamDouble, username: str, *scopes: str) -> dict[str, str]:
    granted = ["openid", "profile", "email", "wlcg.groups", *scopes]
    return {"Authorization": f"Bearer {iam.token_for(username, granted)}"}


async def upload(
    client: httpx.AsyncClient, headers: dict[str, str], files: dict[str, bytes], password: str
) -> httpx.Response:
    parts = {name: (f"{name}.bin", data) for name, data in files.items()}
    return await client.post(
        "/api/v1/me/credential", files=parts, data={"password": password}, headers=headers
    )


def openssl_verify(
    ca: TestCA, user: UserCert, chain: bytes, tmp: Path
) -> subprocess.CompletedProcess[str]:
    (tmp / "ca.pem").write_bytes(ca.pem)
    (tmp / "user.pem").write_bytes(user.cert_pem)
    (tmp / "proxy.pem").write_bytes(chain)
    return subprocess.run(
        ["openssl", "verify", "-allow_proxy_certs", "-CAfile", str(tmp / "ca.pem"),
         "-untrusted", str(tmp / "user.pem"), str(tmp / "proxy.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def tamper(chain: bytes) -> bytes:
    """The chain with one byte of the proxy's signature changed."""
    first = x509.load_pem_x509_certificates(chain)[0]
    der = bytearray(first.public_bytes(serialization.Encoding.DER))
    der[-10] ^= 0x01
    forged = base64.encodebytes(bytes(der)).replace(b"\n", b"")
    lines = b"\n".join(forged[i : i + 64] for i in range(0, len(forged), 64))
    pem = b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"
    return pem + chain[len(first.public_bytes(serialization.Encoding.PEM)) :]


async def stored_proxy(running: Running, user_id: int) -> bytes:
    async with running.platform.reading() as session:
        found = await read_secret(session, running.platform.keyring.vault, user_id, PROXY)
    assert found is not None
    return found[0]


async def secrets_of(running: Running) -> list[UserSecret]:
    async with running.platform.reading() as session:
        return list(await session.scalars(select(UserSecret)))


async def me(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, object]:
    answer = await client.get("/api/v1/me", headers=headers)
    assert answer.status_code == 200, answer.text
    data: dict[str, object] = answer.json()
    return data


@pytest.fixture
async def iam_app(tmp_path: Path, iam: IamDouble, image_seed: Path) -> IamApp:
    settings = seed_images(iam_settings(tmp_path / "var", iam), image_seed)
    async with running_app(settings) as running:
        yield IamApp(running, iam, TestCA())  # type: ignore[misc]


async def test_upload_a_pkcs12_then_get_a_proxy_that_openssl_accepts(
    iam_app: IamApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cert = iam_app.ca.issue_user("Jane Doe")
    iam_app.iam.add_user("jane", certificate=cert)
    client, auth = iam_app.running.client, bearer(iam_app.iam, "jane")
    # SCIM is read at sign-in; a bearer-token caller reads it once with /me/scim.
    assert (await client.post("/api/v1/me/scim", headers=auth)).json()["status"] == "ok"
    made = await upload(client, auth, {"file": cert.pkcs12(PASSWORD)}, PASSWORD)
    assert made.status_code == 201, made.text
    assert made.json()["dn"] == "/C=NL/O=Nikhef/CN=Jane Doe"
    proxy = await client.post("/api/v1/me/proxy", json={"lifetime_hours": 36}, headers=auth)
    assert proxy.status_code == 201, proxy.text
    view = proxy.json()
    assert view["source"] == "upload" and view["dn"] == "/C=NL/O=Nikhef/CN=Jane Doe"
    assert 35 * 3600 < view["seconds_left"] <= 36 * 3600
    account = await me(client, auth)
    assert account["proxy"]["seconds_left"] > 35 * 3600  # type: ignore[index]
    assert account["credential"]["dn"] == view["dn"]  # type: ignore[index]

    user_id = (await secrets_of(iam_app.running))[0].user_id
    chain = await stored_proxy(iam_app.running, user_id)
    verified = openssl_verify(iam_app.ca, cert, chain, tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    tampered = tamper(chain)
    assert openssl_verify(iam_app.ca, cert, tampered, tmp_path).returncode != 0

    # At rest: encrypted rows, a private key file; nothing secret in the log.
    for row in await secrets_of(iam_app.running):
        assert b"PRIVATE KEY" not in row.ciphertext.encode() and "BEGIN" not in row.ciphertext
    key_file = iam_app.running.settings.encryption_key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in caplog.text and auth["Authorization"][7:] not in caplog.text


async def test_bad_credentials_are_refused_and_nothing_is_stored(iam_app: IamApp) -> None:
    ca = iam_app.ca
    cert = ca.issue_user("Jane Doe")
    iam_app.iam.add_user("jane", certificate=cert)
    client, auth = iam_app.running.client, bearer(iam_app.iam, "jane")
    await client.post("/api/v1/me/scim", headers=auth)
    expired = ca.issue_user("Jane Doe", start=timedelta(days=-400), end=timedelta(days=-1))
    other = ca.issue_user("John Smith")
    limit = iam_app.running.settings.max_credential_bytes
    cases: list[tuple[dict[str, bytes], str, int, str]] = [
        ({"file": cert.pkcs12(PASSWORD)}, "wrong", 422, "password"),
        ({"file": cert.cert_pem, "key": key_pem(new_key())}, "", 422, "does not belong"),
        ({"file": expired.pkcs12(PASSWORD)}, PASSWORD, 422, "expired"),
        ({"file": other.pkcs12(PASSWORD)}, PASSWORD, 422, "IAM lists yours as"),
        ({"file": b"\x00garbage" * 50}, "", 422, "file"),
        ({"file": b"0" * (limit + 1)}, "", 413, "at most"),
    ]
    for files, password, status, words in cases:
        answer = await upload(client, auth, files, password)
        assert answer.status_code == status, (words, answer.text)
        assert words in answer.text, (words, answer.text)
        assert (await me(client, auth))["credential"] is None
    assert await secrets_of(iam_app.running) == []
    # The PEM pair of the right certificate is accepted.
    good = await upload(client, auth, {"file": cert.cert_pem, "key": cert.key_pem}, "")
    assert good.status_code == 201, good.text


async def test_iam_managed_proxy_first_then_the_uploaded_certificate(
    tmp_path: Path, iam: IamDouble, image_seed: Path
) -> None:
    ca = TestCA()
    settings = seed_images(
        iam_settings(tmp_path / "var", iam, proxy_sources=["iam", "upload"]), image_seed
    )
    with_proxy = ca.issue_user("Jane Doe")
    iam.add_user("jane", certificate=with_proxy, uploaded_proxy=True)
    iam.add_user("bob", certificate=ca.issue_user("Bob Builder"))
    async with running_app(settings) as running:
        client = running.client
        scope = "proxy:generate"
        got = await client.post("/api/v1/me/proxy", json={}, headers=bearer(iam, "jane", scope))
        assert got.status_code == 201, got.text
        assert got.json()["source"] == "iam"
        user_id = (await secrets_of(running))[0].user_id
        chain = await stored_proxy(running, user_id)
        assert openssl_verify(ca, with_proxy, chain, tmp_path).returncode == 0

        refused = await client.post("/api/v1/me/proxy", json={}, headers=bearer(iam, "bob", scope))
        assert refused.status_code == 409
        detail = refused.json()["detail"]
        assert "No proxy found for account" in detail and "no certificate uploaded" in detail
        no_scope = await client.post("/api/v1/me/proxy", json={}, headers=bearer(iam, "jane"))
        assert no_scope.status_code == 409
        assert "proxy:generate scope: sign in on the web page" in no_scope.json()["detail"]


PROXY_APP = """name: gridjob
title: Grid job
command: sh -c 'stat -c %a "$X509_USER_PROXY"; head -n 1 "$X509_USER_PROXY"'
cpu_time: 60
proxy: true
"""


def grid_settings(
    tmp_path: Path, iam: IamDouble, app: str = PROXY_APP, **overrides: object
) -> Settings:
    """IAM mode with one application, whose jobs need a proxy."""
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "gridjob.yaml").write_text(app)
    return iam_settings(tmp_path / "var", iam, applications_dir=apps, **overrides)


async def test_submissions_needing_a_proxy_check_its_lifetime_and_jobs_get_it(
    tmp_path: Path, iam: IamDouble, image_seed: Path
) -> None:
    settings = grid_settings(tmp_path, iam)
    ca = TestCA()
    short = ca.issue_user("Jane Doe", end=timedelta(hours=5))
    iam.add_user("jane", certificate=short)
    async with running_app(settings) as running:
        client, auth = running.client, bearer(iam, "jane")
        await client.post("/api/v1/me/scim", headers=auth)
        submit = {"application": "gridjob"}
        none = await client.post("/api/v1/submissions", json=submit, headers=auth)
        assert none.status_code == 409 and "no certificate uploaded" in none.json()["detail"]
        assert (await upload(client, auth, {"file": short.pkcs12("x")}, "x")).status_code == 201
        too_short = await client.post("/api/v1/submissions", json=submit, headers=auth)
        assert too_short.status_code == 409, too_short.text
        detail = too_short.json()["detail"]
        assert "these jobs need 8.0 h" in detail
        assert "your certificate uploaded to Concordia expires at" in detail
        assert "renew it and upload the new one" in detail
        async with running.platform.reading() as session:
            assert list(await session.scalars(select(Submission))) == []

        long = ca.issue_user("Jane Doe")
        assert (await upload(client, auth, {"file": long.pkcs12("x")}, "x")).status_code == 201
        made = await client.post("/api/v1/submissions", json=submit, headers=auth)
        assert made.status_code == 201, made.text
        job_id = made.json()["job_ids"][0]
        for _ in range(200):
            job = (await client.get(f"/api/v1/jobs/{job_id}", headers=auth)).json()
            if job["status"] in ("Done", "Failed"):
                break
            await asyncio.sleep(0.1)
        assert job["status"] == "Done", job
        out = await client.get(f"/api/v1/jobs/{job_id}/logs?stream=stdout", headers=auth)
        assert out.json()["data"].splitlines() == ["600", "-----BEGIN CERTIFICATE-----"]
        left = list(running.settings.jobs_dir.rglob(".x509up"))
        assert left == []  # deleted after use


async def test_local_mode_takes_any_certificate_and_can_write_the_dirac_group(
    tmp_path: Path, image_seed: Path
) -> None:
    settings = seed_images(make_settings(tmp_path / "var", proxy_dirac_group=True), image_seed)
    cert = TestCA().issue_user("Local Person", dc=("org", "example"))
    async with running_app(settings) as running:
        client = running.client
        made = await upload(client, {}, {"file": cert.pem()}, "")
        assert made.status_code == 201, made.text
        assert made.json()["dn"] == "/DC=org/DC=example/C=NL/O=Nikhef/CN=Local Person"
        got = await client.post("/api/v1/me/proxy", json={"vo": "cta", "lifetime_hours": 2})
        assert got.status_code == 201 and got.json()["dirac_group"] == "cta_user"
        chain = await stored_proxy(running, (await secrets_of(running))[0].user_id)
        assert proxy_info(chain, utcnow()).dirac_group == "cta_user"
        bad = await client.post("/api/v1/me/proxy", json={"lifetime_hours": -1})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "lifetime_hours"
        assert (await client.delete("/api/v1/me/proxy")).status_code == 204
        assert (await client.delete("/api/v1/me/proxy")).status_code == 404
        assert (await client.delete("/api/v1/me/credential")).status_code == 204
        assert await secrets_of(running) == []


async def test_with_the_default_lifetimes_a_managed_proxy_serves_submissions(
    tmp_path: Path, iam: IamDouble, image_seed: Path
) -> None:
    settings = grid_settings(tmp_path, iam, proxy_sources=["iam"])
    iam.add_user("jane", certificate=TestCA().issue_user("Jane Doe"), uploaded_proxy=True)
    async with running_app(settings) as running:
        client, auth = running.client, bearer(iam, "jane", "proxy:generate")
        made = await client.post(
            "/api/v1/submissions", json={"application": "gridjob"}, headers=auth
        )
        assert made.status_code == 201, made.text
        proxy = (await me(client, auth))["proxy"]
        assert proxy["source"] == "iam"  # type: ignore[index]
        # IAM's 12 h is less than the 48 h a new proxy is asked for: the user is told why.
        assert "IAM gives managed proxies of at most 12.0 h" in proxy["shortened"]  # type: ignore[index]


#: Its jobs may run 16 h (CPU time x the wall-time factor 2): longer than IAM's proxies last.
LONG_APP = PROXY_APP.replace("cpu_time: 60", "cpu_time: 28800")


@pytest.mark.parametrize(
    ("sources", "advice"),
    [
        (["iam", "upload"], "Upload your certificate on the account page"),
        (["iam"], "Ask Concordia's operator to add upload to proxy_sources"),
    ],
)
async def test_a_refusal_for_want_of_a_long_enough_proxy_says_what_to_do(
    tmp_path: Path, iam: IamDouble, sources: list[str], advice: str
) -> None:
    settings = grid_settings(tmp_path, iam, LONG_APP, proxy_sources=sources)
    iam.add_user("jane", certificate=TestCA().issue_user("Jane Doe"), uploaded_proxy=True)
    async with running_app(settings) as running:
        auth = bearer(iam, "jane", "proxy:generate")
        submit = {"application": "gridjob"}
        refused = await running.client.post("/api/v1/submissions", json=submit, headers=auth)
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert "IAM's managed proxy: its proxy lasts 12.0 h, but these jobs need 16.0 h" in detail
        assert "IAM gives managed proxies of at most 12.0 h" in detail
        assert advice in detail, detail
        assert "renew the certificate" not in detail  # it would not help


async def test_a_longer_proxy_than_iam_gives_comes_from_the_next_source(
    tmp_path: Path, iam: IamDouble, image_seed: Path
) -> None:
    settings = iam_settings(tmp_path / "var", iam, proxy_sources=["iam", "upload"])
    cert = TestCA().issue_user("Jane Doe")
    iam.add_user("jane", certificate=cert, uploaded_proxy=True)
    async with running_app(settings) as running:
        client, auth = running.client, bearer(iam, "jane", "proxy:generate")
        ask = {"lifetime_hours": 30}
        only_iam = await client.post("/api/v1/me/proxy", json=ask, headers=auth)
        assert only_iam.status_code == 201, only_iam.text
        view = only_iam.json()
        assert view["source"] == "iam" and view["seconds_left"] <= 12 * 3600
        shortened = view["shortened"]
        assert shortened.startswith("12.0 h instead of the 30.0 h asked."), shortened
        assert "IAM gives managed proxies of at most 12.0 h" in shortened
        assert "your uploaded certificate: no certificate uploaded" in shortened

        await client.post("/api/v1/me/scim", headers=auth)
        assert (await upload(client, auth, {"file": cert.pkcs12("x")}, "x")).status_code == 201
        both = await client.post("/api/v1/me/proxy", json=ask, headers=auth)
        assert both.status_code == 201, both.text
        view = both.json()
        assert view["source"] == "upload" and view["shortened"] is None
        assert 29 * 3600 < view["seconds_left"] <= 30 * 3600
        assert (await me(client, auth))["proxy"]["shortened"] is None  # type: ignore[index]


async def test_issuers_are_shown_in_dirac_form_like_subjects(
    tmp_path: Path, iam: IamDouble, image_seed: Path
) -> None:
    settings = iam_settings(tmp_path / "var", iam)
    iam.add_user("jane", certificate=TestCA().issue_user("Jane Doe"))
    async with running_app(settings) as running:
        client, auth = running.client, bearer(iam, "jane")
        await client.post("/api/v1/me/scim", headers=auth)
        certificate = (await me(client, auth))["certificates"][0]  # type: ignore[index]
        assert certificate["dirac_dn"] == "/C=NL/O=Nikhef/CN=Jane Doe"
        ca = "/C=NL/O=Concordia Tests/CN=Concordia Test CA"
        assert certificate["issuer_dirac_dn"] == ca
