"""Application definitions: parameter checking, batch expansion, safe command rendering."""

from __future__ import annotations

import base64
import json
import math
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from concordia.backends.diracx import DiracXBackend
from concordia.backends.local import LocalBackend
from concordia.core.application import ApplicationDef, expand_batch, validate_parameters
from concordia.core.jdl import parse_jdl
from concordia.core.parameters import (
    EnumParam,
    FloatParam,
    IntParam,
    ParameterDef,
    ParameterError,
    ParameterErrors,
    ParamValue,
    StrParam,
    check_value,
)
from concordia.logic.applications import ApplicationCatalog
from concordia.logic.submission_plans import plan_jobs
from concordia.settings import SHIPPED_APPLICATIONS, Settings

# What each backend is given of a job is described without starting it (no I/O).
LOCAL = LocalBackend(Settings())
GRID = DiracXBackend(Settings(diracx_url="https://diracx.invalid"), "http://127.0.0.1:8000")


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
        ({"outputs": ["my results.txt"]}, "output glob 'my results.txt': ' ' cannot travel"),
        ({"outputs": ["out_%j.root"]}, "output glob 'out_%j.root': '%j' cannot travel"),
        ({"outputs": ["*.{root,log}"]}, "'{' cannot travel in DIRAC's JDL lists"),
        ({"tags": ["8 cores"]}, "tag '8 cores': ' ' cannot travel in DIRAC's JDL lists"),
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


# --- any JSON for the parameters: a valid plan, or errors naming each field ---------------

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),  # beyond any float
    st.floats(),
    st.text(),
    # JSON can carry lone surrogates ("\ud800"); hypothesis' text leaves them out.
    st.builds(
        "{}{}{}".format,
        st.text(max_size=4),
        st.integers(0xD800, 0xDFFF).map(chr),
        st.text(max_size=4),
    ),
    st.from_regex(r"\s*[+-]?\d{1,25}(\.\d*)?([eE][+-]?\d{1,4})?\s*", fullmatch=True),
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)


def _known_or_any(app: ApplicationDef) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(sorted(app.parameters)), st.text(max_size=8))


def _hello() -> ApplicationDef:
    path = Path(SHIPPED_APPLICATIONS) / "hello.yaml"
    return ApplicationDef.model_validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("app", [cta_like(), _hello()], ids=["cta-like", "hello"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_json_parameters_give_a_valid_plan_or_errors_naming_each_field(
    app: ApplicationDef, data: st.DataObject
) -> None:
    raw = data.draw(st.dictionaries(_known_or_any(app), _json, max_size=6))
    if app.batch.count:  # a few jobs: the plan of a thousand is the same rule a thousand times
        raw[app.batch.count] = data.draw(st.one_of(st.integers(-2, 4), _json))
    try:
        values = validate_parameters(app, raw)
    except ParameterErrors as exc:
        fields = [error.field for error in exc.errors]
        assert len(fields) == len(set(fields))  # one error per field
        assert set(fields) <= set(raw) | set(app.parameters)
        assert all(error.message for error in exc.errors)
        bad = set(raw) - set(app.parameters)
        assert bad <= set(fields)  # every unknown name is reported, not only the first
        return
    assert set(values) == set(app.parameters)
    for name, value in values.items():
        _assert_obeys(app.parameters[name], value)
    jobs = plan_jobs(LOCAL, app, values, 1, Path("apps"))
    assert len(jobs) == (int(values[app.batch.count]) if app.batch.count else 1)
    for job in jobs:
        # What a job is stored and shown as is UTF-8 JSON; its JDL says exactly its argv.
        json.dumps(job.model_dump(mode="json"), ensure_ascii=False).encode("utf-8")
        jdl = parse_jdl(job.jdl)
        assert jdl["Executable"] == job.argv[0]
        arguments = jdl.get("Arguments", "")
        assert isinstance(arguments, str)
        assert shlex.split(arguments) == job.argv[1:]
    # The grid's JDL carries the argv whole, in one word its job wrapper decodes.
    for job in plan_jobs(GRID, app, values, 1, Path("apps")):
        [word] = shlex.split(str(parse_jdl(job.jdl)["Arguments"]))
        assert json.loads(base64.urlsafe_b64decode(word)) == {"argv": job.argv}


def _assert_obeys(spec: ParameterDef, value: ParamValue) -> None:
    if isinstance(spec, IntParam):
        assert type(value) is int
    elif isinstance(spec, FloatParam):
        assert type(value) is float and math.isfinite(value)
    else:
        assert type(value) is str
    if isinstance(spec, IntParam | FloatParam):
        assert isinstance(value, int | float)
        assert spec.min is None or value >= spec.min
        assert spec.max is None or value <= spec.max
    if isinstance(spec, EnumParam):
        assert value in spec.choices
    if isinstance(spec, StrParam):
        assert isinstance(value, str) and len(value) <= spec.max_length
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
        value.encode("utf-8")  # text, not lone surrogates


@settings(max_examples=500, deadline=None)
@given(spec=st.sampled_from(list(cta_like().parameters.values())), raw=_json)
def test_one_value_is_coerced_or_refused_with_a_parameter_error(
    spec: ParameterDef, raw: Any
) -> None:
    try:
        value = check_value("p", spec, raw)
    except ParameterError as exc:
        assert exc.field == "p" and exc.message
        return
    _assert_obeys(spec, value)


# --- placeholders in shell lines: a value is one word, never read by a shell again --------

HOSTILE = ["$(touch /work/pwned)", "'; touch pwned; '", 'a "b" `id` \\ $HOME', "-x y"]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_value_reaches_the_program_as_one_literal_argument(value: str) -> None:
    app = cta_like(command="simulate --array {array} --name=run{run}.{array} {array}")
    values = validate_parameters(app, {"he_model": "EPOS-LHC", "array": value})
    argv = expand_batch(app, values)[0].argv
    assert argv == ["simulate", "--array", value, f"--name=run1.{value}", value]


@pytest.mark.parametrize(
    ("command", "placeholder"),
    [
        ("sh -c 'echo {array}'", "array"),
        ('sh -c "echo {array}"', "array"),
        ("sh -c 'echo '{array}", None),  # after the quotes: bare
        ("echo \\{array}", "array"),  # a backslash would escape the value's quote
        ("echo {showers} 'x {array} y'", "array"),
        ("echo --a={array} '{{literal}}'", None),
    ],
)
def test_placeholders_inside_quotes_are_refused(command: str, placeholder: str | None) -> None:
    if placeholder is None:
        cta_like(command=command)
        return
    with pytest.raises(ValidationError) as info:
        cta_like(command=command)
    message = str(info.value)
    assert f"application 'showers': placeholder {{{placeholder}}} in its command" in message
    assert repr(command) in message and "inside quotes" in message


def test_an_application_quoting_a_placeholder_is_left_out_at_load(tmp_path: Path) -> None:
    (tmp_path / "echo.yaml").write_text(
        "name: echo\ntitle: Echo\ncommand: \"sh -c 'echo {message}'\"\n"
        "parameters: {message: {type: str, default: hi}}\n"
    )
    (tmp_path / "fine.yaml").write_text(
        'name: fine\ntitle: Fine\ncommand: "sh -c \'echo \\"$1\\"\' job {message}"\n'
        "parameters: {message: {type: str, default: hi}}\n"
    )
    catalog = ApplicationCatalog(tmp_path).load()
    assert list(catalog.apps) == ["fine"]
    error = catalog.errors["echo.yaml"]
    assert "application 'echo': placeholder {message}" in error
    assert "'sh -c \\'echo {message}\\''" in error or "sh -c 'echo {message}'" in error
