"""A job's files in the data lake, listed and downloaded."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from pydantic import BaseModel

from concordia.datalake.errors import DatalakeError
from concordia.datalake.errors import NotFound as LakeNotFound
from concordia.db import datalake_files
from concordia.db.tables import DatalakeFile, User
from concordia.logic.database import Database
from concordia.logic.datalake_identity import lake_for
from concordia.logic.errors import NotFound, Unavailable
from concordia.logic.jobs import get_owned_job
from concordia.logic.platform import Platform

log = logging.getLogger(__name__)


class DatalakeFileView(BaseModel):
    did: str
    scope: str
    name: str
    bytes: int
    adler32: str
    rse: str
    state: str


def _view(row: DatalakeFile) -> DatalakeFileView:
    return DatalakeFileView(
        did=f"{row.scope}:{row.name}", scope=row.scope, name=row.name, bytes=row.bytes,
        adler32=row.adler32, rse=row.rse, state=row.state,
    )  # fmt: skip


async def job_files(db: Database, owner_id: int, job_id: int) -> list[DatalakeFileView]:
    """The caller's job's files in the data lake (another user's job: not found)."""
    async with db.reading() as session:
        await get_owned_job(session, owner_id, job_id)
        return [_view(row) for row in await datalake_files.of_job(session, job_id)]


async def open_file(
    platform: Platform, owner_id: int, job_id: int, name: str
) -> tuple[DatalakeFileView, AsyncIterator[bytes]]:
    """One of the caller's job's files and its bytes, streamed from the data lake as the
    caller where Rucio takes their IAM token (else as the service account)."""
    async with platform.reading() as session:
        await get_owned_job(session, owner_id, job_id)
        row = await datalake_files.named(session, job_id, name)
        owner = await session.get(User, owner_id)
    if row is None or owner is None:
        raise NotFound(f"job {job_id} has no file {name!r} in the data lake")
    view = _view(row)
    stack = AsyncExitStack()
    try:
        acting = await stack.enter_async_context(lake_for(platform, owner_id, owner.username))
        chunks = acting.lake.open(row.scope, row.name)
        # The first chunk here: a file gone from the lake is a 404, not a broken download.
        first = await anext(chunks, b"")
    except LakeNotFound:
        await stack.aclose()
        raise NotFound(f"{view.did} is no longer in the data lake") from None
    except DatalakeError as exc:
        await stack.aclose()
        raise Unavailable(f"the data lake did not give {view.did}: {exc}") from None
    log.info("job %s: %s read from the data lake as %s", job_id, view.did, acting.who)

    async def stream() -> AsyncIterator[bytes]:
        async with stack:  # the user's own client of Rucio lives as long as the download
            yield first
            async for chunk in chunks:
                yield chunk

    return view, stream()
