"""Read and write DIRAC job descriptions (JDL), the ClassAd text DIRAC takes for a job."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import TypeAlias

from concordia.core.text import CONTROL_CHARACTERS

__all__ = [
    "Expression",
    "JDLError",
    "JDLScalar",
    "JDLValue",
    "dirac_list_item_problem",
    "job_jdl",
    "parse_jdl",
    "render_jdl",
]


class Expression(str):
    """An unquoted ClassAd expression kept as text: ``other.Site == "X"``, ``std.out``."""

    def __repr__(self) -> str:
        return f"Expression({str.__repr__(self)})"


JDLScalar: TypeAlias = str | int | float | bool | Expression
JDLValue: TypeAlias = JDLScalar | list[JDLScalar]


class JDLError(ValueError):
    """A JDL that cannot be read, or a value that cannot be written safely."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        if line is not None:
            message = f"{message} (line {line}, column {column})"
        super().__init__(message)
        self.line = line
        self.column = column


# Dotted names are DIRAC's: a parametric job's sequences (ParameterStart.A, Parameters.B)
# and what it writes of them into each job (Parameter.A).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
_INT = re.compile(r"[+-]?[0-9]+")
_EXPONENT = r"[eE][+-]?[0-9]+"
_FLOAT = re.compile(rf"[+-]?(?:(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:{_EXPONENT})?|[0-9]+{_EXPONENT})")
# Anything below 0x20 (and DEL) could end a line or confuse a reader of the JDL; newline
# in particular would let a value start a new attribute, so strings refuse them all.
# Expressions from DIRAC may span lines, so they keep the whitespace controls.
_EXPR_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}
# What a string in a DIRAC list (OutputSandbox, Tags) cannot hold and reach a worker node
# unchanged: DIRAC's strings have no escapes (a quote or backslash is mangled), its reader
# ends a value at ';' and starts a nested description at '[', its job manifest splits a
# list at every ',', the pilot's JobAgent splits list items at whitespace and drops braces,
# and DiracX replaces '%j' with the job's id.
_DIRAC_LIST_UNSAFE = re.compile(r'[\s"\\;,\[{}\x00-\x1f\x7f]|%j')
_CLOSE = {"(": ")", "[": "]", "{": "}"}


def render_jdl(attrs: Mapping[str, JDLValue]) -> str:
    """Render attributes as a DIRAC-style JDL, one ``Name = value;`` per line inside ``[ ]``."""
    lines = ["["]
    seen: set[str] = set()
    for name, value in attrs.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise JDLError(f"invalid attribute name {name!r}")
        # ClassAd attribute names are case-insensitive: CPUTime and CPUtime are one attribute.
        if name.lower() in seen:
            raise JDLError(f"attribute {name!r} is given twice (names ignore case)")
        seen.add(name.lower())
        if isinstance(value, list):
            items = [_render_scalar(name, item, in_list=True) for item in value]
            text = "{ " + ", ".join(items) + " }" if items else "{}"
        else:
            text = _render_scalar(name, value, in_list=False)
        lines.append(f"    {name} = {text};")
    lines.append("]")
    return "\n".join(lines)


def _render_scalar(name: str, value: object, *, in_list: bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Expression):
        _check_expression(name, value, in_list=in_list)
        return str.__str__(value)
    if isinstance(value, str):
        if bad := CONTROL_CHARACTERS.search(value):
            raise JDLError(
                f"attribute {name!r}: {bad.group()!r} in a string could inject into the JDL"
            )
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise JDLError(f"attribute {name!r}: {value!r} has no JDL form")
        return float.__repr__(value)
    raise JDLError(f"attribute {name!r}: cannot write a {type(value).__name__} value")


def _check_expression(name: str, expr: Expression, *, in_list: bool) -> None:
    # Verbatim text is only safe if it reads back as this one expression and nothing
    # more: no ';' or '=' that would end it and start another attribute, no comment.
    ok = not _EXPR_CONTROL.search(expr)
    if ok:
        parser = _Parser(str(expr))
        try:
            got = parser.scalar(in_list=True) if in_list else parser.value()
            parser.skip_space()
            ok = parser.pos == len(expr) and type(got) is Expression and got == expr
        except JDLError:
            ok = False
    if not ok:
        raise JDLError(f"attribute {name!r}: {expr!r} would not read back as one expression")


def dirac_list_item_problem(item: str) -> str | None:
    """Why DIRAC cannot carry ``item`` in a list of its JDL (OutputSandbox, Tags), or None."""
    if not item:
        return "an empty item is dropped by DIRAC"
    if bad := _DIRAC_LIST_UNSAFE.search(item):
        return (
            f"{bad.group()!r} cannot travel in DIRAC's JDL lists (no spaces, commas, quotes, "
            "backslashes, ';', '[', '{', '}' or '%j': DIRAC has no escapes and splits or "
            "rewrites them)"
        )
    return None


def parse_jdl(text: str) -> dict[str, JDLValue]:
    """Parse a JDL, with or without its enclosing ``[ ]``, into attribute values."""
    return _Parser(text).document()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def where(self, pos: int) -> tuple[int, int]:
        line_start = self.text.rfind("\n", 0, pos) + 1
        return self.text.count("\n", 0, pos) + 1, pos - line_start + 1

    def at(self, pos: int) -> str:
        return "line {}, column {}".format(*self.where(pos))

    def error(self, message: str, pos: int | None = None) -> JDLError:
        return JDLError(message, *self.where(self.pos if pos is None else pos))

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def comment_end(self) -> int | None:
        t, i = self.text, self.pos
        line_start = t.rfind("\n", 0, i) + 1
        if t.startswith("//", i) or (t.startswith("#", i) and not t[line_start:i].strip()):
            end = t.find("\n", i)
            return len(t) if end < 0 else end
        if t.startswith("/*", i):
            end = t.find("*/", i + 2)
            if end < 0:
                raise self.error("unterminated /* comment")
            return end + 2
        return None

    def skip_space(self) -> None:
        while self.pos < len(self.text):
            if self.text[self.pos].isspace():
                self.pos += 1
            elif (end := self.comment_end()) is not None:
                self.pos = end
            else:
                return

    def document(self) -> dict[str, JDLValue]:
        attrs: dict[str, JDLValue] = {}
        first: dict[str, int] = {}
        self.skip_space()
        opening = self.pos if self.peek() == "[" else None
        if opening is not None:
            self.pos += 1
        while True:
            self.skip_space()
            if opening is not None and self.peek() == "]":
                self.pos += 1
                self.skip_space()
                if self.peek():
                    raise self.error("unexpected text after the closing ']'")
                return attrs
            if not self.peek():
                if opening is not None:
                    raise self.error(f"missing ']' for the '[' at {self.at(opening)}")
                return attrs
            start = self.pos
            match = _NAME.match(self.text, start)
            if not match:
                raise self.error(f"expected an attribute name, found {self.peek()!r}")
            name = match.group()
            if name.lower() in first:
                where = self.at(first[name.lower()])
                raise self.error(f"duplicate attribute {name!r} (first set at {where})")
            self.pos = match.end()
            self.skip_space()
            if self.peek() != "=":
                raise self.error(f"expected '=' after attribute name {name!r}")
            self.pos += 1
            attrs[name] = self.value()
            first[name.lower()] = start
            self.skip_space()
            if self.peek() == ";":
                self.pos += 1
            elif self.peek() not in ("", "]"):
                raise self.error(f"expected ';' after the value of {name!r}")

    def value(self) -> JDLValue:
        self.skip_space()
        return self.list() if self.peek() == "{" else self.scalar(in_list=False)

    def list(self) -> list[JDLScalar]:
        opening = self.pos
        self.pos += 1
        items: list[JDLScalar] = []
        while True:
            self.skip_space()
            if self.peek() == "}":
                self.pos += 1
                return items
            if not self.peek():
                raise self.error("'{' is never closed", opening)
            items.append(self.scalar(in_list=True))
            self.skip_space()
            found = self.peek()
            if found == ",":
                self.pos += 1
            elif found != "}":
                what = repr(found) if found else "the end"
                raise self.error(
                    f"expected ',' or '}}' in the list opened at {self.at(opening)}, found {what}"
                )

    def scalar(self, *, in_list: bool) -> JDLScalar:
        self.skip_space()
        start = self.pos
        if self.peek() == '"':
            text = self.string()
            if in_list:
                return text
            self.skip_space()
            if self.peek() in ("", ";", "]"):
                return text
            self.pos = start  # the string only starts a longer expression
        return self.bare(in_list=in_list)

    def string(self) -> str:
        t, start = self.text, self.pos
        out: list[str] = []
        i = start + 1
        while i < len(t):
            if t[i] in "\r\n":
                # DIRAC writes a long list item over lines and drops the line breaks when it
                # reads it back; so does this reader.
                i += 1
            elif t[i] == '"':
                self.pos = i + 1
                return "".join(out)
            elif t[i] == "\\" and i + 1 < len(t) and t[i + 1] not in "\r\n":
                out.append(_ESCAPES.get(t[i + 1], t[i : i + 2]))
                i += 2
            else:
                out.append(t[i])
                i += 1
        raise self.error("unterminated string", start)

    def bare(self, *, in_list: bool) -> JDLScalar:
        t, start = self.text, self.pos
        stops = ",};" if in_list else ";]"
        parts: list[str] = []
        segment = start
        opened: list[int] = []
        while self.pos < len(t):
            c = t[self.pos]
            if c == '"':
                self.string()
                continue
            if (end := self.comment_end()) is not None:
                parts.append(t[segment : self.pos].rstrip() + " ")
                self.pos = end
                self.skip_space()
                segment = self.pos
                continue
            if not opened and c in stops:
                break
            if c in _CLOSE:
                opened.append(self.pos)
            elif c in ")]}":
                if not opened or _CLOSE[t[opened[-1]]] != c:
                    raise self.error(f"unexpected {c!r}")
                opened.pop()
            elif c == "=" and not opened and _is_assignment(t, self.pos):
                # '=' alone is never an operator, so a ';' is missing and an attribute
                # would otherwise be swallowed into this value.
                raise self.error("unexpected '=' inside a value (missing ';'?)")
            self.pos += 1
        if opened:
            raise self.error(f"{t[opened[-1]]!r} is never closed", opened[-1])
        parts.append(t[segment : self.pos])
        text = "".join(parts).strip()
        if not text:
            raise self.error("empty value", start)
        if _INT.fullmatch(text):
            try:
                return int(text)
            except ValueError:
                raise self.error("integer too long", start) from None
        if _FLOAT.fullmatch(text):
            number = float(text)
            if not math.isfinite(number):
                raise self.error("number out of range", start)
            return number
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        return Expression(text)


def _is_assignment(text: str, i: int) -> bool:
    before = text[i - 1] if i else ""
    after = text[i + 1 : i + 2]
    return before not in ("=", "!", "<", ">", "?") and after not in ("=", "?", "!")


def job_jdl(
    *,
    executable: str,
    arguments: Sequence[str] | str = "",
    job_name: str,
    job_group: str = "",
    input_sandbox: Sequence[str] = (),
    output_sandbox: Sequence[str] = (),
    std_output: str = "std.out",
    std_error: str = "std.err",
    cpu_time: int,
    priority: int = 1,
    site: str | Sequence[str] = "",
    tags: Sequence[str] = (),
    parameters: int | Sequence[str | int | float] | None = None,
    parameter_start: int | float | None = None,
    parameter_step: int | float | None = None,
    extra: Mapping[str, JDLValue] | None = None,
) -> str:
    """Render the JDL of one DIRAC job, or of a parametric set of jobs."""
    if not executable or isinstance(cpu_time, bool) or cpu_time <= 0:
        raise JDLError("a job needs an executable and a positive cpu_time (seconds)")
    attrs: dict[str, JDLValue] = {
        "Executable": executable,
        # DIRAC hands Arguments to a shell, so each list element must stay one word.
        "Arguments": arguments if isinstance(arguments, str) else shlex.join(arguments),
        "JobName": job_name,
        "JobGroup": job_group,
        "InputSandbox": [*input_sandbox],
        "OutputSandbox": [*output_sandbox],
        "StdOutput": std_output,
        "StdError": std_error,
        "CPUTime": cpu_time,
        "Priority": priority,
        "Site": site if isinstance(site, str) else [*site],
        "Tags": [*tags],
    }
    optional = {"Arguments", "JobGroup", "InputSandbox", "OutputSandbox", "Site", "Tags"}
    attrs = {name: value for name, value in attrs.items() if value or name not in optional}
    if parameters is not None:
        if isinstance(parameters, bool) or not (
            parameters > 0 if isinstance(parameters, int) else parameters
        ):
            raise JDLError(f"parameters must be a count > 0 or a non-empty list: {parameters!r}")
        attrs["Parameters"] = parameters if isinstance(parameters, int) else [*parameters]
    for name, number in (("ParameterStart", parameter_start), ("ParameterStep", parameter_step)):
        if number is not None:
            if not isinstance(parameters, int):
                raise JDLError(f"{name} needs a parameter count")
            attrs[name] = number
    for name, value in (extra or {}).items():
        if name.lower() in {key.lower() for key in attrs}:
            raise JDLError(f"extra attribute {name!r} is already set by job_jdl")
        attrs[name] = value
    return render_jdl(attrs)
