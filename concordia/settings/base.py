"""What every concern's settings share: the CONCORDIA_ prefix and the reference's field keys."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

#: Every concern reads the same prefix and refuses unknown keys, so that composing them into
#: one Settings changes no environment variable or TOML key.
CONFIG = SettingsConfigDict(env_prefix="CONCORDIA_", extra="forbid")

#: Keys of a field's json_schema_extra read by the configuration reference (`concordia config
#: reference`): what to print as a default that depends on the machine (never its value here),
#: and a setting read from the environment only.
DEFAULT_TEXT = "default_text"
ENV_ONLY = "env_only"
