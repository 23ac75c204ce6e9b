"""Downloading job outputs: each file streamed to FILE.part then renamed, the names the
server gives kept inside the target directory."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from rich.progress import Progress

from concordia.cli.common import Api, fail


def _safe_relative(name: str) -> PurePosixPath | None:
    """Defence in depth: a name from the server must stay inside the target directory."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        return None
    return path


def save(api: Api, path: str, target: Path, bar: Progress) -> None:
    """Stream to target.part, then rename: an interrupted download leaves no half file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with api.stream(path) as response, partial.open("wb") as fh:
            size = response.headers.get("content-length")
            task = bar.add_task(target.name, total=int(size) if size else None)
            for data in response.iter_bytes(1 << 16):
                fh.write(data)
                bar.advance(task, len(data))
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def download_plan(
    api: Api, source: str, name: str, root: Path, job: int | None
) -> tuple[list[tuple[str, Path]], list[str]]:
    """What to download, as (API path, file): the zip of ``source`` (a submission's, or a
    job's with --zip), else each output of ``job``; and the output names refused."""
    # -o out.zip names the file itself; a directory gets job-N-outputs.zip in it.
    named = root.suffix.lower() == ".zip" and not root.is_dir()
    archive = root if named else root / f"{name}-outputs.zip"
    if job is None:
        return [(f"{source}/outputs.zip", archive)], []
    files = _all_outputs(api, job)
    refused = [f["path"] for f in files if _safe_relative(f["path"]) is None]
    plan = [
        (f"/jobs/{job}/outputs/{quote(f['path'])}", root / relative)
        for f in files
        if (relative := _safe_relative(f["path"]))
    ]
    return plan, refused


def _all_outputs(api: Api, job: int) -> list[dict[str, Any]]:
    """Every output of the job, a page at a time."""
    files: list[dict[str, Any]] = []
    page, total = 1, 1
    while len(files) < total:
        found = api.call("GET", f"/jobs/{job}/outputs", params={"page": page, "per_page": 500})
        if not found["items"]:
            break
        files += found["items"]
        page, total = page + 1, found["total"]
    return files


def one_target(job: int | None, submission: int | None) -> str:
    """The API path of the job or the submission asked for (exactly one of them)."""
    if (job is None) == (submission is None):
        fail(["give a job id or --submission N (not both)"])
    return f"/jobs/{job}" if submission is None else f"/submissions/{submission}"
