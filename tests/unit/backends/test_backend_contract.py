"""Each backend has everything the Backend protocol declares, and says what differs."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from concordia.backends.base import Backend, BackendError, JobSpec, Owner, SignIn, Token
from concordia.backends.diracx import DiracXBackend
from concordia.backends.local import LocalBackend
from concordia.settings import Settings
from tests.fakes.backends import FAMILY

# Made without starting them (no I/O).
LOCAL = LocalBackend(Settings())
GRID = DiracXBackend(Settings(diracx_url="https://diracx.invalid"), "http://127.0.0.1:8000")
USERS_GRID = DiracXBackend(
    Settings(diracx_url="https://diracx.invalid", diracx_auth="user"), "http://127.0.0.1:8000"
)


def declared() -> set[str]:
    """The members the protocol declares: its attributes and its methods."""
    methods = {name for name in vars(Backend) if not name.startswith("_")}
    return set(Backend.__annotations__) | methods


@pytest.mark.parametrize(
    "backend",
    # The tests' fakes play backends: they must have all of it too.
    [LOCAL, GRID, *(fake() for fake in FAMILY)],
    ids=["local", "diracx", *(fake.__name__ for fake in FAMILY)],
)
def test_every_backend_has_all_the_protocol_declares(backend: Backend) -> None:
    missing = {name for name in declared() if not hasattr(backend, name)}
    assert not missing


def test_backends_name_themselves_for_the_form() -> None:
    assert (LOCAL.title, GRID.title) == ("This machine", "The grid (DIRAC)")


def test_only_a_grid_in_per_user_mode_needs_its_users_tokens() -> None:
    assert (LOCAL.needs_user_token, GRID.needs_user_token) == (False, False)
    assert USERS_GRID.needs_user_token


def test_the_local_backend_tells_its_news_and_the_grid_is_polled() -> None:
    assert isinstance(LOCAL.changed, asyncio.Event)
    assert GRID.changed is None


async def test_the_local_backend_has_no_sign_in_to_refresh() -> None:
    LOCAL.forget_token(Owner("jane", "cta", "cta_user"))  # nothing kept: nothing happens
    with pytest.raises(BackendError):
        await LOCAL.refresh_user_token("a-refresh-token")


def unsigned_jwt(claims: dict[str, object]) -> str:
    """A JWT of these claims (its signature is not read: the service checks it)."""
    parts = [{"alg": "RS256", "typ": "JWT"}, claims]
    encoded = [base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=") for p in parts]
    return b".".join([*encoded, b"c2ln"]).decode()


def test_a_diracx_sign_in_is_read_from_diracx_s_own_claims() -> None:
    access = unsigned_jwt(
        {"sub": "cta:0a1b-iam", "vo": "cta", "dirac_group": "cta_user",
         "preferred_username": "jane", "exp": 1_900_000_000}
    )  # fmt: skip
    refresh = unsigned_jwt({"sub": "cta:0a1b-iam", "exp": 1_900_086_400})
    signed = USERS_GRID.sign_in_of(Token(access_token=access, refresh_token=refresh))
    assert signed == SignIn("cta", "cta_user", "jane", "0a1b-iam", 1_900_086_400.0)
    # An opaque refresh token says nothing of when the sign-in lapses.
    assert USERS_GRID.sign_in_of(Token(access_token=access, refresh_token="x")).usable_until is None


def test_backends_without_sign_ins_refuse_to_read_one() -> None:
    for backend in (LOCAL, *(fake() for fake in FAMILY)):
        with pytest.raises(BackendError):
            backend.sign_in_of(Token(access_token="a.b.c"))


def test_a_job_runs_as_its_owner_in_its_vo_and_group() -> None:
    spec = JobSpec(
        uuid="5b0e", job_id=1, name="hello_1", argv=["true"], cpu_time=600,
        owner="jane", vo="cta", group="cta_user",
    )  # fmt: skip
    assert spec.run_as == Owner(user="jane", vo="cta", group="cta_user")
    assert {spec.run_as: 1}[Owner("jane", "cta", "cta_user")] == 1  # a key of per-owner maps
