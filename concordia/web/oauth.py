"""The browser sign-in's OAuth client (authlib's Starlette integration: state, nonce, PKCE)."""

from __future__ import annotations

import warnings
from typing import Any

import authlib.deprecate  # noqa: F401  (installs authlib's warning filter first)
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError

from concordia.auth.oidc import Iam
from concordia.settings import GridSettings, IamSettings

with warnings.catch_warnings():
    # authlib announces httpx2 as its future HTTP client; httpx is what this project uses and
    # what authlib still supports, so the notice would only clutter the server's log.
    warnings.simplefilter("ignore")
    from authlib.integrations.base_client.errors import OAuthError
    from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App

__all__ = ["OAuthError", "StarletteOAuth2App", "diracx_client", "web_client"]


class IamSignIn(StarletteOAuth2App):
    """authlib's client, checking ID tokens with the keys ``iam`` caches for bearer tokens
    (one cache, one limit on fetching them again), and fetching them again when the key
    under a token's kid does not verify it (IAM changed the key, kept the id). A token still
    not verified, or otherwise invalid, is an OAuthError; IamUnreachable when the keys
    cannot be read."""

    iam: Iam

    async def fetch_jwk_set(self, force: bool = False) -> dict[str, Any]:
        return await self.iam.jwks(refetch=force)

    async def parse_id_token(self, token: Any, nonce: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return await super().parse_id_token(token, nonce, *args, **kwargs)
            except BadSignatureError:
                await self.fetch_jwk_set(force=True)  # (at most every JWKS_REFETCH_SECONDS)
                return await super().parse_id_token(token, nonce, *args, **kwargs)
        except (BadSignatureError, InvalidKeyIdError):
            raise OAuthError("invalid_token", "the ID token's signature is not IAM's") from None
        except JoseError as exc:
            why = exc.description or exc.error
            raise OAuthError("invalid_token", f"the ID token is not valid ({why})") from None


class _IamOAuth(OAuth):
    oauth2_client_cls = IamSignIn


def web_client(settings: IamSettings, iam: Iam, scopes: list[str]) -> StarletteOAuth2App:
    """IAM's authorization code flow with PKCE (S256), discovery from the issuer, asking for
    ``scopes`` (Settings.login_scopes: IAM's and the proxy sources'); with oidc_audience, IAM
    is asked for access tokens for that audience (its `aud` parameter): else they carry only
    the client id, and Concordia's own check refuses them."""
    oauth = _IamOAuth()
    audience = {"aud": settings.oidc_audience} if settings.oidc_audience else None
    oauth.register(
        "iam",
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret.get_secret_value() or None,
        server_metadata_url=f"{settings.oidc_issuer}/.well-known/openid-configuration",
        authorize_params=audience,
        client_kwargs={
            "scope": " ".join(scopes),
            "code_challenge_method": "S256",
            "timeout": settings.oidc_http_timeout,
        },
    )
    client: IamSignIn = oauth.iam
    client.iam = iam
    return client


def diracx_client(settings: GridSettings, timeout: float) -> StarletteOAuth2App:
    """DiracX's own authorization code flow (per-user mode): Concordia is a public client of
    DiracX (PKCE S256, no secret); DiracX signs the user in at their VO's IAM in between.
    ``timeout``: seconds per call, as to IAM (oidc_http_timeout)."""
    url = settings.diracx_url.rstrip("/")
    oauth = OAuth()
    oauth.register(
        "diracx",
        client_id=settings.diracx_client_id,
        client_secret=None,
        authorize_url=f"{url}/api/auth/authorize",
        access_token_url=f"{url}/api/auth/token",
        client_kwargs={
            "code_challenge_method": "S256",
            "token_endpoint_auth_method": "none",
            "timeout": timeout,
        },
    )
    client: StarletteOAuth2App = oauth.diracx
    return client
