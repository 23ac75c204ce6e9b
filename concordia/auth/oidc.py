"""IAM as OpenID Connect provider: discovery, token refresh, userinfo, bearer JWTs (JWKS)."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import threading
import time
from typing import Any

import httpx
from cachetools import TLRUCache
from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import KeySet

from concordia.core.tokens import unverified_claims
from concordia.settings import IamSettings

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
#: A token whose key id is unknown, or whose signature the key under its id does not verify,
#: makes us fetch the JWKS again, at most this often: forged tokens must not make Concordia
#: hammer IAM. After a failed fetch the next waits as long (IAM down must not queue every
#: request).
JWKS_REFETCH_SECONDS = 30.0
LEEWAY_SECONDS = 30
USERINFO_CACHE_SECONDS = 300.0
USERINFO_CACHE_SIZE = 1024
#: Access tokens whose signature and claims a process remembers as checked, at most (each
#: a few hundred bytes of claims): an API client sends the same token with every call.
#: The least recently used go first.
VERIFIED_TOKENS = 4096
GROUP_CLAIMS = ("wlcg.groups", "groups", "eduperson_entitlement")


class TokenInvalid(Exception):
    """A bearer token Concordia does not accept; the message says why (shown to the caller)."""


class IamUnreachable(Exception):
    """IAM did not answer (network, 5xx, garbage): what depends on it waits, nothing is decided."""


class GrantRefused(Exception):
    """IAM's token endpoint refused a grant (RFC 6749 error); ``error`` is its code."""

    def __init__(self, error: str, description: str = "") -> None:
        self.error = error
        super().__init__(f"{error}: {description}" if description else error)


class Iam:
    """One configured issuer: its discovery document, its keys, its token endpoint."""

    def __init__(self, settings: IamSettings) -> None:
        self.settings = settings
        self.issuer = settings.oidc_issuer
        self.http = httpx.AsyncClient(timeout=settings.oidc_http_timeout)
        #: The client ids whose access tokens Concordia accepts (the web's, the CLI's).
        self.clients = {settings.oidc_client_id, settings.oidc_cli_client_id} - {""}
        self._metadata: dict[str, Any] | None = None
        self._userinfo: dict[str, tuple[float, dict[str, Any]]] = {}
        self._keys: KeySet | None = None
        self._jwks: dict[str, Any] = {}
        self._keys_fetched = -JWKS_REFETCH_SECONDS
        self._keys_failed = False
        self._keys_lock = asyncio.Lock()
        #: Access tokens validated lately: token digest -> (its exp, its claims). An entry
        #: dies at the token's exp (the wall clock's, as exp is) and with the keys that
        #: verified it: every entry goes when IAM's keys are fetched anew and differ.
        self._verified: TLRUCache[str, tuple[float, dict[str, Any]]] = TLRUCache(
            maxsize=VERIFIED_TOKENS, ttu=lambda _key, value, _now: value[0], timer=_wall_clock
        )
        #: Bumped when the keys change: a check begun with the old keys is not remembered.
        self._keys_generation = 0
        #: The cache is read and written with no await between: the lock is for threads.
        self._verified_lock = threading.Lock()

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            url = f"{self.issuer}/.well-known/openid-configuration"
            self._metadata = await self._get_json(url, "discovery document")
        return self._metadata

    async def endpoint(self, name: str) -> str:
        url = (await self.metadata()).get(name)
        if not isinstance(url, str):
            raise IamUnreachable(f"IAM's discovery document has no {name}")
        return url

    async def _get_json(self, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self.http.get(url, **kwargs)
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise IamUnreachable(f"IAM's {what} could not be read: {type(exc).__name__}") from None
        if not isinstance(body, dict):
            raise IamUnreachable(f"IAM's {what} is not a JSON object")
        return body

    async def refresh(self, refresh_token: str, audience: str = "") -> dict[str, Any]:
        """New tokens for a refresh token (RFC 6749 section 6, the client authenticating
        with its secret), for ``audience`` if given (another service's, e.g. Rucio's);
        GrantRefused when IAM says no, IamUnreachable when it cannot."""
        url = await self.endpoint("token_endpoint")
        secret = self.settings.oidc_client_secret.get_secret_value()
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if audience:
            data["audience"] = audience
        elif self.settings.oidc_audience:  # renewed tokens are for the audience checked here
            data["aud"] = self.settings.oidc_audience
        extra: dict[str, Any] = {}
        if secret:
            extra["auth"] = httpx.BasicAuth(self.settings.oidc_client_id, secret)
        else:
            data["client_id"] = self.settings.oidc_client_id
        try:
            response = await self.http.post(url, data=data, **extra)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise IamUnreachable(f"IAM's token endpoint: {type(exc).__name__}") from None
        if response.status_code >= 500 or not isinstance(body, dict):
            raise IamUnreachable(f"IAM's token endpoint answered {response.status_code}")
        if response.status_code != 200 or "access_token" not in body:
            raise GrantRefused(str(body.get("error", "")), str(body.get("error_description", "")))
        return body

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        url = await self.endpoint("userinfo_endpoint")
        return await self._get_json(url, "userinfo", headers=_bearer(access_token))

    async def userinfo_cached(self, access_token: str) -> dict[str, Any]:
        """userinfo, asked once per token for a few minutes: an API client sends the same
        token with every call, and IAM's iam/aarc profiles put the groups only there."""
        key = hashlib.sha256(access_token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._userinfo.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        info = await self.userinfo(access_token)
        self._userinfo[key] = (now + USERINFO_CACHE_SECONDS, info)
        while len(self._userinfo) > USERINFO_CACHE_SIZE:
            self._userinfo.pop(next(iter(self._userinfo)))  # the oldest first
        return info

    async def validate(self, token: str) -> dict[str, Any]:
        """The claims of an IAM access token (JWT): signature by the issuer's keys, iss, exp,
        nbf and, where configured, aud. Raises TokenInvalid saying what is wrong. A token
        that passed is remembered (by its digest) until its exp, not checked again: only
        accepted tokens are, and never past exp (its leeway then goes through the check)."""
        key = hashlib.sha256(token.encode()).hexdigest()
        with self._verified_lock:
            cached = self._verified.get(key)
        if cached is not None and cached[0] > _wall_clock():
            return copy.deepcopy(cached[1])  # a caller changing its claims changes no other's
        generation = self._keys_generation
        claims = await self._checked_claims(token)
        exp = claims["exp"]
        if isinstance(exp, int | float) and not isinstance(exp, bool) and exp > _wall_clock():
            with self._verified_lock:
                if generation == self._keys_generation:  # the keys did not change meanwhile
                    self._verified[key] = (float(exp), copy.deepcopy(claims))
        return claims

    async def _checked_claims(self, token: str) -> dict[str, Any]:
        """validate's check itself, every time."""
        unverified = _unverified_claims(token)
        if str(unverified.get("iss", "")).rstrip("/") != self.issuer:
            raise TokenInvalid(
                f"the token was issued by {unverified.get('iss')!r}, not by {self.issuer}"
            )
        keys = await self._keyset(refetch=False)
        try:
            try:
                decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
            except (jose_errors.InvalidKeyIdError, jose_errors.BadSignatureError):
                # IAM changed its keys since we fetched them: a new key id, or a new key
                # under the same id. IamUnreachable if they cannot be read now.
                decoded = jwt.decode(token, await self._keyset(refetch=True), algorithms=ALGORITHMS)
        except jose_errors.InvalidKeyIdError:
            raise TokenInvalid(
                "the token is signed with a key the issuer does not publish"
            ) from None
        except jose_errors.BadSignatureError:
            raise TokenInvalid("the token's signature is not the issuer's") from None
        except jose_errors.JoseError as exc:
            raise TokenInvalid(f"the token cannot be read: {exc.description or exc}") from None
        claims = decoded.claims
        if not self.settings.oidc_audience and claims.get("client_id", claims.get("azp")) not in (
            self.clients
        ):  # another relying party's token (or an ID token) must not act here
            raise TokenInvalid("the token was issued to another client than Concordia's")
        rules: dict[str, Any] = {
            "exp": {"essential": True},
            "sub": {"essential": True},
        }
        if self.settings.oidc_audience:
            rules["aud"] = {"essential": True, "value": self.settings.oidc_audience}
        try:
            jwt.JWTClaimsRegistry(leeway=LEEWAY_SECONDS, **rules).validate(claims)
        except jose_errors.ClaimError as exc:
            raise TokenInvalid(self._claim_refusal(exc, claims)) from None
        return claims

    def _claim_refusal(self, exc: jose_errors.ClaimError, claims: dict[str, Any]) -> str:
        """What is wrong with a claim, by name: joserfc raises one class (InvalidClaimError,
        also exported as InvalidTokenError) for a wrong audience and a future nbf alike."""
        if isinstance(exc, jose_errors.ExpiredTokenError):
            return "the token has expired: sign in again"
        if isinstance(exc, jose_errors.MissingClaimError):
            return f"the token lacks the {exc.claim!r} claim"
        if exc.claim == "aud":
            return (
                f"the token's 'aud' claim is {claims.get('aud')!r}, not "
                f"{self.settings.oidc_audience!r} (the oidc_audience setting): ask IAM for a "
                "token for that audience (`concordia login` does)"
            )
        if exc.claim in ("nbf", "iat"):
            return (
                f"the token is not valid yet (its {exc.claim!r} claim is in the future): "
                "check the clocks of this machine and of IAM"
            )
        return f"the token's {exc.claim!r} claim is wrong: {exc.description}"

    async def jwks(self, *, refetch: bool = False) -> dict[str, Any]:
        """The issuer's JWKS as published (for authlib's ID token check): the one cache of
        IAM's keys, fetched again on ``refetch`` at most every JWKS_REFETCH_SECONDS."""
        await self._keyset(refetch=refetch)
        return self._jwks

    async def _keyset(self, *, refetch: bool) -> KeySet:
        """The cached keys; with ``refetch`` (a token they do not verify) fetched again unless
        they were a moment ago. IamUnreachable when they cannot be read: a token IAM may have
        signed with a new key is then neither accepted nor called forged."""
        async with self._keys_lock:
            recent = time.monotonic() - self._keys_fetched < JWKS_REFETCH_SECONDS
            if self._keys is not None and not refetch:
                return self._keys
            if recent:
                if self._keys is None or self._keys_failed:
                    raise IamUnreachable("IAM's keys could not be read a moment ago")
                return self._keys
            self._keys_fetched = time.monotonic()
            self._keys_failed = True
            jwks = await self._get_json(await self.endpoint("jwks_uri"), "keys")
            try:
                keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
            except (jose_errors.JoseError, ValueError, TypeError, KeyError):
                raise IamUnreachable("IAM publishes no usable keys") from None
            if self._keys is not None and jwks != self._jwks:
                # Tokens checked with keys IAM may have dropped are checked again.
                with self._verified_lock:
                    self._keys_generation += 1
                    self._verified.clear()
            self._keys, self._jwks, self._keys_failed = keys, jwks, False
            return keys

    async def close(self) -> None:
        await self.http.aclose()


def _wall_clock() -> float:
    """The time a token's exp is compared with (looked up at each call: tests move it)."""
    return time.time()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _unverified_claims(token: str) -> dict[str, Any]:
    """The payload, unverified, only to say whose token it is when refusing it."""
    claims = unverified_claims(token)
    if claims is None:
        raise TokenInvalid("not a JWT")
    return claims


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2
