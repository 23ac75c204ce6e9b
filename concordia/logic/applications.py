"""The catalogue of applications defined in the applications directory (NAME.yaml)."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from pydantic import ValidationError

from concordia.core.application import ApplicationDef
from concordia.logic.errors import NotFound

log = logging.getLogger(__name__)
#: libyaml's parser where PyYAML was built with it: the same documents, read in a tenth of the
#: time (a catalogue is read at each start).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ApplicationCatalog:
    """Definitions loaded from YAML; a broken file is reported and left out, never fatal."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.apps: dict[str, ApplicationDef] = {}
        self.errors: dict[str, str] = {}

    def load(self) -> ApplicationCatalog:
        apps: dict[str, ApplicationDef] = {}
        errors: dict[str, str] = {}
        for path in sorted(self.directory.glob("*.yaml")):
            try:
                app = ApplicationDef.model_validate(yaml.load(path.read_text(), _LOADER))  # noqa: S506 (a safe loader)
                if app.name != path.stem:
                    raise ValueError(f"name {app.name!r} differs from the file name")
                for rel in app.input_files:
                    if not (path.parent / rel).is_file():
                        raise ValueError(f"input file {rel!r} does not exist")
            except (OSError, yaml.YAMLError, ValidationError, ValueError) as exc:
                errors[path.name] = str(exc)
                log.error("application %s is invalid and left out: %s", path.name, exc)
                continue
            apps[app.name] = app
        for name in list(apps):  # a recipe:APP base must name a loaded recipe, without a loop
            problem = _base_problem(apps, name)
            if problem:
                errors[f"{name}.yaml"] = problem
                log.error("application %s.yaml is invalid and left out: %s", name, problem)
        self.apps = {name: app for name, app in apps.items() if f"{name}.yaml" not in errors}
        self.errors = errors
        return self

    def get(self, name: str) -> ApplicationDef:
        try:
            return self.apps[name]
        except KeyError:
            raise NotFound(f"no application named {name!r}") from None

    def input_paths(self, app: ApplicationDef) -> list[Path]:
        return [self.directory / rel for rel in app.input_files]


def _base_problem(apps: dict[str, ApplicationDef], name: str) -> str | None:
    seen = [name]
    image = apps[name].image
    while image is not None and image.base_recipe is not None:
        base = image.base_recipe
        if base in seen:
            return f"its image recipe's bases loop: {' -> '.join([*seen, base])}"
        if base not in apps or apps[base].image is None:
            return f"its image recipe starts from {base!r}, which is no application with a recipe"
        seen.append(base)
        image = apps[base].image
    return None
