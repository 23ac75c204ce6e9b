"""An application's typed parameters: their definitions and the checking of one value."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from concordia.core.text import CONTROL_CHARACTERS

#: A parameter's name, also that of a build argument or a batch sequence.
PARAM_RE = r"^[a-z][a-z0-9_]{0,62}$"
#: Characters refused in any string value: they could break a JDL, a log line or a shell.
#: Halves of a UTF-16 pair: JSON may carry one alone, which no UTF-8 text (a database
#: row, a response, a job's argv) can hold.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: An integer as text: ASCII digits, spaces or tabs around (as a form sends it).
_INTEGER = re.compile(r"[ \t]*([+-]?[0-9]{1,18})[ \t]*")


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
    if CONTROL_CHARACTERS.search(raw):
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
