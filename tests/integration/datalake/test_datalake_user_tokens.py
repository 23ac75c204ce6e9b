"""The data lake as the user: the real Rucio of the tests takes the IAM double's tokens
(audience rucio) as the user's own account, only for their own scope."""

from __future__ import annotations

import pytest

from concordia.datalake.errors import DatalakeError
from concordia.datalake.rucio import Rucio
from tests.iam.server import IamDouble
from tests.rucio import RucioServer

#: The scopes of ESCAPE's Rucio client: what its tokens are asked with.
RUCIO_SCOPES = ["openid", "profile", "offline_access", "wlcg", "wlcg.groups"]


def iam_user(iam: IamDouble, rucio: RucioServer, account: str) -> None:
    """An IAM account and the Rucio account its subject maps to."""
    iam.add_user(account, sub=f"sub-{account}")
    rucio.add_oidc_identity(account, f"sub-{account}")


def did_account(rucio: RucioServer, scope: str, name: str) -> str:
    """The account that created a DID, as Rucio's records say to root."""
    answer = rucio.as_root("GET", f"dids/{scope}/{name}")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["account"])


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
