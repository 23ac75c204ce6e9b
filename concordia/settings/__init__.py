"""The one Settings object, composed of settings per concern: environment (CONCORDIA_*), an
optional TOML file, systemd credentials, embedded defaults."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    TomlConfigSettingsSource,
)

from concordia.settings.base import CONFIG, DEFAULT_TEXT, ENV_ONLY
from concordia.settings.datalake import DatalakeSettings
from concordia.settings.grid import GRID_IMAGE_TARGETS, GridImageTarget, GridSettings
from concordia.settings.iam import DEFAULT_VOS, IamSettings, VoConfig
from concordia.settings.images import Builders, ImageFormats, ImageSettings, SourceFile
from concordia.settings.local import LocalBackendSettings, LocalSettings
from concordia.settings.operations import OperationSettings
from concordia.settings.proxies import ProxySettings, ProxySource
from concordia.settings.server import DEFAULT_CARDS, SHIPPED_APPLICATIONS, Card, ServerSettings

__all__ = [
    "DEFAULT_CARDS",
    "DEFAULT_TEXT",
    "DEFAULT_VOS",
    "ENV_ONLY",
    "GRID_IMAGE_TARGETS",
    "SHIPPED_APPLICATIONS",
    "Builders",
    "Card",
    "DatalakeSettings",
    "GridImageTarget",
    "GridSettings",
    "IamSettings",
    "ImageFormats",
    "ImageSettings",
    "LocalBackendSettings",
    "LocalSettings",
    "OperationSettings",
    "ProxySettings",
    "ProxySource",
    "ServerSettings",
    "Settings",
    "SourceFile",
    "VoConfig",
]


# pydantic collects fields from the last base first: this order lists the server's settings
# first and the service's bounds last in the configuration reference.
class Settings(
    OperationSettings,
    DatalakeSettings,
    GridSettings,
    ImageSettings,
    LocalSettings,
    ProxySettings,
    IamSettings,
    ServerSettings,
):
    """Everything configurable. Every default is the embedded one (SQLite, local backend)."""

    model_config = CONFIG

    def login_scopes(self) -> list[str]:
        # IAM's scopes plus what the proxy sources need: the one rule spanning two concerns.
        extra = ["scim:read"] * self.oidc_scim_scope + ["proxy:generate"] * (
            "iam" in self.proxy_sources
        )
        return list(dict.fromkeys([*self.oidc_scopes, *extra]))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file named by CONCORDIA_CONFIG_FILE ranks below explicit values and env.
        toml_path = os.environ.get("CONCORDIA_CONFIG_FILE")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        # Secrets systemd hands over (LoadCredential=CONCORDIA_<NAME>:<file>): files readable
        # by the service alone, never by its group (its jobs' and builds' processes).
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials:
            sources.append(SecretsSettingsSource(settings_cls, secrets_dir=credentials))
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)
