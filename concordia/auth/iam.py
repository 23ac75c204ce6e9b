"""IAM's own REST endpoints: the user's certificates (SCIM /scim/Me) and managed proxies."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

import httpx
from cryptography import x509
from pydantic import BaseModel, Field, ValidationError, computed_field

from concordia.auth.distinguished_names import normalise_dn
from concordia.auth.oidc import IamUnreachable

log = logging.getLogger(__name__)

INDIGO_USER = "urn:indigo-dc:scim:schemas:IndigoUser"


class ProxyRefused(Exception):
    """IAM would not give a proxy; the message is IAM's reason."""


class ScimCertificate(BaseModel):
    """A certificate linked to the IAM account (only the public part: IAM holds no key)."""

    subject_dn: str
    issuer_dn: str
    #: The subject as DIRAC writes it (/DC=ch/DC=cern/OU=Users/CN=...).
    dirac_dn: str
    primary: bool = False
    label: str = ""
    not_after: datetime | None = None
    #: Whether IAM holds a proxy for it (its managed proxies come from that one).
    has_proxy: bool = False
    proxy_expires: datetime | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def issuer_dirac_dn(self) -> str:
        """The issuer as DIRAC writes it, beside the subject's ``dirac_dn`` (also for
        readings stored before it was kept)."""
        return normalise_dn(self.issuer_dn) if self.issuer_dn else ""


class ScimReading(BaseModel):
    """What /scim/Me said at the last sign-in or refresh; login never depends on it."""

    status: Literal["ok", "forbidden", "unreachable", "error"]
    message: str = ""
    certificates: list[ScimCertificate] = Field(default_factory=list)
    read_at: datetime

    @property
    def primary(self) -> ScimCertificate | None:
        primaries = [c for c in self.certificates if c.primary] or self.certificates
        return primaries[0] if primaries else None


class _IamCertificate(BaseModel):
    display: str = ""
    primary: bool = False
    subjectDn: str
    issuerDn: str = ""
    pemEncodedCertificate: str = ""
    hasProxyCertificate: bool = False
    proxyExpirationTime: datetime | None = None


async def read_scim(
    http: httpx.AsyncClient, issuer: str, access_token: str, now: datetime
) -> ScimReading:
    """GET {issuer}/scim/Me with the user's token; every failure becomes a reading saying so."""
    try:
        response = await http.get(
            f"{issuer}/scim/Me",
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/scim+json"},
        )
    except httpx.HTTPError as exc:
        log.warning("IAM SCIM unreachable: %s", type(exc).__name__)
        return ScimReading(status="unreachable", message="IAM did not answer", read_at=now)
    if response.status_code in (401, 403):
        return ScimReading(
            status="forbidden",
            message=f"IAM refused to show the account ({response.status_code}: "
            f"{_detail(response)}); the client may lack the scim:read scope",
            read_at=now,
        )
    if response.status_code != 200:
        return ScimReading(
            status="unreachable",
            message=f"IAM answered {response.status_code}",
            read_at=now,
        )
    try:
        body = response.json()
        raw = body.get(INDIGO_USER, {}).get("certificates", []) if isinstance(body, dict) else []
        certificates = [_certificate(_IamCertificate.model_validate(c)) for c in raw]
    except (ValueError, ValidationError, AttributeError) as exc:
        log.warning("IAM SCIM answer not understood: %s", exc)
        return ScimReading(status="error", message="IAM's answer was not understood", read_at=now)
    return ScimReading(status="ok", certificates=certificates, read_at=now)


def _certificate(cert: _IamCertificate) -> ScimCertificate:
    not_after = None
    if cert.pemEncodedCertificate:
        try:
            not_after = x509.load_pem_x509_certificate(
                cert.pemEncodedCertificate.encode()
            ).not_valid_after_utc
        except ValueError:
            not_after = None
    return ScimCertificate(
        subject_dn=cert.subjectDn,
        issuer_dn=cert.issuerDn,
        dirac_dn=normalise_dn(cert.subjectDn),
        primary=cert.primary,
        label=cert.display,
        not_after=not_after,
        has_proxy=cert.hasProxyCertificate,
        proxy_expires=cert.proxyExpirationTime,
    )


async def managed_proxy(
    http: httpx.AsyncClient,
    issuer: str,
    access_token: str,
    client_id: str,
    client_secret: str,
    lifetime_seconds: int,
) -> bytes:
    """POST {issuer}/iam/proxycert: the user's token (with proxy:generate) and the client's own
    credentials; returns the PEM chain (proxy, its key, the user's certificate)."""
    try:
        response = await http.post(
            f"{issuer}/iam/proxycert",
            headers={"Authorization": f"Bearer {access_token}"},
            data={
                "client_id": client_id,
                "client_secret": client_secret,
                "lifetimeSecs": str(max(120, lifetime_seconds)),
            },
        )
    except httpx.HTTPError as exc:
        raise IamUnreachable(f"IAM did not answer: {type(exc).__name__}") from exc
    if response.status_code >= 500:
        raise IamUnreachable(f"IAM answered {response.status_code}")
    if response.status_code != 200:
        raise ProxyRefused(f"IAM refused ({response.status_code}): {_detail(response)}")
    try:
        chain = response.json()["certificate_chain"]
    except (ValueError, KeyError, TypeError):
        raise ProxyRefused("IAM's answer holds no certificate chain") from None
    if not isinstance(chain, str):
        raise ProxyRefused("IAM's answer holds no certificate chain")
    return chain.encode()


def _detail(response: httpx.Response) -> str:
    """IAM's reason, from its JSON error shapes (OAuth, SCIM, its own) or the plain text."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("error_description", "detail", "error", "message"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])[:300]
    return response.reason_phrase
