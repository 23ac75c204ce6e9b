"""Settings: embedded defaults, the CONCORDIA_ environment, an optional TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from concordia.settings import Settings


def test_defaults_are_the_embedded_platform(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.data_dir == tmp_path / "var"  # absolute: jobs run in other directories
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'var' / 'concordia.db'}"
    assert settings.public_url == "http://127.0.0.1:8000"
    assert settings.local_slots >= 1


def test_environment_and_toml_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "concordia.toml"
    config.write_text('port = 9000\nlocal_slots = 3\nlocal_isolation = "none"\n')
    monkeypatch.setenv("CONCORDIA_CONFIG_FILE", str(config))
    monkeypatch.setenv("CONCORDIA_LOCAL_SLOTS", "5")  # the environment wins over the file
    settings = Settings()
    assert settings.port == 9000 and settings.local_isolation == "none"
    assert settings.local_slots == 5
    assert settings.public_url == "http://127.0.0.1:9000"


def test_bad_settings_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCORDIA_LOCAL_ISOLATION", "docker")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "local_isolation" in str(info.value)


def test_a_diracx_chunk_bigger_than_diracx_takes_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(diracx_chunk_size=21)
    assert "diracx_chunk_size" in str(info.value) and "less than or equal to 20" in str(info.value)
    assert Settings(diracx_chunk_size=20).diracx_chunk_size == 20


def test_home_cards_come_from_configuration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert [c.title for c in Settings().cards][:2] == ["DIRAC", "WSRT-Apertif"]
    config = tmp_path / "concordia.toml"
    config.write_text(
        '[[cards]]\ntitle = "KM3NeT Open Data"\ndescription = "Neutrino events"\n'
        'url = "https://opendata.km3net.de"\n'
    )
    monkeypatch.setenv("CONCORDIA_CONFIG_FILE", str(config))
    [card] = Settings().cards
    assert card.title == "KM3NeT Open Data" and card.external and card.logo == ""


def test_secrets_come_from_systemd_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """docs/deployment.md's layout: the TOML (group-readable) holds no secret; systemd hands
    each over as a file in $CREDENTIALS_DIRECTORY (LoadCredential=), read by the service."""
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    for name, value in {
        "CONCORDIA_DATABASE_URL": "postgresql+asyncpg://concordia:pw@db/concordia\n",
        "CONCORDIA_OIDC_CLIENT_SECRET": "web-client-secret\n",
        "CONCORDIA_ENCRYPTION_KEYS": '["newest-key", "older-key"]\n',
    }.items():
        (credentials / name).write_text(value)
    config = tmp_path / "concordia.toml"
    config.write_text('oidc_client_id = "concordia"\nlocal_slots = 3\n')
    monkeypatch.setenv("CONCORDIA_CONFIG_FILE", str(config))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings = Settings()
    assert settings.database_url == "postgresql+asyncpg://concordia:pw@db/concordia"
    assert settings.oidc_client_secret.get_secret_value() == "web-client-secret"
    assert [k.get_secret_value() for k in settings.encryption_keys] == ["newest-key", "older-key"]
    assert (settings.oidc_client_id, settings.local_slots) == ("concordia", 3)  # the TOML's
    monkeypatch.setenv("CONCORDIA_OIDC_CLIENT_SECRET", "from-env")  # the environment wins
    assert Settings().oidc_client_secret.get_secret_value() == "from-env"


def test_managed_proxies_alone_must_be_able_to_serve_submissions(tmp_path: Path) -> None:
    def iam_mode(**values: object) -> Settings:
        issuer = {"oidc_issuer": "https://iam.example", "oidc_client_id": "concordia"}
        return Settings.model_validate({"data_dir": tmp_path, **issuer, **values})

    # The defaults agree: IAM's 12 h proxies last the minimum a submission asks.
    defaults = iam_mode(proxy_sources=["iam"])
    assert defaults.proxy_min_lifetime_hours < defaults.proxy_iam_max_lifetime_hours
    with pytest.raises(ValidationError) as info:
        iam_mode(proxy_sources=["iam"], proxy_min_lifetime_hours=24)
    expected = "proxy_min_lifetime_hours (24) must be under proxy_iam_max_lifetime_hours (12)"
    assert expected in str(info.value)
    # Another source can give longer proxies: allowed.
    assert iam_mode(proxy_sources=["iam", "upload"], proxy_min_lifetime_hours=24)
