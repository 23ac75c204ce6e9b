"""The Concordia pages: choose an application, fill its generated form, preview, submit."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from concordia.core.application import ApplicationDef
from concordia.core.parameters import FloatParam, ParameterDef
from concordia.logic import image_plans, image_selection, image_views, submission_plans, submissions
from concordia.logic.accounts import vo_refusal
from concordia.logic.datalake_choice import DatalakeRequest, choose
from concordia.logic.errors import DomainError, Invalid, NotFound
from concordia.logic.identity import Identity
from concordia.logic.submission_models import SubmissionPreview, SubmissionRequest
from concordia.web.deps import PlatformDep
from concordia.web.pages.common import PageUser, read_form, render

router = APIRouter()

#: Form inputs are named as the logic layer names a problem's field, so a message finds
#: its input without translation: "parameters.jobs", "build_args.he_model".
PARAMS, BUILD = "parameters.", "build_args."
#: The data lake's inputs (shown only when a data lake is configured).
LAKE, LAKE_RSE, LAKE_DATASET = "datalake", "datalake.rse", "datalake.dataset"
LAKE_SHOWN = "datalake_shown"


def _shown(value: Any) -> str:
    """A default as an input shows it (a float 0.0 as 0, None as empty)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _defaults(app: ApplicationDef) -> dict[str, str]:
    specs: list[tuple[str, dict[str, ParameterDef]]] = [
        (BUILD, app.build_args),
        (PARAMS, app.parameters),
    ]
    return {
        prefix + name: _shown(spec.default) for prefix, defs in specs for name, spec in defs.items()
    }


def _request_of(app: ApplicationDef, form: dict[str, str]) -> SubmissionRequest:
    parameters = {k[len(PARAMS) :]: v for k, v in form.items() if k.startswith(PARAMS)}
    build_args = {k[len(BUILD) :]: v for k, v in form.items() if k.startswith(BUILD)}
    request = SubmissionRequest(
        application=app.name,
        parameters=parameters,
        build_args=build_args,
        backend=form.get("backend") or None,
    )
    if form.get(LAKE_SHOWN):  # the form offered the data lake: an unticked box is a no
        request.datalake = None
        if form.get(LAKE):
            request.datalake = DatalakeRequest(
                rse=form.get(LAKE_RSE) or None, dataset=form.get(LAKE_DATASET) or None
            )
    return request


def _values(form: FormData) -> dict[str, str]:
    return {k: str(v) for k, v in form.items() if k != "csrf"}


def _lake_problems(
    platform: PlatformDep, user: Identity, app: ApplicationDef, request: SubmissionRequest
) -> list[tuple[str, str]]:
    """What is wrong with the data-lake choice (RSE, dataset name), said above the form."""
    given = "datalake" in request.model_fields_set
    try:
        choose(platform.settings, app, user.username, request.datalake, given=given)
    except Invalid as exc:
        return [(field.replace("datalake.", "data lake "), m) for _, field, m in exc.problems]
    return []


async def _checked(
    platform: PlatformDep, user: Identity, app: ApplicationDef, values: dict[str, str]
) -> tuple[SubmissionPreview | None, dict[str, str], list[tuple[str, str]]]:
    """The preview when the values are valid; else the messages by input and the rest."""
    request = _request_of(app, values)
    lake = _lake_problems(platform, user, app, request)
    try:
        return await submission_plans.preview(platform, app, request), {}, lake
    except Invalid as exc:
        errors: dict[str, str] = {}
        others: list[tuple[str, str]] = []
        for _location, field, message in exc.problems:
            if field in values or field in _defaults(app):
                errors.setdefault(field, message)
            else:
                others.append((field, message))
        return None, errors, others + lake


async def _form_context(
    platform: PlatformDep, user: Identity, app: ApplicationDef, values: dict[str, str]
) -> dict[str, Any]:
    preview, errors, others = await _checked(platform, user, app, values)
    return {
        "app": app,
        "values": values,
        "errors": errors,
        "other_errors": others,
        "preview": preview,
        "float_type": FloatParam,
        "params_prefix": PARAMS,
        "build_prefix": BUILD,
    }


async def _image_context(
    platform: PlatformDep, user: Identity, app: ApplicationDef, values: dict[str, str]
) -> dict[str, Any]:
    """The container image of the configuration in the form, as it is now (nothing is built)."""
    context: dict[str, Any] = {"has_image": app.image is not None, "image": None}
    if app.image is None:
        return context
    try:
        state = await image_selection.image_state(
            platform, app.name, _request_of(app, values).build_args
        )
    except Invalid:  # the inputs' own messages say what is wrong
        return context
    # An image has a page for those who asked for it (or see it shared with their VO): one
    # found in a shared store, or asked for by others only, is selected when submitted.
    listed = state.status is not None
    if listed and state.id:
        try:
            await image_views.get_image(platform.settings, platform.db, user, state.id)
        except NotFound:
            listed = False
    return context | {"image": state, "image_listed": listed}


async def _form(
    platform: PlatformDep, user: Identity, app: ApplicationDef, values: dict[str, str]
) -> dict[str, Any]:
    backends = [(name, backend.title) for name, backend in platform.backends.items()]
    settings = platform.settings
    return (
        await _form_context(platform, user, app, values)
        | await _image_context(platform, user, app, values)
        | {"backends": backends, "default_backend": settings.default_backend}
        | {"datalake_rses": settings.datalake_rses if settings.datalake_enabled else []}
    )


def _lake_defaults(platform: PlatformDep, app: ApplicationDef) -> dict[str, str]:
    """The data lake's inputs as the form opens: ticked when the application says so."""
    settings = platform.settings
    if not settings.datalake_enabled:
        return {}
    on = app.datalake is not None and app.datalake.default
    return {LAKE_SHOWN: "1", LAKE_RSE: settings.datalake_rse} | ({LAKE: "on"} if on else {})


@router.get("/concordia", response_class=HTMLResponse)
async def choose_application(
    request: Request, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    apps = sorted(platform.catalog.apps.values(), key=lambda a: a.title.lower())
    unavailable = {
        app.name: image_plans.unavailable_reason(platform.settings, platform.catalog, app)
        for app in apps
    }
    not_allowed = {
        app.name: vo_refusal(user, app.vos, app.title, platform.settings) for app in apps
    }
    return render(
        request,
        "concordia.html",
        apps=apps,
        unavailable=unavailable,
        not_allowed=not_allowed,
        builders=image_views.builders(platform.settings, platform.images),
    )


@router.get("/concordia/{name}", response_class=HTMLResponse)
async def application_form(
    request: Request, name: str, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    app = platform.catalog.get(name)
    values = _defaults(app) | _lake_defaults(platform, app)
    return render(request, "concordia_app.html", **await _form(platform, user, app, values))


@router.post("/concordia/{name}/check", response_class=HTMLResponse)
async def check_form(
    request: Request, name: str, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    """The form's messages and preview for the values so far; stores nothing."""
    app = platform.catalog.get(name)
    values = _values(await read_form(request, csrf=False))
    return render(request, "concordia_form.html", **await _form(platform, user, app, values))


@router.post("/concordia/{name}", response_class=HTMLResponse)
async def submit_form(
    request: Request, name: str, platform: PlatformDep, user: PageUser
) -> Response:
    app = platform.catalog.get(name)
    values = _values(await read_form(request))
    try:
        view = await submissions.submit_batch(platform, user, _request_of(app, values))
    except Invalid:
        context = await _form(platform, user, app, values)
        return render(request, "concordia_app.html", status_code=422, submitted=True, **context)
    except DomainError as exc:  # not a member, no proxy, or its image cannot be built here
        context = await _form(platform, user, app, values)
        return render(
            request,
            "concordia_app.html",
            status_code=exc.status_code,
            refused=exc.message,
            **context,
        )
    return RedirectResponse(f"/submissions/{view.id}", status_code=303)
