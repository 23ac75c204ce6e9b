"""/images: select-or-build, the catalogue, build logs (text and live), downloads, delete."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse

from concordia.logic import image_builds, image_logs, image_selection, image_views
from concordia.logic.image_views import BuildersView, ImageSelection, ImageView
from concordia.web.api.media import RAW, event_stream, raw
from concordia.web.deps import CurrentUser, PlatformDep
from concordia.web.errors import AUTHENTICATED, BODY, CHANGES, documented

router = APIRouter(tags=["images"], responses=AUTHENTICATED)
_MEDIA = {"squashfs": "application/vnd.squashfs", "oci": "application/x-tar"}
_SUFFIX = {"squashfs": "sqsh", "oci": "oci.tar"}


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is refused, not ignored
    application: str
    build_args: dict[str, Any] = Field(default_factory=dict)
    #: Build again even if the image exists (a rebuild picks up newer packages).
    force: bool = False


@router.get("/builders")
async def list_builders(platform: PlatformDep, _user: CurrentUser) -> BuildersView:
    """The image builder in use, and for the others why not (what to install)."""
    return image_views.builders(platform.settings, platform.images)


@router.get("/images")
async def list_images(
    platform: PlatformDep, user: CurrentUser, application: str | None = None
) -> list[ImageView]:
    """The images the caller asked for (and, where shared, those of their VOs)."""
    return await image_views.list_images(platform.settings, platform.db, user, application)


@router.post(
    "/images",
    responses={
        200: {"description": "The image exists: selected"},
        202: {"description": "Building"},
        **CHANGES,
        **documented(404, 409),
        **BODY,
    },
)
async def select_or_build(
    body: ImageRequest, response: Response, platform: PlatformDep, user: CurrentUser
) -> ImageSelection:
    selection = await image_selection.select_or_build(
        platform, user, body.application, body.build_args, force=body.force
    )
    response.status_code = 200 if selection.selected else 202
    return selection


@router.get("/images/{image_id}", responses=documented(404))
async def get_image(image_id: str, platform: PlatformDep, user: CurrentUser) -> ImageView:
    return await image_views.get_image(
        platform.settings, platform.db, user, image_views.checked_id(image_id)
    )


@router.delete("/images/{image_id}", status_code=204, responses=CHANGES | documented(404, 409))
async def delete_image(image_id: str, platform: PlatformDep, user: CurrentUser) -> None:
    """The caller stops using the image; its files go with its last user."""
    await image_selection.delete_image(platform, user, image_views.checked_id(image_id))


@router.post("/images/{image_id}/cancel", responses=CHANGES | documented(404, 409))
async def cancel_build(image_id: str, platform: PlatformDep, user: CurrentUser) -> ImageView:
    """Stop the image's build (409 unless building); its waiting jobs fail."""
    return await image_builds.cancel_image(platform, user, image_views.checked_id(image_id))


@router.post(
    "/images/{image_id}/retry",
    responses={202: {"description": "Building again"}, **CHANGES, **documented(404, 409)},
)
async def retry_build(
    image_id: str, response: Response, platform: PlatformDep, user: CurrentUser
) -> ImageSelection:
    """Build a failed or cancelled image again, same configuration (409 otherwise)."""
    selection = await image_selection.retry_image(platform, user, image_views.checked_id(image_id))
    response.status_code = 200 if selection.selected else 202
    return selection


@router.get(
    "/images/{image_id}/log",
    response_class=RAW,
    responses=raw(
        "The log's text from offset",
        "text/plain",
        headers={"X-Log-Offset": "Where to continue from", "X-Image-Status": "The build's"},
    )
    | documented(404),
)
async def build_log(
    image_id: str,
    platform: PlatformDep,
    user: CurrentUser,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> PlainTextResponse:
    """The build log from byte ``offset``; X-Log-Offset is where to continue from."""
    checked = image_views.checked_id(image_id)
    text, next_offset, status = await image_logs.read_log(
        platform.settings, platform.db, platform.images, user, checked, offset
    )
    headers = {"X-Log-Offset": str(next_offset), "X-Image-Status": status}
    return PlainTextResponse(text, headers=headers)


@router.get(
    "/images/{image_id}/log/events",
    response_class=RAW,
    responses=event_stream(
        '"log" (new text) and "progress" ({phase, done, total}) until the build ends, then "end"',
        "log",
        "progress",
        "end",
    )
    | documented(404),
)
async def follow_build_log(
    image_id: str,
    request: Request,
    platform: PlatformDep,
    user: CurrentUser,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> EventSourceResponse:
    """Server-Sent Events: "log" (new text) and "progress" (its phase and n of N, when they
    change) until the build ends, then "end" (its status)."""
    await image_views.get_image(
        platform.settings, platform.db, user, image_views.checked_id(image_id)
    )

    async def stream() -> AsyncIterator[dict[str, str]]:
        progress = await image_logs.progress_until(
            platform.settings, platform.db, platform.images, user, image_id, offset
        )
        async for text in image_logs.follow_log(platform, user, image_id, offset):
            if await request.is_disconnected():
                return
            yield {"event": "log", "data": json.dumps({"text": text})}
            if progress.advance(text):
                yield {"event": "progress", "data": progress.model_dump_json()}
        view = await image_views.get_image(platform.settings, platform.db, user, image_id)
        yield {"event": "end", "data": json.dumps({"status": view.status, "error": view.error})}

    return EventSourceResponse(stream(), ping=15)


@router.get(
    "/images/{image_id}/download/{fmt}",
    response_class=RAW,
    responses=raw("The image file", *_MEDIA.values()) | documented(404),
)
async def download(
    image_id: str, fmt: Literal["squashfs", "oci"], platform: PlatformDep, user: CurrentUser
) -> FileResponse:
    path, view = await image_views.image_file(
        platform.settings, platform.db, platform.images, user, image_views.checked_id(image_id), fmt
    )
    name = f"{view.application}-{image_id[:12]}.{_SUFFIX[fmt]}"
    return FileResponse(path, media_type=_MEDIA[fmt], filename=name)
