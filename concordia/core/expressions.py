"""A small, safe expression language for application YAML: rules and estimates over parameters.

Expressions are read with Python's ``ast`` module and only an allow-listed subset is
accepted: numbers, strings, parameter names, lookups in tables the YAML declares
(``seconds[layout][primary]``), ``+ - * /``, comparisons, ``and or not`` and
``a if condition else b``. Nothing is ever run by Python's eval: the tree is walked
here. Each expression is also type-checked when the application is loaded, so an
expression that passed cannot fail on a user's values (except dividing by zero).
"""

from __future__ import annotations

import ast
import functools
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

#: Long enough for any rule or estimate; short enough that no nesting is deep.
MAX_LENGTH = 500

Value = int | float | str | bool
#: A table declared beside an expression: key -> number, or key -> another table.
Table: TypeAlias = "Mapping[str, float | Table]"


class ExpressionError(ValueError):
    """An expression that is not allowed, does not type-check, or cannot be evaluated."""


@dataclass(frozen=True)
class Name:
    """What an expression may know of a parameter: number or text, and an enum's choices."""

    kind: str  # "number" or "str"
    choices: tuple[str, ...] | None = None


_ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


@functools.lru_cache(maxsize=256)
def parse(text: str) -> ast.expr:
    """The tree of an expression, refused unless every node is of the allowed kinds."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ExpressionError(f"cannot be read: {exc.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ExpressionError(f"{type(node).__name__} is not allowed ({_WHAT_IS})")
        if isinstance(node, ast.BinOp) and type(node.op) not in _ARITHMETIC:
            raise ExpressionError(f"operator {type(node.op).__name__} is not allowed ({_WHAT_IS})")
        if isinstance(node, ast.Compare) and any(type(op) not in _COMPARE for op in node.ops):
            raise ExpressionError(f"only {', '.join(_SYMBOL.values())} compare ({_WHAT_IS})")
        if isinstance(node, ast.Constant) and type(node.value) not in (int, float, str, bool):
            raise ExpressionError(f"constant {node.value!r} is not allowed")
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            raise ExpressionError("names can only be read")
    return tree


_WHAT_IS = (
    "numbers, strings, parameter names, table[key], + - * /, comparisons, and/or/not, if-else"
)
_ALLOWED = (
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Subscript,
    ast.BinOp,
    ast.UnaryOp,
    ast.UAdd,
    ast.USub,
    ast.Not,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.Compare,
    ast.IfExp,
    *_ARITHMETIC,
    *_COMPARE,
)


def names_used(text: str) -> list[str]:
    """The names an expression reads, in order of first use (parameters and tables)."""
    found = [node for node in ast.walk(parse(text)) if isinstance(node, ast.Name)]
    found.sort(key=lambda node: node.col_offset)  # the walk is breadth first
    return list(dict.fromkeys(node.id for node in found))


def check(text: str, names: Mapping[str, Name], tables: Mapping[str, Table], want: str) -> None:
    """Refuse an expression that reads an unknown name, mixes kinds, looks up a key its
    table lacks, or does not give ``want`` ("bool" or "number")."""
    got = _Checker(names, tables).kind(parse(text))
    if got != want:
        raise ExpressionError(f"gives a {got}, not a {want}")


class _Checker:
    """Types of a tree: "number", "str", "bool", or a table (its mapping)."""

    def __init__(self, names: Mapping[str, Name], tables: Mapping[str, Table]) -> None:
        self.names = names
        self.tables = tables

    def kind(self, node: ast.expr) -> str:
        found = self._kind(node)
        if not isinstance(found, str):
            raise ExpressionError("a table needs a [key]")
        return found

    def _kind(self, node: ast.expr) -> str | Table:
        if isinstance(node, ast.Constant):
            constant = node.value
            if isinstance(constant, bool):
                return "bool"
            return "str" if isinstance(constant, str) else "number"
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id].kind
            if node.id in self.tables:
                return self.tables[node.id]
            raise ExpressionError(f"unknown name {node.id!r}")
        if isinstance(node, ast.Subscript):
            return self._lookup(node)
        if isinstance(node, ast.BinOp):
            self._expect(node.left, "number", "arithmetic")
            self._expect(node.right, "number", "arithmetic")
            return "number"
        if isinstance(node, ast.UnaryOp):
            want = "bool" if isinstance(node.op, ast.Not) else "number"
            self._expect(node.operand, want, "not" if want == "bool" else "a sign")
            return want
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self._expect(value, "bool", "and/or")
            return "bool"
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.IfExp):
            self._expect(node.test, "bool", "if")
            body = self.kind(node.body)
            self._expect(node.orelse, body, "both branches of if-else")
            return body
        raise ExpressionError(f"{type(node).__name__} is not allowed")

    def _expect(self, node: ast.expr, want: str, where: str) -> None:
        if (got := self.kind(node)) != want:
            raise ExpressionError(f"{where} needs a {want}, got a {got}: {ast.unparse(node)}")

    def _lookup(self, node: ast.Subscript) -> str | Table:
        table = self._kind(node.value)
        if isinstance(table, str):
            raise ExpressionError(f"{ast.unparse(node.value)} is not a table")
        keys = self._keys(node.slice)
        missing = [key for key in keys if key not in table]
        if missing:
            raise ExpressionError(f"{ast.unparse(node.value)} has no entry for {missing[0]!r}")
        entries = {_entry_kind(table[key]) for key in keys}
        if len(entries) != 1:
            raise ExpressionError(f"{ast.unparse(node.value)} mixes numbers and tables")
        if entries == {"number"}:
            return "number"
        return table[keys[0]]  # type: ignore[return-value]  # a sub-table of the same keys

    def _keys(self, key: ast.expr) -> list[str]:
        """Every key a lookup can use: one string, or each choice of an enum parameter (a
        free-text key could miss the table, which only a user's value would show)."""
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return [key.value]
        if isinstance(key, ast.Name) and key.id in self.names and self.names[key.id].choices:
            return list(self.names[key.id].choices or ())
        raise ExpressionError(
            f"a table's key must be a string or an enum parameter, not {ast.unparse(key)}"
        )

    def _compare(self, node: ast.Compare) -> str:
        operands = [node.left, *node.comparators]
        kinds = [self.kind(operand) for operand in operands]
        for i, op in enumerate(node.ops):
            left, right, lk, rk = operands[i], operands[i + 1], kinds[i], kinds[i + 1]
            if lk != rk:
                raise ExpressionError(f"cannot compare a {lk} with a {rk}: {ast.unparse(node)}")
            if lk != "number" and not isinstance(op, ast.Eq | ast.NotEq):
                raise ExpressionError(f"only numbers are ordered: {ast.unparse(node)}")
            self._known_choice(left, right)
            self._known_choice(right, left)
        return "bool"

    def _known_choice(self, name: ast.expr, constant: ast.expr) -> None:
        """``primary == "gama"`` would never be true: a typo the loader can see."""
        if not (isinstance(name, ast.Name) and isinstance(constant, ast.Constant)):
            return
        choices = self.names[name.id].choices if name.id in self.names else None
        if choices and constant.value not in choices:
            raise ExpressionError(f"{constant.value!r} is not one of {name.id}'s choices")


def _entry_kind(entry: object) -> str:
    return "table" if isinstance(entry, Mapping) else "number"


def evaluate(text: str, values: Mapping[str, Value], tables: Mapping[str, Table]) -> Value:
    """The value of a checked expression for these parameter values."""
    try:
        result = _eval(parse(text), values, tables)
    except ZeroDivisionError:
        raise ExpressionError(f"{text}: divides by zero") from None
    if not isinstance(result, int | float | str | bool):
        raise ExpressionError(f"{text}: a table needs a [key]")
    return result


def _eval(node: ast.expr, values: Mapping[str, Value], tables: Mapping[str, Table]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in values:
            return values[node.id]
        if node.id in tables:
            return tables[node.id]
        raise ExpressionError(f"no value for {node.id!r}")
    if isinstance(node, ast.Subscript):
        table, key = _eval(node.value, values, tables), _eval(node.slice, values, tables)
        if not isinstance(table, Mapping) or str(key) not in table:
            raise ExpressionError(f"{ast.unparse(node)}: no entry for {key!r}")
        return table[str(key)]
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, values, tables), _eval(node.right, values, tables)
        return _ARITHMETIC[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, values, tables)
        return (
            not operand
            if isinstance(node.op, ast.Not)
            else -operand
            if isinstance(node.op, ast.USub)
            else operand
        )
    if isinstance(node, ast.BoolOp):
        results = (_eval(v, values, tables) for v in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values, tables)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, values, tables)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        branch = node.body if _eval(node.test, values, tables) else node.orelse
        return _eval(branch, values, tables)
    raise ExpressionError(f"{type(node).__name__} is not allowed")
