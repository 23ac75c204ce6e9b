"""A finished job's outputs: the OutputSandbox globs collected safely from its work dir."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_LOGS = ("std.out", "std.err")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DEPTH = 64  # of output directories collected


@dataclass
class Collected:
    """The files collected, and the bound that stopped collection (a minor status) if any."""

    files: list[Path]
    exceeded: str | None = None


@dataclass
class _Budget:
    max_files: int
    max_bytes: int
    files: int = 0
    bytes: int = 0
    exceeded: str | None = None


class _Stop(Exception):
    """A bound is reached: the walk ends there."""


def collect_outputs(
    job_dir: Path,
    patterns: list[str],
    max_files: int | None = None,
    max_bytes: int | None = None,
) -> Collected:
    """Move the regular files of work/ matching the globs to outputs/; add std.out, std.err.

    Past ``max_files`` files or ``max_bytes`` bytes collection stops (a file is moved whole or
    not at all): a job leaving 100,000 files must not make every listing of its outputs walk
    them. The logs are always kept.
    """
    outputs = job_dir / "outputs"
    outputs.mkdir(exist_ok=True)
    globs = [g for g in map(_split_glob, patterns) if g]
    budget = _Budget(max_files or sys.maxsize, max_bytes or sys.maxsize)
    moved: list[Path] = []
    if globs:
        with contextlib.suppress(OSError, _Stop):
            _move_matches(os.open(job_dir / "work", _DIR_FLAGS), (), globs, outputs, budget, moved)
    for name in _LOGS:
        log_file, dest = job_dir / name, outputs / name
        try:
            os.link(log_file, dest)  # the job is over: a link is a free copy
        except FileNotFoundError:
            continue
        except FileExistsError:  # a collection a crash cut short: done again, whole
            if not os.path.samefile(log_file, dest):
                shutil.copyfile(log_file, dest)
        except OSError:
            shutil.copyfile(log_file, dest)
        moved.append(dest)
    return Collected(moved, budget.exceeded)


def _move_matches(
    dir_fd: int,
    rel: tuple[str, ...],
    globs: list[tuple[str, ...]],
    outputs: Path,
    budget: _Budget,
    moved: list[Path],
) -> None:
    """Move the matching regular files below ``dir_fd`` (closed here) to ``outputs``.

    The job's processes may outlive it by a moment, and the server may be root: every step goes
    through directory fds opened with O_NOFOLLOW and renames relative to them, so no symlink
    can redirect the server outside the work directory; a name swapped for something else than
    a regular file after the check is thrown away.
    """
    try:
        with os.scandir(dir_fd) as scan:
            entries = list(scan)
        for entry in entries:
            path = (*rel, entry.name)
            try:
                if entry.is_dir(follow_symlinks=False) and len(path) < _MAX_DEPTH:
                    child = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
                    _move_matches(child, path, globs, outputs, budget, moved)
                elif (
                    entry.is_file(follow_symlinks=False)
                    and path[0] not in _LOGS  # those names are the server's logs
                    and any(_glob_match(path, glob) for glob in globs)
                ):
                    _spend(budget, entry.stat(follow_symlinks=False).st_size)
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


def _spend(budget: _Budget, size: int) -> None:
    """Count one more file of ``size`` bytes, or stop the walk with the bound it passes."""
    if budget.files >= budget.max_files:
        budget.exceeded = f"Output limit exceeded: more than {budget.max_files} files"
    elif budget.bytes + size > budget.max_bytes:
        budget.exceeded = f"Output limit exceeded: more than {_bytes(budget.max_bytes)}"
    if budget.exceeded:
        raise _Stop
    budget.files += 1
    budget.bytes += size


def _bytes(count: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift and count % (1 << shift) == 0:
            return f"{count >> shift} {unit}"
    return f"{count} bytes"


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
    """Copy outputs/ to ``dest``; the files copied (none when ``dest`` is outputs/ itself:
    listing them there on every request would walk every file each time)."""
    if not outputs.is_dir() or dest.resolve() == outputs.resolve():
        return []
    shutil.copytree(outputs, dest, symlinks=True, dirs_exist_ok=True)
    return sorted(p for p in dest.rglob("*") if p.is_file() and not p.is_symlink())
