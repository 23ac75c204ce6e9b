"""auth.oidc.Iam.validate remembers the tokens it accepted: until their exp, never a
refused one, and not past a change of IAM's keys (against the loopback IAM double)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt

from concordia.auth import oidc
from concordia.auth.oidc import Iam, TokenInvalid
from tests.conftest import make_settings
from tests.iam.server import IamDouble


@pytest.fixture
async def issuer(tmp_path: Path, iam: IamDouble) -> AsyncIterator[Iam]:
    iam.add_user("jane")
    settings = make_settings(
        tmp_path / "var",
        oidc_issuer=iam.url,
        oidc_client_id="concordia",
        oidc_client_secret="concordia-secret",
    )
    checker = Iam(settings)
    yield checker
    await checker.close()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens whose signature is checked, one entry a check."""
    seen: list[str] = []
    decode = jwt.decode

    def counted(value: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(value)
        return decode(value, *args, **kwargs)

    monkeypatch.setattr(oidc.jwt, "decode", counted)
    return seen


def clock_at(monkeypatch: pytest.MonkeyPatch, moment: float) -> None:
    """The wall clock (exp's, and joserfc's) set to ``moment``."""
    monkeypatch.setattr(time, "time", lambda: moment)


async def test_an_accepted_token_is_checked_once(
    issuer: Iam, iam: IamDouble, decodes: list[str]
) -> None:
    token = iam.token_for("jane")
    first = await issuer.validate(token)
    assert first["sub"] and decodes == [token]
    for _ in range(5):
        assert await issuer.validate(token) == first
    assert decodes == [token]
    # What a caller does to the claims it got is not what the next caller gets.
    first["sub"] = "someone else"
    (await issuer.validate(token))["wlcg.groups"].append("/not-mine")
    again = await issuer.validate(token)
    assert again["sub"] != "someone else" and "/not-mine" not in again["wlcg.groups"]
    assert decodes == [token]


async def test_a_remembered_token_is_checked_again_at_exp_and_refused_once_expired(
    issuer: Iam, iam: IamDouble, decodes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    exp = int(now) + 60
    token = iam.mint({**iam.access_claims("jane"), "exp": exp})
    await issuer.validate(token)
    clock_at(monkeypatch, exp - 1)
    await issuer.validate(token)
    assert len(decodes) == 1
    # At exp the entry is gone: the token is checked again (and, in the leeway, accepted).
    clock_at(monkeypatch, exp)
    await issuer.validate(token)
    assert len(decodes) == 2
    clock_at(monkeypatch, exp + 1)
    await issuer.validate(token)
    assert len(decodes) == 3  # accepted in the leeway, not remembered past exp
    clock_at(monkeypatch, exp + oidc.LEEWAY_SECONDS + 1)
    with pytest.raises(TokenInvalid, match="expired"):
        await issuer.validate(token)


async def test_a_token_accepted_in_its_leeway_is_not_remembered(
    issuer: Iam, iam: IamDouble, decodes: list[str]
) -> None:
    token = iam.mint({**iam.access_claims("jane"), "exp": int(time.time()) - 5})
    await issuer.validate(token)
    await issuer.validate(token)
    assert len(decodes) == 2


async def test_refused_tokens_are_never_remembered(
    issuer: Iam, iam: IamDouble, decodes: list[str]
) -> None:
    claims = iam.access_claims("jane")
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = iam.mint(claims, key=foreign, headers={"kid": iam.kid})
    other_client = iam.mint({**claims, "client_id": "someone-else"})
    early = iam.mint({**claims, "nbf": int(time.time()) + 3600})
    for token, reason in [
        (forged, "signature"),
        (other_client, "another client"),
        (early, "not valid yet"),
    ]:
        for _ in range(2):
            with pytest.raises(TokenInvalid, match=reason):
                await issuer.validate(token)
        assert decodes.count(token) >= 2, reason  # checked each time it came
    assert len(issuer._verified) == 0


async def test_remembered_tokens_are_checked_again_when_iams_keys_change(
    issuer: Iam, iam: IamDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = iam.token_for("jane")
    await issuer.validate(old)
    # IAM's key replaced under the same kid; a new token makes Concordia fetch the keys
    # (the rate limit lifted to test at once). The old token is then no longer IAM's.
    monkeypatch.setattr(oidc, "JWKS_REFETCH_SECONDS", 0.0)
    iam.change_key()
    await issuer.validate(iam.token_for("jane"))
    with pytest.raises(TokenInvalid, match="signature"):
        await issuer.validate(old)


async def test_the_memory_is_bounded(
    tmp_path: Path, iam: IamDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oidc, "VERIFIED_TOKENS", 3)
    iam.add_user("jane")
    settings = make_settings(tmp_path / "var", oidc_issuer=iam.url, oidc_client_id="concordia")
    checker = Iam(settings)
    try:
        tokens = [iam.mint({**iam.access_claims("jane"), "jti": str(i)}) for i in range(10)]
        await asyncio.gather(*(checker.validate(token) for token in tokens))
        assert len(checker._verified) == 3
        digests = {hashlib.sha256(token.encode()).hexdigest() for token in tokens}
        assert set(checker._verified.keys()) <= digests  # digests only, never a token
    finally:
        await checker.close()
