"""A job's logs and outputs: live log chunks, the output list, safe file access, the zip."""

from __future__ import annotations

import csv
import io
import itertools
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel

from concordia.backends.base import BackendError
from concordia.core.states import JobStatus
from concordia.db.tables import Job
from concordia.logic.errors import Conflict, Invalid, NotFound
from concordia.logic.jobs import backend_ref
from concordia.logic.platform import Platform

Stream = Literal["stdout", "stderr"]
_LOG_FILES = {"stdout": "std.out", "stderr": "std.err"}


class LogChunk(BaseModel):
    stream: Stream
    offset: int
    next_offset: int
    size: int
    data: str
    final: bool


class OutputFile(BaseModel):
    path: str
    size: int


def job_dir(jobs_dir: Path, job: Job) -> Path:
    return jobs_dir / job.uuid


async def fetch_outputs(platform: Platform, job: Job) -> None:
    """Bring a job's outputs into its outputs/ directory, when a user asks for them: a
    backend keeping them elsewhere (a grid's sandbox store) is only asked when needed."""
    dest = job_dir(platform.settings.jobs_dir, job) / "outputs"
    try:
        await platform.backends[job.backend].fetch_outputs(backend_ref(job), dest)
    except BackendError as exc:
        raise Conflict(f"the outputs cannot be fetched from {job.backend} now: {exc}") from None


async def job_log(
    platform: Platform, job: Job, stream: Stream, offset: int, limit: int
) -> LogChunk:
    """A chunk of the job's log; a grid job's logs come with its output sandbox, fetched
    the first time they are read once it is over."""
    path = job_dir(platform.settings.jobs_dir, job) / _LOG_FILES[stream]
    if JobStatus(job.status).is_final and not path.exists():
        await fetch_outputs(platform, job)
    return read_log(platform.settings.jobs_dir, job, stream, offset, limit)


def read_log(jobs_dir: Path, job: Job, stream: Stream, offset: int, limit: int) -> LogChunk:
    """Bytes from ``offset`` on; ``final`` once the job is over and everything was read."""
    if offset < 0:
        raise Invalid("offset", "must be >= 0", location="query")
    path = job_dir(jobs_dir, job) / _LOG_FILES[stream]
    text, next_offset, size = read_chunk(path, offset, limit)
    final = JobStatus(job.status).is_final and next_offset >= size
    return LogChunk(
        stream=stream,
        offset=offset,
        next_offset=next_offset,
        size=size,
        data=text,
        final=final,
    )


def read_chunk(path: Path, offset: int, limit: int) -> tuple[str, int, int]:
    """A growing text file from byte ``offset``: (text, next offset, file size); a missing
    file reads as empty. Never splits a UTF-8 character: an incomplete tail waits."""
    data = b""
    size = 0
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if offset < size:  # past the end nothing is there yet (a huge seek is EINVAL)
                fh.seek(offset)
                data = fh.read(limit)
    except FileNotFoundError:
        pass
    data = data[: _utf8_complete(data)]
    return data.decode("utf-8", errors="replace"), offset + len(data), size


def _utf8_complete(data: bytes) -> int:
    """Length of the longest prefix that does not end inside a multi-byte character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte or ASCII
            need = 1 if byte < 0x80 else (2 if byte < 0xE0 else 3 if byte < 0xF0 else 4)
            return len(data) if back >= need else len(data) - back
    return len(data)


def list_outputs(jobs_dir: Path, job: Job) -> list[OutputFile]:
    root = job_dir(jobs_dir, job) / "outputs"
    return [OutputFile(path=rel, size=size) for rel, size in sorted(_walk_regular(root, root))]


def _walk_regular(root: Path, directory: Path) -> Iterator[tuple[str, int]]:
    """Regular files under ``directory``; symlinks are never followed nor listed."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_regular(root, Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            yield Path(entry.path).relative_to(root).as_posix(), entry.stat().st_size


def output_path(jobs_dir: Path, job: Job, relative: str) -> Path:
    """The file for a user-given output path; traversal, absolute paths and links refused."""
    pure = PurePosixPath(relative)
    bad = not relative or "\\" in relative or "\x00" in relative  # NUL: no file has one
    if bad or not pure.parts or pure.is_absolute() or ".." in pure.parts:
        raise Invalid("path", "must be a relative path inside the job's outputs", location="path")
    root = (job_dir(jobs_dir, job) / "outputs").resolve()
    # Walk each component with lstat: a symlink anywhere on the way is refused.
    current = root
    for part in pure.parts:
        current = current / part
        try:
            mode = current.lstat().st_mode
        except OSError:  # missing, or a name no file system holds (too long, under a file)
            raise NotFound(f"no output {relative[:200]!r}") from None
        if stat.S_ISLNK(mode):
            raise Invalid("path", "refers to a link; links are never served", location="path")
    if not stat.S_ISREG(mode):
        raise NotFound(f"no output {relative[:200]!r}")
    return current


def write_zip(jobs_dir: Path, job: Job, target: Path) -> None:
    """All outputs in one zip file (blocking; run it in a thread)."""
    root = job_dir(jobs_dir, job) / "outputs"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for rel, _size in sorted(_walk_regular(root, root)):
            archive.write(root / rel, arcname=f"job-{job.id}/{rel}")


PREVIEW_BYTES = 64 * 1024
CSV_ROWS = 100
MAX_PREVIEWS = 20
IMAGES = {".png", ".jpg", ".jpeg", ".svg"}
TEXTS = {".txt", ".log", ".out", ".err", ".json", ".yaml", ".yml", ".md", ".dat", ".xml"}
LOGS = {"std.out", "std.err"}  # shown live in their own sections


def previews(jobs_dir: Path, job: Job, files: list[OutputFile]) -> dict[str, Any]:
    """How to show each output on the job page: an image, a CSV table or text (blocking)."""
    found: dict[str, Any] = {}
    for file in files:
        if len(found) >= MAX_PREVIEWS:
            break
        suffix = PurePosixPath(file.path).suffix.lower()
        if file.path in LOGS or suffix not in IMAGES | TEXTS | {".csv"}:
            continue
        if suffix in IMAGES:
            found[file.path] = {"kind": "image"}
            continue
        with output_path(jobs_dir, job, file.path).open("rb") as fh:
            data = fh.read(PREVIEW_BYTES + 1)
        text = data[:PREVIEW_BYTES].decode("utf-8", "replace")
        if suffix == ".csv":
            try:
                rows = list(itertools.islice(csv.reader(io.StringIO(text)), CSV_ROWS + 1))
            except csv.Error:
                rows = []
            if rows:
                more = len(rows) > CSV_ROWS or len(data) > PREVIEW_BYTES
                found[file.path] = {"kind": "csv", "rows": rows[:CSV_ROWS], "more": more}
                continue
        found[file.path] = {"kind": "text", "text": text, "more": len(data) > PREVIEW_BYTES}
    return found
