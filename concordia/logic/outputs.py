"""A job's logs and outputs: live log chunks, the output list, safe file access, the zip."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import os
import stat
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel
from zipstream import ZIP_DEFLATED, ZipStream

from concordia.backends.base import Backend, BackendError
from concordia.core.states import JobStatus
from concordia.db.tables import Job
from concordia.logic.errors import Conflict, Invalid, NotFound, TooLarge
from concordia.logic.jobs import backend_ref
from concordia.logic.limits import WorkPool, WorkPools
from concordia.settings import ServerSettings, Settings

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


async def fetch_outputs(settings: ServerSettings, backends: dict[str, Backend], job: Job) -> None:
    """Bring a job's outputs into its outputs/ directory, when a user asks for them: a
    backend keeping them elsewhere (a grid's sandbox store) is only asked when needed."""
    dest = job_dir(settings.jobs_dir, job) / "outputs"
    try:
        await backends[job.backend].fetch_outputs(backend_ref(job), dest)
    except BackendError as exc:
        raise Conflict(f"the outputs cannot be fetched from {job.backend} now: {exc}") from None


async def job_log(
    settings: ServerSettings,
    backends: dict[str, Backend],
    job: Job,
    stream: Stream,
    offset: int,
    limit: int,
) -> LogChunk:
    """A chunk of the job's log; a grid job's logs come with its output sandbox, fetched
    the first time they are read once it is over."""
    path = job_dir(settings.jobs_dir, job) / _LOG_FILES[stream]
    if JobStatus(job.status).is_final and not path.exists():
        await fetch_outputs(settings, backends, job)
    return read_log(settings.jobs_dir, job, stream, offset, limit)


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


#: Outputs one page of a listing shows at the most.
MAX_PER_PAGE = 500


class OutputPage(BaseModel):
    """A page of a job's outputs, sorted by path, and how many there are."""

    items: list[OutputFile]
    total: int
    #: True: counting stopped at ``total`` files (outputs left before the output bounds
    #: existed, or a grid sandbox): there are more.
    more: bool = False


async def output_page(
    settings: Settings,
    backends: dict[str, Backend],
    work: WorkPools,
    user_id: int,
    job: Job,
    page: int,
    per_page: int,
) -> OutputPage:
    """A page of the outputs, listed on the listing pool's threads, never the event loop's."""
    await fetch_outputs(settings, backends, job)
    limit = settings.max_output_files + len(LOGS)
    return await work.listings.call(
        user_id, list_outputs, settings.jobs_dir, job, page, per_page, limit
    )


def list_outputs(jobs_dir: Path, job: Job, page: int, per_page: int, limit: int) -> OutputPage:
    """Page ``page`` (from 1) of the outputs (blocking). Names are walked, ``limit`` at the
    most, without a stat each; only the page's files are measured."""
    root = job_dir(jobs_dir, job) / "outputs"
    names, more = _regular_names(root, limit)
    names.sort()
    items = []
    for rel in names[(page - 1) * per_page : page * per_page]:
        try:
            size = os.lstat(root / rel).st_size
        except OSError:  # gone meanwhile (a rescheduled job starts again)
            continue
        items.append(OutputFile(path=rel, size=size))
    return OutputPage(items=items, total=len(names), more=more)


def _regular_names(root: Path, limit: int) -> tuple[list[str], bool]:
    """The relative paths of the regular files under ``root``, ``limit`` at the most (and
    whether there were more); symlinks are never followed nor listed."""
    found: list[str] = []
    start = len(str(root)) + 1
    pending = [str(root)]
    while pending:
        try:
            scan = os.scandir(pending.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with scan:
            for entry in scan:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    if len(found) >= limit:
                        return found, True
                    found.append(entry.path[start:])
    return found, False


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


#: A step of a zip stream ends after this many bytes or seconds, whichever comes first: a
#: compressed run of zeros is tiny, and a step must give its thread back soon.
ZIP_STEP_BYTES = 1 << 20
ZIP_STEP_SECONDS = 0.2


async def zip_outputs(
    settings: Settings,
    backends: dict[str, Backend],
    work: WorkPools,
    user_id: int,
    jobs: Sequence[Job],
) -> AsyncIterator[bytes]:
    """All outputs of ``jobs`` as one zip, each job's under job-<id>/, made as the client
    reads it: no file is written, a client gone ends it. Refused before the first byte: 413
    above max_zip_bytes, 429 beyond the user's downloads at once. Each step runs on the zip
    pool's threads."""
    pool = work.zips
    with contextlib.ExitStack() as held:
        held.enter_context(pool.turn(user_id))
        for job in jobs:
            await fetch_outputs(settings, backends, job)
        limit = settings.max_output_files + len(LOGS)
        args = settings.jobs_dir, jobs, settings.max_zip_bytes, limit
        chunks = await pool.run(_ZipChunks, *args)
        stream = _stream(pool, chunks, held.pop_all())
    return stream


class _ZipChunks:
    """The zip's bytes, a step at a time; steps and closing take turns (any thread)."""

    def __init__(self, jobs_dir: Path, jobs: Sequence[Job], max_bytes: int, limit: int) -> None:
        """``limit``: files of each job at most."""
        archive, total = ZipStream(compress_type=ZIP_DEFLATED), 0
        for job in jobs:
            root = job_dir(jobs_dir, job) / "outputs"
            names, _more = _regular_names(root, limit)
            for rel in sorted(names):
                total += os.lstat(root / rel).st_size
                if total > max_bytes:
                    raise TooLarge(
                        f"the outputs hold more than {max_bytes} bytes, more than a zip may: "
                        "download the files one by one (or a submission's job by job)"
                    )
                archive.add_path(str(root / rel), arcname=f"job-{job.id}/{rel}", recurse=False)
        self._chunks: Iterator[bytes] = iter(archive)
        self._lock = threading.Lock()

    def step(self) -> bytes | None:
        """The next bytes, None at the end. They may be empty: a run of zeros deflates to
        nothing for seconds, and the step gives its thread back all the same."""
        with self._lock:
            out, deadline = bytearray(), time.monotonic() + ZIP_STEP_SECONDS
            for chunk in self._chunks:
                out += chunk
                if len(out) >= ZIP_STEP_BYTES or time.monotonic() > deadline:
                    return bytes(out)
            return bytes(out) if out else None

    def close(self) -> None:
        with self._lock:  # after a step still running: a generator cannot close mid-step
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()


def _stream(pool: WorkPool, chunks: _ZipChunks, held: contextlib.ExitStack) -> AsyncIterator[bytes]:
    def release() -> None:  # twice is harmless: the second close of each does nothing
        held.close()
        with contextlib.suppress(RuntimeError):  # the pool shut down: the process ends
            pool.executor.submit(chunks.close)

    async def produce() -> AsyncIterator[bytes]:
        try:
            while (chunk := await pool.run(chunks.step)) is not None:
                if chunk:
                    yield chunk
        finally:  # the client gone: cancelled here, or never iterated (below)
            release()

    stream = produce()
    # A stream dropped before its first step never runs its finally: when it is collected.
    weakref.finalize(stream, release)
    return stream


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
