"""IAM accounts: signing in, who a bearer token or session is, VO memberships, SCIM readings."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from concordia.auth.groups import Membership, every_membership, groups_from_claims, memberships
from concordia.auth.iam import ScimReading, read_scim
from concordia.auth.oidc import GROUP_CLAIMS, Iam, IamUnreachable, TokenInvalid, looks_like_jwt
from concordia.db import users as user_queries
from concordia.db.tables import User, utcnow
from concordia.logic.browser_sessions import start_session, state_of
from concordia.logic.database import Database
from concordia.logic.errors import Forbidden, NotFound
from concordia.logic.iam_session import (
    REFRESH_MARGIN,
    fresh_tokens,
    iam_access_token,
    iam_of,
    kept_tokens,
    sealed,
)
from concordia.logic.identity import Identity, consume_login_token, digest, token_holder
from concordia.logic.keyring import Keyring
from concordia.settings import IamSettings

log = logging.getLogger(__name__)


def identity_of(
    settings: IamSettings,
    user: User,
    auth: str,
    iam_token: str | None = None,
    iam_scopes: list[str] | None = None,
    session_id: int | None = None,
) -> Identity:
    """The caller with their memberships: from their IAM groups, or every VO in local mode."""
    groups = list(user.groups or [])
    found = (
        memberships(settings.vos, groups) if settings.iam_mode else every_membership(settings.vos)
    )
    return Identity(
        user_id=user.id,
        username=user.username,
        display_name=user.display_name,
        auth=auth,
        groups=groups,
        memberships=found,
        iam_token=iam_token,
        iam_scopes=iam_scopes or [],
        session_id=session_id,
    )


async def session_identity(
    settings: IamSettings, db: Database, keyring: Keyring, cookie: MutableMapping[str, Any]
) -> Identity | None:
    """The browser's user, IAM tokens renewed when due (SessionEnded when IAM ended the
    sign-in); memberships from the groups last seen, kept in the database."""
    state = state_of(cookie)
    if state.user_id is None:
        return None
    await renew_session(db, keyring, state)
    async with db.reading() as session:
        user = await session.get(User, state.user_id)
    if user is None:
        return None
    return identity_of(settings, user, "session", session_id=state.row_id)


async def sign_in_with_link(db: Database, token: str, cookie: MutableMapping[str, Any]) -> bool:
    """Local mode: the one-time link signs the browser in, in a new session; False for an
    unknown, used or expired link."""
    async with db.writing() as session:
        user = await consume_login_token(session, token)
    if user is None:
        return False
    values = {"username": user.username, "display_name": user.display_name}
    await start_session(db, state_of(cookie), user.id, values)
    return True


async def sign_in_with_api_token(
    db: Database, token: str, cookie: MutableMapping[str, Any]
) -> bool:
    """Local mode's sign-in page: the user's API token (the data dir's api-token file)
    signs the browser in, in a new session, as the one-time link does; False for an
    unknown or expired token. Only API tokens: a one-time link's token is not one."""
    async with db.reading() as session:
        found = await token_holder(session, token)
    if found is None:
        log.info("a sign-in with an unknown or expired API token was refused")
        return False
    user = found[0]
    values = {"username": user.username, "display_name": user.display_name}
    await start_session(db, state_of(cookie), user.id, values)
    log.info("user %s signed in with an API token", user.username)
    return True


async def _token_groups(iam: Iam, token: str, claims: dict[str, Any]) -> list[str] | None:
    """The groups a token speaks for: its own claim (the wlcg profile), else IAM's userinfo
    for it (the iam and aarc profiles put none in access tokens); None if IAM cannot say."""
    if any(name in claims for name in GROUP_CLAIMS):
        return groups_from_claims(claims)
    try:
        return groups_from_claims(await iam.userinfo_cached(token))
    except IamUnreachable:
        return None


async def _account(session: AsyncSession, issuer: str, claims: dict[str, Any]) -> User:
    """The user of an IAM subject, created at first sight (its username from IAM's); two
    processes meeting a new subject at once end with one account."""
    subject = str(claims["sub"])
    user = await user_queries.iam_account(session, issuer, subject)
    if user is None:
        username = str(claims.get("preferred_username") or subject)[:100]
        if await user_queries.user_id_named(session, username) is not None:
            username = f"{username}-{subject[:8]}"  # two IAM accounts, one name: keep both
        try:
            async with session.begin_nested():
                user = User(username=username, issuer=issuer, subject=subject, groups=[], scim={})
                session.add(user)
        except IntegrityError:  # created meanwhile by another process
            user = await user_queries.iam_account(session, issuer, subject)
            if user is None:
                raise
    if claims.get("name"):
        user.display_name = str(claims["name"])[:256]
    elif not user.display_name:
        user.display_name = user.username
    if claims.get("email"):
        user.email = str(claims["email"])[:256]
    await session.flush()
    return user


async def sign_in(
    db: Database, keyring: Keyring, token: dict[str, Any], cookie: MutableMapping[str, Any]
) -> None:
    """After IAM's redirect back: the account (created or updated), its groups, the
    certificates SCIM lists, and a new browser session keeping the tokens encrypted."""
    iam = iam_of(keyring)
    claims: dict[str, Any] = dict(token.get("userinfo") or {})
    access = str(token["access_token"])
    groups = groups_from_claims(claims)
    if looks_like_jwt(access):
        try:  # IAM's wlcg profile puts the groups in the access token
            groups += groups_from_claims(await iam.validate(access))
        except (TokenInvalid, IamUnreachable) as exc:
            log.warning("IAM's own access token was not checked at sign-in: %s", exc)
    if not groups or "preferred_username" not in claims:
        try:  # the AARC profile's ID token has neither names nor groups: userinfo has them
            info = await iam.userinfo(access)
        except IamUnreachable as exc:
            log.warning("IAM's userinfo at sign-in: %s", exc)
        else:
            claims = {**info, **claims}
            groups += groups_from_claims(info)
    groups = list(dict.fromkeys(groups))
    scim = await read_scim(iam.http, iam.issuer, access, utcnow())
    async with db.writing() as session:
        user = await _account(session, iam.issuer, claims)
        user.groups = groups
        user.scim = scim.model_dump(mode="json")
        user_id, username, display_name = user.id, user.username, user.display_name
    kept = kept_tokens(token)
    values = {"username": username, "display_name": display_name, "iam_exp": kept["expires_at"]}
    await start_session(db, state_of(cookie), user_id, values, sealed(keyring, kept))
    log.info("user %s signed in with IAM (%d groups)", username, len(groups))


async def renew_session(db: Database, keyring: Keyring, cookie: MutableMapping[str, Any]) -> None:
    """Refresh the IAM tokens of a browser session before they expire, and the groups with
    them (SessionEnded when IAM refuses: the caller clears the session). While IAM is
    unreachable the session goes on with what it knew."""
    expires = cookie.get("iam_exp")
    user_id = state_of(cookie).user_id
    if user_id is None or expires is None or expires - REFRESH_MARGIN > time.time():
        return
    iam = iam_of(keyring)
    try:
        tokens = await fresh_tokens(db, keyring, user_id, state_of(cookie).row_id)
    except IamUnreachable as exc:
        log.warning("IAM unreachable for a token refresh: %s", exc)
        cookie["iam_exp"] = time.time() + REFRESH_MARGIN * 2  # try again in a minute
        return
    cookie["iam_exp"] = tokens["expires_at"]
    access = tokens["access_token"]
    try:
        claims = await iam.validate(access) if looks_like_jwt(access) else {}
    except (TokenInvalid, IamUnreachable):
        claims = {}
    groups = await _token_groups(iam, access, claims)
    if groups is not None:  # removed from every group: no memberships any more
        async with db.writing() as session:
            user = await session.get(User, user_id)
            if user is not None and user.groups != groups:
                user.groups = groups


async def api_token_identity(
    settings: IamSettings, db: Database, keyring: Keyring, token: str
) -> Identity | None:
    """The caller of a Concordia API token; None for an unknown or expired one (trusted for
    a while once checked: see _trusted)."""

    async def check() -> tuple[Identity, float | None] | None:
        async with db.reading() as session:
            found = await token_holder(session, token)
        if found is None:
            return None
        user, expires_at = found
        left = None if expires_at is None else (expires_at - utcnow()).total_seconds()
        return identity_of(settings, user, "token"), left

    return await _trusted(settings, keyring, token, check)


async def bearer_identity(
    settings: IamSettings, db: Database, keyring: Keyring, token: str
) -> Identity:
    """The caller of an IAM access token (the CLI after `concordia login`); TokenInvalid if
    the token is not the issuer's, expired, or issued to another client (trusted for a
    while once checked: see _trusted)."""

    async def check() -> tuple[Identity, float | None]:
        identity, expires = await _bearer_account(settings, db, keyring, token)
        return identity, expires - time.time()

    identity = await _trusted(settings, keyring, token, check)
    if identity is None:  # check() raises TokenInvalid rather than answer None
        raise TokenInvalid("the token was refused")
    return identity


async def _trusted(
    settings: IamSettings,
    keyring: Keyring,
    token: str,
    check: Callable[[], Awaitable[tuple[Identity, float | None] | None]],
) -> Identity | None:
    """The caller of a bearer token, by ``check`` (the caller and the seconds the token has
    left, None: no end; None for a token refused without error). A token checked in the last
    api_token_trust_seconds is trusted without checking it again, never past its end: a
    client polling the job list sends one request a second or more, and its token's
    signature, account and groups are what they were a moment ago."""
    key = digest(token)
    now = time.monotonic()
    cached = keyring.trusted_tokens.get(key)
    if cached is not None:
        return cached[0]
    checked = await check()
    if checked is None:
        return None
    identity, left = checked
    trust = settings.api_token_trust_seconds
    if left is not None:
        trust = min(trust, left)
    if trust > 0:
        keyring.trusted_tokens[key] = (identity, now + trust)
    return identity


async def _bearer_account(
    settings: IamSettings, db: Database, keyring: Keyring, token: str
) -> tuple[Identity, float]:
    """The account of an IAM access token, made or brought up to date with its groups, and
    its expiry (epoch seconds)."""
    iam = iam_of(keyring)
    claims = await iam.validate(token)
    async with db.reading() as session:
        user = await user_queries.iam_account(session, iam.issuer, str(claims["sub"]))
    groups = await _token_groups(iam, token, claims)
    if groups is None:
        groups = list(user.groups) if user is not None else []
    first_sight = user is None or not user.scim
    if user is None or user.groups != groups or first_sight:
        scim = None
        if first_sight:  # `concordia login` before any browser sign-in: IAM's names, SCIM
            scim = await read_scim(iam.http, iam.issuer, token, utcnow())
            if "preferred_username" not in claims:
                try:
                    claims = {**await iam.userinfo_cached(token), **claims}
                except IamUnreachable as exc:
                    log.warning("IAM's userinfo for a new account: %s", exc)
        async with db.writing() as session:
            user = await _account(session, iam.issuer, claims)
            user.groups = groups
            if scim is not None:
                user.scim = scim.model_dump(mode="json")
    scopes = str(claims.get("scope", "")).split()
    identity = identity_of(settings, user, "iam-token", iam_token=token, iam_scopes=scopes)
    return identity, float(claims["exp"])


async def refresh_scim(db: Database, keyring: Keyring, identity: Identity) -> ScimReading:
    """Read /scim/Me again (after linking a certificate in IAM, say)."""
    iam = iam_of(keyring)
    token = await iam_access_token(db, keyring, identity)
    reading = await read_scim(iam.http, iam.issuer, token, utcnow())
    async with db.writing() as session:
        user = await session.get(User, identity.user_id)
        if user is None:
            raise NotFound("no such user")
        user.scim = reading.model_dump(mode="json")
    return reading


async def scim_reading(db: Database, user_id: int) -> ScimReading | None:
    async with db.reading() as session:
        user = await session.get(User, user_id)
    if user is None or not user.scim:
        return None
    return ScimReading.model_validate(user.scim)


def recognised(identity: Identity, settings: IamSettings) -> str:
    """What the account page and /me say of the user's memberships."""
    if identity.memberships:
        return "Recognised as a member of " + ", ".join(m.title for m in identity.memberships)
    known = ", ".join(vo.title for vo in settings.vos.values())
    return f"Not recognised as a member of any collaboration Concordia knows ({known})"


def vo_refusal(
    identity: Identity, allowed: list[str], what: str, settings: IamSettings
) -> str | None:
    """Why the user may not use something open to ``allowed`` VOs; None if they may."""
    try:
        require_vo(identity, allowed, what, settings)
    except Forbidden as exc:
        return exc.message
    return None


def require_vo(identity: Identity, allowed: list[str], what: str, settings: IamSettings) -> str:
    """The VO to act under: the first allowed one the user belongs to. Forbidden, with the
    reason, for a non-member; an application open to all takes the user's first VO."""
    if not allowed:
        return identity.vos[0] if identity.vos else ""
    for vo in allowed:
        if vo in identity.vos:
            return vo
    titles = ", ".join(settings.vos[v].title if v in settings.vos else v for v in allowed)
    mine = ", ".join(m.title for m in identity.memberships) or "no collaboration"
    raise Forbidden(
        f"{what} is open to members of {titles}; IAM lists you as a member of {mine}. "
        "Ask your collaboration's IAM administrators to add you to its group."
    )


def member_of(identity: Identity, vo: str) -> Membership:
    """The user's membership of ``vo``; a VO they are not in is refused."""
    member = identity.membership(vo)
    if member is None:
        raise Forbidden(f"you are not recognised as a member of the VO {vo!r}")
    return member
