"""An INDIGO IAM test double: OIDC provider, device flow, SCIM /scim/Me and managed proxies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from joserfc import errors as jose_errors
from joserfc import jws, jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from starlette.responses import Response

from concordia.auth.proxy_certificates import make_proxy
from concordia.auth.x509 import Credential
from tests.iam.pki import PrivateKey, UserCert, rfc2253

Profile = Literal["wlcg", "iam", "aarc"]
ScimMode = Literal["ok", "forbidden", "down"]
SigningKey = RSAKey | ECKey

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CORE_USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
INDIGO_USER_SCHEMA = "urn:indigo-dc:scim:schemas:IndigoUser"
SCIM_CONTENT_TYPE = "application/scim+json"
PAGE_TITLE = "INDIGO IAM test double"
SESSION_COOKIE = "IAM_DOUBLE_SESSION"  # cookies ignore ports: not to clash with the app's
CODE_LIFETIME = 60

# IAM publishes only its unrestricted scopes in discovery; the restricted ones below exist but
# an administrator has to grant them to a client (proxy:generate is restricted by default:
# iam-persistence/.../V33___proxy_api_scopes.sql).
PUBLIC_SCOPES = (
    "openid",
    "profile",
    "email",
    "address",
    "phone",
    "offline_access",
    "wlcg",
    "wlcg.groups",
    "eduperson_entitlement",
    "eduperson_scoped_affiliation",
    "eduperson_assurance",
    "entitlements",
    "ssh-keys",
    "attr",
)
RESTRICTED_SCOPES = ("scim:read", "scim:write", "proxy:generate")
# Parametric scopes: WLCG's group selection and storage paths.
_SCOPE_PATTERNS = (
    re.compile(r"wlcg\.groups(:(/[A-Za-z0-9][A-Za-z0-9_.-]*)+)?"),
    re.compile(r"storage\.(read|modify|create|stage):/\S*"),
    re.compile(r"compute\.(read|modify|create|cancel)"),
)
_LOOPBACK_CALLBACK = re.compile(r"http://(127\.0\.0\.1|localhost):\d{1,5}/auth/callback")
# RFC 8628 §6.1: no vowels (no words), no look-alike characters.
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
# AARC's ID token customiser adds only its own claims: no name, username or email.
_PROFILES_NAMING_THE_USER_IN_ID_TOKENS = ("iam", "wlcg")


class _Refused(Exception):
    """A request refused with a ready response (kept apart from the happy path)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


# --- state


@dataclass
class IamClient:
    client_id: str
    secret: str | None  # None: a public client (device flow on a laptop, PKCE in a browser)
    redirect_uris: list[str] = field(default_factory=list)
    grant_types: list[str] = field(default_factory=list)
    require_pkce: bool = False
    scopes: set[str] | None = None  # None: every scope the double knows, restricted ones too

    @property
    def confidential(self) -> bool:
        return self.secret is not None


@dataclass
class StoredProxy:
    """The long-lived credential a user uploaded to IAM (PUT /iam/account/me/proxycert), from
    which IAM signs the short proxies of POST /iam/proxycert."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def expires(self) -> datetime:
        return self.cert.not_valid_after_utc


@dataclass
class LinkedCertificate:
    """An x509 certificate linked to the account; IAM keeps a stored proxy per certificate."""

    cert: UserCert
    primary: bool = True
    label: str | None = None
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    proxy: StoredProxy | None = None


@dataclass
class IamUser:
    username: str
    password: str
    sub: str
    given_name: str
    family_name: str
    email: str
    groups: list[str]  # IAM group paths: "/escape", "/escape/cta"
    certificates: list[LinkedCertificate] = field(default_factory=list)
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    active: bool = True

    @property
    def name(self) -> str:
        return f"{self.given_name} {self.family_name}"

    @property
    def proxy(self) -> StoredProxy | None:
        return next((c.proxy for c in self.certificates if c.proxy is not None), None)


@dataclass(frozen=True)
class Call:
    """One request the double answered, for tests to count."""

    method: str
    path: str
    status: int
    grant_type: str | None = None
    client_id: str | None = None


@dataclass
class AuthCode:
    client_id: str
    redirect_uri: str
    scopes: list[str]
    username: str
    auth_time: int
    expires: float
    nonce: str | None
    challenge: str | None
    challenge_method: str | None
    audience: list[str] | None


@dataclass
class RefreshGrant:
    client_id: str
    username: str
    scopes: list[str]
    auth_time: int
    audience: list[str] | None


@dataclass
class DeviceGrant:
    device_code: str
    user_code: str
    client_id: str
    scopes: list[str]
    expires: float
    interval: int
    audience: list[str] | None
    status: Literal["pending", "approved", "denied"] = "pending"
    username: str | None = None
    auth_time: int | None = None
    last_poll: float | None = None


def _default_clients() -> dict[str, IamClient]:
    return {
        "concordia": IamClient(
            "concordia",
            "concordia-secret",
            grant_types=["authorization_code", "refresh_token", DEVICE_GRANT],
        ),
        "concordia-cli": IamClient(
            "concordia-cli", None, grant_types=[DEVICE_GRANT, "refresh_token"]
        ),
    }


@dataclass
class IamState:
    """Everything a test may read or change; ``IamDouble.reset`` starts a fresh one."""

    keys: list[SigningKey]
    clients: dict[str, IamClient] = field(default_factory=_default_clients)
    users: dict[str, IamUser] = field(default_factory=dict)
    profile: Profile = "wlcg"
    access_token_lifetime: int = 3600
    id_token_lifetime: int = 600  # IAM's default-id-token-validity-seconds
    scim: ScimMode = "ok"
    scim_requires_scope: bool = False  # IAM before 1.10 wanted scim:read even for /scim/Me
    proxycert_enabled: bool = True
    proxy_max_lifetime: int = 43200
    audience: str | list[str] | None = None  # None: the client id
    device_interval: int = 5
    device_code_lifetime: int = 600
    any_loopback_redirect: bool = False
    # IAM's discovery and ID tokens always say the issuer with a trailing slash
    # (MitreServicesConfig); access tokens say IAM_ISSUER as configured.
    issuer_trailing_slash: bool = False
    advertise_restricted_scopes: bool = False
    sso: bool = True  # a signed-in browser is not asked for its password again
    organisation_name: str = "escape"
    aarc_nid: str = "geant"
    aarc_namespace: str = "escape.eu"
    #: Tokens are signed with this key instead of the last published one (a key IAM never
    #: published, under a published kid): see IamDouble.change_key.
    unpublished_key: SigningKey | None = None
    calls: list[Call] = field(default_factory=list)
    codes: dict[str, AuthCode] = field(default_factory=dict)
    refresh_tokens: dict[str, RefreshGrant] = field(default_factory=dict)
    device_grants: dict[str, DeviceGrant] = field(default_factory=dict)
    sessions: dict[str, tuple[str, int]] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)


# --- helpers without state


def _new_signing_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(
        2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True
    )


def _as_jwk(key: SigningKey | PrivateKey) -> SigningKey:
    if isinstance(key, rsa.RSAPrivateKey):
        return RSAKey.import_key(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ECKey.import_key(key)
    return key


def _alg(key: SigningKey) -> str:
    if isinstance(key, ECKey):
        return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[key.curve_name]
    return "RS256"


def _sign(claims: Mapping[str, Any], key: SigningKey, header: Mapping[str, Any]) -> str:
    payload = json.dumps(claims, separators=(",", ":")).encode()
    return jws.serialize_compact(dict(header), payload, key, algorithms=[str(header["alg"])])


def _iso(moment: datetime) -> str:
    """IAM's SCIM dates (Joda ISODateTimeFormat.dateTime() in UTC): milliseconds and a Z."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _group_uuid(path: str) -> str:
    # Stable across resets, so a test may compare SCIM group ids it read earlier.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"iam-test-double:group:{path}"))


def _scopes(value: str | None) -> list[str]:
    return list(dict.fromkeys((value or "").split()))


def _known_scope(scope: str) -> bool:
    if scope in PUBLIC_SCOPES or scope in RESTRICTED_SCOPES:
        return True
    return any(p.fullmatch(scope) for p in _SCOPE_PATTERNS)


def _scope_allowed(client: IamClient, scope: str) -> bool:
    if client.scopes is None:
        return _known_scope(scope)
    if scope.startswith("wlcg.groups:") and "wlcg.groups" in client.scopes:
        return _known_scope(scope)
    return scope in client.scopes


def wlcg_groups(groups: Sequence[str], scopes: Sequence[str]) -> list[str]:
    """The wlcg.groups claim as IAM's WLCGGroupHelper resolves it: groups asked for by
    wlcg.groups:/path first, in scope order, then all of them (sorted) for a plain wlcg.groups
    or when only specific ones were asked for."""
    wanted = [s for s in scopes if s == "wlcg.groups" or s.startswith("wlcg.groups:/")]
    if not wanted:
        return []
    every = sorted(groups)
    found: list[str] = []
    for scope in wanted:
        if scope == "wlcg.groups":
            found += every
        else:
            path = scope.removeprefix("wlcg.groups:")
            found += [g for g in groups if g == path]
    if "wlcg.groups" not in wanted:
        found += every
    return list(dict.fromkeys(found))


def _oauth_error(
    status: int, error: str, description: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _bearer_error(error: str, description: str) -> JSONResponse:
    # Spring Security OAuth2's entry point: the error in the body and in WWW-Authenticate.
    challenge = f'Bearer realm="oauth", error="{error}", error_description="{description}"'
    return _oauth_error(401, error, description, {"WWW-Authenticate": challenge})


def _invalid_client(basic: bool) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Basic realm="oauth"'} if basic else None
    return _oauth_error(401, "invalid_client", "Bad client credentials", headers)


def _access_denied() -> JSONResponse:
    # Spring's OAuth2AccessDeniedHandler for a failed @PreAuthorize (IAM's
    # ProxyServiceIntegrationTests and ScimApiAuthzTests assert this body).
    return _oauth_error(403, "access_denied", "Access is denied")


def _with_query(uri: str, params: Mapping[str, str | None]) -> str:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(k, v) for k, v in params.items() if v is not None]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _page(body: str, status: int = 200) -> HTMLResponse:
    document = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{PAGE_TITLE}</title></head>\n<body>\n<h1>{PAGE_TITLE}</h1>\n{body}\n"
        "</body></html>\n"
    )
    return HTMLResponse(document, status_code=status, headers={"Cache-Control": "no-store"})


def _hidden(fields: Mapping[str, str]) -> str:
    return "\n".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )


def _error_paragraph(message: str | None) -> str:
    return f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""


# --- the double


class IamDouble:
    """The test's handle on the double: its URL, its state and shortcuts around the browser."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        # One key for the whole session, as IAM keeps its keys: a JWKS cached by the code
        # under test stays right across tests. rotate_key() adds more until the next reset.
        self._base_key = _new_signing_key("rsa1")
        self.state = IamState(keys=[self._base_key])
        self.app = build_app(self)

    # --- state

    @property
    def issuer(self) -> str:
        return self.url + "/" if self.state.issuer_trailing_slash else self.url

    @property
    def kid(self) -> str:
        return str(self.state.keys[-1].kid)

    def reset(self) -> None:
        self.state = IamState(keys=[self._base_key])

    def add_client(
        self,
        client_id: str,
        *,
        secret: str | None = None,
        redirect_uris: Iterable[str] = (),
        grant_types: Iterable[str] = ("authorization_code", "refresh_token"),
        require_pkce: bool = False,
        scopes: Iterable[str] | None = None,
    ) -> IamClient:
        client = IamClient(
            client_id,
            secret,
            list(redirect_uris),
            list(grant_types),
            require_pkce,
            None if scopes is None else set(scopes),
        )
        self.state.clients[client_id] = client
        return client

    def add_redirect_uri(self, uri: str, client_id: str = "concordia") -> None:
        self.state.clients[client_id].redirect_uris.append(uri)

    def add_user(
        self,
        username: str,
        *,
        password: str | None = None,
        groups: Iterable[str] = ("/escape", "/escape/cta"),
        certificate: UserCert | None = None,
        uploaded_proxy: bool = False,
        proxy_lifetime: timedelta | None = None,
        given_name: str | None = None,
        family_name: str = "Tester",
        email: str | None = None,
        sub: str | None = None,
    ) -> IamUser:
        """An account. ``uploaded_proxy`` stores the certificate with its key as IAM's managed
        proxy; with ``proxy_lifetime`` what is stored is a real proxy of that lifetime made from
        it (what voms-proxy-init uploads), so /iam/proxycert answers a two-level chain. ``sub``
        fixes the subject (a DiracX registry lists users by it); by default a random UUID."""
        if uploaded_proxy and certificate is None:
            raise ValueError("an uploaded proxy needs the user's certificate")
        user = IamUser(
            username=username,
            password=password if password is not None else f"pw-{username}",
            sub=sub if sub is not None else str(uuid.uuid4()),
            given_name=given_name or username.capitalize(),
            family_name=family_name,
            email=email or f"{username}@example.org",
            groups=list(groups),
        )
        if certificate is not None:
            linked = LinkedCertificate(certificate, label=f"{username}'s certificate"[:36])
            if uploaded_proxy:
                linked.proxy = _stored_proxy(certificate, proxy_lifetime)
            user.certificates.append(linked)
        self.state.users[username] = user
        return user

    def user(self, username: str) -> IamUser:
        return self.state.users[username]

    def rotate_key(self) -> str:
        """Sign from now on with a new key (old ones stay published); returns its kid."""
        key = _new_signing_key(f"rsa{len(self.state.keys) + 1}")
        self.state.keys.append(key)
        return str(key.kid)

    def change_key(self, *, publish: bool = True) -> str:
        """Sign from now on with a new key under the current kid, as IAM does when its
        keystore is replaced but keeps the key's id; with ``publish`` the JWKS has the new key
        instead of the old, without it the JWKS stays (tokens signed by a key IAM never
        published). Returns the kid."""
        kid = self.kid
        key = _new_signing_key(kid)
        if publish:
            self.state.keys[-1] = key
            self.state.unpublished_key = None
        else:
            self.state.unpublished_key = key
        return kid

    def _own_keys(self) -> list[SigningKey]:
        """The keys it signed with: those it publishes, an unpublished one in its kid's place."""
        extra = self.state.unpublished_key
        if extra is None:
            return list(self.state.keys)
        return [extra, *(k for k in self.state.keys if k.kid != extra.kid)]

    def jwks(self) -> dict[str, Any]:
        return dict(KeySet(list(self.state.keys)).as_dict(private=False))

    def approve_device(self, user_code: str, username: str, *, approve: bool = True) -> None:
        """What the user does at /device, without a browser."""
        grant = self.device_grant_for(user_code)
        if grant is None:
            raise KeyError(f"no pending device code {user_code!r}")
        self.decide_device(grant, self.state.users[username], approve)

    # --- counting

    def count(
        self,
        path: str,
        *,
        method: str | None = None,
        status: int | None = None,
        grant_type: str | None = None,
    ) -> int:
        """How many requests the double answered for ``path`` (e.g. "/scim/Me", or "/token"
        with grant_type="refresh_token")."""
        return sum(
            1
            for c in list(self.state.calls)
            if c.path == path
            and (method is None or c.method == method)
            and (status is None or c.status == status)
            and (grant_type is None or c.grant_type == grant_type)
        )

    # --- tokens without a browser

    def access_claims(
        self,
        username: str,
        scopes: Iterable[str] | None = None,
        *,
        client_id: str = "concordia",
        lifetime: int | None = None,
        audience: str | list[str] | None = None,
    ) -> dict[str, Any]:
        """The claims of an access token as the double issues it (to alter, then mint)."""
        granted = list(scopes) if scopes is not None else self._default_scopes()
        aud = [audience] if isinstance(audience, str) else audience
        return self._access_claims(self.state.users[username], client_id, granted, aud, lifetime)

    def token_for(
        self,
        username: str,
        scopes: Iterable[str] | None = None,
        *,
        client_id: str = "concordia",
        lifetime: int | None = None,
        audience: str | list[str] | None = None,
    ) -> str:
        """A valid access token for the user, as the code flow would give. Default scopes:
        openid profile email and the profile's group scope."""
        claims = self.access_claims(
            username, scopes, client_id=client_id, lifetime=lifetime, audience=audience
        )
        return self.mint(claims)

    def tokens_for(
        self,
        username: str,
        scopes: Iterable[str] | None = None,
        *,
        client_id: str = "concordia",
        nonce: str | None = None,
    ) -> dict[str, Any]:
        """A whole token response (access, ID and, with offline_access, refresh token)."""
        granted = list(scopes) if scopes is not None else self._default_scopes()
        user = self.state.users[username]
        return self.token_response(
            self.state.clients[client_id], user, granted, int(time.time()), None, nonce=nonce
        )

    def mint(
        self,
        claims: Mapping[str, Any],
        *,
        key: SigningKey | PrivateKey | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign any claims: with the double's current key, or a foreign one to forge tokens.
        A foreign key's kid is its thumbprint unless ``headers`` says otherwise."""
        signer = self.state.unpublished_key or self.state.keys[-1]
        if key is not None:
            signer = _as_jwk(key)
        kid = signer.kid or signer.thumbprint()
        header: dict[str, Any] = {"alg": _alg(signer), "kid": kid}
        header.update(headers or {})
        return _sign(claims, signer, header)

    # --- protocol internals, shared with the endpoints below

    def _default_scopes(self) -> list[str]:
        group_scope = {"wlcg": "wlcg.groups", "iam": "profile", "aarc": "eduperson_entitlement"}
        return list(dict.fromkeys(["openid", "profile", "email", group_scope[self.state.profile]]))

    def device_grant_for(self, user_code: str) -> DeviceGrant | None:
        wanted = re.sub(r"[^A-Z]", "", user_code.upper())
        for grant in self.state.device_grants.values():
            if grant.user_code.replace("-", "") == wanted:
                return grant
        return None

    def decide_device(self, grant: DeviceGrant, user: IamUser, approve: bool) -> None:
        grant.status = "approved" if approve else "denied"
        grant.username = user.username
        grant.auth_time = int(time.time())

    def _audience(self, client_id: str, requested: list[str] | None) -> str | list[str]:
        if requested:
            return requested[0] if len(requested) == 1 else requested
        if self.state.audience is not None:
            return self.state.audience
        return client_id

    def _profile_claims(
        self, user: IamUser, scopes: Sequence[str], *, token: Literal["access", "id"]
    ) -> dict[str, Any]:
        """The group claim of the profile, when its scope was granted (IAM's token builders)."""
        state = self.state
        claims: dict[str, Any] = {}
        if state.profile == "wlcg":
            groups = wlcg_groups(user.groups, scopes)
            if groups:
                claims["wlcg.groups"] = groups
            claims["wlcg.ver"] = "1.0"
        elif state.profile == "iam" and "profile" in scopes:
            # IAM puts these in access tokens only with iam.access-token.include-authn-info;
            # the double always does, so one knob (profile) picks the claim under test.
            claims["groups"] = [g.lstrip("/") for g in user.groups]
            claims["organisation_name"] = state.organisation_name
        elif state.profile == "aarc":
            if "eduperson_entitlement" in scopes or "entitlements" in scopes:
                entitlements = self.entitlements(user)
                if "eduperson_entitlement" in scopes:
                    claims["eduperson_entitlement"] = entitlements
                claims["entitlements"] = entitlements
            claims["voperson_id"] = user.sub
        if token == "id" and state.profile in _PROFILES_NAMING_THE_USER_IN_ID_TOKENS:
            if "profile" in scopes:
                claims["name"] = user.name
                claims["preferred_username"] = user.username
                claims["organisation_name"] = state.organisation_name
            if "email" in scopes:
                claims["email"] = user.email
        return claims

    def entitlements(self, user: IamUser) -> list[str]:
        """The AARC profile's eduperson_entitlement values of the user's groups."""
        # AarcClaimValueHelper.encodeGroup: urn:<nid>:<namespace>:group:<name, '/' -> ':'>.
        state = self.state
        prefix = f"urn:{state.aarc_nid}:{state.aarc_namespace}:group:"
        return [prefix + g.strip("/").replace("/", ":") for g in user.groups]

    def _access_claims(
        self,
        user: IamUser,
        client_id: str,
        scopes: list[str],
        audience: list[str] | None,
        lifetime: int | None,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user.sub,
            "aud": self._audience(client_id, audience),
            "iat": now,
            "nbf": now,
            "exp": now + (lifetime if lifetime is not None else self.state.access_token_lifetime),
            "jti": str(uuid.uuid4()),
            "client_id": client_id,
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        claims.update(self._profile_claims(user, scopes, token="access"))
        return claims

    def _id_token(
        self, user: IamUser, client_id: str, scopes: list[str], auth_time: int, nonce: str | None
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user.sub,
            "aud": client_id,
            "iat": now,
            "exp": now + self.state.id_token_lifetime,
            "auth_time": auth_time,
            "jti": str(uuid.uuid4()),
        }
        if nonce:
            claims["nonce"] = nonce
        claims.update(self._profile_claims(user, scopes, token="id"))
        return self.mint(claims)

    def token_response(
        self,
        client: IamClient,
        user: IamUser,
        scopes: list[str],
        auth_time: int,
        audience: list[str] | None,
        *,
        nonce: str | None = None,
        refresh_token: str | None = None,
    ) -> dict[str, Any]:
        """What /token answers; a refresh token is made with offline_access, or passed on."""
        lifetime = self.state.access_token_lifetime
        access = self.mint(self._access_claims(user, client.client_id, scopes, audience, None))
        response: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": " ".join(scopes),
        }
        if "openid" in scopes:
            response["id_token"] = self._id_token(user, client.client_id, scopes, auth_time, nonce)
        if refresh_token is None and "offline_access" in scopes:
            if "refresh_token" in client.grant_types:
                # Opaque and not rotated: IAM's clients reuse their refresh token by default.
                refresh_token = secrets.token_urlsafe(32)
                self.state.refresh_tokens[refresh_token] = RefreshGrant(
                    client.client_id, user.username, scopes, auth_time, audience
                )
        if refresh_token is not None:
            response["refresh_token"] = refresh_token
        return response

    def verify_access_token(self, token: str) -> tuple[dict[str, Any], IamUser]:
        """Claims and user of a token the double would accept; raises ValueError saying why."""
        try:
            decoded = jwt.decode(token, KeySet(self._own_keys()), algorithms=["RS256"])
        except jose_errors.JoseError as exc:
            raise ValueError(f"Invalid access token: {exc.description or exc}") from None
        except ValueError:
            raise ValueError("Invalid access token: not a JWT") from None
        claims = decoded.claims
        now = time.time()
        if claims.get("iss") != self.issuer:
            raise ValueError("Invalid access token: issuer")
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] <= now:
            raise ValueError("Access token expired")
        if isinstance(claims.get("nbf"), int | float) and claims["nbf"] > now + 1:
            raise ValueError("Access token not yet valid")
        if claims.get("jti") in self.state.revoked:
            raise ValueError("Access token revoked")
        user = next((u for u in self.state.users.values() if u.sub == claims.get("sub")), None)
        if user is None:
            raise ValueError("Invalid access token: no such user")
        return claims, user


def _stored_proxy(cert: UserCert, lifetime: timedelta | None) -> StoredProxy:
    if lifetime is None:
        return StoredProxy(cert.cert, cert.key)
    pem = make_proxy(Credential(cert.cert, cert.key), lifetime, datetime.now(UTC))
    certs = x509.load_pem_x509_certificates(pem)
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return StoredProxy(certs[0], key, tuple(certs[1:]))


# --- the app: module-level endpoints reading the double from the app, so that every request
# sees the state of the moment (tests reset and mutate it between requests)

router = APIRouter()


def build_app(iam: IamDouble) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.iam = iam
    app.include_router(router)
    app.add_exception_handler(_Refused, _send_refusal)  # type: ignore[arg-type]
    app.middleware("http")(_record)
    return app


def _iam(request: Request) -> IamDouble:
    iam: IamDouble = request.app.state.iam
    return iam


async def _send_refusal(_request: Request, exc: _Refused) -> Response:
    return exc.response


async def _record(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    state = _iam(request).state
    response = await call_next(request)
    state.calls.append(
        Call(
            request.method,
            request.url.path,
            response.status_code,
            getattr(request.state, "grant_type", None),
            getattr(request.state, "client_id", None),
        )
    )
    return response


async def _form(request: Request) -> dict[str, str]:
    return {k: str(v) for k, v in (await request.form()).items()}


# --- discovery and keys


@router.get("/.well-known/openid-configuration")
async def discovery(request: Request) -> JSONResponse:
    iam = _iam(request)
    base = iam.url
    scopes = list(PUBLIC_SCOPES)
    if iam.state.advertise_restricted_scopes:
        scopes += RESTRICTED_SCOPES
    return JSONResponse(
        {
            "issuer": iam.issuer,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/userinfo",
            "jwks_uri": f"{base}/jwk",
            "revocation_endpoint": f"{base}/revoke",
            "device_authorization_endpoint": f"{base}/devicecode",
            "scim_endpoint": f"{base}/scim",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_GRANT],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "code_challenge_methods_supported": ["plain", "S256"],
            "claim_types_supported": ["normal"],
            "claims_supported": [
                "sub",
                "name",
                "preferred_username",
                "given_name",
                "family_name",
                "email",
                "email_verified",
                "organisation_name",
                "groups",
                "wlcg.groups",
                "eduperson_entitlement",
            ],
            "scopes_supported": scopes,
        }
    )


@router.get("/jwk")
async def jwk(request: Request) -> JSONResponse:
    return JSONResponse(_iam(request).jwks())


# --- authorization code flow


def _authorization_request(
    iam: IamDouble, params: Mapping[str, str]
) -> tuple[IamClient, dict[str, str]]:
    """Check what /authorize was asked. Errors before the redirect URI is trusted are a page
    (RFC 6749 §4.1.2.1: never redirect to an unchecked URI), later ones a redirect."""
    state = iam.state
    client = state.clients.get(params.get("client_id", ""))
    if client is None:
        raise _Refused(_page("<p>Unknown client: the request is refused.</p>", 400))
    redirect_uri = params.get("redirect_uri", "")
    registered = redirect_uri in client.redirect_uris or (
        state.any_loopback_redirect and _LOOPBACK_CALLBACK.fullmatch(redirect_uri) is not None
    )
    if not registered:
        message = f"Redirect URI {redirect_uri} is not registered for {client.client_id}."
        raise _Refused(_page(f"<p>{html.escape(message)}</p>", 400))

    def back(error: str, description: str) -> _Refused:
        params_back = {"error": error, "error_description": description}
        target = _with_query(redirect_uri, {**params_back, "state": params.get("state")})
        return _Refused(RedirectResponse(target, status_code=302))

    if params.get("response_type") != "code":
        raise back("unsupported_response_type", "only the code flow is supported")
    if "authorization_code" not in client.grant_types:
        raise back("unauthorized_client", "the client may not use the code flow")
    refused = [s for s in _scopes(params.get("scope")) if not _scope_allowed(client, s)]
    if refused:
        raise back("invalid_scope", f"scope not allowed: {' '.join(refused)}")
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method") or "plain"
    if challenge and method not in ("plain", "S256"):
        raise back("invalid_request", f"unsupported code_challenge_method {method}")
    if client.require_pkce and not challenge:
        raise back("invalid_request", "this client must use PKCE")
    fields = {k: v for k, v in params.items() if k not in ("username", "password", "decision")}
    return client, fields


def _issue_code(
    iam: IamDouble, client: IamClient, request: Mapping[str, str], user: IamUser, at: int
) -> RedirectResponse:
    code = secrets.token_urlsafe(12)
    challenge = request.get("code_challenge") or None
    iam.state.codes[code] = AuthCode(
        client_id=client.client_id,
        redirect_uri=request["redirect_uri"],
        scopes=_scopes(request.get("scope")),
        username=user.username,
        auth_time=at,
        expires=time.time() + CODE_LIFETIME,
        nonce=request.get("nonce") or None,
        challenge=challenge,
        # RFC 7636 §4.3: a challenge without a method is plain.
        challenge_method=(request.get("code_challenge_method") or "plain") if challenge else None,
        audience=_scopes(request.get("aud")) or None,
    )
    target = _with_query(request["redirect_uri"], {"code": code, "state": request.get("state")})
    return RedirectResponse(target, status_code=302)


def _session_user(iam: IamDouble, request: Request) -> tuple[IamUser, int] | None:
    state = iam.state
    session = state.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    if not state.sso or session is None:
        return None
    user = state.users.get(session[0])
    return (user, session[1]) if user is not None else None


def _password_ok(user: IamUser | None, password: str) -> bool:
    return (
        user is not None
        and user.active
        and hmac.compare_digest(user.password.encode(), password.encode())
    )


def _login_form(fields: Mapping[str, str], error: str | None = None, status: int = 200) -> Response:
    return _page(
        f"""{_error_paragraph(error)}
<form method="post" action="/authorize">
{_hidden(fields)}
<p><label for="username">Username</label>
<input id="username" name="username" autocomplete="username" autofocus></p>
<p><label for="password">Password</label>
<input id="password" type="password" name="password" autocomplete="current-password"></p>
<p><button type="submit" name="decision" value="signin">Sign in</button>
<button type="submit" name="decision" value="deny">Deny</button></p>
</form>""",
        status,
    )


@router.get("/authorize")
async def authorize(request: Request) -> Response:
    iam = _iam(request)
    client, fields = _authorization_request(iam, dict(request.query_params))
    prompt = _scopes(fields.get("prompt"))
    signed_in = _session_user(iam, request)
    if signed_in is not None and "login" not in prompt:
        return _issue_code(iam, client, fields, *signed_in)
    if "none" in prompt:
        target = {"error": "login_required", "state": fields.get("state")}
        return RedirectResponse(_with_query(fields["redirect_uri"], target), status_code=302)
    return _login_form(fields)


@router.post("/authorize")
async def sign_in(request: Request) -> Response:
    iam = _iam(request)
    form = await _form(request)
    client, fields = _authorization_request(iam, form)
    if form.get("decision") == "deny":
        target = {"error": "access_denied", "state": fields.get("state")}
        return RedirectResponse(_with_query(fields["redirect_uri"], target), status_code=302)
    user = iam.state.users.get(form.get("username", ""))
    if user is None or not _password_ok(user, form.get("password", "")):
        return _login_form(fields, "Bad credentials", 401)
    now = int(time.time())
    response = _issue_code(iam, client, fields, user, now)
    if iam.state.sso:
        session = secrets.token_urlsafe(16)
        iam.state.sessions[session] = (user.username, now)
        response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="lax")
    return response


# --- token endpoint


def _authenticate_client(iam: IamDouble, request: Request, form: Mapping[str, str]) -> IamClient:
    """client_secret_basic, client_secret_post, or a public client's bare client_id."""
    clients = iam.state.clients
    header = request.headers.get("authorization", "")
    secret: str | None
    if header[:6].lower() == "basic ":
        basic = True
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise _Refused(_invalid_client(basic)) from None
        # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
        raw_id, _, raw_secret = decoded.partition(":")
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
    else:
        basic = False
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
    client = clients.get(client_id)
    if client is None:
        raise _Refused(_invalid_client(basic))
    if client.secret is None:
        if basic or secret is not None:
            raise _Refused(_invalid_client(basic))
    elif secret is None or not hmac.compare_digest(client.secret.encode(), secret.encode()):
        raise _Refused(_invalid_client(basic))
    request.state.client_id = client_id
    return client


def _invalid_grant(description: str) -> _Refused:
    return _Refused(_oauth_error(400, "invalid_grant", description))


def _active_user(iam: IamDouble, username: str | None) -> IamUser:
    user = iam.state.users.get(username or "")
    if user is None or not user.active:
        raise _invalid_grant("the user is gone or disabled")
    return user


@router.post("/token")
async def token(request: Request) -> Response:
    iam = _iam(request)
    form = await _form(request)
    grant_type = form.get("grant_type", "")
    request.state.grant_type = grant_type or None
    client = _authenticate_client(iam, request, form)
    grants = {
        "authorization_code": _code_grant,
        "refresh_token": _refresh_grant,
        DEVICE_GRANT: _device_grant,
    }
    if grant_type not in grants:
        return _oauth_error(400, "unsupported_grant_type", f"unsupported: {grant_type!r}")
    if grant_type not in client.grant_types:
        return _oauth_error(400, "unauthorized_client", f"{grant_type} is not allowed")
    body = grants[grant_type](iam, client, form)
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _code_grant(iam: IamDouble, client: IamClient, form: Mapping[str, str]) -> dict[str, Any]:
    # Consumed before any check, as IAM does: a failed exchange burns the code.
    code = iam.state.codes.pop(form.get("code", ""), None)
    if code is None:
        raise _invalid_grant("Invalid authorization code")
    if code.expires < time.time():
        raise _invalid_grant("Authorization code expired")
    if code.client_id != client.client_id:
        raise _invalid_grant("the code was issued to another client")
    if form.get("redirect_uri") != code.redirect_uri:
        raise _invalid_grant("Redirect URI mismatch")
    if code.challenge is not None:
        verifier = form.get("code_verifier")
        if not verifier:
            raise _invalid_grant("Missing code verifier")
        if code.challenge_method == "S256":
            digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
            computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        else:
            computed = verifier
        if not hmac.compare_digest(computed.encode(), code.challenge.encode()):
            raise _invalid_grant("Code verifier mismatch")
    user = _active_user(iam, code.username)
    return iam.token_response(
        client, user, code.scopes, code.auth_time, code.audience, nonce=code.nonce
    )


def _refresh_grant(iam: IamDouble, client: IamClient, form: Mapping[str, str]) -> dict[str, Any]:
    refresh_token = form.get("refresh_token", "")
    grant = iam.state.refresh_tokens.get(refresh_token)
    if grant is None:
        raise _invalid_grant("Invalid refresh token")
    if grant.client_id != client.client_id:
        raise _invalid_grant("the refresh token was issued to another client")
    scopes = _scopes(form.get("scope")) or grant.scopes
    if not set(scopes) <= set(grant.scopes):
        raise _Refused(_oauth_error(400, "invalid_scope", "Up-scoping is not allowed"))
    # IAM takes the audience as "audience" (RFC 8693's name) or, as before, "aud".
    audience = _scopes(form.get("audience") or form.get("aud")) or grant.audience
    user = _active_user(iam, grant.username)
    return iam.token_response(
        client, user, scopes, grant.auth_time, audience, refresh_token=refresh_token
    )


def _device_grant(iam: IamDouble, client: IamClient, form: Mapping[str, str]) -> dict[str, Any]:
    grants = iam.state.device_grants
    grant = grants.get(form.get("device_code", ""))
    if grant is None or grant.client_id != client.client_id:
        raise _invalid_grant("Invalid device code")
    now = time.time()
    if grant.expires < now:
        del grants[grant.device_code]
        raise _Refused(_oauth_error(400, "expired_token", "Device code has expired"))
    if grant.status == "denied":
        # IAM itself never says so (a denied code stays pending until it expires); this is
        # RFC 8628 §3.5, which clients have to handle anyway.
        del grants[grant.device_code]
        raise _Refused(_oauth_error(400, "access_denied", "The user denied the request"))
    if grant.status == "pending":
        last, grant.last_poll = grant.last_poll, now
        # RFC 8628 §3.5 (IAM itself never sends slow_down). The client is to add 5 s to its
        # interval; the double does not hold the old pace against it afterwards.
        if last is not None and now - last < grant.interval:
            raise _Refused(_oauth_error(400, "slow_down", "Polling too fast"))
        raise _Refused(_oauth_error(400, "authorization_pending", "Authorization pending"))
    del grants[grant.device_code]
    user = _active_user(iam, grant.username)
    auth_time = grant.auth_time or int(now)
    return iam.token_response(client, user, grant.scopes, auth_time, grant.audience)


@router.post("/revoke")
async def revoke(request: Request) -> Response:
    iam = _iam(request)
    form = await _form(request)
    client = _authenticate_client(iam, request, form)
    value = form.get("token", "")
    grant = iam.state.refresh_tokens.get(value)
    if grant is not None and grant.client_id == client.client_id:
        del iam.state.refresh_tokens[value]
    else:
        try:
            claims, _user = iam.verify_access_token(value)
        except ValueError:
            pass  # RFC 7009 §2.2: an unknown or invalid token is not an error
        else:
            iam.state.revoked.add(str(claims.get("jti")))
    return Response(status_code=200)


# --- device flow (RFC 8628)


@router.post("/devicecode")
async def devicecode(request: Request) -> Response:
    iam = _iam(request)
    state = iam.state
    form = await _form(request)
    client = _authenticate_client(iam, request, form)
    if DEVICE_GRANT not in client.grant_types:
        return _oauth_error(400, "unauthorized_client", "the device flow is not allowed")
    scopes = _scopes(form.get("scope"))
    if any(not _scope_allowed(client, s) for s in scopes):
        message = f"One or more requested scope is not allowed for client '{client.client_id}'"
        return _oauth_error(400, "invalid_scope", message)
    letters = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
    grant = DeviceGrant(
        device_code=secrets.token_urlsafe(24),
        user_code=f"{letters[:4]}-{letters[4:]}",
        client_id=client.client_id,
        scopes=scopes,
        expires=time.time() + state.device_code_lifetime,
        interval=state.device_interval,
        audience=_scopes(form.get("aud")) or None,
    )
    state.device_grants[grant.device_code] = grant
    verification = f"{iam.url}/device"
    # IAM's answer has no interval (clients then wait RFC 8628's default 5 s); the double
    # says it, so that tests can poll fast.
    return JSONResponse(
        {
            "device_code": grant.device_code,
            "user_code": grant.user_code,
            "verification_uri": verification,
            "verification_uri_complete": _with_query(verification, {"user_code": grant.user_code}),
            "expires_in": state.device_code_lifetime,
            "interval": grant.interval,
        },
        headers={"Cache-Control": "no-store"},
    )


def _device_form(user_code: str, error: str | None = None, status: int = 200) -> Response:
    return _page(
        f"""{_error_paragraph(error)}
<form method="post" action="/device">
<p><label for="user_code">Code</label>
<input id="user_code" name="user_code" value="{html.escape(user_code)}"></p>
<p><label for="username">Username</label>
<input id="username" name="username" autocomplete="username"></p>
<p><label for="password">Password</label>
<input id="password" type="password" name="password" autocomplete="current-password"></p>
<p><button type="submit" name="decision" value="approve">Approve</button>
<button type="submit" name="decision" value="deny">Deny</button></p>
</form>""",
        status,
    )


@router.get("/device")
async def device_page(request: Request) -> Response:
    return _device_form(request.query_params.get("user_code", ""))


@router.post("/device")
async def device_decision(request: Request) -> Response:
    iam = _iam(request)
    form = await _form(request)
    user_code = form.get("user_code", "")
    grant = iam.device_grant_for(user_code)
    if grant is None or grant.status != "pending":
        return _device_form(user_code, "Invalid or already used code", 400)
    if grant.expires < time.time():
        return _device_form(user_code, "The code has expired", 400)
    user: IamUser | None
    if form.get("username"):
        user = iam.state.users.get(form["username"])
        if not _password_ok(user, form.get("password", "")):
            return _device_form(user_code, "Bad credentials", 401)
    else:
        # Signed in already (the browser that logged in to Concordia): no password asked.
        signed_in = _session_user(iam, request)
        if signed_in is None:
            return _device_form(user_code, "Bad credentials", 401)
        user = signed_in[0]
    assert user is not None
    approve = form.get("decision") != "deny"
    iam.decide_device(grant, user, approve)
    outcome = "Device approved" if approve else "Device denied"
    return _page(f'<p class="outcome">{outcome}: you may close this page.</p>')


# --- resources behind a bearer token


def _bearer(iam: IamDouble, request: Request) -> tuple[dict[str, Any], IamUser]:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        message = "Full authentication is required to access this resource"
        raise _Refused(_bearer_error("unauthorized", message))
    try:
        return iam.verify_access_token(value.strip())
    except ValueError as exc:
        raise _Refused(_bearer_error("invalid_token", str(exc))) from None


@router.api_route("/userinfo", methods=["GET", "POST"])
async def userinfo(request: Request) -> Response:
    iam = _iam(request)
    claims, user = _bearer(iam, request)
    scopes = _scopes(claims.get("scope"))
    if "openid" not in scopes:
        return _access_denied()
    info: dict[str, Any] = {"sub": user.sub}
    # IamUserInfoEndpoint: without the profile scope the answer is the sub alone.
    if "profile" in scopes:
        info |= {
            "name": user.name,
            "preferred_username": user.username,
            "given_name": user.given_name,
            "family_name": user.family_name,
            "email": user.email,
            "email_verified": True,
        }
        profile = iam.state.profile
        if profile == "iam":
            info["groups"] = [g.lstrip("/") for g in user.groups]
            info["organisation_name"] = iam.state.organisation_name
        elif profile == "wlcg" and "wlcg.groups" in claims:
            # WLCGUserinfoHelper copies the groups from the access token presented.
            info["wlcg.groups"] = claims["wlcg.groups"]
        elif profile == "aarc":
            info["eduperson_entitlement"] = info["entitlements"] = iam.entitlements(user)
            info["voperson_id"] = user.sub
    return JSONResponse(info)


@router.get("/scim/Me")
async def scim_me(request: Request) -> Response:
    iam = _iam(request)
    state = iam.state
    if state.scim == "down":
        return PlainTextResponse("Service Unavailable", status_code=503)
    claims, user = _bearer(iam, request)
    if state.scim == "forbidden":
        return _access_denied()
    if state.scim_requires_scope and "scim:read" not in _scopes(claims.get("scope")):
        # IAM < 1.10: #iam.hasScope threw InsufficientScopeException even where
        # "or hasRole('USER')" would have let the user through.
        body = {
            "error": "insufficient_scope",
            "error_description": "Insufficient scope for this resource",
            "scope": "scim:read",
        }
        return JSONResponse(body, status_code=403)
    return Response(json.dumps(scim_user(iam, user)), media_type=SCIM_CONTENT_TYPE)


def _proxy_request_errors(form: Mapping[str, str]) -> list[str]:
    """ProxyCertificateRequestDTO's bean validation, with its messages."""
    errors = []
    lifetime = form.get("lifetimeSecs") or None
    if lifetime is not None:
        if not re.fullmatch(r"-?\d+", lifetime.strip()):
            errors.append(
                "Failed to convert property value of type 'java.lang.String' to required type "
                f"'java.lang.Long' for property 'lifetimeSecs'; value '{lifetime}'"
            )
        elif int(lifetime) < 120:
            errors.append("invalid lifetime: minimum is 120 seconds")
    if len(form.get("issuer") or "") > 128:
        errors.append("invalid issuer: max length exceeded (128 characters)")
    return errors


@router.post("/iam/proxycert")
async def proxycert(request: Request) -> Response:
    iam = _iam(request)
    state = iam.state
    if not state.proxycert_enabled:
        return JSONResponse({"error": "Not Found"}, status_code=404)
    form = await _form(request)
    # FormClientCredentialsAuthenticationFilter runs before the bearer token is looked at.
    client_id = form.get("client_id", "").strip()
    if not client_id:
        return _oauth_error(401, "unauthorized", "No client credentials found in request")
    client = state.clients.get(client_id)
    secret = form.get("client_secret", "")
    if client is None or client.secret is None:
        return _oauth_error(401, "unauthorized", "Bad credentials")
    if not hmac.compare_digest(client.secret.encode(), secret.encode()):
        return _oauth_error(401, "unauthorized", "Bad credentials")
    request.state.client_id = client_id
    claims, user = _bearer(iam, request)
    if "proxy:generate" not in _scopes(claims.get("scope")):
        return _access_denied()
    errors = _proxy_request_errors(form)
    if errors:
        return JSONResponse({"error": ",".join(errors)}, status_code=400)
    issuer = form.get("issuer") or None
    linked = next(
        (
            c
            for c in user.certificates
            if c.proxy is not None and (issuer is None or c.cert.issuer_rfc2253 == issuer)
        ),
        None,
    )
    if linked is None or linked.proxy is None:
        message = f"No proxy found for account '{user.username}'"
        return JSONResponse({"error": message}, status_code=412)
    stored = linked.proxy
    now = datetime.now(UTC)
    if stored.expires <= now:
        message = f"No valid proxy found for account '{user.username}'"
        return JSONResponse({"error": message}, status_code=412)
    # DefaultProxyCertificateService.computeProxyLifetime: the maximum unless less is asked.
    seconds = state.proxy_max_lifetime
    asked = int(form["lifetimeSecs"]) if form.get("lifetimeSecs") else None
    if asked is not None and 0 < asked < seconds:
        seconds = asked
    credential = Credential(stored.cert, stored.key, stored.chain)
    pem = make_proxy(credential, timedelta(seconds=seconds), now)
    proxy = x509.load_pem_x509_certificates(pem)[0]
    return JSONResponse(
        {
            "subject": rfc2253(proxy.subject),
            "issuer": rfc2253(proxy.issuer),
            "identity": linked.cert.subject_rfc2253,
            # A java.util.Date through IAM's own Jackson builder, which leaves
            # WRITE_DATES_AS_TIMESTAMPS on: milliseconds since the epoch. IAM's docs show it
            # quoted ("1663991299000"); clients had better take either.
            "not_after": int(proxy.not_valid_after_utc.timestamp() * 1000),
            "certificate_chain": pem.decode(),
        }
    )


def scim_user(iam: IamDouble, user: IamUser) -> dict[str, Any]:
    """The SCIM User resource of IAM's ScimMeController, with the IndigoUser extension."""
    base = iam.url
    certificates = []
    for linked in user.certificates:
        entry: dict[str, Any] = {}
        if linked.label:
            entry["display"] = linked.label
        entry |= {
            "primary": linked.primary,
            "subjectDn": linked.cert.subject_rfc2253,
            "issuerDn": linked.cert.issuer_rfc2253,
            "pemEncodedCertificate": linked.cert.cert_pem.decode(),
            "created": _iso(linked.created),
            "lastModified": _iso(linked.created),
            "hasProxyCertificate": linked.proxy is not None,
        }
        if linked.proxy is not None:
            entry["proxyExpirationTime"] = _iso(linked.proxy.expires)
        certificates.append(entry)
    indigo: dict[str, Any] = {"serviceAccount": False}
    # Jackson's NON_EMPTY: an empty list is left out, not sent as [].
    if certificates:
        indigo["certificates"] = certificates
    return {
        "id": user.sub,
        "meta": {
            "created": _iso(user.created),
            "lastModified": _iso(user.created),
            "location": f"{base}/scim/Users/{user.sub}",
            "resourceType": "User",
        },
        "schemas": [CORE_USER_SCHEMA, INDIGO_USER_SCHEMA],
        "userName": user.username,
        "name": {
            "formatted": user.name,
            "familyName": user.family_name,
            "givenName": user.given_name,
        },
        # IAM's UserConverter sets displayName to the username, not the person's name.
        "displayName": user.username,
        "active": user.active,
        "emails": [{"type": "work", "value": user.email, "primary": True}],
        "groups": [
            {
                "value": _group_uuid(path),
                "display": path.strip("/"),
                "$ref": f"{base}/scim/Groups/{_group_uuid(path)}",
            }
            for path in user.groups
        ],
        INDIGO_USER_SCHEMA: indigo,
    }
