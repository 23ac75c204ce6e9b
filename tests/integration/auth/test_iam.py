"""IAM sign-in against the loopback IAM double: code flow with PKCE, memberships from each
token profile, SCIM certificates, session refresh, bearer JWTs, VO checks on submissions."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from concordia.auth import oidc
from concordia.db.tables import BrowserSession, User, UserSecret
from concordia.logic.iam_session import iam_access_token
from concordia.logic.identity import Identity, digest
from concordia.settings import Settings
from tests.conftest import Running, free_port, make_settings, running_app, seed_images
from tests.iam.fixtures import serving_iam
from tests.iam.pki import TestCA, UserCert
from tests.iam.server import IamDouble

PUBLIC_URL = "http://testserver"
SCIM_DN = "CN=Jane Doe,O=Nikhef,C=NL"
DIRAC_DN = "/C=NL/O=Nikhef/CN=Jane Doe"


def iam_settings(data_dir: Path, iam: IamDouble, **overrides: object) -> Settings:
    iam.add_redirect_uri(f"{PUBLIC_URL}/auth/callback")
    values: dict[str, object] = {
        "oidc_issuer": iam.url,
        "oidc_client_id": "concordia",
        "oidc_client_secret": "concordia-secret",
        "oidc_cli_client_id": "concordia-cli",
        "public_url": PUBLIC_URL,
    }
    values.update(overrides)
    return make_settings(data_dir, **values)


@dataclass
class IamApp:
    running: Running
    iam: IamDouble
    ca: TestCA

    def browser(self) -> httpx.AsyncClient:
        """A client of Concordia keeping cookies, as a browser does."""
        transport = self.running.client._transport
        return httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL)

    async def sign_in(
        self,
        browser: httpx.AsyncClient,
        username: str,
        password: str | None = None,
        login: str = "/login",
    ) -> httpx.Response:
        """Through IAM's login form, as a person would; the answer to the callback."""
        start = await browser.get(login)
        assert start.status_code == 302, start.text
        async with httpx.AsyncClient() as idp:
            form = await idp.get(start.headers["location"])
            fields = dict(re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', form.text))
            fields.update(
                username=username, password=password or f"pw-{username}", decision="signin"
            )
            answer = await idp.post(f"{self.iam.url}/authorize", data=fields)
        if answer.status_code != 302:
            return answer
        back = urlsplit(answer.headers["location"])
        return await browser.get(f"{back.path}?{back.query}")


@pytest.fixture
async def iam_app(tmp_path: Path, iam: IamDouble, image_seed: Path) -> AsyncIterator[IamApp]:
    settings = seed_images(iam_settings(tmp_path / "var", iam), image_seed)
    async with running_app(settings) as running:
        yield IamApp(running, iam, TestCA())


def jane(app: IamApp, **kwargs: object) -> UserCert:
    cert = app.ca.issue_user("Jane Doe")
    app.iam.add_user("jane", certificate=cert, **kwargs)  # type: ignore[arg-type]
    return cert


async def test_sign_in_with_pkce_recognises_memberships_and_reads_the_certificate(
    iam_app: IamApp,
) -> None:
    jane(iam_app)
    async with iam_app.browser() as browser:
        start = await browser.get("/login")
        query = parse_qs(urlsplit(start.headers["location"]).query)
        assert query["code_challenge_method"] == ["S256"]
        assert len(query["code_challenge"][0]) >= 43 and query["nonce"] and query["state"]
        assert "wlcg.groups" in query["scope"][0].split()
        done = await iam_app.sign_in(browser, "jane")
        assert done.status_code == 303 and done.headers["location"] == "/"
        me = (await browser.get("/api/v1/me")).json()
        assert me["mode"] == "iam" and me["username"] == "jane"
        assert me["vos"] == ["escape", "cta"]
        assert me["recognised"] == "Recognised as a member of ESCAPE, CTA"
        assert me["certificate_dn"] == DIRAC_DN
        assert me["certificates"][0]["subject_dn"] == SCIM_DN
        page = await browser.get("/account")
        assert "Recognised as a member of ESCAPE, CTA" in page.text
        assert DIRAC_DN in page.text
    # The session cookie is signed and HttpOnly; nothing of IAM's tokens is in it.
    assert iam_app.iam.count("/scim/Me") == 1


@pytest.mark.parametrize(
    ("asked", "landing"),
    [
        ("/jobs?status=Done", "/jobs?status=Done"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/\r\nSet-Cookie: stolen=1", "/%0D%0ASet-Cookie:%20stolen=1"),
        ("/\t/evil.example", "/%09/evil.example"),
    ],
    ids=["own-page", "other-host", "backslash", "absolute", "crlf", "tab"],
)
async def test_after_sign_in_only_a_page_of_concordia_is_opened(
    iam_app: IamApp, asked: str, landing: str
) -> None:
    jane(iam_app)
    async with iam_app.browser() as browser:
        done = await iam_app.sign_in(browser, "jane", login=f"/login?next={quote(asked)}")
    assert done.status_code == 303
    assert done.headers["location"] == landing
    assert all(b"stolen" not in v for name, v in done.headers.raw if name != b"location")


@pytest.mark.parametrize("profile", ["wlcg", "iam", "aarc"])
async def test_each_token_profile_gives_the_same_memberships(iam_app: IamApp, profile: str) -> None:
    iam_app.iam.state.profile = profile  # type: ignore[assignment]
    iam_app.iam.add_user("kim", groups=["/escape", "/escape/km3net"])
    async with iam_app.browser() as browser:
        assert (await iam_app.sign_in(browser, "kim")).status_code == 303
        me = (await browser.get("/api/v1/me")).json()
    assert me["vos"] == ["escape", "km3net"], me["groups"]
    assert me["username"] == "kim"


async def test_refused_or_broken_sign_ins_say_why(iam_app: IamApp) -> None:
    iam_app.iam.add_user("jane")
    async with iam_app.browser() as browser:
        wrong = await iam_app.sign_in(browser, "jane", password="nope")
        assert wrong.status_code == 401 and "Bad credentials" in wrong.text  # IAM's own form
        assert (await browser.get("/api/v1/me")).status_code == 401
        forged = await browser.get("/auth/callback?code=abc&state=not-ours")
        assert forged.status_code == 401
        denied = await browser.get("/auth/callback?error=access_denied&state=x")
        assert denied.status_code == 401 and "access_denied" in denied.text
        assert (await browser.get("/api/v1/me")).status_code == 401


async def test_sign_in_works_when_scim_is_forbidden_or_down(iam_app: IamApp) -> None:
    jane(iam_app)
    for mode, status in [("forbidden", "forbidden"), ("down", "unreachable")]:
        iam_app.iam.state.scim = mode  # type: ignore[assignment]
        async with iam_app.browser() as browser:
            assert (await iam_app.sign_in(browser, "jane")).status_code == 303
            me = (await browser.get("/api/v1/me")).json()
            assert me["scim"]["status"] == status and me["certificate_dn"] is None
            assert me["recognised"].startswith("Recognised")
            page = await browser.get("/account")
            assert "could not be read" in page.text


async def test_no_certificate_linked_explains_how_to_link_one(iam_app: IamApp) -> None:
    iam_app.iam.add_user("jane")
    async with iam_app.browser() as browser:
        await iam_app.sign_in(browser, "jane")
        page = await browser.get("/account")
    assert "no certificate linked" in page.text and "Link certificate" in page.text


async def test_the_session_refreshes_iam_tokens_and_ends_when_iam_revokes_them(
    iam_app: IamApp,
) -> None:
    iam_app.iam.state.access_token_lifetime = 30  # under the refresh margin: every request
    iam_app.iam.add_user("jane")
    async with iam_app.browser() as browser:
        await iam_app.sign_in(browser, "jane")
        assert iam_app.iam.count("/token", grant_type="refresh_token") == 0
        assert (await browser.get("/api/v1/me")).status_code == 200
        assert iam_app.iam.count("/token", grant_type="refresh_token") == 1
        iam_app.iam.state.refresh_tokens.clear()  # revoked in IAM
        gone = await browser.get("/api/v1/me")
        assert gone.status_code == 401
        assert (await browser.get("/account")).status_code == 401


async def test_iam_access_tokens_are_bearer_tokens_and_forgeries_are_refused(
    iam_app: IamApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    iam = iam_app.iam
    iam.add_user("jane")
    api = iam_app.running.client
    good = iam.token_for("jane")
    me = await api.get("/api/v1/me", headers={"Authorization": f"Bearer {good}"})
    assert me.status_code == 200 and me.json()["vos"] == ["escape", "cta"]
    assert me.json()["auth"] == "iam-token"

    claims = iam.access_claims("jane")
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "signature": iam.mint(claims, key=foreign, headers={"kid": iam.kid}),
        "expired": iam.mint({**claims, "exp": int(time.time()) - 600}),
        "issued by": iam.mint({**claims, "iss": "https://other-iam.example.org/"}),
        "not a JWT": "abc.def.ghi",
    }
    for reason, token in cases.items():
        refused = await api.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 401, reason
        assert reason in refused.json()["detail"], (reason, refused.json())
        assert refused.headers["www-authenticate"] == "Bearer"

    # Signed with a key Concordia has not fetched yet: it fetches the keys again (rate
    # limited against forged key ids; the limit is lifted here to test at once).
    monkeypatch.setattr(oidc, "JWKS_REFETCH_SECONDS", 0.0)
    iam.rotate_key()
    rotated = iam.token_for("jane")
    ok = await api.get("/api/v1/me", headers={"Authorization": f"Bearer {rotated}"})
    assert ok.status_code == 200


async def test_a_key_changed_under_its_kid_is_fetched_again_and_forgeries_still_fail(
    iam_app: IamApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    iam = iam_app.iam
    jane(iam_app)
    api = iam_app.running.client

    async def bearer(token: str) -> httpx.Response:
        return await api.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})

    async with iam_app.browser() as browser:
        assert (await iam_app.sign_in(browser, "jane")).status_code == 303
    assert (await bearer(iam.token_for("jane"))).status_code == 200
    fetched = iam.count("/jwk")

    # IAM's keystore replaced, the kid kept: a sign-in and a bearer call fetch the keys
    # again (once for both: one cache). The rate limit is lifted to test at once.
    monkeypatch.setattr(oidc, "JWKS_REFETCH_SECONDS", 0.0)
    iam.change_key()
    async with iam_app.browser() as browser:
        assert (await iam_app.sign_in(browser, "jane")).status_code == 303
        assert (await browser.get("/api/v1/me")).json()["username"] == "jane"
    assert (await bearer(iam.token_for("jane"))).status_code == 200
    assert iam.count("/jwk") == fetched + 1

    # Signed by a key IAM never published, under its kid: refused after one more look.
    iam.change_key(publish=False)
    async with iam_app.browser() as browser:
        refused = await iam_app.sign_in(browser, "jane")
        assert refused.status_code == 401 and "signature is not IAM" in refused.text
        assert (await browser.get("/api/v1/me")).status_code == 401
    forged = await bearer(iam.token_for("jane"))
    assert forged.status_code == 401 and "signature" in forged.json()["detail"]

    # With the limit in force, forged tokens do not make Concordia ask IAM again and again.
    monkeypatch.setattr(oidc, "JWKS_REFETCH_SECONDS", 30.0)
    fetched = iam.count("/jwk")
    for _ in range(20):
        assert (await bearer(iam.token_for("jane"))).status_code == 401
    assert iam.count("/jwk") == fetched


async def test_keys_unreadable_when_a_token_needs_them_is_a_503(
    tmp_path: Path, image_seed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ExitStack() as issuer:
        iam = issuer.enter_context(serving_iam())  # this test's own: it is stopped below
        iam.add_user("jane")
        settings = seed_images(iam_settings(tmp_path / "var", iam), image_seed)
        async with running_app(settings) as running:
            headers = {"Authorization": f"Bearer {iam.token_for('jane')}"}
            assert (await running.client.get("/api/v1/me", headers=headers)).status_code == 200
            monkeypatch.setattr(oidc, "JWKS_REFETCH_SECONDS", 0.0)
            iam.change_key()
            headers = {"Authorization": f"Bearer {iam.token_for('jane')}"}
            issuer.close()
            answer = await running.client.get("/api/v1/me", headers=headers)
            assert answer.status_code == 503, answer.text
            assert "IAM's keys cannot be read" in answer.json()["detail"]


async def test_the_audience_is_checked_where_configured(
    tmp_path: Path, iam: IamDouble, image_seed: Path
) -> None:
    iam.add_user("jane")
    settings = iam_settings(tmp_path / "var", iam, oidc_audience="https://concordia.example")
    async with running_app(settings) as running:
        for audience, status in [("https://concordia.example", 200), ("someone-else", 401)]:
            token = iam.token_for("jane", audience=audience)
            answer = await running.client.get(
                "/api/v1/me", headers={"Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == status, answer.text
        # The refusal names the claim that failed, and what was expected of it.
        detail = answer.json()["detail"]
        assert "'aud'" in detail and "https://concordia.example" in detail, detail
        assert "not valid yet" not in detail


async def test_a_token_not_valid_yet_is_told_apart_from_a_wrong_audience(
    iam_app: IamApp,
) -> None:
    iam_app.iam.add_user("jane")
    claims = iam_app.iam.access_claims("jane")
    early = iam_app.iam.mint({**claims, "nbf": int(time.time()) + 3600})
    answer = await iam_app.running.client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {early}"}
    )
    assert answer.status_code == 401
    assert "not valid yet" in answer.json()["detail"] and "'nbf'" in answer.json()["detail"]


@pytest.mark.parametrize(("trust", "stored"), [(0.0, ["/escape", "/escape/cta"]), (3600.0, [])])
async def test_a_checked_iam_token_is_trusted_for_the_window_only(
    tmp_path: Path, iam: IamDouble, trust: float, stored: list[str]
) -> None:
    iam.add_user("jane")
    settings = iam_settings(tmp_path / "var", iam, api_token_trust_seconds=trust)
    async with running_app(settings) as running:
        token = iam.token_for("jane")
        headers = {"Authorization": f"Bearer {token}"}
        assert (await running.client.get("/api/v1/me", headers=headers)).status_code == 200
        # The account changed since (another sign-in read other groups). Outside a trust
        # window the account is read again and the token's groups are written back; within
        # one, the caller checked a moment ago stands, as for API tokens.
        async with running.platform.writing() as session:
            user = await session.scalar(select(User).where(User.username == "jane"))
            assert user is not None
            user.groups = []
        me = await running.client.get("/api/v1/me", headers=headers)
        assert me.status_code == 200 and me.json()["vos"] == ["escape", "cta"]
        async with running.platform.reading() as session:
            groups = await session.scalar(select(User.groups).where(User.username == "jane"))
        assert groups == stored


async def test_an_iam_token_is_trusted_no_longer_than_it_lives(
    tmp_path: Path, iam: IamDouble
) -> None:
    iam.add_user("jane")
    settings = iam_settings(tmp_path / "var", iam, api_token_trust_seconds=3600.0)
    async with running_app(settings) as running:
        token = iam.token_for("jane", lifetime=60)
        answer = await running.client.get(
            "/api/v1/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 200
        _, until = running.platform.keyring.trusted_tokens[digest(token)]
        assert until <= time.monotonic() + 60


async def test_with_an_audience_the_web_sign_in_asks_iam_for_it(
    tmp_path: Path, iam: IamDouble, image_seed: Path
) -> None:
    """The access token a browser sign-in gets from IAM is one Concordia then accepts."""
    settings = iam_settings(tmp_path / "var", iam, oidc_audience="https://concordia.example")
    async with running_app(settings) as running:
        app = IamApp(running, iam, TestCA())
        jane(app)
        async with app.browser() as browser:
            assert (await app.sign_in(browser, "jane")).status_code == 303
            assert (await browser.get("/api/v1/me")).json()["username"] == "jane"
        async with running.platform.reading() as session:
            user_id = await session.scalar(select(User.id).where(User.username == "jane"))
        assert user_id is not None
        identity = Identity(user_id=user_id, username="jane", display_name="", auth="session")
        token = await iam_access_token(running.platform.db, running.platform.keyring, identity)
        answer = await running.client.get(
            "/api/v1/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 200, answer.text


async def test_applications_are_open_to_their_vos_only_and_submissions_record_the_vo(
    tmp_path: Path, iam: IamDouble, image_seed: Path
) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    for name, vos in [("ctaonly", "[cta]"), ("km3only", "[km3net]")]:
        (apps / f"{name}.yaml").write_text(
            f"name: {name}\ntitle: {name.upper()}\nvos: {vos}\ncommand: echo hi\ncpu_time: 60\n"
        )
    settings = iam_settings(tmp_path / "var", iam, applications_dir=apps)
    iam.add_user("jane")  # /escape, /escape/cta
    async with running_app(settings) as running:
        auth = {"Authorization": f"Bearer {iam.token_for('jane')}"}
        refused = await running.client.post(
            "/api/v1/submissions", json={"application": "km3only"}, headers=auth
        )
        assert refused.status_code == 403
        assert "open to members of KM3NeT" in refused.json()["detail"]
        assert "ESCAPE, CTA" in refused.json()["detail"]
        for application, vo in [("ctaonly", "km3net"), ("km3only", "escape")]:
            wrong_vo = await running.client.post(
                "/api/v1/submissions", json={"application": application, "vo": vo}, headers=auth
            )
            assert wrong_vo.status_code == 403, (application, vo, wrong_vo.text)
        jobs = await running.client.get("/api/v1/jobs", headers=auth)
        assert jobs.json()["total"] == 0  # nothing stored by the refusals
        made = await running.client.post(
            "/api/v1/submissions", json={"application": "ctaonly"}, headers=auth
        )
        assert made.status_code == 201, made.text
        assert made.json()["vo"] == "cta" and made.json()["group"] == "cta_user"
        listed = (await running.client.get("/api/v1/applications", headers=auth)).json()
        reasons = {app["name"]: app["not_allowed"] for app in listed}
        assert reasons["ctaonly"] is None and "open to members of KM3NeT" in reasons["km3only"]

        # In the browser: the choice says so, and a submission is refused with the reason.
        browser_app = IamApp(running, iam, TestCA())
        async with browser_app.browser() as browser:
            await browser_app.sign_in(browser, "jane")
            choice = await browser.get("/concordia")
            assert "Not open to you" in choice.text and "open to members of KM3NeT" in choice.text
            form = await browser.get("/concordia/km3only")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf
            refused = await browser.post("/concordia/km3only", data={"csrf": csrf.group(1)})
            assert refused.status_code == 403
            assert "Nothing was submitted" in refused.text and "KM3NeT" in refused.text


async def test_local_mode_is_a_member_of_every_vo(app: Running) -> None:
    me = (await app.client.get("/api/v1/me")).json()
    assert me["mode"] == "local" and me["vos"] == ["escape", "cta", "km3net"]
    assert (await app.client.get("/api/v1/auth")).json()["mode"] == "local"


async def test_account_forms_need_the_session_csrf_token(iam_app: IamApp) -> None:
    cert = jane(iam_app)
    async with iam_app.browser() as browser:
        await iam_app.sign_in(browser, "jane")
        files = {"file": ("jane.p12", cert.pkcs12("pw"))}
        forged = await browser.post("/account/credential", files=files, data={"password": "pw"})
        assert forged.status_code == 403
        assert (await browser.post("/logout")).status_code == 403  # still signed in
        me = (await browser.get("/api/v1/me")).json()
        assert me["credential"] is None
        page = await browser.get("/account")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        made = await browser.post(
            "/account/credential", files=files, data={"password": "pw", "csrf": csrf.group(1)}
        )
        assert made.status_code == 303
        assert (await browser.get("/api/v1/me")).json()["credential"]["dn"] == DIRAC_DN
        out = await browser.post("/logout", data={"csrf": csrf.group(1)})
        assert out.status_code == 303
        assert (await browser.get("/api/v1/me")).status_code == 401


async def test_memberships_follow_iam_and_a_client_error_does_not_sign_out(
    iam_app: IamApp,
) -> None:
    iam = iam_app.iam
    iam.state.access_token_lifetime = 30  # every request renews
    iam.add_user("jane")
    async with iam_app.browser() as browser:
        await iam_app.sign_in(browser, "jane")
        assert (await browser.get("/api/v1/me")).json()["vos"] == ["escape", "cta"]
        iam.user("jane").groups = ["/escape"]  # removed from CTA in IAM
        assert (await browser.get("/api/v1/me")).json()["vos"] == ["escape"]
        iam.user("jane").groups = []
        me = (await browser.get("/api/v1/me")).json()
        assert me["vos"] == [] and me["recognised"].startswith("Not recognised")
        # Concordia's own client is refused (its secret rotated in IAM): the person stays
        # signed in, with what Concordia knew.
        iam.state.clients["concordia"].secret = "rotated"
        assert (await browser.get("/api/v1/me")).status_code == 200


async def test_groups_come_from_userinfo_when_the_token_has_none(iam_app: IamApp) -> None:
    iam = iam_app.iam
    iam.state.profile = "iam"
    iam.add_user("kim", groups=["/escape", "/escape/km3net"])
    claims = iam.access_claims("kim")
    for name in ("wlcg.groups", "groups", "eduperson_entitlement"):
        claims.pop(name, None)  # as IAM's iam and aarc profiles issue access tokens
    token = iam.mint(claims)
    me = await iam_app.running.client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {token}"}
    )
    assert me.status_code == 200 and me.json()["vos"] == ["escape", "km3net"]
    # Another relying party's token, or an ID token, does not act here.
    other = iam.mint({**iam.access_claims("kim"), "client_id": "someone-else"})
    refused = await iam_app.running.client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {other}"}
    )
    assert refused.status_code == 401 and "another client" in refused.json()["detail"]
    odd = iam.mint({**iam.access_claims("kim"), "iss": {"not": "a string"}})
    odd_answer = await iam_app.running.client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {odd}"}
    )
    assert odd_answer.status_code == 401


async def csrf_of(browser: httpx.AsyncClient) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', (await browser.get("/account")).text)
    assert found
    return found.group(1)


async def test_signing_out_forgets_the_iam_tokens(iam_app: IamApp) -> None:
    iam_app.iam.add_user("jane")
    async with iam_app.browser() as browser:
        await iam_app.sign_in(browser, "jane")
        async with iam_app.running.platform.reading() as session:
            rows = list(await session.scalars(select(BrowserSession)))
        assert len(rows) == 1 and rows[0].iam_tokens
        assert "access_token" not in rows[0].iam_tokens  # encrypted by the vault
        csrf = await csrf_of(browser)
        assert (await browser.post("/logout", data={"csrf": csrf})).status_code == 303
        async with iam_app.running.platform.reading() as session:
            assert list(await session.scalars(select(BrowserSession))) == []
            assert list(await session.scalars(select(UserSecret))) == []


async def test_a_cookie_copied_before_signing_out_opens_nothing_even_after_a_new_sign_in(
    iam_app: IamApp,
) -> None:
    iam_app.iam.add_user("jane")
    async with iam_app.browser() as browser:
        # A sign-in under way has a session (IAM's state): signing in does not keep its id.
        planted = (await browser.get("/login")).cookies["concordia_session"]
        await iam_app.sign_in(browser, "jane")
        copied = browser.cookies["concordia_session"]
        assert copied != planted
        await browser.post("/logout", data={"csrf": await csrf_of(browser)})
        await iam_app.sign_in(browser, "jane")  # the same person signs in again
        assert browser.cookies["concordia_session"] != copied  # a new session id
        assert (await browser.get("/api/v1/me")).status_code == 200
    for cookie in (copied, planted):
        async with iam_app.browser() as thief:
            thief.cookies.set("concordia_session", cookie)
            me = await thief.get("/api/v1/me")
            assert me.status_code == 401 and me.json()["detail"] == "not authenticated"
            page = await thief.get("/account")
            assert page.status_code == 401 and "/login?next=/account" in page.text
            assert (await thief.post("/api/v1/me/scim")).status_code == 401


async def test_each_session_acts_with_the_iam_tokens_of_its_own_sign_in(iam_app: IamApp) -> None:
    iam = iam_app.iam
    iam.state.access_token_lifetime = 30  # under the refresh margin: every request refreshes
    iam.add_user("jane")
    async with iam_app.browser() as first, iam_app.browser() as second:
        await iam_app.sign_in(first, "jane")
        first_grants = set(iam.state.refresh_tokens)
        await iam_app.sign_in(second, "jane")  # another browser, a newer sign-in
        assert first.cookies["concordia_session"] != second.cookies["concordia_session"]
        for grant in first_grants:
            del iam.state.refresh_tokens[grant]  # IAM ends the first sign-in only
        # The first session does not go on with the second sign-in's tokens...
        assert (await first.get("/api/v1/me")).status_code == 401
        # ...and the second one is not ended with it.
        assert (await second.get("/api/v1/me")).status_code == 200
        assert (
            await second.post("/logout", data={"csrf": await csrf_of(second)})
        ).status_code == 303
        async with iam_app.running.platform.reading() as session:
            assert list(await session.scalars(select(BrowserSession))) == []


async def test_api_tokens_sign_in_on_the_web_in_local_mode_only(iam_app: IamApp) -> None:
    async with iam_app.running.new_client("jane") as api:
        token = api.headers["Authorization"].removeprefix("Bearer ")
    async with iam_app.browser() as browser:
        assert (await browser.get("/login")).status_code == 302  # to IAM: no token form
        refused = await browser.post("/login", data={"token": token})
        assert refused.status_code == 404
        assert (await browser.get("/api/v1/me")).status_code == 401


async def test_iam_down_at_sign_in_is_a_clear_503(tmp_path: Path, iam: IamDouble) -> None:
    settings = iam_settings(tmp_path / "var", iam, oidc_issuer=f"http://127.0.0.1:{free_port()}")
    async with running_app(settings) as running:
        answer = await running.client.get("/login")
        assert answer.status_code == 503 and "IAM cannot be reached" in answer.text


async def test_oversize_bodies_are_refused_before_they_are_read(app: Running) -> None:
    big = b"x" * (app.settings.max_request_bytes + 1)
    declared = await app.client.post("/api/v1/submissions", content=big)
    assert declared.status_code == 413 and "larger than" in declared.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * (app.settings.max_request_bytes // 10)

    chunked = await app.client.post("/api/v1/submissions", content=chunks())
    assert chunked.status_code == 413
    assert (await app.client.get("/api/v1/jobs")).json()["total"] == 0
    scim = await app.client.post("/api/v1/me/scim")
    assert scim.status_code == 409 and "local mode" in scim.json()["detail"]
