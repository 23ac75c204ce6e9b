"""Settings of the data lake (ESCAPE's Rucio), where large results are stored."""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings

from concordia.settings.base import CONFIG


class DatalakeSettings(BaseSettings):
    """The data lake: large results stored there. No URL: no data lake."""

    model_config = CONFIG

    datalake_url: str = Field(
        default="",
        description="The Rucio server's URL, e.g. https://rucio.example.org; empty: no data "
        "lake (every output comes back through the sandbox).",
    )
    datalake_auth_url: str = Field(
        default="", description="Rucio's authentication server; empty: datalake_url."
    )
    datalake_account: str = Field(
        default="",
        description="The Rucio service account Concordia uploads with (only into the scope of "
        "the user a job belongs to).",
    )
    datalake_password: SecretStr = Field(
        default=SecretStr(""), description="The password of datalake_account (userpass)."
    )
    datalake_user_tokens: bool = Field(
        default=False,
        description="Rucio accepts users' IAM access tokens (its [oidc] support, as ESCAPE's "
        "does): a user signed in through IAM stores, lists and downloads their data as their "
        "own Rucio account, with a token for datalake_token_audience got by refreshing their "
        "sign-in; otherwise, and when they have no usable sign-in, as datalake_account.",
    )
    datalake_token_audience: str = Field(
        default="rucio", description="The audience Rucio wants in users' IAM tokens."
    )
    datalake_verify: bool | str = Field(
        default=True,
        description="Check Rucio's TLS certificate: true, false, or the path of a CA bundle.",
    )
    datalake_rse: str = Field(
        default="", description="The RSE data go to unless a submission names another."
    )
    datalake_rses: list[str] = Field(
        default_factory=list,
        description="The RSEs users may choose; empty: datalake_rse alone.",
    )
    datalake_scope: str = Field(
        default="user.{account}",
        description="The scope a user's data go to: {account} is their Rucio account (their "
        "IAM username); an operator may name a VO scope instead.",
    )
    datalake_sandbox_max_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=0,
        description="A grid job's output larger than this goes to the data lake, never "
        "through the sandbox (DIRAC's own limit is 10 MB).",
    )

    datalake_upload_tokens: bool = Field(
        default=False,
        description="The RSEs trust Concordia as a token issuer (its /.well-known/"
        "openid-configuration): grid jobs upload with a short-lived token Concordia issues "
        "for each file, upload-only (storage.create), rather than with the user's proxy.",
    )
    datalake_upload_token_lifetime: int = Field(
        default=3600,
        ge=60,
        le=86400,
        description="Seconds an upload token works, from when the job fetches it (just "
        "before each upload).",
    )
    datalake_upload_link_hours: float = Field(
        default=336,
        gt=0,
        description="How long a job's signed link for upload tokens works (it must outlast "
        "the job's wait in the queue and its run); the job must also not be over.",
    )

    @model_validator(mode="after")
    def _derive_datalake(self) -> Self:
        if self.datalake_url:
            self.datalake_url = self.datalake_url.rstrip("/")
            self.datalake_auth_url = (self.datalake_auth_url or self.datalake_url).rstrip("/")
            if not self.datalake_rse:
                raise ValueError("datalake_rse is needed with datalake_url")
            if not self.datalake_rses:
                self.datalake_rses = [self.datalake_rse]
            elif self.datalake_rse not in self.datalake_rses:
                self.datalake_rses = [self.datalake_rse, *self.datalake_rses]
        return self

    @property
    def datalake_enabled(self) -> bool:
        return bool(self.datalake_url)
