"""Image planning: an application's configuration -> its recipe, files, sources and id."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from concordia.core.application import ApplicationDef, validate_build_args
from concordia.core.parameters import ParameterErrors
from concordia.core.recipe import Recipe, image_id
from concordia.images.plan import BuildPlan, Source
from concordia.logic.applications import ApplicationCatalog
from concordia.logic.errors import Conflict, Invalid
from concordia.logic.platform import ImageBuilds
from concordia.settings import ImageSettings

#: Longest chain of recipe:APP bases (a loop is refused long before).
_MAX_BASES = 8


def unavailable_reason(
    settings: ImageSettings, catalog: ApplicationCatalog, app: ApplicationDef
) -> str | None:
    """Why the application's image cannot be made here (an operator-provided file is not
    configured); None if it can."""
    if app.image is None:
        return None
    return _missing_source(settings, app, flat_recipe(catalog, app))


def _missing_source(settings: ImageSettings, app: ApplicationDef, recipe: Recipe) -> str | None:
    for name, use in recipe.sources.items():
        if name not in settings.sources:
            hint = f" {use.help}" if use.help else ""
            return f"{app.title} is unavailable: its build needs the file '{name}'.{hint}"
    return None


def flat_recipe(catalog: ApplicationCatalog, app: ApplicationDef) -> Recipe:
    """The application's recipe with its recipe:APP bases folded in (one build)."""
    chain = []
    current: ApplicationDef | None = app
    while current is not None:
        if current.image is None:
            raise Conflict(f"application {current.name!r} has no image recipe")
        chain.append(current.image)
        base = current.image.base_recipe
        if len(chain) > _MAX_BASES or base == app.name:
            raise Conflict(f"the image recipe of {app.name!r} has a loop of bases")
        current = catalog.get(base) if base else None
    recipe = chain.pop()
    while chain:
        recipe = chain.pop().on_top_of(recipe)
    return recipe


def plan_image(
    settings: ImageSettings,
    catalog: ApplicationCatalog,
    images: ImageBuilds,
    app: ApplicationDef,
    build_args: dict[str, Any],
) -> BuildPlan:
    """The build of this configuration and its id. Raises Conflict if it cannot be built."""
    builder = images.choice.builder
    if builder is None:
        raise Conflict(f"images cannot be built here: {images.choice.summary}")
    recipe = flat_recipe(catalog, app)
    reason = _missing_source(settings, app, recipe)
    if reason:
        raise Conflict(reason)
    files = {dest: catalog.directory / src for src, dest in recipe.files.items()}
    digests = {dest: _file_digest(path) for dest, path in files.items()}
    sources = {}
    for name, use in recipe.sources.items():
        configured = settings.sources[name]
        sources[use.dest] = Source(configured.url, configured.sha256)
        digests[use.dest] = configured.sha256
    return BuildPlan(
        image_id=image_id(recipe, build_args, digests, builder.version),
        application=app.name,
        recipe=recipe,
        build_args=build_args,
        files=files,
        sources=sources,
        timeout=settings.image_build_timeout,
    )


def plan_requested(
    settings: ImageSettings,
    catalog: ApplicationCatalog,
    images: ImageBuilds,
    application: str,
    raw_build_args: dict[str, Any],
) -> BuildPlan:
    """The build a user's request names (raw build arguments, checked here)."""
    app = catalog.get(application)
    if app.image is None:
        raise Invalid("application", "this application runs without an image")
    return plan_image(settings, catalog, images, app, check_build_args(app, raw_build_args))


_digests: dict[tuple[Path, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a recipe file, remembered while it keeps its size and mtime."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise Conflict(f"the image recipe's file {path.name} is missing") from exc
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _digests:
        _digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _digests[key]


def check_build_args(app: ApplicationDef, raw: dict[str, Any]) -> dict[str, Any]:
    """The coerced build arguments; raises Invalid naming each bad one."""
    try:
        return validate_build_args(app, raw)
    except ParameterErrors as exc:
        raise Invalid.many([(f"build_args.{e.field}", e.message) for e in exc.errors]) from None
