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
