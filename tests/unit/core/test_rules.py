"""Cross-field rules and CPU estimates in application YAML: safe, checked at load, applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from concordia.core.application import ApplicationDef, expand_batch, validate_parameters
from concordia.core.expressions import ExpressionError, Name, check, evaluate, parse
from concordia.core.parameters import ParameterErrors
from concordia.logic.submission_models import CpuEstimate, SubmissionRequest
from concordia.logic.submission_plans import check_request, cpu_estimate
from concordia.settings import SHIPPED_APPLICATIONS

NAMES = {
    "low": Name("number"),
    "high": Name("number"),
    "count": Name("number"),
    "kind": Name("str", ("gamma", "proton")),
    "label": Name("str"),
}
TABLES: dict[str, Any] = {"cost": {"gamma": 0.5, "proton": 2.0}}


@pytest.fixture(scope="module")
def showermodel() -> ApplicationDef:
    path = Path(SHIPPED_APPLICATIONS) / "showermodel.yaml"
    return ApplicationDef.model_validate(yaml.safe_load(path.read_text()))


def refusal(app: ApplicationDef, raw: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ParameterErrors) as caught:
        validate_parameters(app, raw)
    return {e.field: e.message for e in caught.value.errors}


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("low <= high", {"low": 1, "high": 2}, True),
        ("low <= high", {"low": 50, "high": 5}, False),
        ("0 < low <= high < 10", {"low": 1, "high": 12}, False),
        ("5 + count * cost[kind]", {"count": 2000, "kind": "proton"}, 4005),
        ("count / 2 if kind == 'gamma' else -count", {"count": 8, "kind": "gamma"}, 4),
        ("not low > high and (label == 'x' or low == 0)", {"low": 0, "high": 1, "label": ""}, True),
    ],
)
def test_expressions_evaluate_over_parameter_values(
    text: str, values: dict[str, Any], expected: object
) -> None:
    check(text, NAMES, TABLES, "bool" if isinstance(expected, bool) else "number")
    assert evaluate(text, values, TABLES) == expected


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("__import__('os').system('touch /tmp/x')", "Call is not allowed"),
        ("low.__class__", "Attribute is not allowed"),
        ("(lambda: 1)()", "not allowed"),
        ("high ** 1000000", "Pow is not allowed"),
        ("[x for x in (1, 2)]", "not allowed"),
        ("low := 3", "cannot be read"),
        ("low <= ", "cannot be read"),
        ("1" + " + 1" * 300, "longer than 500"),
    ],
)
def test_anything_beyond_the_small_language_is_refused_unrun(text: str, refused: str) -> None:
    with pytest.raises(ExpressionError, match=refused):
        parse(text)


@pytest.mark.parametrize(
    ("text", "want", "refused"),
    [
        ("low <= nosuch", "bool", "unknown name 'nosuch'"),
        ("low <= kind", "bool", "cannot compare a number with a str"),
        ("kind < 'proton'", "bool", "only numbers are ordered"),
        ("kind == 'gama'", "bool", "'gama' is not one of kind's choices"),
        ("count * cost[label]", "number", "key must be a string or an enum parameter"),
        ("count * cost['electron']", "number", "no entry for 'electron'"),
        ("count * cost", "number", r"a table needs a \[key\]"),
        ("low + high", "bool", "gives a number, not a bool"),
    ],
)
def test_a_mistake_in_an_expression_is_found_before_any_user_value(
    text: str, want: str, refused: str
) -> None:
    with pytest.raises(ExpressionError, match=refused):
        check(text, NAMES, TABLES, want)


def test_an_application_with_a_broken_rule_or_estimate_is_refused_at_load(
    showermodel: ApplicationDef,
) -> None:
    definition = showermodel.model_dump(mode="json", exclude_none=True)
    for change, problem in [
        ({"rules": [{"check": "energy_min <= energy_maxx", "message": "m"}]}, "unknown name"),
        ({"rules": [{"check": "1 < 2", "message": "m"}]}, "reads no parameter"),
        ({"cpu_estimate": "showers * shower_seconds[layout]"}, r"needs a \[key\]"),
        ({"tables": {"shower_seconds": {"square-4": {"gamma": "fast"}}}}, "number or a table"),
        # The form would open on an error: the defaults must pass the rules.
        ({"rules": [{"check": "energy_min > energy_max", "message": "m"}]}, "defaults? .*refus"),
    ]:
        with pytest.raises(ValidationError, match=problem):
            ApplicationDef.model_validate(definition | change)


def test_energy_min_above_energy_max_is_refused_naming_both(showermodel: ApplicationDef) -> None:
    errors = refusal(showermodel, {"energy_min": 50, "energy_max": 5})
    assert set(errors) == {"energy_min", "energy_max"}
    assert "must not exceed the maximum energy" in errors["energy_min"]
    assert validate_parameters(showermodel, {"energy_min": 5, "energy_max": 5})["energy_min"] == 5


def test_a_rule_waits_for_its_values_to_be_valid_themselves(showermodel: ApplicationDef) -> None:
    errors = refusal(showermodel, {"energy_min": "lots", "energy_max": 5})
    assert list(errors) == ["energy_min"] and "must be a number" in errors["energy_min"]


def test_a_job_that_cannot_finish_in_its_cpu_time_is_refused(showermodel: ApplicationDef) -> None:
    errors = refusal(
        showermodel, {"showers": 2000, "layout": "grid-25", "primary": "proton", "jobs": 3}
    )
    # Every parameter the estimate reads can bring it down, the photon file's too.
    assert set(errors) == {"showers", "layout", "primary", "photon_file"}
    assert "about 1,505 s" in errors["showers"] and "limit of 600 s" in errors["showers"]


def estimate(app: ApplicationDef, request: SubmissionRequest) -> CpuEstimate | None:
    """What the preview shows of the CPU time of a request's jobs."""
    values, _ = check_request(app, request)
    return cpu_estimate(app, values, len(expand_batch(app, values)))


def test_the_preview_shows_each_jobs_cpu_time_the_total_and_a_warning_near_the_limit(
    showermodel: ApplicationDef,
) -> None:
    request = SubmissionRequest(
        application="showermodel",
        parameters={"jobs": 4, "showers": 700, "layout": "grid-25", "primary": "proton"},
    )
    cpu = estimate(showermodel, request)
    assert cpu is not None
    assert cpu.per_job_seconds == pytest.approx(530)
    assert cpu.total_seconds == pytest.approx(4 * 530)
    assert cpu.limit_seconds == 600
    assert cpu.warning is not None and "530 s" in cpu.warning
    relaxed = estimate(showermodel, SubmissionRequest(application="showermodel"))
    assert relaxed is not None and relaxed.warning is None
