"""The catalogue of applications defined in the applications directory (NAME.yaml)."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from pydantic import ValidationError

from concordia.core.application import ApplicationDef
from concordia.logic.errors import NotFound

log = logging.getLogger(__name__)


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
                app = ApplicationDef.model_validate(yaml.safe_load(path.read_text()))
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
        self.apps, self.errors = apps, errors
        return self

    def get(self, name: str) -> ApplicationDef:
        try:
            return self.apps[name]
        except KeyError:
            raise NotFound(f"no application named {name!r}") from None

    def input_paths(self, app: ApplicationDef) -> list[Path]:
        return [self.directory / rel for rel in app.input_files]
