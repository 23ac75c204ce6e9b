"""IAM as OpenID Connect provider: sign-in client (authlib, PKCE), refresh, bearer JWTs (JWKS)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import warnings
from typing import Any

import authlib.deprecate  # noqa: F401  (installs authlib's warning filter first)
import httpx
from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import KeySet

from concordia.settings import Settings

with warnings.catch_warnings():
    # authlib announces httpx2 as its future HTTP client; httpx is what this project uses and
    # what authlib still supports, so the notice would only clutter the server's log.
    warnings.simplefilter("ignore")
    from authlib.integrations.base_client.errors import OAuthError
    from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
#: A token seen with an unknown key id makes us fetch the JWKS again, at most this often.
JWKS_REFETCH_SECONDS = 30.0
LEEWAY_SECONDS = 30

__all__ = ["Iam", "IamUnreachable", "OAuthError", "TokenInvalid"]


class TokenInvalid(Exception):
    """A bearer token Concordia does not accept; the message says why (shown to the caller)."""


class IamUnreachable(Exception):
    """IAM did not answer (network, 5xx): what depends on it waits, nothing is decided."""


class Iam:
    """One configured issuer: its discovery document, keys, and the OAuth client of the web."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.issuer = settings.oidc_issuer
        self.http = httpx.AsyncClient(timeout=settings.oidc_http_timeout)
        self.oauth = OAuth()
        self.oauth.register(
            "iam",
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret.get_secret_value() or None,
            server_metadata_url=f"{self.issuer}/.well-known/openid-configuration",
            client_kwargs={
                "scope": " ".join(settings.login_scopes()),
                "code_challenge_method": "S256",
                "timeout": settings.oidc_http_timeout,
            },
        )
        self._keys: KeySet | None = None
        self._keys_fetched = 0.0
        self._keys_lock = asyncio.Lock()

    @property
    def client(self) -> StarletteOAuth2App:
        client: StarletteOAuth2App = self.oauth.iam
        return client

    async def metadata(self) -> dict[str, Any]:
        try:
            metadata: dict[str, Any] = await self.client.load_server_metadata()
        except (httpx.HTTPError, ValueError) as exc:
            raise IamUnreachable(f"IAM's discovery document could not be read: {exc}") from exc
        return metadata

    async def endpoint(self, name: str) -> str:
        url = (await self.metadata()).get(name)
        if not isinstance(url, str):
            raise IamUnreachable(f"IAM's discovery document has no {name}")
        return url

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        """New tokens for a refresh token; OAuthError when IAM refuses it (session over)."""
        try:
            token: dict[str, Any] = await self.client.fetch_access_token(  # type: ignore[no-untyped-call]
                grant_type="refresh_token", refresh_token=refresh_token
            )
        except httpx.HTTPError as exc:
            raise IamUnreachable(f"IAM did not answer the token refresh: {exc}") from exc
        return token

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        url = await self.endpoint("userinfo_endpoint")
        try:
            response = await self.http.get(url, headers=_bearer(access_token))
        except httpx.HTTPError as exc:
            raise IamUnreachable(f"IAM's userinfo did not answer: {exc}") from exc
        if response.status_code != 200:
            raise IamUnreachable(f"IAM's userinfo answered {response.status_code}")
        claims: dict[str, Any] = response.json()
        return claims

    async def validate(self, token: str) -> dict[str, Any]:
        """The claims of an IAM access token (JWT): signature by the issuer's keys, iss, exp,
        nbf and, where configured, aud. Raises TokenInvalid saying what is wrong."""
        unverified = _unverified_claims(token)
        if unverified.get("iss", "").rstrip("/") != self.issuer:
            raise TokenInvalid(
                f"the token was issued by {unverified.get('iss')!r}, not by {self.issuer}"
            )
        keys = await self._keyset(refetch=False)
        try:
            try:
                decoded = jwt.decode(token, keys, algorithms=ALGORITHMS)
            except jose_errors.InvalidKeyIdError:
                # IAM rotated its keys since we fetched them.
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
        rules: dict[str, Any] = {
            "exp": {"essential": True},
            "sub": {"essential": True},
        }
        if self.settings.oidc_audience:
            rules["aud"] = {"essential": True, "value": self.settings.oidc_audience}
        try:
            jwt.JWTClaimsRegistry(leeway=LEEWAY_SECONDS, **rules).validate(claims)
        except jose_errors.ExpiredTokenError:
            raise TokenInvalid("the token has expired: sign in again") from None
        except jose_errors.InvalidTokenError:
            raise TokenInvalid("the token is not valid yet") from None
        except jose_errors.ClaimError as exc:
            raise TokenInvalid(f"the token's {exc.claim!r} claim is missing or wrong") from None
        return claims

    async def _keyset(self, *, refetch: bool) -> KeySet:
        async with self._keys_lock:
            recent = time.monotonic() - self._keys_fetched < JWKS_REFETCH_SECONDS
            if self._keys is not None and (not refetch or recent):
                return self._keys
            url = await self.endpoint("jwks_uri")
            try:
                response = await self.http.get(url)
                response.raise_for_status()
                self._keys = KeySet.import_key_set(response.json())
            except (httpx.HTTPError, ValueError, jose_errors.JoseError) as exc:
                if self._keys is None:
                    raise IamUnreachable(f"IAM's keys could not be read: {exc}") from exc
            self._keys_fetched = time.monotonic()
            return self._keys

    async def close(self) -> None:
        await self.http.aclose()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _unverified_claims(token: str) -> dict[str, Any]:
    """The payload, unverified, only to say whose token it is when refusing it."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenInvalid("not a JWT")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise TokenInvalid("not a JWT") from None
    if not isinstance(claims, dict):
        raise TokenInvalid("not a JWT")
    return claims


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2
