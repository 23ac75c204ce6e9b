"""The browser sign-in's OAuth client (authlib's Starlette integration: state, nonce, PKCE)."""

from __future__ import annotations

import warnings

import authlib.deprecate  # noqa: F401  (installs authlib's warning filter first)

from concordia.settings import Settings

with warnings.catch_warnings():
    # authlib announces httpx2 as its future HTTP client; httpx is what this project uses and
    # what authlib still supports, so the notice would only clutter the server's log.
    warnings.simplefilter("ignore")
    from authlib.integrations.base_client.errors import OAuthError
    from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App

__all__ = ["OAuthError", "StarletteOAuth2App", "diracx_client", "web_client"]


def web_client(settings: Settings) -> StarletteOAuth2App:
    """IAM's authorization code flow with PKCE (S256), discovery from the issuer."""
    oauth = OAuth()
    oauth.register(
        "iam",
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret.get_secret_value() or None,
        server_metadata_url=f"{settings.oidc_issuer}/.well-known/openid-configuration",
        client_kwargs={
            "scope": " ".join(settings.login_scopes()),
            "code_challenge_method": "S256",
            "timeout": settings.oidc_http_timeout,
        },
    )
    client: StarletteOAuth2App = oauth.iam
    return client


def diracx_client(settings: Settings) -> StarletteOAuth2App:
    """DiracX's own authorization code flow (per-user mode): Concordia is a public client of
    DiracX (PKCE S256, no secret); DiracX signs the user in at their VO's IAM in between."""
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
            "timeout": settings.oidc_http_timeout,
        },
    )
    client: StarletteOAuth2App = oauth.diracx
    return client
