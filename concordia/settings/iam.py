"""Settings of sign-in at IAM (OpenID Connect), bearer tokens and the VOs recognised."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings

from concordia.settings.base import CONFIG, DEFAULT_TEXT


class VoConfig(BaseModel):
    """A collaboration Concordia recognises, and the IAM groups that make someone a member."""

    title: str = Field(description="As people write it, e.g. KM3NeT.")
    groups: list[str] = Field(
        description="IAM group paths (e.g. /escape/cta); members of a subgroup are members too."
    )
    dirac_group: str = Field(
        default="", description="The DIRAC group its jobs run under; empty: <vo>_user."
    )


#: ESCAPE's IAM: the experiments are subgroups of /escape (configuration, not code).
DEFAULT_VOS = {
    "escape": VoConfig(title="ESCAPE", groups=["/escape"]),
    "cta": VoConfig(title="CTA", groups=["/escape/cta"]),
    "km3net": VoConfig(title="KM3NeT", groups=["/escape/km3net"]),
}


class IamSettings(BaseSettings):
    """IAM (OpenID Connect). No issuer: local mode, a one-time sign-in link at start."""

    model_config = CONFIG

    oidc_issuer: str = Field(
        default="",
        description="The IAM (OpenID Connect) issuer people sign in at, e.g. "
        "https://iam-escape.cloud.cnaf.infn.it/; empty: local mode.",
    )
    oidc_client_id: str = Field(
        default="",
        description="The IAM client of the web sign-in (authorization code flow); needed with "
        "oidc_issuer.",
    )
    oidc_client_secret: SecretStr = Field(
        default=SecretStr(""),
        description="That client's secret (token calls and IAM's managed proxies); empty: "
        "a public client.",
    )
    oidc_scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "email", "offline_access", "wlcg.groups"],
        description="Asked at sign-in; scim:read and proxy:generate are added when enabled.",
    )
    oidc_audience: str = Field(
        default="",
        description="The aud IAM access tokens must carry: the web sign-in and `concordia "
        "login` ask IAM for tokens for it. Empty: not checked (tokens must then be issued to "
        "Concordia's own clients).",
    )
    oidc_cli_client_id: str = Field(
        default="",
        description="A public IAM client with the device flow, for `concordia login`; "
        "empty: the CLI cannot sign in with IAM.",
    )
    oidc_scim_scope: bool = Field(
        default=False, description="Ask for scim:read (IAM before 1.10 needs it for /scim/Me)."
    )
    oidc_http_timeout: float = Field(default=10.0, gt=0, description="Seconds per call to IAM.")
    api_token_trust_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a web process goes on trusting a bearer token it has checked "
        "(a Concordia API token or an IAM access token), without checking it again (never "
        "past the token's expiry): a change of the user's groups shows after it. 0: every "
        "request checks the token.",
    )
    vos: dict[str, VoConfig] = Field(
        default_factory=lambda: dict(DEFAULT_VOS),
        description="The VOs recognised, by name, from the IAM groups of the user's token.",
    )

    cli_tokens_file: Path = Field(
        default_factory=lambda: Path.home() / ".config" / "concordia" / "tokens.json",
        description="Where `concordia login` keeps the CLI's IAM tokens (0600), per server.",
        json_schema_extra={DEFAULT_TEXT: "~/.config/concordia/tokens.json"},
    )

    @model_validator(mode="after")
    def _derive_iam(self) -> Self:
        self.oidc_issuer = self.oidc_issuer.rstrip("/")
        if self.oidc_issuer and not self.oidc_client_id:
            raise ValueError("oidc_client_id is needed with oidc_issuer")
        return self

    @property
    def iam_mode(self) -> bool:
        return bool(self.oidc_issuer)
