"""`concordia config reference`: the configuration reference (Markdown) generated from Settings."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import typer
from pydantic import BaseModel, SecretStr, TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from concordia.cli.common import app
from concordia.settings import DEFAULT_TEXT, ENV_ONLY, Settings

config_app = typer.Typer(help="The server's configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config", rich_help_panel="Server")

ENV_PREFIX = "CONCORDIA_"
NOT_SHOWN = "not shown (a secret)"
#: A default longer than this goes in a code block of its own rather than in its line.
INLINE_DEFAULT = 72
#: Width of the code block, within which a list or table is written on one line.
BLOCK_WIDTH = 88

HEADER = """\
# Configuration reference

<!-- Generated from concordia/settings/ by `concordia config reference`: do not edit by
hand; run `concordia config reference > docs/configuration.md` after changing a setting. -->

Every setting is an environment variable, `CONCORDIA_` and its name in capitals, or a key
of the TOML file named by `CONCORDIA_CONFIG_FILE`; the environment wins over the file.
Lists and tables are JSON in the environment (`CONCORDIA_OIDC_SCOPES='["openid", "email"]'`)
and TOML arrays and tables in the file (`oidc_scopes = ["openid", "email"]`, `[vos.cta]`).
The defaults are those of the embedded platform: SQLite in the data dir, the local backend,
local mode (no IAM). Secrets have no default and none is ever shown here.
"""


def is_secret(annotation: Any) -> bool:
    """A SecretStr anywhere in the type: its value must never be printed."""
    return annotation is SecretStr or any(is_secret(arg) for arg in get_args(annotation))


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a type holds (VoConfig in dict[str, VoConfig]), outermost first."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models(arg)]


_NAMES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    SecretStr: "secret string",
}


def type_text(annotation: Any) -> str:
    """A type as an operator reads it: `list of string`, `one of auto, bwrap, none`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation in _NAMES:
        return _NAMES[annotation]
    if origin is Literal:
        return "one of " + ", ".join(f"`{arg}`" for arg in args)
    if origin in (Union, types.UnionType):
        kept = [type_text(arg) for arg in args if arg is not type(None)]
        return " or ".join(kept) + (" (or unset)" if type(None) in args else "")
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return f"table of {type_text(args[0])} to {type_text(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    raise ValueError(f"the configuration reference cannot name the type {annotation!r}")


def _constraints(field: FieldInfo) -> list[str]:
    words = []
    for item in field.metadata:
        for kind, attribute, sign in (
            (annotated_types.Gt, "gt", ">"),
            (annotated_types.Ge, "ge", ">="),
            (annotated_types.Lt, "lt", "<"),
            (annotated_types.Le, "le", "<="),
        ):
            if isinstance(item, kind):
                words.append(f"{sign} {getattr(item, attribute)}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            words.append(f"matching `{pattern}`")
    return words


def default_text(name: str, field: FieldInfo) -> str:
    """The default as Markdown. A secret's is never shown; one that depends on the machine
    (a path of the source tree, the home directory, the number of cores) is the field's
    DEFAULT_TEXT, never this machine's value."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if DEFAULT_TEXT in extra:
        return str(extra[DEFAULT_TEXT])
    if is_secret(field.annotation):
        return NOT_SHOWN
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    assert value is not PydanticUndefined
    if isinstance(value, Path) and value.is_absolute():
        raise ValueError(f"{name}'s default is a path of this machine: give it a {DEFAULT_TEXT}")
    plain = TypeAdapter[Any](field.annotation or Any).dump_python(value, mode="json")
    if plain is None:
        return "unset"
    if plain == "" or plain == [] or plain == {}:
        return "empty"
    if isinstance(plain, str):
        return f"`{plain}`"
    text = json.dumps(plain, ensure_ascii=False)
    if len(text) <= INLINE_DEFAULT:
        return f"`{text}`"
    return "\n\n```json\n" + _json_block(plain) + "\n```"


def _json_block(value: Any, indent: int = 0) -> str:
    """JSON indented only where a line would be too long: a VO stays on one line."""
    flat = json.dumps(value, ensure_ascii=False)
    if indent + len(flat) <= BLOCK_WIDTH or not isinstance(value, list | dict) or not value:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, list):
        items = [pad + _json_block(item, indent + 2) for item in value]
        opening, closing = "[", "]"
    else:
        items = []
        for key, item in value.items():
            head = f"{pad}{json.dumps(key, ensure_ascii=False)}: "
            items.append(head + _json_block(item, len(head)))
        opening, closing = "{", "}"
    return opening + "\n" + ",\n".join(items) + "\n" + " " * indent + closing


def _markdown(text: str) -> str:
    """Plain text as Markdown: <vo> or *.yaml must not read as HTML or emphasis (in code
    spans, between backticks, every character is already itself)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        for char in "\\<>*":
            parts[i] = parts[i].replace(char, "\\" + char)
    return "`".join(parts)


def _setting(name: str, field: FieldInfo) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    where = f"environment `{ENV_PREFIX}{name.upper()}`"
    where += "" if extra.get(ENV_ONLY) else f", TOML key `{name}`"
    kind = ", ".join([type_text(field.annotation), *_constraints(field)])
    default = default_text(name, field)
    space = "" if default.startswith("\n") else " "  # a code block starts on a line of its own
    return (
        f"### `{name}`\n\n{_markdown(field.description or '')}\n\n"
        f"- {where}\n- type: {kind}\n- default:{space}{default}\n"
    )


def _model(model: type[BaseModel]) -> str:
    lines = [
        f"### {model.__name__}\n",
        _markdown((model.__doc__ or "").strip()) + "\n",
        "| key | type | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for name, field in model.model_fields.items():
        kind = ", ".join([type_text(field.annotation), *_constraints(field)])
        default = default_text(name, field).replace("\n", " ")
        description = _markdown(field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {kind} | {default} | {description} |")
    return "\n".join(lines) + "\n"


def configuration_reference() -> str:
    """Every field of Settings: its environment variable, TOML key, type, default and
    description; then the values that are tables of their own (a VO, a card, a source)."""
    fields = Settings.model_fields
    missing = [name for name, field in fields.items() if not field.description]
    if missing:
        raise ValueError(f"settings without a description: {', '.join(missing)}")
    parts = [HEADER, "## Settings\n", *(_setting(name, field) for name, field in fields.items())]
    models = list(dict.fromkeys(m for f in fields.values() for m in _models(f.annotation)))
    if models:
        parts.append("## Values of tables and lists\n")
        parts.extend(_model(model) for model in models)
    return "\n".join(parts)


@config_app.command("reference")
def reference() -> None:
    """Print the configuration reference (Markdown): every setting, its environment variable
    and TOML key, type, default and description."""
    typer.echo(configuration_reference(), nl=False)
