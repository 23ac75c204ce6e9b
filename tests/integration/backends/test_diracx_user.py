"""Per-user DiracX (diracx_auth = user): a user connects their own DiracX account (DiracX's
authorization code flow with PKCE, DiracX signing them in at the IAM double), and their grid
jobs run in a real DiracX as them, with their tokens kept encrypted and refreshed."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from concordia.backends.base import JobSpec
from concordia.db.tables import User, UserSecret
from concordia.logic import diracx_accounts
from tests.conftest import running_app
from tests.diracx.fixtures import JANE, JANE_SUB, USER_GROUP, DiracX
from tests.diracx.site import Site
from tests.iam.pki import TestCA
from tests.iam.server import IamDouble
from tests.integration.auth.test_iam import PUBLIC_URL, IamApp
from tests.integration.backends.test_diracx_backend import grid_settings, refs_of, wait_jobs

HIDDEN = re.compile(r'type="hidden" name="([^"]+)" value="([^"]*)"')


@pytest.fixture
async def user_grid(tmp_path: Path, iam: IamDouble, diracx: DiracX) -> AsyncIterator[IamApp]:
    """Concordia signing people in with the IAM double, DiracX in per-user mode (and no
    exchange secret: nothing can act for a user who has not connected)."""
    iam.add_redirect_uri(f"{PUBLIC_URL}/auth/callback")
    # DiracX is a client of the same IAM: it signs users in there for their VO.
    iam.add_client("diracx", redirect_uris=[f"{diracx.url}/api/auth/authorize/complete"])
    iam.add_user(JANE, sub=JANE_SUB)  # the subject DiracX's registry lists for jane
    settings = grid_settings(
        tmp_path,
        diracx,
        oidc_issuer=iam.url,
        oidc_client_id="concordia",
        oidc_client_secret="concordia-secret",
        public_url=PUBLIC_URL,
        diracx_auth="user",
        diracx_legacy_secret="",
    )
    async with running_app(settings) as running:
        yield IamApp(running, iam, TestCA())


async def csrf_of(browser: httpx.AsyncClient) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', (await browser.get("/account")).text)
    assert found
    return found.group(1)


async def connect(
    app: IamApp, browser: httpx.AsyncClient, vo: str = "cta", at_iam_as: str = JANE
) -> httpx.Response:
    """Account page -> Connect -> DiracX -> IAM's form (signing in as ``at_iam_as``) ->
    DiracX -> back on Concordia."""
    start = await browser.post("/account/diracx", data={"csrf": await csrf_of(browser), "vo": vo})
    assert start.status_code == 302, start.text
    async with httpx.AsyncClient() as web:  # the browser, on the other sites
        to_iam = await web.get(start.headers["location"])
        assert to_iam.status_code in (302, 307), to_iam.text
        form = await web.get(to_iam.headers["location"])
        fields = dict(HIDDEN.findall(form.text))
        fields.update(username=at_iam_as, password=f"pw-{at_iam_as}", decision="signin")
        signed = await web.post(f"{app.iam.url}/authorize", data=fields)
        assert signed.status_code == 302, signed.text
        back = await web.get(signed.headers["location"])
        assert back.status_code in (302, 307), back.text
    location = urlsplit(back.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == (
        f"{PUBLIC_URL}/auth/diracx/callback"
    )
    return await browser.get(f"{location.path}?{location.query}")


async def test_a_user_connects_diracx_and_their_jobs_run_as_them(
    user_grid: IamApp, diracx: DiracX, site: Site
) -> None:
    app = user_grid
    async with app.browser() as browser:
        await app.sign_in(browser, JANE)
        api = {"X-CSRF-Token": await csrf_of(browser)}
        refused = await browser.post(
            "/api/v1/submissions", json={"application": "gridhello"}, headers=api
        )
        assert refused.status_code == 409
        assert "not connected for cta/cta_user" in refused.json()["detail"]
        assert (await browser.get("/api/v1/jobs")).json()["total"] == 0  # nothing stored

        page = await browser.get("/account")
        assert "Connect your DiracX account" in page.text
        start = await browser.post(
            "/account/diracx", data={"csrf": api["X-CSRF-Token"], "vo": "cta"}
        )
        query = parse_qs(urlsplit(start.headers["location"]).query)
        assert start.headers["location"].startswith(f"{diracx.url}/api/auth/authorize?")
        assert query["scope"] == ["vo:cta group:cta_user"]
        assert query["code_challenge_method"] == ["S256"] and query["state"]
        assert query["client_id"] == ["myDIRACClientID"]

        done = await connect(app, browser)
        assert done.status_code == 303 and done.headers["location"] == "/account"
        page = await browser.get("/account")
        assert "jobs of cta run as jane in cta_user" in page.text
        me = (await browser.get("/api/v1/me")).json()
        assert me["diracx_per_user"] is True
        assert [(c["vo"], c["group"], c["dirac_user"]) for c in me["diracx"]] == [
            ("cta", "cta_user", JANE)
        ]
        assert me["diracx"][0]["usable_until"]

        made = await browser.post(
            "/api/v1/submissions",
            json={"application": "gridhello", "parameters": {"jobs": 2}},
            headers=api,
        )
        assert made.status_code == 201, made.text
        ids = [j["id"] for j in (await browser.get("/api/v1/jobs")).json()["items"]]
        with site.running():
            jobs = await wait_jobs(browser, ids, "Done", timeout=120)
    # In DiracX the jobs are jane's own (a normal user sees only their jobs).
    found = diracx.rows(refs_of(jobs), "Owner", "OwnerGroup")
    assert {(r["Owner"], r["OwnerGroup"]) for r in found} == {(JANE, USER_GROUP)}
    assert len(found) == 2

    # The tokens are kept encrypted: neither of them in the database row nor on the page.
    platform = app.running.platform
    all_kept = await diracx_accounts._read(platform.db, platform.keyring, await _user_id(app))
    kept = all_kept["cta/cta_user"]
    async with platform.reading() as session:
        row = await session.scalar(
            select(UserSecret).where(UserSecret.kind == diracx_accounts.KIND)
        )
    assert row is not None
    for token in (kept["access_token"], kept["refresh_token"]):
        assert token and token not in row.ciphertext and token not in json.dumps(row.info)
        assert token not in page.text and token not in json.dumps(me)


async def test_tokens_are_refreshed_and_a_sign_in_diracx_ends_is_dropped_with_why(
    user_grid: IamApp, diracx: DiracX
) -> None:
    app = user_grid
    platform = app.running.platform
    async with app.browser() as browser:
        await app.sign_in(browser, JANE)
        await connect(app, browser)
        me = (await browser.get("/api/v1/me")).json()
        user_id = await _user_id(app)
        first = await diracx_accounts._read(platform.db, platform.keyring, user_id)
        entry = first["cta/cta_user"]
        # The access token runs out: the next use refreshes it (DiracX rotates the refresh
        # token, and the new one is what Concordia keeps).
        entry["expires_at"] = 0
        await diracx_accounts._write(platform.db, platform.keyring, user_id, first)
        token, _ = await diracx_accounts.access_token(
            platform.db, platform.backends, platform.keyring, user_id, "cta", USER_GROUP
        )
        all_kept = await diracx_accounts._read(platform.db, platform.keyring, user_id)
        second = all_kept["cta/cta_user"]
        assert token == second["access_token"] != entry["access_token"]
        assert second["refresh_token"] != entry["refresh_token"]
        ok = httpx.post(
            f"{diracx.url}/api/jobs/search",
            json={"parameters": ["JobID"]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert ok.status_code in (200, 206)

        # Someone replays the old refresh token: DiracX revokes all of jane's sign-ins.
        replay = httpx.post(
            f"{diracx.url}/api/auth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": entry["refresh_token"],
                "client_id": "myDIRACClientID",
            },
        )
        assert replay.status_code >= 400
        second["expires_at"] = 0
        await diracx_accounts._write(
            platform.db, platform.keyring, user_id, {"cta/cta_user": second}
        )
        api = {"X-CSRF-Token": await csrf_of(browser)}
        refused = await browser.post(
            "/api/v1/submissions", json={"application": "gridhello"}, headers=api
        )
        assert refused.status_code == 409
        assert "DiracX ended your sign-in for cta/cta_user" in refused.json()["detail"]
        assert (await browser.get("/api/v1/me")).json()["diracx"] == []  # dropped
        assert me["diracx"]  # it was there before


async def test_disconnecting_forgets_the_tokens(user_grid: IamApp) -> None:
    app = user_grid
    async with app.browser() as browser:
        await app.sign_in(browser, JANE)
        await connect(app, browser)
        csrf = await csrf_of(browser)
        out = await browser.post("/account/diracx/disconnect", data={"csrf": csrf, "vo": "cta"})
        assert out.status_code == 303
        assert (await browser.get("/api/v1/me")).json()["diracx"] == []
        again = await browser.post("/account/diracx/disconnect", data={"csrf": csrf, "vo": "cta"})
        assert again.status_code == 409 and "not connected" in again.text
        forged = await browser.post("/account/diracx", data={"vo": "cta"})
        assert forged.status_code == 403  # CSRF
        stranger = await browser.post("/account/diracx", data={"csrf": csrf, "vo": "km3net"})
        assert stranger.status_code == 403 and "not recognised as a member" in stranger.text
        stray = await browser.get("/auth/diracx/callback?code=x&state=y")
        assert stray.status_code == 400
    # Jobs of a user who is not connected (any more) are refused by the backend with why:
    # the reconciler fails them with it, they are not retried for ever.
    spec = JobSpec(
        uuid=str(uuid.uuid4()), job_id=1, name="orphan", argv=["true"], cpu_time=600,
        owner=JANE, vo="cta", group=USER_GROUP, job_group="orphan.1",
    )  # fmt: skip
    [ref] = await app.running.platform.backends["diracx"].submit([spec])
    assert ref.ref == "" and ref.error and "not connected for cta/cta_user" in ref.error


async def _user_id(app: IamApp) -> int:
    async with app.running.platform.reading() as session:
        user_id = await session.scalar(select(User.id).where(User.username == JANE))
    assert user_id is not None
    return user_id


async def test_connecting_someone_elses_diracx_account_is_refused(user_grid: IamApp) -> None:
    app = user_grid
    app.iam.add_user("john")  # in CTA too, signed in to Concordia as himself
    async with app.browser() as browser:
        await app.sign_in(browser, "john")
        # ... but the browser signs in to IAM as jane when DiracX sends it there.
        done = await connect(app, browser, at_iam_as=JANE)
        assert done.status_code == 403
        assert "another IAM account than yours" in done.text
        assert (await browser.get("/api/v1/me")).json()["diracx"] == []  # nothing kept
