"""The IAM test double answers as INDIGO IAM does: OIDC, device flow, SCIM and proxies."""

from __future__ import annotations

import re
import subprocess
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from cryptography import x509
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError
from joserfc.jwk import KeySet

from tests.iam.pki import TestCA, UserCert, new_key, rfc2253
from tests.iam.server import INDIGO_USER_SCHEMA, IamDouble

with warnings.catch_warnings():
    # authlib's notice that it prefers httpx2: noise here, httpx is what the project uses.
    # (authlib.deprecate, imported above with rfc7636, adds an "always" filter when first
    # imported: imported inside this block, it would win over the "ignore".)
    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import OAuth2Client

CALLBACK = "http://127.0.0.1:8765/auth/callback"
LOGIN_SCOPES = "openid profile email offline_access wlcg.groups"
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def jane_cert(ca: TestCA) -> UserCert:
    return ca.issue_user("Jane Doe", email="jane@nikhef.nl", dc=("org", "terena", "tcs"))


@pytest.fixture
def http(iam: IamDouble) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=iam.url, timeout=10) as client:
        yield client


def keys_of(http: httpx.Client) -> KeySet:
    return KeySet.import_key_set(http.get("/jwk").json())


def claims_of(token: str, keys: KeySet) -> dict[str, Any]:
    return jwt.decode(token, keys, algorithms=["RS256"]).claims


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sign_in(http: httpx.Client, authorize_url: str, username: str, password: str) -> httpx.Response:
    """What a browser does: open the login page, post its form with the credentials."""
    page = http.get(authorize_url)
    assert page.status_code == 200, page.text
    assert "<title>INDIGO IAM test double</title>" in page.text
    assert 'name="username"' in page.text and 'name="password"' in page.text
    assert ">Sign in</button>" in page.text
    form = dict(_HIDDEN.findall(page.text))
    return http.post("/authorize", data={**form, "username": username, "password": password})


def authlib_client() -> OAuth2Client:
    """authlib's OAuth client, as Concordia's is configured (client_secret_basic, S256)."""
    return OAuth2Client(
        "concordia",
        "concordia-secret",
        scope=LOGIN_SCOPES,
        redirect_uri=CALLBACK,
        code_challenge_method="S256",
    )


def test_discovery_document(iam: IamDouble, http: httpx.Client) -> None:
    doc = http.get("/.well-known/openid-configuration").json()
    assert doc["issuer"] == iam.url and not iam.url.endswith("/")
    assert doc["authorization_endpoint"] == f"{iam.url}/authorize"
    assert doc["token_endpoint"] == f"{iam.url}/token"
    assert doc["jwks_uri"] == f"{iam.url}/jwk"
    assert doc["userinfo_endpoint"] == f"{iam.url}/userinfo"
    assert doc["device_authorization_endpoint"] == f"{iam.url}/devicecode"
    assert doc["code_challenge_methods_supported"] == ["plain", "S256"]
    assert {"client_secret_basic", "client_secret_post", "none"} <= set(
        doc["token_endpoint_auth_methods_supported"]
    )
    # Restricted scopes exist but IAM does not advertise them.
    assert "wlcg.groups" in doc["scopes_supported"]
    assert "proxy:generate" not in doc["scopes_supported"]
    keys = http.get("/jwk").json()["keys"]
    assert [k["kid"] for k in keys] == ["rsa1"] and "d" not in keys[0]

    iam.state.issuer_trailing_slash = True
    assert http.get("/.well-known/openid-configuration").json()["issuer"] == iam.url + "/"


def test_code_flow_with_pkce_gives_tokens_with_nonce_and_groups(
    iam: IamDouble, http: httpx.Client
) -> None:
    iam.add_user("jane")
    iam.add_redirect_uri(CALLBACK)
    with authlib_client() as client:
        url, state = client.create_authorization_url(
            f"{iam.url}/authorize", code_verifier="v" * 64, nonce="n-0nce"
        )
        assert "code_challenge=" in url
        redirect = sign_in(http, url, "jane", "pw-jane")
        assert redirect.status_code == 302
        location = redirect.headers["location"]
        assert location.startswith(CALLBACK + "?") and f"state={state}" in location
        token = client.fetch_token(
            f"{iam.url}/token", authorization_response=location, code_verifier="v" * 64
        )
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600
    assert set(token["scope"].split()) == set(LOGIN_SCOPES.split())
    keys = keys_of(http)
    id_claims = claims_of(token["id_token"], keys)
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": iam.url},
        aud={"essential": True, "value": "concordia"},
        nonce={"essential": True, "value": "n-0nce"},
        exp={"essential": True},
    ).validate(id_claims)
    assert id_claims["sub"] == iam.user("jane").sub
    assert id_claims["preferred_username"] == "jane"
    assert id_claims["email"] == "jane@example.org"
    assert id_claims["wlcg.groups"] == ["/escape", "/escape/cta"]
    assert "at_hash" not in id_claims
    access = claims_of(token["access_token"], keys)
    assert access["aud"] == "concordia" and access["client_id"] == "concordia"
    assert access["wlcg.groups"] == ["/escape", "/escape/cta"]
    assert access["exp"] - access["iat"] == 3600
    assert iam.count("/token", grant_type="authorization_code", status=200) == 1

    # Codes are single use.
    code = httpx.URL(location).params["code"]
    again = http.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
            "code_verifier": "v" * 64,
        },
        auth=("concordia", "concordia-secret"),
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("verifier", [None, "w" * 64])
def test_missing_or_wrong_verifier_is_refused(
    iam: IamDouble, http: httpx.Client, verifier: str | None
) -> None:
    iam.add_user("jane")
    iam.add_redirect_uri(CALLBACK)
    params = {
        "response_type": "code",
        "client_id": "concordia",
        "redirect_uri": CALLBACK,
        "scope": "openid",
        "state": "s",
        "code_challenge": create_s256_code_challenge("v" * 64),
        "code_challenge_method": "S256",
    }
    location = sign_in(http, str(httpx.URL("/authorize", params=params)), "jane", "pw-jane")
    code = httpx.URL(location.headers["location"]).params["code"]
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
    if verifier is not None:
        data["code_verifier"] = verifier
    refused = http.post("/token", data=data, auth=("concordia", "concordia-secret"))
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"


def test_login_refusals(iam: IamDouble, http: httpx.Client) -> None:
    iam.add_user("jane")
    iam.add_redirect_uri(CALLBACK)
    params = {"response_type": "code", "client_id": "concordia", "scope": "openid"}
    bad = sign_in(
        http,
        str(httpx.URL("/authorize", params={**params, "redirect_uri": CALLBACK})),
        "jane",
        "nope",
    )
    assert bad.status_code == 401 and "Bad credentials" in bad.text
    elsewhere = {**params, "redirect_uri": "http://127.0.0.1:1/evil"}
    page = http.get("/authorize", params=elsewhere)
    assert page.status_code == 400 and "location" not in page.headers
    assert http.get("/authorize", params={**params, "client_id": "nobody"}).status_code == 400
    # Any loopback callback when told so (Concordia's port is only known at run time).
    iam.state.any_loopback_redirect = True
    loopback = {**params, "redirect_uri": "http://127.0.0.1:4321/auth/callback"}
    assert http.get("/authorize", params=loopback).status_code == 200
    # Deny sends the user back with access_denied.
    form = dict(_HIDDEN.findall(http.get("/authorize", params=loopback).text))
    denied = http.post("/authorize", data={**form, "decision": "deny"})
    assert "error=access_denied" in denied.headers["location"]


def test_refresh_token_only_with_offline_access_and_not_rotated(
    iam: IamDouble, http: httpx.Client
) -> None:
    iam.add_user("jane")
    assert "refresh_token" not in iam.tokens_for("jane", ["openid", "profile"])
    first = iam.tokens_for("jane", LOGIN_SCOPES.split())
    refresh = first["refresh_token"]
    with authlib_client() as client:
        for _ in range(2):
            renewed = client.refresh_token(f"{iam.url}/token", refresh_token=refresh)
            assert renewed["refresh_token"] == refresh
            access = claims_of(renewed["access_token"], keys_of(http))
            assert access["sub"] == iam.user("jane").sub
    assert iam.count("/token", grant_type="refresh_token", status=200) == 2
    bad = http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": "forged"},
        auth=("concordia", "concordia-secret"),
    )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    wrong_secret = http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh},
        auth=("concordia", "not-the-secret"),
    )
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"


def test_device_flow(iam: IamDouble, http: httpx.Client) -> None:
    iam.add_user("jane")
    iam.state.device_interval = 1
    start = http.post(
        "/devicecode", data={"client_id": "concordia-cli", "scope": "openid offline_access"}
    ).json()
    assert re.fullmatch(r"[A-Z]{4}-[A-Z]{4}", start["user_code"])
    assert start["verification_uri"] == f"{iam.url}/device"
    assert start["verification_uri_complete"].endswith(f"user_code={start['user_code']}")
    assert start["interval"] == 1 and start["expires_in"] == 600
    poll = {
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "client_id": "concordia-cli",
    }
    poll["device_code"] = start["device_code"]
    assert http.post("/token", data=poll).json()["error"] == "authorization_pending"
    assert http.post("/token", data=poll).json()["error"] == "slow_down"

    iam.approve_device(start["user_code"], "jane")
    tokens = http.post("/token", data=poll).json()
    assert {"access_token", "id_token", "refresh_token"} <= set(tokens)
    assert http.post("/token", data=poll).json()["error"] == "invalid_grant"  # used

    # Through the page, as the user does it in a browser: this time they deny.
    other = http.post("/devicecode", data={"client_id": "concordia-cli", "scope": "openid"})
    code = other.json()["user_code"]
    page = http.get("/device", params={"user_code": code})
    assert "Approve" in page.text and f'value="{code}"' in page.text
    wrong = {"user_code": code, "username": "jane", "password": "nope", "decision": "deny"}
    assert http.post("/device", data=wrong).status_code == 401
    answer = http.post("/device", data={**wrong, "password": "pw-jane"})
    assert answer.status_code == 200 and "Device denied" in answer.text
    poll["device_code"] = other.json()["device_code"]
    assert http.post("/token", data=poll).json()["error"] == "access_denied"


def test_userinfo(iam: IamDouble, http: httpx.Client) -> None:
    iam.add_user("jane")
    info = http.get("/userinfo", headers=bearer(iam.token_for("jane"))).json()
    assert info["sub"] == iam.user("jane").sub
    assert info["preferred_username"] == "jane" and info["email_verified"] is True
    assert info["wlcg.groups"] == ["/escape", "/escape/cta"]
    without_openid = bearer(iam.token_for("jane", ["profile"]))
    assert http.get("/userinfo", headers=without_openid).status_code == 403
    assert http.get("/userinfo").status_code == 401


def test_scim_me_with_certificate_and_its_failure_modes(
    iam: IamDouble, http: httpx.Client, jane_cert: UserCert
) -> None:
    iam.add_user("jane", certificate=jane_cert, uploaded_proxy=True)
    iam.add_user("john")
    token = iam.token_for("jane")
    me = http.get("/scim/Me", headers=bearer(token))
    assert me.status_code == 200
    assert me.headers["content-type"].startswith("application/scim+json")
    body = me.json()
    assert body["schemas"] == ["urn:ietf:params:scim:schemas:core:2.0:User", INDIGO_USER_SCHEMA]
    assert body["id"] == iam.user("jane").sub and body["userName"] == "jane"
    assert [g["display"] for g in body["groups"]] == ["escape", "escape/cta"]
    [cert] = body[INDIGO_USER_SCHEMA]["certificates"]
    assert cert["subjectDn"] == (
        "EMAILADDRESS=jane@nikhef.nl,CN=Jane Doe,O=Nikhef,C=NL,DC=tcs,DC=terena,DC=org"
    )
    assert cert["issuerDn"] == jane_cert.issuer_rfc2253
    assert x509.load_pem_x509_certificate(cert["pemEncodedCertificate"].encode()) == jane_cert.cert
    assert cert["hasProxyCertificate"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", cert["proxyExpirationTime"])
    # No certificate: IAM leaves the list out rather than sending [].
    john = http.get("/scim/Me", headers=bearer(iam.token_for("john"))).json()
    assert "certificates" not in john[INDIGO_USER_SCHEMA]

    expired = iam.mint({**iam.access_claims("jane"), "exp": int(time.time()) - 10})
    assert http.get("/scim/Me", headers=bearer(expired)).status_code == 401
    forged = iam.mint(iam.access_claims("jane"), key=new_key(), headers={"kid": iam.kid})
    assert http.get("/scim/Me", headers=bearer(forged)).status_code == 401

    iam.state.scim_requires_scope = True
    old_iam = http.get("/scim/Me", headers=bearer(token))
    assert old_iam.status_code == 403 and old_iam.json()["error"] == "insufficient_scope"
    scoped = iam.token_for("jane", ["openid", "scim:read"])
    assert http.get("/scim/Me", headers=bearer(scoped)).status_code == 200
    iam.state.scim = "forbidden"
    assert http.get("/scim/Me", headers=bearer(scoped)).status_code == 403
    iam.state.scim = "down"
    assert http.get("/scim/Me", headers=bearer(scoped)).status_code == 503
    assert iam.count("/scim/Me") == 8


def test_proxycert_refusals(iam: IamDouble, http: httpx.Client, jane_cert: UserCert) -> None:
    iam.add_user("jane", certificate=jane_cert)  # linked, but no proxy uploaded
    creds = {"client_id": "concordia", "client_secret": "concordia-secret"}
    allowed = bearer(iam.token_for("jane", ["openid", "proxy:generate"]))
    no_client = http.post("/iam/proxycert", headers=allowed)
    assert no_client.status_code == 401
    assert no_client.json()["error_description"] == "No client credentials found in request"
    bad = http.post("/iam/proxycert", data={**creds, "client_secret": "x"}, headers=allowed)
    assert bad.status_code == 401 and bad.json()["error_description"] == "Bad credentials"
    no_scope = http.post("/iam/proxycert", data=creds, headers=bearer(iam.token_for("jane")))
    assert no_scope.status_code == 403 and no_scope.json()["error"] == "access_denied"
    short = http.post("/iam/proxycert", data={**creds, "lifetimeSecs": "60"}, headers=allowed)
    assert short.status_code == 400 and short.json()["error"].startswith("invalid lifetime")
    missing = http.post("/iam/proxycert", data=creds, headers=allowed)
    assert missing.status_code == 412
    assert missing.json() == {"error": "No proxy found for account 'jane'"}


@pytest.mark.parametrize("stored", ["certificate", "proxy"])
def test_proxycert_chain_verifies_with_openssl(
    iam: IamDouble,
    http: httpx.Client,
    ca: TestCA,
    jane_cert: UserCert,
    tmp_path: Path,
    stored: str,
) -> None:
    # IAM keeps what the user uploaded: their certificate and key, or (voms-proxy-init's
    # output, as IAM's docs show) a long proxy, under which it signs one more level.
    lifetime = timedelta(days=7) if stored == "proxy" else None
    iam.add_user("jane", certificate=jane_cert, uploaded_proxy=True, proxy_lifetime=lifetime)
    creds = {"client_id": "concordia", "client_secret": "concordia-secret"}
    allowed = bearer(iam.token_for("jane", ["openid", "proxy:generate"]))
    answer = http.post("/iam/proxycert", data={**creds, "lifetimeSecs": "7200"}, headers=allowed)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    chain = body["certificate_chain"].encode()
    kinds = re.findall(rb"-----BEGIN ([A-Z ]+)-----", chain)
    certs = x509.load_pem_x509_certificates(chain)
    assert kinds == [b"CERTIFICATE", b"PRIVATE KEY"] + [b"CERTIFICATE"] * (len(certs) - 1)
    assert len(certs) == (3 if stored == "proxy" else 2) and certs[-1] == jane_cert.cert
    proxy = certs[0]
    assert body["identity"] == jane_cert.subject_rfc2253
    assert body["issuer"] == rfc2253(certs[1].subject)
    assert body["subject"] == f"CN={proxy.serial_number}," + body["issuer"]
    not_after = datetime.fromtimestamp(body["not_after"] / 1000, UTC)
    assert not_after == proxy.not_valid_after_utc
    assert 7190 <= (not_after - datetime.now(UTC)).total_seconds() <= 7200

    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", chain, re.S)
    ca.write(tmp_path / "ca.pem")
    (tmp_path / "user.pem").write_bytes(b"".join(blocks[1:]))
    (tmp_path / "proxy.pem").write_bytes(blocks[0])
    verify = subprocess.run(
        [
            *("openssl", "verify", "-allow_proxy_certs", "-CAfile", "ca.pem"),
            *("-untrusted", "user.pem", "proxy.pem"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0 and "proxy.pem: OK" in verify.stdout, verify.stderr

    # The maximum lifetime caps what is asked.
    iam.state.proxy_max_lifetime = 600
    capped = http.post("/iam/proxycert", data={**creds, "lifetimeSecs": "7200"}, headers=allowed)
    assert capped.json()["not_after"] / 1000 - time.time() <= 600


@pytest.mark.parametrize(
    ("profile", "scope", "claims"),
    [
        ("wlcg", "wlcg.groups", {"wlcg.groups": ["/escape", "/escape/cta"], "wlcg.ver": "1.0"}),
        ("iam", "profile", {"groups": ["escape", "escape/cta"], "organisation_name": "escape"}),
        (
            "aarc",
            "eduperson_entitlement",
            {
                "eduperson_entitlement": [
                    "urn:geant:escape.eu:group:escape",
                    "urn:geant:escape.eu:group:escape:cta",
                ]
            },
        ),
    ],
)
def test_group_claim_of_each_profile(
    iam: IamDouble, http: httpx.Client, profile: str, scope: str, claims: dict[str, Any]
) -> None:
    iam.state.profile = profile  # type: ignore[assignment]
    iam.add_user("jane")
    keys = keys_of(http)
    tokens = iam.tokens_for("jane", ["openid", scope])
    for token in (tokens["access_token"], tokens["id_token"]):
        decoded = claims_of(token, keys)
        assert {k: decoded.get(k) for k in claims} == claims
    without = claims_of(iam.token_for("jane", ["openid"]), keys)
    assert not {"wlcg.groups", "groups", "eduperson_entitlement"} & set(without)


def test_wlcg_group_selection_scope(iam: IamDouble, http: httpx.Client) -> None:
    iam.add_user("jane", groups=["/escape", "/escape/cta", "/km3net"])
    token = iam.token_for("jane", ["openid", "wlcg.groups:/km3net"])
    # The group asked for comes first, then (IAM's implicit catch-all) the others, sorted.
    assert claims_of(token, keys_of(http))["wlcg.groups"] == ["/km3net", "/escape", "/escape/cta"]


def test_key_rotation_publishes_both_keys(iam: IamDouble, http: httpx.Client) -> None:
    iam.add_user("jane")
    before = iam.token_for("jane")
    kid = iam.rotate_key()
    after = iam.token_for("jane")
    keys = keys_of(http)
    assert [k.kid for k in keys] == ["rsa1", kid]
    assert jwt.decode(after, keys).header["kid"] == kid
    for token in (before, after):
        assert http.get("/userinfo", headers=bearer(token)).status_code == 200
    with pytest.raises(InvalidKeyIdError):
        jwt.decode(iam.mint({"sub": "x"}, key=new_key()), keys)
    with pytest.raises(BadSignatureError):
        jwt.decode(iam.mint({"sub": "x"}, key=new_key(), headers={"kid": kid}), keys)
