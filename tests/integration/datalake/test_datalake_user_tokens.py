"""The data lake as the user: the real Rucio of the tests takes the IAM double's tokens
(audience rucio), Concordia stores a signed-in user's data as their own Rucio account and
falls back to the service account; another user's token cannot write into their scope."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from concordia.datalake.errors import DatalakeError
from concordia.datalake.rucio import Rucio
from tests.conftest import Running, running_app
from tests.iam.pki import TestCA
from tests.iam.server import IamDouble
from tests.integration.auth.test_iam import PUBLIC_URL, IamApp, csrf_of
from tests.integration.datalake.test_datalake import FINAL, lake_settings, submit
from tests.integration.web.test_api import wait_status
from tests.rucio import RucioServer

#: The scopes of ESCAPE's Rucio client: what its tokens are asked with.
RUCIO_SCOPES = ["openid", "profile", "offline_access", "wlcg", "wlcg.groups"]
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


def iam_user(iam: IamDouble, rucio: RucioServer, account: str) -> None:
    """An IAM account and the Rucio account its subject maps to."""
    iam.add_user(account, sub=f"sub-{account}")
    rucio.add_oidc_identity(account, f"sub-{account}")


def did_account(rucio: RucioServer, scope: str, name: str) -> str:
    """The account that created a DID, as Rucio's records say to root."""
    answer = rucio.as_root("GET", f"dids/{scope}/{name}")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["account"])


def rule_accounts(rucio: RucioServer, scope: str, name: str) -> set[str]:
    answer = rucio.as_root("GET", f"dids/{scope}/{name}/rules")
    return {json.loads(line)["account"] for line in answer.text.splitlines() if line.strip()}


async def test_rucio_takes_a_users_token_only_for_their_own_scope(
    rucio_server: RucioServer, iam: IamDouble
) -> None:
    for account in ("jane", "john"):
        iam_user(iam, rucio_server, account)
    name = f"ds.{id(iam)}"
    jane = iam.token_for("jane", RUCIO_SCOPES, audience="rucio")
    john = iam.token_for("john", RUCIO_SCOPES, audience="rucio")
    concordias = iam.token_for("jane", RUCIO_SCOPES, audience="concordia")
    as_jane = Rucio(rucio_server.url, "jane", token=jane)
    as_john = Rucio(rucio_server.url, "john", token=john)
    not_for_rucio = Rucio(rucio_server.url, "jane", token=concordias)
    try:
        assert await as_jane.whoami() == "jane"
        assert await as_jane.add_dataset("user.jane", name, {}) is True
        with pytest.raises(DatalakeError) as refused:
            await as_john.add_dataset("user.jane", f"{name}.john", {})
        assert refused.value.kind == "AccessDenied"
        with pytest.raises(DatalakeError) as wrong_audience:
            await not_for_rucio.whoami()
        assert wrong_audience.value.kind == "CannotAuthenticate"
    finally:
        for client in (as_jane, as_john, not_for_rucio):
            await client.aclose()
    assert did_account(rucio_server, "user.jane", name) == "jane"
    assert rucio_server.as_root("GET", f"dids/user.jane/{name}.john").status_code == 404


@asynccontextmanager
async def lake_app(
    tmp_path: Path,
    rucio: RucioServer,
    iam: IamDouble,
    **overrides: Any,
) -> AsyncIterator[IamApp]:
    """Concordia signing people in at the IAM double, its data lake the real Rucio."""
    iam.add_redirect_uri(f"{PUBLIC_URL}/auth/callback")
    settings = lake_settings(
        tmp_path,
        oidc_issuer=iam.url,
        oidc_client_id="concordia",
        oidc_client_secret="concordia-secret",
        public_url=PUBLIC_URL,
        **rucio.settings(),
        **overrides,
    )
    async with running_app(settings) as running:
        yield IamApp(running, iam, TestCA())


async def run_lake_job(app: Running, username: str, tag: str) -> tuple[dict[str, Any], str]:
    """One lake job of the user's, waited for; it and its data file's name in Rucio."""
    async with app.new_client(username) as client:
        answer = await submit(
            client, parameters={"jobs": 1, "first_run": 7, "kb": 64},
            datalake={"dataset": f"t.{tag}"},
        )  # fmt: skip
        assert answer.status_code == 201, answer.text
        sub = answer.json()
        job = await wait_status(client, sub["job_ids"][0], FINAL, timeout=120)
        assert job["status"] == "Done", job
        [file] = (await client.get(f"/api/v1/jobs/{job['id']}/datalake")).json()
        got = await client.get(f"/api/v1/jobs/{job['id']}/datalake/{file['name']}")
        assert got.status_code == 200 and len(got.content) == 64 * 1024
    return job, str(file["name"])


async def test_a_signed_in_users_job_data_are_stored_as_their_own_account(
    tmp_path: Path,
    rucio_server: RucioServer,
    iam: IamDouble,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    iam_user(iam, rucio_server, "jane")
    async with lake_app(tmp_path, rucio_server, iam, datalake_user_tokens=True) as app:
        async with app.browser() as browser:
            done = await app.sign_in(browser, "jane")
            assert done.status_code == 303, done.text
            job, name = await run_lake_job(app.running, "jane", f"own.{tmp_path.name[-20:]}")
            # The upload and the read: one token from IAM, kept while it lasts.
            assert iam.count("/token", grant_type="refresh_token") == 1
            said = caplog.text
            caplog.clear()
            await browser.post("/logout", data={"csrf": await csrf_of(browser)})
        async with app.running.new_client("jane") as client:  # signed out: no token of hers
            url = f"/api/v1/jobs/{job['id']}/datalake/{name}"
            assert (await client.get(url)).status_code == 200
        assert "read from the data lake as Rucio service account" in caplog.text
    said += caplog.text
    assert did_account(rucio_server, "user.jane", name) == "jane"
    assert did_account(rucio_server, "user.jane", f"t.own.{tmp_path.name[-20:]}") == "jane"
    assert rule_accounts(rucio_server, "user.jane", name) == {"jane"}
    # The token came from refreshing jane's sign-in (Rucio takes only audience rucio).
    calls = iam.state.calls
    assert any(c.path == "/token" and c.grant_type == "refresh_token" for c in calls)
    wrote = "as Rucio account jane (the user's own IAM token)"
    assert f"job {job['id']}: its data go to the data lake {wrote}" in said
    assert "read from the data lake as Rucio account jane" in said
    assert not JWT.search(said)
    for refresh_token in iam.state.refresh_tokens:
        assert refresh_token not in said


@pytest.mark.parametrize("case", ["setting off", "no sign-in kept"])
async def test_the_service_account_writes_without_a_usable_user_token(
    tmp_path: Path,
    rucio_server: RucioServer,
    iam: IamDouble,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    caplog.set_level(logging.INFO)
    iam_user(iam, rucio_server, "jane")
    tokens = case != "setting off"
    async with lake_app(tmp_path, rucio_server, iam, datalake_user_tokens=tokens) as app:
        if case == "setting off":
            async with app.browser() as browser:
                assert (await app.sign_in(browser, "jane")).status_code == 303
        job, name = await run_lake_job(app.running, "jane", f"svc.{tmp_path.name[-20:]}")
    assert did_account(rucio_server, "user.jane", name) == rucio_server.service
    assert rule_accounts(rucio_server, "user.jane", name) == {rucio_server.service}
    said = caplog.text
    assert (
        f"job {job['id']}: its data go to the data lake as Rucio service account concordia" in said
    )
    assert not JWT.search(said)
