"""Rules across an application's parameters and its estimate of a job's CPU time.

Both are expressions of concordia.core.expressions declared in the application's YAML;
the form, the API and the CLI all reach them through validate_parameters, so a value
refused in one is refused in all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from concordia.core.expressions import ExpressionError, Name, Table, Value, check, evaluate
from concordia.core.expressions import names_used as expression_names
from concordia.core.units import duration

#: How deep a table may nest (seconds[layout][primary] is two).
MAX_TABLE_DEPTH = 3
#: From this share of the CPU time limit on, the preview warns that a job may not finish.
WARN_SHARE = 0.75


class Rule(BaseModel):
    """A condition the parameters must meet together, e.g. ``energy_min <= energy_max``."""

    model_config = ConfigDict(extra="forbid")
    check: str = Field(min_length=1, description="An expression over parameters, true if valid.")
    message: str = Field(
        min_length=1, description="What the user is told, beside each parameter the rule reads."
    )


def read_table(raw: Any, where: str, depth: int = 1) -> dict[str, Any]:
    """A table from YAML: text keys (YAML reads ``20:`` as a number), finite numbers or
    nested tables as values."""
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"table {where} must be a non-empty mapping")
    table: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping) and depth < MAX_TABLE_DEPTH:
            table[str(key)] = read_table(value, f"{where}[{key}]", depth + 1)
        elif (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ):
            table[str(key)] = value
        else:
            raise ValueError(f"table {where}[{key}] must be a number or a table")
    return table


def parameters_read(text: str, names: Mapping[str, Name]) -> list[str]:
    """The parameters an expression reads (not its tables), in order of first use."""
    return [name for name in expression_names(text) if name in names]


def check_definitions(
    rules: list[Rule],
    cpu_estimate: str | None,
    tables: Mapping[str, Table],
    names: Mapping[str, Name],
) -> None:
    """Refuse, when the application is loaded, any rule or estimate that could fail later."""
    for table in tables:
        if table in names:
            raise ValueError(f"table {table!r} has the name of a parameter")
    for rule in rules:
        try:
            check(rule.check, names, tables, "bool")
        except ExpressionError as exc:
            raise ValueError(f"rule {rule.check!r}: {exc}") from None
        if not parameters_read(rule.check, names):
            raise ValueError(f"rule {rule.check!r} reads no parameter")
    if cpu_estimate is not None:
        try:
            check(cpu_estimate, names, tables, "number")
        except ExpressionError as exc:
            raise ValueError(f"cpu_estimate {cpu_estimate!r}: {exc}") from None


def broken_rules(
    rules: list[Rule], tables: Mapping[str, Table], values: Mapping[str, Value]
) -> list[tuple[list[str], str]]:
    """Each rule the values break: the parameters it reads and its message. A rule reading a
    value that is itself invalid (absent from ``values``) waits for that value's fix."""
    broken = []
    for rule in rules:
        fields = [name for name in expression_names(rule.check) if name not in tables]
        if not all(name in values for name in fields):
            continue
        try:
            holds = evaluate(rule.check, values, tables)
        except ExpressionError as exc:
            broken.append((fields, f"cannot be checked: {exc}"))
            continue
        if not holds:
            broken.append((fields, rule.message))
    return broken


def estimate_seconds(
    cpu_estimate: str, tables: Mapping[str, Table], values: Mapping[str, Value]
) -> float | None:
    """CPU seconds one job needs by the application's formula; None if it cannot tell."""
    try:
        seconds = evaluate(cpu_estimate, values, tables)
    except ExpressionError:
        return None
    if isinstance(seconds, bool | str) or not math.isfinite(seconds):
        return None
    return max(0.0, float(seconds))


def over_limit(seconds: float, limit: int) -> str:
    """The refusal of a job that cannot finish in its CPU time limit."""
    return (
        f"each job would need about {duration(seconds)} of CPU time, over this application's "
        f"limit of {duration(limit)} per job: give each job less work (and submit more jobs)"
    )
