"""A small reader of JDL (ClassAd) text: enough for the attributes the test site needs."""

from __future__ import annotations

import re
from typing import Any

# Strings (with backslash escapes), comparison operators (before `=` alone), punctuation, and
# bare words or numbers.
_TOKEN = re.compile(
    r'\s*(?:("(?:[^"\\]|\\.)*")|(==|!=|<=|>=)|([\[\]{};=,])|([^\s\[\]{};=,"!<>]+|[!<>]))', re.S
)


class JdlError(ValueError):
    """Text that is not a JDL the reader understands."""


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise JdlError(f"cannot read the JDL at {text[pos : pos + 20]!r}")
        tokens.append(match.group(match.lastindex or 0))
        pos = match.end()
    return tokens


class _Reader:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def next(self) -> str:
        if self.pos >= len(self.tokens):
            raise JdlError("the JDL ends too early")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def expect(self, token: str) -> None:
        if (found := self.next()) != token:
            raise JdlError(f"expected {token!r} in the JDL, found {found!r}")

    def record(self) -> dict[str, Any]:
        self.expect("[")
        attributes: dict[str, Any] = {}
        while self.peek() != "]":
            name = self.next()
            self.expect("=")
            attributes[name] = self.value()
            if self.peek() == ";":
                self.next()
        self.expect("]")
        return attributes

    def value(self) -> Any:
        token = self.peek()
        if token == "[":
            return self.record()
        if token == "{":
            self.next()
            items: list[Any] = []
            while self.peek() != "}":
                items.append(self.value())
                if self.peek() == ",":
                    self.next()
            self.expect("}")
            return items
        # An expression (e.g. `other.Site == "X"`) is kept as its words.
        words: list[str] = []
        while self.peek() not in (";", ",", "}", "]", None):
            words.append(self.next())
        if len(words) == 1:
            return _scalar(words[0])
        return " ".join(words)


def _scalar(word: str) -> Any:
    if word.startswith('"'):
        return re.sub(r"\\(.)", r"\1", word[1:-1])
    for kind in (int, float):
        try:
            return kind(word)
        except ValueError:
            pass
    return word


def parse_jdl(text: str) -> dict[str, Any]:
    """The attributes of a JDL: strings, numbers, lists and nested records (as dicts)."""
    text = text.strip()
    if not text.startswith("["):
        text = f"[{text}]"  # DIRAC accepts a JDL without its brackets
    reader = _Reader(_tokens(text))
    attributes = reader.record()
    if reader.peek() is not None:
        raise JdlError("text after the end of the JDL")
    return attributes


def as_list(value: Any) -> list[Any]:
    """A JDL attribute that may be one value or a list of them, as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
