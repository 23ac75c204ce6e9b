"""The image catalogue and an image's page: formats, downloads, live build log, rebuild, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from concordia.logic import image_builds, image_logs, image_selection, image_views
from concordia.logic.errors import Conflict, Invalid, NotFound
from concordia.logic.identity import Identity
from concordia.logic.image_views import ImageView
from concordia.web.deps import PlatformDep
from concordia.web.pages.common import PageUser, read_form, render

router = APIRouter()
FLASH = "images_flash"
#: How many hex digits of an id the pages show (as the download file names do).
SHORT = 12
#: What each stored format is called for people.
FORMAT_NAMES = {"squashfs": "SquashFS", "oci": "OCI archive"}


def _application(request: Request) -> str | None:
    return request.query_params.get("application", "").strip() or None


async def _catalogue(
    platform: PlatformDep, user: Identity, application: str | None
) -> dict[str, Any]:
    found = await image_views.list_images(platform.settings, platform.db, user, application)
    return {"images": found, "application": application, "short": SHORT, "names": FORMAT_NAMES}


@router.get("/images", response_class=HTMLResponse)
async def images_page(request: Request, platform: PlatformDep, user: PageUser) -> HTMLResponse:
    context = await _catalogue(platform, user, _application(request))
    # Applications of images no longer in the catalogue stay filterable.
    known = {*platform.catalog.apps, *(i.application for i in context["images"])}
    if context["application"]:
        known.add(context["application"])
    return render(
        request,
        "images.html",
        builders=image_views.builders(platform.settings, platform.images),
        applications=sorted(known),
        flash=request.session.pop(FLASH, None),
        **context,
    )


@router.get("/images/table", response_class=HTMLResponse)
async def images_table(request: Request, platform: PlatformDep, user: PageUser) -> HTMLResponse:
    """The table alone, fetched again when an image changes."""
    context = await _catalogue(platform, user, _application(request))
    return render(request, "images_table.html", **context)


async def _detail(
    request: Request,
    platform: PlatformDep,
    user: Identity,
    image_id: str,
    *,
    status_code: int = 200,
    problem: str | None = None,
) -> HTMLResponse:
    view = await image_views.get_image(
        platform.settings, platform.db, user, image_views.checked_id(image_id)
    )
    log, offset, _ = await image_logs.read_log(
        platform.settings, platform.db, platform.images, user, view.id, 0
    )
    return render(
        request,
        "image.html",
        status_code=status_code,
        log=log,
        log_offset=offset,
        problem=problem,
        flash=request.session.pop(FLASH, None),
        **_parts_context(platform, view),
    )


def _parts_context(platform: PlatformDep, view: ImageView) -> dict[str, Any]:
    app = platform.catalog.apps.get(view.application)
    return {"image": view, "app": app, "short": SHORT, "names": FORMAT_NAMES}


@router.get("/images/{image_id}", response_class=HTMLResponse)
async def image_page(
    image_id: str, request: Request, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    return await _detail(request, platform, user, image_id)


@router.get("/images/{image_id}/parts", response_class=HTMLResponse)
async def image_parts(
    image_id: str, request: Request, platform: PlatformDep, user: PageUser
) -> HTMLResponse:
    """Facts, formats and actions again, swapped in when the build ends (htmx out-of-band)."""
    view = await image_views.get_image(
        platform.settings, platform.db, user, image_views.checked_id(image_id)
    )
    return render(request, "image_parts.html", oob=True, **_parts_context(platform, view))


@router.post("/images/{image_id}/rebuild", response_model=None)
async def rebuild_image(
    image_id: str, request: Request, platform: PlatformDep, user: PageUser
) -> Response:
    await read_form(request)
    view = await image_views.get_image(
        platform.settings, platform.db, user, image_views.checked_id(image_id)
    )
    # Seen shared with a VO: read-only.
    await image_views.may_change(platform.settings, platform.db, user, view.id)
    try:
        selection = await image_selection.select_or_build(
            platform, user, view.application, view.build_args, force=True
        )
    except (Conflict, Invalid, NotFound) as exc:  # the application changed or cannot build
        return await _detail(
            request, platform, user, image_id, status_code=exc.status_code, problem=exc.message
        )
    return _built_again(request, image_id, selection.image.id)


def _built_again(request: Request, image_id: str, new: str) -> RedirectResponse:
    """To the page of the image being built for ``image_id``'s configuration, saying so."""
    if new == image_id:
        message = "The image is being built again; its log follows below."
    else:  # its recipe or the builder changed since: the same configuration is a new image
        message = (
            f"The application's recipe has changed since this image was built: its "
            f"configuration is now image {new[:SHORT]}, being built below."
        )
    request.session[FLASH] = message
    return RedirectResponse(f"/images/{new}", status_code=303)


@router.post("/images/{image_id}/cancel", response_model=None)
async def cancel_build(
    image_id: str, request: Request, platform: PlatformDep, user: PageUser
) -> Response:
    await read_form(request)
    try:
        await image_builds.cancel_image(platform, user, image_views.checked_id(image_id))
    except Conflict as exc:  # it ended meanwhile
        problem = exc.message
        return await _detail(request, platform, user, image_id, status_code=409, problem=problem)
    request.session[FLASH] = "The build was cancelled; Retry builds it again."
    return RedirectResponse(f"/images/{image_id}", status_code=303)


@router.post("/images/{image_id}/retry", response_model=None)
async def retry_build(
    image_id: str, request: Request, platform: PlatformDep, user: PageUser
) -> Response:
    await read_form(request)
    try:
        selection = await image_selection.retry_image(
            platform, user, image_views.checked_id(image_id)
        )
    except (Conflict, Invalid, NotFound) as exc:
        return await _detail(
            request, platform, user, image_id, status_code=exc.status_code, problem=exc.message
        )
    return _built_again(request, image_id, selection.image.id)


@router.post("/images/{image_id}/delete", response_model=None)
async def delete_image(
    image_id: str, request: Request, platform: PlatformDep, user: PageUser
) -> Response:
    await read_form(request)
    view = await image_views.get_image(
        platform.settings, platform.db, user, image_views.checked_id(image_id)
    )
    try:
        await image_selection.delete_image(platform, user, view.id)
    except Conflict as exc:
        problem = f"The image was not deleted: {exc.message}."
        return await _detail(request, platform, user, image_id, status_code=409, problem=problem)
    request.session[FLASH] = f"Deleted image {view.id[:SHORT]} of {view.application}."
    return RedirectResponse("/images", status_code=303)
