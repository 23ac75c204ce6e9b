"""/grid: what worker nodes fetch from Concordia, with a link signed for one job (no session)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse

from concordia.logic import datalake_tokens, grid_images
from concordia.web.api.media import RAW, raw
from concordia.web.deps import PlatformDep
from concordia.web.errors import documented

router = APIRouter(tags=["grid"])


@router.head("/grid/images/{image_id}/image.sqsh", include_in_schema=False)
@router.get(
    "/grid/images/{image_id}/image.sqsh",
    response_class=RAW,
    responses=raw(
        "The image's SquashFS (Range requests; ETag: its sha256)",
        "application/vnd.squashfs",
        headers={"ETag": "The image's sha256, quoted"},
    )
    | {206: {"description": "The part a Range asked for"}, 304: {"description": "Unchanged"}}
    | documented(403, 404),
)
async def node_image(
    image_id: str,
    request: Request,
    platform: PlatformDep,
    job: Annotated[str, Query(max_length=64)],
    expires: Annotated[int, Query()],
    sig: Annotated[str, Query(max_length=128)],
) -> Response:
    """A job's image for its worker node, while the link is valid and the job not over."""
    found = await grid_images.node_image(
        platform.db, platform.images, platform.keyring, image_id, job, expires, sig
    )
    etag = f'"{found.sha256}"'
    headers = {"ETag": etag, "Cache-Control": "private"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return FileResponse(found.path, media_type="application/vnd.squashfs", headers=headers)


@router.get(
    "/grid/jobs/{job_uuid}/upload-token",
    response_class=RAW,
    responses=raw("A token that may upload that one file (a JWT)", "text/plain")
    | documented(403, 404, 422, 503),
)
async def upload_token(
    job_uuid: Annotated[str, Path(max_length=64)],
    platform: PlatformDep,
    name: Annotated[str, Query(max_length=250)],
    expires: Annotated[int, Query()],
    sig: Annotated[str, Query(max_length=128)],
) -> PlainTextResponse:
    """A fresh upload token for one file of the job's, while the link is valid and the job
    not over (its wrapper fetches one before each upload)."""
    token = await datalake_tokens.upload_token(platform, job_uuid, name, expires, sig)
    return PlainTextResponse(token, headers={"Cache-Control": "no-store"})
