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

__all__ = ["OAuthError", "StarletteOAuth2App", "web_client"]


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
