"""Application definitions: typed parameters, the command template, and batch expansion."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shlex
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from concordia.core.expressions import Name
from concordia.core.jdl import dirac_list_item_problem
from concordia.core.limits import JobLimits
from concordia.core.recipe import Recipe, shell_placeholder_problem, template_fields
from concordia.core.rules import (
    Rule,
    broken_rules,
    check_definitions,
    estimate_seconds,
    over_limit,
    parameters_read,
    read_table,
)

NAME_RE = r"^[a-z][a-z0-9_-]{0,62}$"
PARAM_RE = r"^[a-z][a-z0-9_]{0,62}$"
#: Characters refused in any string value: they could break a JDL, a log line or a shell.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Halves of a UTF-16 pair: JSON may carry one alone, which no UTF-8 text (a database
#: row, a response, a job's argv) can hold.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: An integer as text: ASCII digits, spaces or tabs around (as a form sends it).
_INTEGER = re.compile(r"[ \t]*([+-]?[0-9]{1,18})[ \t]*")
#: Names every job gets besides its parameters.
JOB_BUILTINS = ("index", "job_name")


class ParameterError(ValueError):
    """A parameter value breaks its definition's rule; ``field`` names the parameter."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ParameterErrors(ParameterError):
    """Several bad values at once, so a form can show every one; reads as the first."""

    def __init__(self, errors: list[ParameterError]) -> None:
        self.errors = errors
        super().__init__(errors[0].field, errors[0].message)


class _ParamBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = ""
    help: str = ""


class IntParam(_ParamBase):
    type: Literal["int"]
    default: int | None = None
    min: int | None = None
    max: int | None = None


class FloatParam(_ParamBase):
    type: Literal["float"]
    default: float | None = None
    min: float | None = None
    max: float | None = None


class StrParam(_ParamBase):
    type: Literal["str"]
    default: str | None = None
    max_length: int = Field(default=256, ge=1, le=4096)
    pattern: str | None = None


class EnumParam(_ParamBase):
    type: Literal["enum"]
    choices: list[str] = Field(min_length=1)
    default: str | None = None


ParameterDef = Annotated[IntParam | FloatParam | StrParam | EnumParam, Field(discriminator="type")]
ParamValue = int | float | str


def check_value(name: str, spec: ParameterDef, raw: Any) -> ParamValue:
    """Coerce and check one raw value (from JSON, a form or the CLI) against its definition."""
    if isinstance(spec, IntParam):
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, float) and raw.is_integer():
            value = int(raw)
        elif isinstance(raw, str) and (digits := _INTEGER.fullmatch(raw)):
            value = int(digits.group(1))
        else:
            raise ParameterError(name, f"must be an integer, got {raw!r}")
        _check_range(name, value, spec.min, spec.max)
        return value
    if isinstance(spec, FloatParam):
        if isinstance(raw, bool) or not isinstance(raw, int | str | float):
            raise ParameterError(name, "must be a number")
        try:
            fvalue = float(raw)
        except (ValueError, OverflowError):  # an int beyond any float overflows
            raise ParameterError(name, f"must be a number, got {raw!r}") from None
        if fvalue != fvalue or fvalue in (float("inf"), float("-inf")):
            raise ParameterError(name, "must be a finite number")
        _check_range(name, fvalue, spec.min, spec.max)
        return fvalue
    if not isinstance(raw, str):
        raise ParameterError(name, "must be a string")
    if isinstance(spec, EnumParam):
        if raw not in spec.choices:
            raise ParameterError(name, f"must be one of {', '.join(spec.choices)}")
        return raw
    if _CONTROL.search(raw):
        raise ParameterError(name, "must not contain control characters (newlines, tabs, NUL)")
    if _SURROGATE.search(raw):
        raise ParameterError(name, "must be Unicode text (JSON's lone \\ud800-\\udfff are not)")
    if len(raw) > spec.max_length:
        raise ParameterError(name, f"must be at most {spec.max_length} characters")
    if spec.pattern is not None and not re.fullmatch(spec.pattern, raw):
        raise ParameterError(name, f"must match {spec.pattern}")
    return raw


def _check_range(name: str, value: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise ParameterError(name, f"must be >= {lo}")
    if hi is not None and value > hi:
        raise ParameterError(name, f"must be <= {hi}")


class BatchDef(BaseModel):
    """How one submission becomes N jobs (the seed's Jobs and First Run #)."""

    model_config = ConfigDict(extra="forbid")
    count: str | None = Field(default=None, description="The parameter giving the job count.")
    sequences: dict[str, str] = Field(
        default_factory=dict,
        description="Per-job value = the named parameter + the job's index (run = first_run + i).",
    )


class DatalakeDef(BaseModel):
    """Which outputs of a job are data for the data lake, and whether it is used by default."""

    model_config = ConfigDict(extra="forbid")
    default: bool = Field(
        default=False,
        description="A new submission stores its data outputs in the data lake unless the "
        "user turns it off; false: only when the user asks.",
    )
    data: list[str] = Field(
        default_factory=list,
        description="Globs of the outputs that are data: they go to the data lake, not the "
        "sandbox, when a submission uses it (and come back in the sandbox when it does not). "
        "Each must be one of the outputs or match one of them as text ('*.corsika.zst' "
        "matches 'run*.corsika.zst'), so data files are always among the job's outputs.",
    )

    @field_validator("data")
    @classmethod
    def _check_globs(cls, globs: list[str]) -> list[str]:
        for glob in globs:
            if not glob.strip() or _CONTROL.search(glob):
                raise ValueError(f"data glob {glob!r} must be a non-empty glob on one line")
        if len(set(globs)) != len(globs):
            raise ValueError("data globs must not repeat")
        return globs


def datalake_problem(datalake: DatalakeDef, outputs: list[str]) -> str | None:
    """Why the data globs do not fit the outputs, or None: every data glob must be an output
    or match one (as text), else it would name files the job never returns."""
    if datalake.default and not datalake.data:
        return "datalake.default is true but datalake.data names no output to store"
    for glob in datalake.data:
        if not any(glob == out or fnmatch.fnmatchcase(out, glob) for out in outputs):
            return (
                f"datalake.data glob {glob!r} matches none of the outputs "
                f"({', '.join(outputs) or 'none'}): list it in outputs too"
            )
    return None


class ApplicationDef(BaseModel):
    """An application as defined in applications/NAME.yaml."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_RE)
    title: str
    description: str = ""
    vos: list[str] = Field(default_factory=list, description="Allowed VOs; empty: everyone.")
    image: Recipe | None = Field(default=None, description="The image jobs run in; none: host.")
    build_args: dict[str, ParameterDef] = Field(
        default_factory=dict, description="Choices made when the image is built (recipe steps)."
    )
    parameters: dict[str, ParameterDef] = Field(default_factory=dict)
    rules: list[Rule] = Field(
        default_factory=list,
        description="Conditions across parameters (energy_min <= energy_max), checked before "
        "anything is stored, each reported at every parameter it reads.",
    )
    tables: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Named tables of numbers by key (by enum choice) that rules and the CPU "
        "estimate look up: seconds[layout][primary].",
    )
    cpu_estimate: str | None = Field(
        default=None,
        description="CPU seconds one job needs, an expression over parameters and tables; a "
        "job estimated over cpu_time is refused, and the preview shows it with the batch total.",
    )
    batch: BatchDef = Field(default_factory=BatchDef)
    command: str = Field(min_length=1, description="Command template, {name} placeholders.")
    input_files: list[str] = Field(default_factory=list, description="Files beside the YAML.")
    outputs: list[str] = Field(default_factory=list, description="OutputSandbox globs.")
    datalake: DatalakeDef | None = Field(
        default=None,
        description="Outputs that are data for the data lake and whether submissions store "
        "them there by default; none: every output comes back in the sandbox.",
    )
    cpu_time: int = Field(default=3600, ge=1, description="CPU seconds per job (JDL CPUTime).")
    job_name: str = Field(default="{application}_{index}", description="Job name template.")
    priority: int = Field(default=1, ge=0, le=10)
    tags: list[str] = Field(default_factory=list)
    network: bool = False
    limits: JobLimits = Field(
        default_factory=JobLimits,
        description="Bounds of each job on the local backend; those left out are the platform's.",
    )
    proxy: bool = Field(
        default=False,
        description="Jobs need the user's X.509 proxy (X509_USER_PROXY), e.g. for grid storage.",
    )

    @field_validator("tables", mode="before")
    @classmethod
    def _read_tables(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        return {str(name): read_table(table, str(name)) for name, table in raw.items()}

    def expression_names(self) -> dict[str, Name]:
        """What rules and estimates may read of each parameter."""
        return {
            name: Name(
                "str" if isinstance(spec, StrParam | EnumParam) else "number",
                tuple(spec.choices) if isinstance(spec, EnumParam) else None,
            )
            for name, spec in self.parameters.items()
        }

    def cpu_seconds(self, values: dict[str, ParamValue]) -> float | None:
        """One job's CPU time by the application's estimate; None without one."""
        if self.cpu_estimate is None:
            return None
        return estimate_seconds(self.cpu_estimate, self.tables, values)

    @model_validator(mode="after")
    def _check_references(self) -> ApplicationDef:
        if self.datalake is not None and (problem := datalake_problem(self.datalake, self.outputs)):
            raise ValueError(problem)
        for pname in self.parameters:
            if not re.fullmatch(PARAM_RE, pname) or pname in JOB_BUILTINS:
                raise ValueError(f"parameter name {pname!r} is not allowed")
        for pname, spec in self.parameters.items():
            if spec.default is not None:
                check_value(pname, spec, spec.default)
        check_definitions(self.rules, self.cpu_estimate, self.tables, self.expression_names())
        if all(p.default is not None for p in self.parameters.values()):
            # The form opens on the defaults: they must pass the rules and the estimate.
            try:
                validate_parameters(self, {})
            except ParameterErrors as exc:
                raise ValueError(f"the default parameters are refused: {exc}") from None
        if self.batch.count is not None:
            count = self.parameters.get(self.batch.count)
            if not isinstance(count, IntParam) or count.min is None or count.min < 1:
                raise ValueError("batch.count must name an int parameter with min >= 1")
            if count.max is None:
                raise ValueError("batch.count's parameter needs a max")
        for seq, source in self.batch.sequences.items():
            if seq in self.parameters or not re.fullmatch(PARAM_RE, seq):
                raise ValueError(f"batch sequence {seq!r} clashes or is not a valid name")
            if not isinstance(self.parameters.get(source), IntParam):
                raise ValueError(f"batch sequence {seq!r} must start from an int parameter")
        known = set(self.parameters) | set(self.batch.sequences) | {"index", "application"}
        for template in (self.command, self.job_name):
            for field in template_fields(template):
                if field not in known:
                    raise ValueError(f"template uses unknown name {{{field}}}")
        try:
            for word in shlex.split(self.command):
                template_fields(word)
        except ValueError as exc:
            raise ValueError(f"command {self.command!r} is not a command line: {exc}") from None
        shell_lines = [("command", self.command)]
        shell_lines += [("build step", step) for step in (self.image.steps if self.image else [])]
        for kind, line in shell_lines:
            if (bad := shell_placeholder_problem(line)) is not None:
                raise ValueError(
                    f"application {self.name!r}: placeholder {{{bad}}} in its {kind} {line!r}"
                    " is inside quotes, after a backslash or in a here-document, where a shell"
                    " would read its value again ($(...) in it would run); put it outside quotes:"
                    " a value always becomes one word"
                )
        for name, spec in self.build_args.items():
            if not re.fullmatch(PARAM_RE, name) or spec.default is None:
                raise ValueError(f"build argument {name!r} needs a plain name and a default")
            check_value(name, spec, spec.default)
        if self.image is not None:
            unknown = sorted(self.image.placeholders() - set(self.build_args))
            if unknown:
                raise ValueError(f"image recipe uses unknown build argument {{{unknown[0]}}}")
        elif self.build_args:
            raise ValueError("build arguments need an image recipe that uses them")
        for rel in self.input_files:
            if rel.startswith("/") or ".." in rel.split("/"):
                raise ValueError(f"input file {rel!r} must be a relative path inside the app")
        for pattern in self.outputs:
            if pattern.startswith("/") or ".." in pattern.split("/"):
                raise ValueError(f"output glob {pattern!r} must stay inside the work directory")
        # Refused here rather than on the grid, where they would be split or rewritten and
        # the job's outputs or matching silently differ from what the definition says.
        for kind, items in (("output glob", self.outputs), ("tag", self.tags)):
            for item in items:
                if (problem := dirac_list_item_problem(item)) is not None:
                    raise ValueError(f"{kind} {item!r}: {problem}")
        return self

    def fingerprint(self) -> str:
        """A content hash identifying this exact definition (applications in use)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def validate_parameters(app: ApplicationDef, raw: dict[str, Any]) -> dict[str, ParamValue]:
    """Check a submission's parameters; fill defaults. Raises ParameterErrors (all of them)."""
    errors = [
        ParameterError(name, "is not a parameter of this application")
        for name in sorted(set(raw) - set(app.parameters))
    ]
    values: dict[str, ParamValue] = {}
    for name, spec in app.parameters.items():
        try:
            if name in raw and raw[name] is not None and raw[name] != "":
                values[name] = check_value(name, spec, raw[name])
            elif spec.default is not None:
                values[name] = spec.default
            else:
                raise ParameterError(name, "is required")
        except ParameterError as exc:
            errors.append(exc)
    for fields, message in broken_rules(app.rules, app.tables, values):
        errors += [ParameterError(field, message) for field in fields]
    seconds = None if errors else app.cpu_seconds(values)
    if seconds is not None and seconds > app.cpu_time and app.cpu_estimate:
        message = over_limit(seconds, app.cpu_time)
        names = parameters_read(app.cpu_estimate, app.expression_names())
        errors += [ParameterError(field, message) for field in names]
    if errors:
        raise ParameterErrors(errors)
    return values


def validate_build_args(app: ApplicationDef, raw: dict[str, Any]) -> dict[str, ParamValue]:
    """Check the build arguments of an image configuration; defaults filled in, every
    problem at once (ParameterErrors)."""
    errors = [
        ParameterError(name, "is not a build argument of this application")
        for name in sorted(set(raw) - set(app.build_args))
    ]
    values: dict[str, ParamValue] = {}
    for name, spec in app.build_args.items():
        value = raw.get(name)
        try:
            values[name] = check_value(name, spec, spec.default if value in (None, "") else value)
        except ParameterError as exc:
            errors.append(exc)
    if errors:
        raise ParameterErrors(errors)
    return values


class JobPlan(BaseModel):
    """One job of a submission: its index, name, values and the command to run."""

    index: int
    name: str
    values: dict[str, ParamValue]
    argv: list[str]


def expand_batch(app: ApplicationDef, values: dict[str, ParamValue]) -> list[JobPlan]:
    """Turn validated submission values into one plan per job."""
    count = int(values[app.batch.count]) if app.batch.count else 1
    words = shlex.split(app.command)
    plans = []
    for index in range(count):
        job_values: dict[str, ParamValue] = dict(values)
        for seq, source in app.batch.sequences.items():
            job_values[seq] = int(values[source]) + index
        context: dict[str, ParamValue] = {**job_values, "index": index, "application": app.name}
        text = {k: str(v) for k, v in context.items()}
        # Split first, then filled in word by word: a value is one word, never read again.
        argv = [word.format_map(text) for word in words]
        name = app.job_name.format_map(context)
        plans.append(JobPlan(index=index, name=name, values=job_values, argv=argv))
    return plans
