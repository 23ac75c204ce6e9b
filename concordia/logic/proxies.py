"""proxy-init: the user's credential (uploaded once, kept encrypted) and proxies made from IAM
or signed here, with their lifetime checked before the submissions that need one."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import BaseModel

from concordia.auth.distinguished_names import dirac_dn
from concordia.auth.iam import ProxyRefused, managed_proxy
from concordia.auth.oidc import IamUnreachable
from concordia.auth.proxy_certificates import ProxyInfo, make_proxy, proxy_info
from concordia.auth.vault import VaultError
from concordia.auth.x509 import CredentialError, check_credential, credential_pem, load_credential
from concordia.db.tables import utcnow
from concordia.logic.accounts import scim_reading
from concordia.logic.database import Database
from concordia.logic.errors import Conflict, DomainError, Invalid, NotFound, TooLarge
from concordia.logic.iam_session import SessionEnded, iam_access_token, iam_of
from concordia.logic.identity import Identity
from concordia.logic.keyring import Keyring
from concordia.logic.platform import Platform
from concordia.logic.secrets import drop_secret, put_secret, read_secret, secret_rows
from concordia.settings import ProxySettings, ProxySource, Settings

log = logging.getLogger(__name__)

CREDENTIAL, PROXY = "credential", "proxy"
#: A proxy within this of the lifetime asked lasts as asked (the call took time; clocks).
LIFETIME_SLACK = timedelta(minutes=2)
SOURCE_NAMES = {"iam": "IAM's managed proxy", "upload": "your uploaded certificate"}
LINK_HELP = (
    "your IAM account has no certificate linked. In IAM, open your profile, choose "
    "'Link certificate' (or upload it under 'X.509 certificates'), then press 'Read again "
    "from IAM' on the account page"
)


class NoProxy(DomainError):
    """No proxy with enough lifetime can be had; the message says what each source said."""

    status_code = 409


class CredentialView(BaseModel):
    dn: str
    issuer_dn: str
    not_after: datetime
    uploaded_at: datetime


class ProxyView(BaseModel):
    source: str
    #: Whose proxy it is (the certificate's DN, DIRAC's slash form).
    dn: str
    not_after: datetime
    seconds_left: int
    dirac_group: str | None
    created_at: datetime
    #: Why it lasts less than was asked, and what the other sources said; None: as asked.
    shortened: str | None = None


async def upload_credential(
    platform: Platform, identity: Identity, data: bytes, password: str | None
) -> CredentialView:
    """Check a PKCS#12 or PEM certificate + key (key matches, valid now, the DN IAM lists for
    the account) and keep it encrypted; nothing is stored when a check fails."""
    settings = platform.settings
    if len(data) > settings.max_credential_bytes:
        raise TooLarge(f"a credential file is at most {settings.max_credential_bytes} bytes")
    now = utcnow()
    try:
        # Off the event loop: a PKCS#12 file names its own key-derivation cost.
        # On the credential pool: one at a time per user, never on the pool all requests share.
        credentials = platform.work.credentials
        cred = await credentials.call(identity.user_id, load_credential, data, password or None)
        check_credential(cred, None, now)
    except CredentialError as exc:
        raise Invalid("file", str(exc)) from None
    dn = dirac_dn(cred.certificate.subject)
    if settings.iam_mode:
        reading = await scim_reading(platform.db, identity.user_id)
        if reading is None or reading.status != "ok":
            why = reading.message if reading else "not read yet"
            raise Conflict(
                f"IAM's list of your certificates could not be read ({why}): the upload is "
                "checked against it. Press 'Read again from IAM' on the account page."
            )
        linked = [c.dirac_dn for c in reading.certificates]
        if not linked:
            raise Invalid("file", LINK_HELP)
        if dn not in linked:
            raise Invalid(
                "file", f"the certificate is for {dn}, but IAM lists yours as {', '.join(linked)}"
            )
    not_after = cred.certificate.not_valid_after_utc
    info = {
        "dn": dn,
        "issuer_dn": dirac_dn(cred.certificate.issuer),
        "not_after": not_after.isoformat(),
        "uploaded_at": now.isoformat(),
    }
    async with platform.writing() as session:
        await put_secret(
            session, platform.keyring.vault, identity.user_id, CREDENTIAL, credential_pem(cred),
            info,
            expires_at=not_after,
        )  # fmt: skip
    log.info("user %s uploaded a credential for %s", identity.username, dn)
    return CredentialView.model_validate(info)


async def delete_credential(db: Database, identity: Identity) -> None:
    async with db.writing() as session:
        if not await drop_secret(session, identity.user_id, CREDENTIAL):
            raise NotFound("no credential uploaded")


async def forget_proxy(db: Database, identity: Identity) -> None:
    async with db.writing() as session:
        if not await drop_secret(session, identity.user_id, PROXY):
            raise NotFound("no proxy")


async def stored(db: Database, user_id: int) -> tuple[CredentialView | None, ProxyView | None]:
    """What the account shows of the credential and the current proxy (never the secrets)."""
    async with db.reading() as session:
        rows = await secret_rows(session, user_id)
    credential = (
        CredentialView.model_validate(rows[CREDENTIAL].info) if CREDENTIAL in rows else None
    )
    proxy = _proxy_view(rows[PROXY].info) if PROXY in rows else None
    return credential, proxy


def _proxy_view(info: dict[str, object]) -> ProxyView:
    not_after = datetime.fromisoformat(str(info["not_after"]))
    left = max(0, int((not_after - utcnow()).total_seconds()))
    return ProxyView.model_validate({**info, "seconds_left": left})


async def new_proxy(
    settings: Settings,
    db: Database,
    keyring: Keyring,
    identity: Identity,
    lifetime: timedelta | None = None,
    vo: str | None = None,
    needed: timedelta = timedelta(0),
    reuse: bool = False,
) -> ProxyView:
    """A fresh proxy, stored encrypted: from the first configured source that gives the
    lifetime asked; if none does, the longest that lasts ``needed``, saying why it is
    shorter (with ``reuse``, the current one if it lasts and is for the same DIRAC group).
    NoProxy, saying what each source answered and what to do, when none lasts ``needed``."""
    lifetime = lifetime or timedelta(hours=settings.proxy_lifetime_hours)
    member = identity.membership(vo) if vo else None
    group = member.dirac_group if member is not None and settings.proxy_dirac_group else None
    async with keyring.proxy_locks[identity.user_id]:  # one submission, one new proxy
        _, current = await stored(db, identity.user_id) if reuse else (None, None)
        if (
            current is not None
            and current.seconds_left >= needed.total_seconds()
            and current.dirac_group == group
        ):
            return current
        made, reasons = await _from_sources(
            settings, db, keyring, identity, lifetime, group, needed
        )
        info = made.info
        shortened = None
        if made.short is not None:
            shortened = (
                f"{_hours(info.seconds_left)} instead of the {_hours(lifetime.total_seconds())} "
                "asked. " + "; ".join(reasons)
            )
        view = ProxyView(
            source=made.source, dn=info.issuer_dn, not_after=info.not_after,
            seconds_left=info.seconds_left, dirac_group=info.dirac_group, created_at=utcnow(),
            shortened=shortened,
        )  # fmt: skip
        async with db.writing() as session:
            await put_secret(
                session, keyring.vault, identity.user_id, PROXY, made.pem,
                view.model_dump(mode="json", exclude={"seconds_left"}),
                expires_at=info.not_after,
            )  # fmt: skip
        log.info("proxy for user %s from %s", identity.username, made.source)
        return view


async def _from_sources(
    settings: Settings,
    db: Database,
    keyring: Keyring,
    identity: Identity,
    lifetime: timedelta,
    group: str | None,
    needed: timedelta,
) -> tuple[_Made, list[str]]:
    """The first source's proxy that lasts as asked, else the longest that lasts ``needed``;
    with what the sources passed over said. NoProxy when none lasts ``needed``."""
    reasons: list[str] = []
    best: _Made | None = None
    for source in settings.proxy_sources:
        asked_at = utcnow()
        try:
            pem = await _make(settings, db, keyring, identity, source, lifetime, group)
            info = proxy_info(pem, utcnow())  # read back: what is stored is checked
        except (_Unavailable, CredentialError) as exc:
            reasons.append(f"{SOURCE_NAMES[source]}: {exc}")
            continue
        short = _why_short(source, info, asked_at, asked_at + lifetime)
        if info.seconds_left < needed.total_seconds():
            reasons.append(_too_short(settings, source, info, needed, short))
            continue
        if best is None or info.not_after > best.info.not_after:
            best = _Made(source, pem, info, short)
        if short is None:
            return best, reasons
        reasons.append(f"{SOURCE_NAMES[source]}: {short}")  # the next may give more
    if best is None:
        raise NoProxy("No proxy could be made. " + "; ".join(reasons))
    return best, reasons


@dataclass(frozen=True)
class _Made:
    """A proxy one source made, and why it is shorter than asked (None: it is not)."""

    source: ProxySource
    pem: bytes = field(repr=False)
    info: ProxyInfo
    short: str | None


def _why_short(
    source: ProxySource, info: ProxyInfo, asked_at: datetime, wanted_end: datetime
) -> str | None:
    """Why a proxy ends before ``wanted_end``, with what to do about it; None if it does not.
    A proxy cannot outlive its chain: ending with it, the chain's first expiry cut it short;
    otherwise IAM gave less than asked (its maximum)."""
    if info.not_after >= wanted_end - LIFETIME_SLACK:
        return None
    if _cut_by_chain(info):
        assert info.chain_ends is not None
        when = info.chain_ends.strftime("%Y-%m-%d %H:%M UTC")
        if source == "iam" and info.chain_end_is_proxy:
            return (
                f"the proxy stored in your IAM account expires at {when}: upload a longer one "
                "to IAM"
            )
        if info.chain_end_dn == info.issuer_dn:
            where = "in IAM" if source == "iam" else "uploaded to Concordia"
            return f"your certificate {where} expires at {when}: renew it and upload the new one"
        return f"the certificate {info.chain_end_dn} in its chain expires at {when}"
    given = _hours((info.not_after - asked_at).total_seconds())
    if source == "iam":
        return f"IAM gives managed proxies of at most {given}"
    return f"it was made for {given} only"


def _cut_by_chain(info: ProxyInfo) -> bool:
    ends = info.chain_ends
    return ends is not None and info.not_after >= ends - LIFETIME_SLACK


def _too_short(
    settings: ProxySettings,
    source: ProxySource,
    info: ProxyInfo,
    needed: timedelta,
    short: str | None,
) -> str:
    """A source's proxy ends before the jobs may: why, and what would give a longer one."""
    text = (
        f"{SOURCE_NAMES[source]}: its proxy lasts {_hours(info.seconds_left)}, but these jobs "
        f"need {_hours(needed.total_seconds())}"
    )
    if short is not None:
        text += f" ({short})"
    if source == "iam" and not _cut_by_chain(info):  # IAM's maximum: another source
        if "upload" in settings.proxy_sources:
            text += (
                ". Upload your certificate on the account page (`concordia credential "
                "upload`): Concordia signs longer proxies from it"
            )
        else:
            text += (
                ". Ask Concordia's operator to add upload to proxy_sources (then upload your "
                "certificate), or to lower proxy_min_lifetime_hours below IAM's maximum"
            )
    return text


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


class _Unavailable(Exception):
    """One source cannot give a proxy now (the next is tried)."""


async def _make(
    settings: Settings,
    db: Database,
    keyring: Keyring,
    identity: Identity,
    source: ProxySource,
    lifetime: timedelta,
    group: str | None,
) -> bytes:
    if source == "iam":
        if not settings.iam_mode:
            raise _Unavailable("Concordia is not connected to IAM")
        iam = iam_of(keyring)
        try:
            token = await iam_access_token(db, keyring, identity, "proxy:generate")
            return await managed_proxy(
                iam.http, iam.issuer, token, settings.oidc_client_id,
                settings.oidc_client_secret.get_secret_value(), int(lifetime.total_seconds()),
            )  # fmt: skip
        except ProxyRefused as exc:
            hint = " (upload a proxy to your IAM account first)" if "412" in str(exc) else ""
            raise _Unavailable(f"{exc}{hint}") from None
        except SessionEnded:
            raise _Unavailable(
                "it needs a token with the proxy:generate scope: sign in on the web page"
            ) from None
        except (IamUnreachable, DomainError) as exc:
            raise _Unavailable(str(exc)) from None
    try:
        async with db.reading() as session:
            found = await read_secret(session, keyring.vault, identity.user_id, CREDENTIAL)
    except VaultError:
        raise _Unavailable("the stored certificate cannot be decrypted: upload it again") from None
    if found is None:
        raise _Unavailable("no certificate uploaded to Concordia (see the account page)")

    def sign() -> bytes:  # a new RSA key and a signature: milliseconds of CPU, off the loop
        cred = load_credential(found[0], None)
        return make_proxy(cred, lifetime, utcnow(), dirac_group=group)

    try:
        return await asyncio.to_thread(sign)
    except ValueError as exc:  # e.g. a DIRAC group name it cannot carry
        raise _Unavailable(str(exc)) from None


async def ensure_proxy(
    settings: Settings,
    db: Database,
    keyring: Keyring,
    identity: Identity,
    needed: timedelta,
    vo: str | None = None,
) -> ProxyView:
    """The user's proxy with at least ``needed`` left (a new one when the current is short);
    NoProxy, saying why, when none lasts long enough: refused now, never a failed job later."""
    lifetime = max(needed + timedelta(hours=1), timedelta(hours=settings.proxy_lifetime_hours))
    return await new_proxy(settings, db, keyring, identity, lifetime, vo, needed, reuse=True)


async def usable_proxy(
    settings: Settings, db: Database, keyring: Keyring, user_id: int, group: str, cpu_time: int
) -> tuple[bytes | None, str]:
    """The stored proxy chain for a job that needs it (written 0600, removed after use), if
    it lasts as long as the job may and carries the submission's DIRAC group (when groups
    are written); else None and why."""
    try:
        async with db.reading() as session:
            found = await read_secret(session, keyring.vault, user_id, PROXY)
    except VaultError:
        return None, "the stored proxy cannot be decrypted"
    if found is None:
        return None, "there is none"
    view = _proxy_view(found[1].info)
    if view.seconds_left < cpu_time * settings.local_wall_time_factor:
        return None, f"it has {_hours(view.seconds_left)} left, less than the job may run"
    if settings.proxy_dirac_group and view.dirac_group != group:
        return None, f"it is for the DIRAC group {view.dirac_group}, not {group}"
    return found[0], ""
