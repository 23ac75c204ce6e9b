"""Application definitions: the model, a submission's values checked, and batch expansion."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shlex
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from concordia.core.application_checks import (
    check_batch,
    check_build_args,
    check_dirac_list_items,
    check_parameters,
    check_paths,
    check_shell_placeholders,
    check_templates,
)
from concordia.core.expressions import Name
from concordia.core.limits import JobLimits
from concordia.core.parameters import (
    EnumParam,
    ParameterDef,
    ParameterError,
    ParameterErrors,
    ParamValue,
    StrParam,
    check_value,
)
from concordia.core.recipe import Recipe
from concordia.core.rules import (
    Rule,
    broken_rules,
    check_definitions,
    estimate_seconds,
    over_limit,
    parameters_read,
    read_table,
)
from concordia.core.text import CONTROL_CHARACTERS

NAME_RE = r"^[a-z][a-z0-9_-]{0,62}$"


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
            if not glob.strip() or CONTROL_CHARACTERS.search(glob):
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
        check_parameters(self.parameters)
        check_definitions(self.rules, self.cpu_estimate, self.tables, self.expression_names())
        self._check_default_submission()
        check_batch(self.batch.count, self.batch.sequences, self.parameters)
        check_templates(self.command, self.job_name, self.parameters, self.batch.sequences)
        check_shell_placeholders(self.name, self.command, self.image.steps if self.image else [])
        check_build_args(self.build_args, self.image)
        check_paths(self.input_files, self.outputs)
        check_dirac_list_items(self.outputs, self.tags)
        return self

    def _check_default_submission(self) -> None:
        if all(p.default is not None for p in self.parameters.values()):
            # The form opens on the defaults: they must pass the rules and the estimate.
            try:
                validate_parameters(self, {})
            except ParameterErrors as exc:
                raise ValueError(f"the default parameters are refused: {exc}") from None

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


def expand_batch(
    app: ApplicationDef, values: dict[str, ParamValue], first: int | None = None
) -> list[JobPlan]:
    """Turn validated submission values into one plan per job (the ``first`` ones only)."""
    count = int(values[app.batch.count]) if app.batch.count else 1
    if first is not None:
        count = min(count, first)
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
