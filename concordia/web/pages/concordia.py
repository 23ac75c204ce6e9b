"""The Concordia pages: choose an application, fill its generated form, preview, submit."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from concordia.core.application import ApplicationDef, FloatParam, ParameterDef
from concordia.logic import images, submissions
from concordia.logic.accounts import vo_refusal
from concordia.logic.errors import DomainError, Invalid, NotFound
from concordia.logic.identity import Identity
from concordia.logic.submissions import SubmissionPreview, SubmissionRequest
from concordia.web.deps import PlatformDep
from concordia.web.pages.common import PageUser, read_form, render

router = APIRouter()

#: Form inputs are named as the logic layer names a problem's field, so a message finds
#: its input without translation: "parameters.jobs", "build_args.he_model".
PARAMS, BUILD = "parameters.", "build_args."


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
    return SubmissionRequest(
        application=app.name,
        parameters=parameters,
        build_args=build_args,
        backend=form.get("backend") or None,
    )


def _values(form: FormData) -> dict[str, str]:
    return {k: str(v) for k, v in form.items() if k != "csrf"}


def _checked(
    app: ApplicationDef, values: dict[str, str]
) -> tuple[SubmissionPreview | None, dict[str, str], list[tuple[str, str]]]:
    """The preview when the values are valid; else the messages by input and the rest."""
    try:
        return submissions.preview(app, _request_of(app, values)), {}, []
    except Invalid as exc:
        errors: dict[str, str] = {}
        others: list[tuple[str, str]] = []
        for _location, field, message in exc.problems:
            if field in values or field in _defaults(app):
                errors.setdefault(field, message)
            else:
                others.append((field, message))
        return None, errors, others


def _form_context(app: ApplicationDef, values: dict[str, str]) -> dict[str, Any]:
    preview, errors, others = _checked(app, values)
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
        state = await images.image_state(platform, app.name, _request_of(app, values).build_args)
    except Invalid:  # the inputs' own messages say what is wrong
        return context
    # An image has a page for those who asked for it (or see it shared with their VO): one
    # found in a shared store, or asked for by others only, is selected when submitted.
    listed = state.status is not None
    if listed and state.id:
        try:
            await images.get_image(platform, user, state.id)
        except NotFound:
            listed = False
    return context | {"image": state, "image_listed": listed}


#: How the form names each backend.
BACKEND_TITLES = {"local": "This machine", "diracx": "The grid (DIRAC)"}


async def _form(
    platform: PlatformDep, user: Identity, app: ApplicationDef, values: dict[str, str]
) -> dict[str, Any]:
    backends = [(name, BACKEND_TITLES.get(name, name)) for name in platform.backends]
    return (
        _form_context(app, values)
        | await _image_context(platform, user, app, values)
        | {"backends": backends, "default_backend": platform.settings.default_backend}
    )


@router.get("/concordia", response_class=HTMLResponse)
async def choose_application(
    request: Request, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    apps = sorted(platform.catalog.apps.values(), key=lambda a: a.title.lower())
    unavailable = {app.name: images.unavailable_reason(platform, app) for app in apps}
    not_allowed = {
        app.name: vo_refusal(user, app.vos, app.title, platform.settings) for app in apps
    }
    return render(
        request,
        "concordia.html",
        apps=apps,
        unavailable=unavailable,
        not_allowed=not_allowed,
        builders=images.builders(platform),
    )


@router.get("/concordia/{name}", response_class=HTMLResponse)
async def application_form(
    request: Request, name: str, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    app = platform.catalog.get(name)
    return render(request, "concordia_app.html", **await _form(platform, user, app, _defaults(app)))


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
