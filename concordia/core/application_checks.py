"""Checks across an application definition's fields, each raising ValueError saying what to fix."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from concordia.core.jdl import dirac_list_item_problem
from concordia.core.parameters import PARAM_RE, IntParam, ParameterDef, check_value
from concordia.core.recipe import Recipe, shell_placeholder_problem, template_fields

#: Names every job gets besides its parameters.
JOB_BUILTINS = ("index", "job_name")


def check_parameters(parameters: Mapping[str, ParameterDef]) -> None:
    """Parameter names are plain and none is a job's own; defaults pass their definitions."""
    for pname in parameters:
        if not re.fullmatch(PARAM_RE, pname) or pname in JOB_BUILTINS:
            raise ValueError(f"parameter name {pname!r} is not allowed")
    for pname, spec in parameters.items():
        if spec.default is not None:
            check_value(pname, spec, spec.default)


def check_batch(
    count: str | None, sequences: Mapping[str, str], parameters: Mapping[str, ParameterDef]
) -> None:
    """The job count is a bounded int parameter from 1; each sequence is a new name counting
    up from an int parameter."""
    if count is not None:
        spec = parameters.get(count)
        if not isinstance(spec, IntParam) or spec.min is None or spec.min < 1:
            raise ValueError("batch.count must name an int parameter with min >= 1")
        if spec.max is None:
            raise ValueError("batch.count's parameter needs a max")
    for seq, source in sequences.items():
        if seq in parameters or not re.fullmatch(PARAM_RE, seq):
            raise ValueError(f"batch sequence {seq!r} clashes or is not a valid name")
        if not isinstance(parameters.get(source), IntParam):
            raise ValueError(f"batch sequence {seq!r} must start from an int parameter")


def check_templates(
    command: str,
    job_name: str,
    parameters: Mapping[str, ParameterDef],
    sequences: Mapping[str, str],
) -> None:
    """The command and job name templates use only names a job has, and the command splits
    into words as a shell would."""
    known = set(parameters) | set(sequences) | {"index", "application"}
    for template in (command, job_name):
        for field in template_fields(template):
            if field not in known:
                raise ValueError(f"template uses unknown name {{{field}}}")
    try:
        for word in shlex.split(command):
            template_fields(word)
    except ValueError as exc:
        raise ValueError(f"command {command!r} is not a command line: {exc}") from None


def check_shell_placeholders(name: str, command: str, build_steps: list[str]) -> None:
    """No placeholder of the command or a build step sits where a shell reads a value again."""
    shell_lines = [("command", command)]
    shell_lines += [("build step", step) for step in build_steps]
    for kind, line in shell_lines:
        if (bad := shell_placeholder_problem(line)) is not None:
            raise ValueError(
                f"application {name!r}: placeholder {{{bad}}} in its {kind} {line!r}"
                " is inside quotes, after a backslash or in a here-document, where a shell"
                " would read its value again ($(...) in it would run); put it outside quotes:"
                " a value always becomes one word"
            )


def check_build_args(build_args: Mapping[str, ParameterDef], image: Recipe | None) -> None:
    """Build arguments have plain names and valid defaults, and the image recipe uses only
    those; no build arguments without a recipe."""
    for name, spec in build_args.items():
        if not re.fullmatch(PARAM_RE, name) or spec.default is None:
            raise ValueError(f"build argument {name!r} needs a plain name and a default")
        check_value(name, spec, spec.default)
    if image is not None:
        unknown = sorted(image.placeholders() - set(build_args))
        if unknown:
            raise ValueError(f"image recipe uses unknown build argument {{{unknown[0]}}}")
    elif build_args:
        raise ValueError("build arguments need an image recipe that uses them")


def check_paths(input_files: list[str], outputs: list[str]) -> None:
    """Input files stay inside the application's directory, outputs inside the job's."""
    for rel in input_files:
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"input file {rel!r} must be a relative path inside the app")
    for pattern in outputs:
        if pattern.startswith("/") or ".." in pattern.split("/"):
            raise ValueError(f"output glob {pattern!r} must stay inside the work directory")


def check_dirac_list_items(outputs: list[str], tags: list[str]) -> None:
    """Output globs and tags are items a DIRAC JDL list keeps as written."""
    # Refused here rather than on the grid, where they would be split or rewritten and
    # the job's outputs or matching silently differ from what the definition says.
    for kind, items in (("output glob", outputs), ("tag", tags)):
        for item in items:
            if (problem := dirac_list_item_problem(item)) is not None:
                raise ValueError(f"{kind} {item!r}: {problem}")
