"""Image recipes: what an application's container holds, its canonical form and its content id."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import string
from collections.abc import Mapping
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict, Field, field_validator

#: A Debian package name (Policy 5.6.1), optionally with an architecture or version pin.
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9]+)?(=[A-Za-z0-9.+~:-]+)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SUITE = re.compile(r"^debian:[a-z][a-z0-9-]*$")
_BASE_RECIPE = re.compile(r"^recipe:[a-z][a-z0-9_-]{0,62}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
#: Bump when the way a recipe becomes an image changes: old ids then name old images.
RECIPE_FORMAT = 1


class SourceUse(BaseModel):
    """A file the operator provides (e.g. a registered-only tarball), named in Settings.sources."""

    model_config = ConfigDict(extra="forbid")
    dest: str = Field(description="Absolute path of the file in the image while it is built.")
    help: str = Field(default="", description="Why it is needed and where to get it.")

    @field_validator("dest")
    @classmethod
    def _absolute(cls, dest: str) -> str:
        return _image_path(dest)


class Recipe(BaseModel):
    """An application's image. Steps and env values may use {build_arg} placeholders."""

    model_config = ConfigDict(extra="forbid")
    base: str = Field(
        default="debian:bookworm",
        description="debian:SUITE, or recipe:APP to start from another application's recipe.",
    )
    variant: Literal["minbase", "extract"] = Field(
        default="minbase",
        description="minbase: a Debian system with apt and dpkg; extract: only the packages "
        "unpacked (tiny images; steps run with what the packages bring).",
    )
    packages: list[str] = Field(default_factory=list, description="Debian packages.")
    pip: list[str] = Field(
        default_factory=list, description="PyPI requirements (the image needs python3-pip)."
    )
    files: dict[str, str] = Field(
        default_factory=dict,
        description="Files beside the application's YAML (relative) -> absolute path in the image.",
    )
    sources: dict[str, SourceUse] = Field(
        default_factory=dict, description="Operator-provided files (Settings.sources) by name."
    )
    steps: list[str] = Field(default_factory=list, description="Shell commands run at build time.")
    shell: str = Field(
        default="/bin/sh",
        description="The image's shell for the steps (extract variant: e.g. /bin/busybox sh).",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Environment of the jobs.")
    workdir: str = Field(default="/work", description="Where jobs start (their work directory).")

    @field_validator("base")
    @classmethod
    def _base(cls, base: str) -> str:
        if not (_SUITE.match(base) or _BASE_RECIPE.match(base)):
            raise ValueError("base must be debian:SUITE or recipe:APPLICATION")
        return base

    @field_validator("packages")
    @classmethod
    def _packages(cls, packages: list[str]) -> list[str]:
        for name in packages:
            if not _PACKAGE.match(name):
                raise ValueError(f"{name!r} is not a Debian package name")
        return packages

    @field_validator("pip")
    @classmethod
    def _pip(cls, requirements: list[str]) -> list[str]:
        for req in requirements:
            # A requirement, never an option ("-e", "--index-url") nor a URL to fetch from.
            try:
                parsed = Requirement(req)
            except InvalidRequirement as exc:
                raise ValueError(f"{req!r} is not a pip requirement: {exc}") from None
            if parsed.url or req.lstrip().startswith("-"):
                raise ValueError(f"{req!r}: give a name and version, not a URL or an option")
        return requirements

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, str]) -> dict[str, str]:
        for src, dest in files.items():
            if src.startswith("/") or ".." in src.split("/") or not src:
                raise ValueError(f"file {src!r} must be a relative path beside the application")
            _image_path(dest)
        return files

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[str]) -> list[str]:
        for step in steps:
            if not step.strip() or "\x00" in step:
                raise ValueError("a build step must be a non-empty shell command")
        return steps

    @field_validator("shell")
    @classmethod
    def _shell(cls, shell: str) -> str:
        words = shlex.split(shell)
        if not words:
            raise ValueError("shell must name a program in the image")
        _image_path(words[0])
        return shell

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not _ENV_NAME.match(name) or _CONTROL.search(value):
                raise ValueError(f"environment variable {name!r} has a bad name or value")
        return env

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, workdir: str) -> str:
        return _image_path(workdir)

    @property
    def base_recipe(self) -> str | None:
        """The application whose recipe this one starts from, if any."""
        return self.base.removeprefix("recipe:") if self.base.startswith("recipe:") else None

    @property
    def suite(self) -> str:
        if self.base_recipe is not None:
            raise ValueError("a recipe based on another one has no suite until flattened")
        return self.base.removeprefix("debian:")

    def placeholders(self) -> set[str]:
        """The build-argument names the steps and env values use."""
        names: set[str] = set()
        for template in [*self.steps, *self.env.values()]:
            names |= template_fields(template)
        return names

    def on_top_of(self, base: Recipe) -> Recipe:
        """This recipe flattened onto the (already flat) recipe it starts from: one build."""
        if base.base_recipe is not None:
            raise ValueError("flatten the base recipe first")
        return Recipe(
            base=base.base,
            variant=base.variant,
            packages=_unique(base.packages + self.packages),
            pip=_unique(base.pip + self.pip),
            files={**base.files, **self.files},
            sources={**base.sources, **self.sources},
            steps=base.steps + self.steps,
            shell=base.shell,
            env={**base.env, **self.env},
            workdir=self.workdir,
        )

    def rendered_steps(self, build_args: Mapping[str, Any]) -> list[str]:
        """The steps with build arguments filled in, each value one shell-quoted word (its
        placeholder stands bare: `shell_placeholder_problem`, checked when it loads)."""
        quoted = {k: shlex.quote(str(v)) for k, v in build_args.items()}
        return [step.format_map(quoted) for step in self.steps]

    def rendered_env(self, build_args: Mapping[str, Any]) -> dict[str, str]:
        values = {k: str(v) for k, v in build_args.items()}
        return {name: value.format_map(values) for name, value in self.env.items()}


def template_fields(template: str) -> set[str]:
    """The {name} placeholders of a template (command, job name, step); no format specs."""
    names = set()
    for _, field, spec, conv in string.Formatter().parse(template):
        if field is None:
            continue
        if spec or conv or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", field):
            raise ValueError(f"placeholder {{{field}}} must be a plain name")
        names.add(field)
    return names


#: What a placeholder's value is when a template is checked: a space and every character
#: a shell reads specially in or out of quotes.
_PROBE = "a b'\"\\$`"
#: Stands for the placeholder checked: a character no template holds (private use).
_MARK = "\ue000"


def shell_placeholder_problem(template: str) -> str | None:
    """The first placeholder of a shell line (a command template, a build step) that does not
    stand bare, else None. Inside quotes or after a backslash, a shell would read its value
    again (``sh -c 'echo {message}'``: a message ``$(...)`` runs); bare, the value is one
    word. shlex is the judge: the line with a value quoted in must split into the words it
    splits into with the value in place. A here-document's body is out of its sight: a
    placeholder in a line with one is refused."""
    parts = list(string.Formatter().parse(template))
    fields = [field for _, field, _, _ in parts if field is not None]
    if fields and "<<" in template:
        return fields[0]

    def render(value: str, at: int) -> str:
        pieces = [literal + ("" if f is None else value if i == at else "x")
                  for i, (literal, f, _, _) in enumerate(parts)]  # fmt: skip
        return "".join(pieces)

    for at, (_, field, _, _) in enumerate(parts):
        if field is None:
            continue
        try:
            expected = [word.replace(_MARK, _PROBE) for word in shlex.split(render(_MARK, at))]
            if shlex.split(render(shlex.quote(_PROBE), at)) != expected:
                return field
        except ValueError:  # no closing quotation: the value's quote closed one
            return field
    return None


def image_id(
    recipe: Recipe,
    build_args: Mapping[str, Any],
    file_digests: Mapping[str, str],
    builder: str,
) -> str:
    """The content id of an image: sha256 of the canonical flattened recipe, the build
    arguments, the sha256 of every copied file (by destination) and the builder's version."""
    canonical = {
        "format": RECIPE_FORMAT,
        "recipe": recipe.model_dump(mode="json"),
        "build_args": {k: build_args[k] for k in sorted(build_args)},
        "files": {k: file_digests[k] for k in sorted(file_digests)},
        "builder": builder,
    }
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _image_path(path: str) -> str:
    if not path.startswith("/") or ".." in path.split("/") or _CONTROL.search(path):
        raise ValueError(f"{path!r} must be an absolute path in the image")
    return path


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
