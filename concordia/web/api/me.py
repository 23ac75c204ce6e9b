"""/me: who the caller is (IAM memberships, certificate from SCIM), their credential and proxy."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from concordia.auth.iam import ScimReading
from concordia.logic import accounts, proxies
from concordia.logic.errors import TooLarge
from concordia.logic.me import Account, account
from concordia.logic.proxies import CredentialView, ProxyView
from concordia.web.deps import CurrentUser, PlatformDep
from concordia.web.errors import AUTHENTICATED, BODY, CHANGES, documented

router = APIRouter(tags=["identity"])


class BackendInfo(BaseModel):
    name: str
    isolated: bool
    isolation_problem: str | None
    #: The container runtime of jobs in images, and why not the others.
    runtime: str
    #: Each job's bounds and what enforces them (cgroup, rlimits).
    limits: str
    #: Why it cannot be reached now (its jobs keep their last known state); None if it can.
    unreachable: str | None = None


class Me(Account):
    backends: list[BackendInfo]


class AuthConfig(BaseModel):
    """How to sign in (for `concordia login`): local mode, or IAM with the CLI's client."""

    mode: str
    issuer: str | None
    cli_client_id: str | None
    scopes: list[str]
    #: The audience IAM must put in access tokens (the CLI asks for it); None: not checked.
    audience: str | None = None


class ProxyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is refused, not ignored
    lifetime_hours: float | None = Field(default=None, gt=0, le=24 * 366)
    #: The VO whose DIRAC group the proxy carries (when the operator enables groups).
    vo: str | None = None


@router.get("/auth")
async def auth_config(platform: PlatformDep) -> AuthConfig:
    settings = platform.settings
    return AuthConfig(
        mode="iam" if settings.iam_mode else "local",
        issuer=settings.oidc_issuer or None,
        cli_client_id=settings.oidc_cli_client_id or None,
        scopes=settings.login_scopes() if settings.iam_mode else [],
        audience=(settings.oidc_audience or None) if settings.iam_mode else None,
    )


@router.get("/me", responses=AUTHENTICATED)
async def me(platform: PlatformDep, user: CurrentUser) -> Me:
    backends = [
        BackendInfo(
            name=n, isolated=b.isolated, isolation_problem=b.isolation_problem,
            runtime=b.runtime_summary, limits=b.limits_summary, unreachable=b.unreachable,
        )
        for n, b in platform.backends.items()
    ]  # fmt: skip
    return Me(**dict(await account(platform, user)), backends=backends)


# In local mode there is no IAM to read (409).
@router.post("/me/scim", responses=CHANGES | documented(404, 409))
async def read_scim_again(platform: PlatformDep, user: CurrentUser) -> ScimReading:
    return await accounts.refresh_scim(platform.db, platform.keyring, user)


@router.post("/me/credential", status_code=201, responses=CHANGES | documented(409, 422) | BODY)
async def upload_credential(
    platform: PlatformDep,
    user: CurrentUser,
    file: Annotated[UploadFile, File(description="PKCS#12 (.p12) or PEM certificate")],
    key: Annotated[UploadFile | None, File(description="PEM key, beside a PEM certificate")] = None,
    password: Annotated[str, Form(description="Of the PKCS#12 file or the key")] = "",
) -> CredentialView:
    limit = platform.settings.max_credential_bytes
    data = await file.read(limit + 1)
    if key is not None:
        data += b"\n" + await key.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"a credential is at most {limit} bytes")
    return await proxies.upload_credential(platform, user, data, password)


@router.delete("/me/credential", status_code=204, responses=CHANGES | documented(404))
async def delete_credential(platform: PlatformDep, user: CurrentUser) -> Response:
    await proxies.delete_credential(platform.db, user)
    return Response(status_code=204)


@router.post("/me/proxy", status_code=201, responses=CHANGES | documented(409) | BODY)
async def new_proxy(request: ProxyRequest, platform: PlatformDep, user: CurrentUser) -> ProxyView:
    lifetime = timedelta(hours=request.lifetime_hours) if request.lifetime_hours else None
    return await proxies.new_proxy(
        platform.settings, platform.db, platform.keyring, user, lifetime, request.vo
    )


@router.delete("/me/proxy", status_code=204, responses=CHANGES | documented(404))
async def forget_proxy(platform: PlatformDep, user: CurrentUser) -> Response:
    await proxies.forget_proxy(platform.db, user)
    return Response(status_code=204)
