"""Settings of users' x509 proxies, their uploaded certificates and the keys of secrets."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings

from concordia.settings.base import CONFIG

ProxySource = Literal["iam", "upload"]


class ProxySettings(BaseSettings):
    """Where proxies come from and how long they live; the keys of secrets at rest."""

    model_config = CONFIG

    proxy_sources: list[ProxySource] = Field(
        default_factory=lambda: list[ProxySource](["upload"]),
        description="Where proxies come from, in order: iam (IAM's managed proxy: asks for "
        "the proxy:generate scope), upload (signed from the user's uploaded certificate). A "
        "source whose proxy is shorter than asked gives way to the next; if none gives the "
        "lifetime asked, the longest proxy is kept and the user is told why it is shorter.",
    )
    proxy_lifetime_hours: float = Field(default=48, gt=0, description="Of a new proxy.")
    proxy_min_lifetime_hours: float = Field(
        default=8,
        ge=0,
        description="Left on a proxy before a submission that needs one (more if a job may "
        "run longer). With iam as the only proxy source it must be under "
        "proxy_iam_max_lifetime_hours.",
    )
    proxy_iam_max_lifetime_hours: float = Field(
        default=12,
        gt=0,
        description="The longest managed proxy your IAM gives (its proxy certificate maximum "
        "lifetime, 12 h unless its operators changed it).",
    )
    proxy_dirac_group: bool = Field(
        default=False, description="Write the VO's DIRAC group into signed proxies."
    )
    max_credential_bytes: int = Field(
        default=64 * 1024, ge=1024, description="An uploaded certificate file larger is refused."
    )
    encryption_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Fernet keys for secrets at rest, newest first (older ones still decrypt); "
        "empty: a key generated in the data dir.",
    )

    @model_validator(mode="after")
    def _check_proxy_lifetimes(self) -> Self:
        iam_only = set(self.proxy_sources) == {"iam"}
        if iam_only and self.proxy_min_lifetime_hours >= self.proxy_iam_max_lifetime_hours:
            # Said at start: else every submission needing a proxy is refused.
            raise ValueError(
                f"proxy_min_lifetime_hours ({self.proxy_min_lifetime_hours:g}) must be under "
                f"proxy_iam_max_lifetime_hours ({self.proxy_iam_max_lifetime_hours:g}) when "
                "IAM's managed proxies are the only proxy source: no proxy of IAM's could "
                "serve a submission. Lower it, or add upload to proxy_sources."
            )
        return self
