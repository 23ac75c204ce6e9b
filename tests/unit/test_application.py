"""Application definitions: parameter checking, batch expansion, safe command rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from concordia.core.application import (
    ApplicationDef,
    ParameterError,
    expand_batch,
    validate_parameters,
)
from concordia.settings import SHIPPED_APPLICATIONS


def cta_like(**extra: Any) -> ApplicationDef:
    """The seed's form: Jobs, Showers, First Run #, HE/LE models, Array."""
    definition: dict[str, Any] = {
        "name": "showers",
        "title": "Air showers",
        "command": "simulate --showers {showers} --run {run} --array {array} --he {he_model}",
        "job_name": "showers_{run}",
        "batch": {"count": "jobs", "sequences": {"run": "first_run"}},
        "parameters": {
            "jobs": {"type": "int", "default": 1, "min": 1, "max": 100},
            "showers": {"type": "int", "default": 10, "min": 1, "max": 100000},
            "first_run": {"type": "int", "default": 1, "min": 0},
            "he_model": {"type": "enum", "choices": ["QGSJET-II-04", "EPOS-LHC"]},
            "array": {"type": "str", "default": "4-square", "max_length": 64},
            "zenith": {"type": "float", "default": 20, "min": 0, "max": 70},
        },
    }
    definition.update(extra)
    return ApplicationDef.model_validate(definition)


def test_a_batch_gives_one_job_per_run_number() -> None:
    app = cta_like()
    values = validate_parameters(
        app, {"jobs": "3", "first_run": 100, "he_model": "EPOS-LHC", "showers": 5}
    )
    plans = expand_batch(app, values)
    assert [p.values["run"] for p in plans] == [100, 101, 102]
    assert [p.name for p in plans] == ["showers_100", "showers_101", "showers_102"]
    assert plans[2].argv == [
        "simulate",
        "--showers",
        "5",
        "--run",
        "102",
        "--array",
        "4-square",
        "--he",
        "EPOS-LHC",
    ]


@pytest.mark.parametrize(
    ("raw", "field", "rule"),
    [
        ({"jobs": 0, "he_model": "EPOS-LHC"}, "jobs", ">= 1"),
        ({"jobs": 101, "he_model": "EPOS-LHC"}, "jobs", "<= 100"),
        ({"jobs": "two", "he_model": "EPOS-LHC"}, "jobs", "integer"),
        ({"jobs": 1.5, "he_model": "EPOS-LHC"}, "jobs", "integer"),
        ({"jobs": True, "he_model": "EPOS-LHC"}, "jobs", "integer"),
        ({"he_model": "SIBYLL"}, "he_model", "one of"),
        ({}, "he_model", "required"),
        ({"he_model": "EPOS-LHC", "zenith": "nan"}, "zenith", "finite"),
        ({"he_model": "EPOS-LHC", "zenith": 80}, "zenith", "<= 70"),
        ({"he_model": "EPOS-LHC", "array": "a\nb"}, "array", "control"),
        ({"he_model": "EPOS-LHC", "array": "x" * 65}, "array", "at most 64"),
        ({"he_model": "EPOS-LHC", "nonsense": 1}, "nonsense", "not a parameter"),
    ],
)
def test_bad_values_name_the_field_and_the_rule(raw: dict[str, Any], field: str, rule: str) -> None:
    with pytest.raises(ParameterError) as info:
        validate_parameters(cta_like(), raw)
    assert info.value.field == field
    assert rule in info.value.message


def test_values_cannot_inject_shell_words() -> None:
    app = cta_like()
    values = validate_parameters(app, {"he_model": "EPOS-LHC", "array": "x; rm -rf / $(id)"})
    argv = expand_batch(app, values)[0].argv
    assert argv[argv.index("--array") + 1] == "x; rm -rf / $(id)"
    assert len(argv) == 9


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"command": "run {undefined}"}, "unknown name"),
        ({"command": "run {showers!r}"}, "plain name"),
        ({"outputs": ["../escape/*"]}, "inside the work directory"),
        ({"input_files": ["/etc/passwd"]}, "relative path"),
        ({"batch": {"count": "array"}}, "batch.count"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_broken_definitions_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        cta_like(**change)
    assert message in str(info.value)


def test_shipped_applications_are_valid() -> None:
    files = sorted(Path(SHIPPED_APPLICATIONS).glob("*.yaml"))
    assert "hello.yaml" in [f.name for f in files]
    for path in files:
        app = ApplicationDef.model_validate(yaml.safe_load(path.read_text()))
        assert app.name == path.stem
