"""A grid job's data, which its wrapper writes to the RSE: where it is told to write them, and
the manifest of what it stored."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from concordia.core.application import ApplicationDef
from concordia.core.datalake_layout import DATALAKE_MANIFEST
from concordia.datalake.errors import DatalakeError
from concordia.datalake.store import DataLake
from concordia.db import datalake_files
from concordia.logic.datalake_choice import DID_NAME, DatalakeChoice, name_prefix, stored_choice
from concordia.settings import DatalakeSettings

log = logging.getLogger(__name__)

#: What a grid job's wrapper lists its stored files in (in the output sandbox).
MANIFEST = DATALAKE_MANIFEST
ADLER32 = re.compile(r"[0-9a-fA-F]{8}")


@dataclass
class GridLake:
    """Where a submission's grid jobs store their data: its choice and the RSE's WebDAV
    base URL (None: Rucio did not say now, the jobs wait); ``error``: they cannot run."""

    choice: DatalakeChoice
    url: str | None
    error: str = ""
    #: The CA the wrapper verifies the RSE with (PEM; None: the node's own).
    ca: str | None = None


async def grid_lakes(
    settings: DatalakeSettings,
    datalake: DataLake | None,
    session: AsyncSession,
    submission_ids: set[int],
    urls: dict[str, str],
) -> dict[int, GridLake]:
    """Of these submissions, those whose data go to the data lake, with where their jobs
    write. ``urls`` is the caller's memory of RSE addresses (they change rarely: Rucio is
    asked once an RSE per process)."""
    found: dict[int, GridLake] = {}
    rows = await datalake_files.submissions_of(session, submission_ids)
    try:
        ca = ca_text(settings) if rows else None
        unusable = ""
    except OSError as exc:  # the operator's CA file gone: the jobs cannot verify the RSE
        ca, unusable = None, f"the data lake's CA cannot be read: {exc}"
    for submission in rows:
        choice = stored_choice(submission)
        if choice is None:
            continue
        lake = datalake
        if lake is None or unusable:
            why = unusable or "this server has no data lake now"
            found[submission.id] = GridLake(choice, None, why)
            continue
        if choice.rse not in urls:
            try:
                urls[choice.rse] = await lake.rse_url(choice.rse)
            except DatalakeError as exc:
                log.warning("data lake: where %s is, Rucio did not say: %s", choice.rse, exc)
        found[submission.id] = GridLake(choice, urls.get(choice.rse), ca=ca)
    return found


def ca_text(settings: DatalakeSettings) -> str | None:
    """The CA the server trusts for the data lake, as PEM text a job's wrapper is given
    (None: the node's own CAs)."""
    verify = settings.datalake_verify
    return Path(verify).read_text() if isinstance(verify, str) and verify else None


def grid_settings(
    settings: DatalakeSettings,
    url: str,
    choice: DatalakeChoice,
    app: ApplicationDef,
    *,
    submission_id: int,
    index: int,
    job_uuid: str,
    attempt: int,
    ca: str | None,
) -> dict[str, Any]:
    """JobSpec.datalake of one job: where its wrapper writes its data, under which names."""
    lake: dict[str, Any] = {
        "url": url,
        "scope": choice.scope,
        "names": name_prefix(app.name, submission_id, index, job_uuid, attempt),
        "data": list(app.datalake.data) if app.datalake else [],
        "sandbox_max_bytes": settings.datalake_sandbox_max_bytes,
    }
    if ca is not None:
        lake["ca"] = ca
    return lake


@dataclass(frozen=True)
class StoredFile:
    """One file a grid job's wrapper stored, as its manifest says."""

    name: str
    bytes: int
    adler32: str


def read_manifest(text: str, prefix: str) -> list[StoredFile]:
    """The files of a wrapper's manifest; raises DatalakeError on anything but what the
    wrapper writes, or a name that is not the job's (a payload may write a manifest of its
    own; the wrapper replaces it, but Concordia registers nothing it did not name)."""
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise DatalakeError(f"the job's {MANIFEST} is not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise DatalakeError(f"the job's {MANIFEST} is not a list")
    files: list[StoredFile] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise DatalakeError(f"the job's {MANIFEST} holds {entry!r}")
        name, size, adler32 = entry.get("name"), entry.get("bytes"), entry.get("adler32")
        if not isinstance(name, str) or not name.startswith(prefix) or not DID_NAME.fullmatch(name):
            raise DatalakeError(f"the job's {MANIFEST} names {name!r}, not a file of this job")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise DatalakeError(f"the job's {MANIFEST} gives {name} no size")
        if not isinstance(adler32, str) or not ADLER32.fullmatch(adler32):
            raise DatalakeError(f"the job's {MANIFEST} gives {name} no adler32")
        files.append(StoredFile(name, size, adler32.lower()))
    return files
