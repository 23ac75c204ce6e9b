"""The configuration reference: generated from Settings, committed as docs/configuration.md."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from concordia.cli import app
from concordia.cli.config import NOT_SHOWN, configuration_reference, is_secret
from concordia.settings import SHIPPED_APPLICATIONS, Settings

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs" / "configuration.md"
REGENERATE = "run `concordia config reference > docs/configuration.md`"


def _sections(text: str) -> dict[str, str]:
    """Each setting's section (### `name` up to the next heading), by name."""
    found = re.findall(r"^### `(\w+)`\n(.*?)(?=^##)", text + "\n##", re.S | re.M)
    return dict(found)


def test_docs_are_what_the_generator_prints_now() -> None:
    assert DOCS.read_text() == configuration_reference(), REGENERATE


def test_the_command_prints_the_reference() -> None:
    result = CliRunner().invoke(app, ["config", "reference"])
    assert result.exit_code == 0, result.output
    assert result.output == configuration_reference()


def test_every_setting_with_its_variable_key_type_and_default() -> None:
    sections = _sections(configuration_reference())
    assert list(sections) == list(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        section = sections[name]
        assert f"environment `CONCORDIA_{name.upper()}`" in section
        assert f"TOML key `{name}`" in section or name == "config_file"
        assert "- type: " in section and "- default:" in section
        assert field.description, f"{name} needs a description"


def test_secrets_never_show_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = [n for n, f in Settings.model_fields.items() if is_secret(f.annotation)]
    assert {"oidc_client_secret", "diracx_legacy_secret", "encryption_keys"} <= set(secrets)
    # The reference is made from the definitions, never from this process's configuration.
    for name in secrets:
        monkeypatch.setenv(f"CONCORDIA_{name.upper()}", '["sw0rdf1sh"]')
    text = configuration_reference()
    assert "sw0rdf1sh" not in text
    sections = _sections(text)
    for name in secrets:
        assert f"- default: {NOT_SHOWN}\n" in sections[name]


def test_machine_dependent_defaults_are_described_not_printed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    here = configuration_reference()
    for path in (ROOT, SHIPPED_APPLICATIONS, Path.home(), Path.cwd()):
        assert str(path) not in here
    # Another machine: other cores, home and working directory give the same reference.
    monkeypatch.setattr(os, "cpu_count", lambda: 97)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert configuration_reference() == here
    sections = _sections(here)
    assert "the number of CPU cores" in sections["local_slots"]
    assert "~/.config/concordia/tokens.json" in sections["cli_tokens_file"]
