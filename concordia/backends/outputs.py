"""A finished job's outputs: the OutputSandbox globs collected safely from its work dir."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import shutil
import stat
from pathlib import Path

log = logging.getLogger(__name__)

_LOGS = ("std.out", "std.err")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DEPTH = 64  # of output directories collected


def collect_outputs(job_dir: Path, patterns: list[str]) -> list[Path]:
    """Move the regular files of work/ matching the globs to outputs/; add std.out, std.err."""
    outputs = job_dir / "outputs"
    outputs.mkdir(exist_ok=True)
    globs = [g for g in map(_split_glob, patterns) if g]
    moved = []
    if globs:
        with contextlib.suppress(OSError):
            moved = _move_matches(os.open(job_dir / "work", _DIR_FLAGS), (), globs, outputs)
    for name in _LOGS:
        try:
            os.link(job_dir / name, outputs / name)  # the job is over: a link is a free copy
        except FileNotFoundError:
            continue
        except OSError:
            shutil.copyfile(job_dir / name, outputs / name)
        moved.append(outputs / name)
    return moved


def _move_matches(
    dir_fd: int, rel: tuple[str, ...], globs: list[tuple[str, ...]], outputs: Path
) -> list[Path]:
    """Move the matching regular files below ``dir_fd`` (closed here) to ``outputs``.

    The job's processes may outlive it by a moment, and the server may be root: every step goes
    through directory fds opened with O_NOFOLLOW and renames relative to them, so no symlink
    can redirect the server outside the work directory; a name swapped for something else than
    a regular file after the check is thrown away.
    """
    moved = []
    try:
        with os.scandir(dir_fd) as scan:
            entries = list(scan)
        for entry in entries:
            path = (*rel, entry.name)
            try:
                if entry.is_dir(follow_symlinks=False) and len(path) < _MAX_DEPTH:
                    child = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
                    moved += _move_matches(child, path, globs, outputs)
                elif (
                    entry.is_file(follow_symlinks=False)
                    and path[0] not in _LOGS  # those names are the server's logs
                    and any(_glob_match(path, glob) for glob in globs)
                ):
                    dest = outputs.joinpath(*path)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(entry.name, dest, src_dir_fd=dir_fd)
                    if stat.S_ISREG(os.lstat(dest).st_mode):
                        moved.append(dest)
                    else:
                        dest.unlink()
            except OSError as exc:  # this one is not collected; the others still are
                log.warning("output %s not collected: %s", "/".join(path), exc)
    finally:
        os.close(dir_fd)
    return moved


def _split_glob(pattern: str) -> tuple[str, ...]:
    parts = tuple(p for p in pattern.strip().split("/") if p not in ("", "."))
    if pattern.startswith("/") or ".." in parts:
        log.warning("output pattern %r ignored: it must stay inside the work directory", pattern)
        return ()
    return parts


def _glob_match(parts: tuple[str, ...], glob: tuple[str, ...]) -> bool:
    """Match by path segment: ``*``, ``?``, ``[...]`` within one segment, ``**`` for any number."""

    def closure(states: set[int]) -> set[int]:  # "**" may also match no segment at all
        more = {j + 1 for j in states if j < len(glob) and glob[j] == "**"}
        return states if more <= states else closure(states | more)

    states = closure({0})
    for part in parts:
        states = closure(
            {j if glob[j] == "**" else j + 1 for j in states if j < len(glob)
             if glob[j] == "**" or fnmatch.fnmatchcase(part, glob[j])}
        )  # fmt: skip
        if not states:
            return False
    return len(glob) in states


def copy_outputs(outputs: Path, dest: Path) -> list[Path]:
    if not outputs.is_dir():
        return []
    if dest.resolve() != outputs.resolve():
        shutil.copytree(outputs, dest, symlinks=True, dirs_exist_ok=True)
    return sorted(p for p in dest.rglob("*") if p.is_file() and not p.is_symlink())
