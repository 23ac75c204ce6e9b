"""What the account page and /api/v1/me show of the caller: identity, VOs, certificate, proxy."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from concordia.auth.groups import Membership
from concordia.auth.iam import ScimCertificate
from concordia.logic.accounts import recognised, scim_reading
from concordia.logic.diracx_accounts import DiracXConnection, connections, per_user
from concordia.logic.identity import Identity
from concordia.logic.platform import Platform
from concordia.logic.proxies import CredentialView, ProxyView, stored


class ScimStatus(BaseModel):
    status: str
    message: str
    read_at: datetime


class Account(BaseModel):
    username: str
    display_name: str
    auth: str
    #: "local" (no IAM: the machine's user) or "iam".
    mode: str
    issuer: str | None
    groups: list[str]
    memberships: list[Membership]
    vos: list[str]
    #: "Recognised as a member of ESCAPE, CTA".
    recognised: str
    #: The primary certificate's DN in DIRAC's slash form, as IAM's SCIM lists it.
    certificate_dn: str | None
    certificates: list[ScimCertificate] = Field(default_factory=list)
    scim: ScimStatus | None
    credential: CredentialView | None
    proxy: ProxyView | None
    proxy_sources: list[str]
    #: Per-user DiracX mode: each user connects their DiracX account (per VO and group).
    diracx_per_user: bool = False
    diracx: list[DiracXConnection] = Field(default_factory=list)


async def account(platform: Platform, identity: Identity) -> Account:
    settings = platform.settings
    reading = await scim_reading(platform.db, identity.user_id) if settings.iam_mode else None
    credential, proxy = await stored(platform.db, identity.user_id)
    primary = reading.primary if reading is not None else None
    return Account(
        username=identity.username,
        display_name=identity.display_name,
        auth=identity.auth,
        mode="iam" if settings.iam_mode else "local",
        issuer=settings.oidc_issuer or None,
        groups=identity.groups,
        memberships=identity.memberships,
        vos=identity.vos,
        recognised=recognised(identity, settings),
        certificate_dn=primary.dirac_dn if primary is not None else None,
        certificates=reading.certificates if reading is not None else [],
        scim=ScimStatus(**reading.model_dump(include={"status", "message", "read_at"}))
        if reading is not None
        else None,
        credential=credential,
        proxy=proxy,
        proxy_sources=list(settings.proxy_sources),
        diracx_per_user=per_user(platform.backends),
        diracx=await connections(platform.db, platform.keyring, identity.user_id)
        if per_user(platform.backends)
        else [],
    )
