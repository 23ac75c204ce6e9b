"""Job directories made ahead: each slot keeps the next job's, made while the last one runs.

A job's directory is five new files (itself, work/, outputs/ and the two logs). Where the
filesystem is slow to allocate them (ext4 without a journal searches past every inode freed
in the last minutes) that is a millisecond or more on each job's start. A slot's spare is
made while its last job runs and renamed into place when the next one starts: one rename.
Spares live in the jobs directory's ``.spares/`` (no job's uuid starts with a dot), each
named after the process that made it, so that a spare a killed process left is removed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
from pathlib import Path

from concordia.backends import sandbox
from concordia.backends.spread import spread_subdirectories

log = logging.getLogger(__name__)

SPARES = ".spares"
#: The logs a job's process writes, in its directory.
LOGS = ("std.out", "std.err")
_serial = itertools.count()


def spares_dir(jobs_dir: Path) -> Path:
    """The jobs directory's spares, made (0700: no job's user looks in) and spread."""
    path = jobs_dir / SPARES
    path.mkdir(mode=0o700, exist_ok=True)
    spread_subdirectories(path)
    return path


def new_name(spares: Path) -> Path:
    """A spare's path, unique among the processes sharing the jobs directory."""
    return spares / f"{os.getpid()}-{next(_serial)}"


def make_job_dir(path: Path) -> None:
    """A job's directory as a job finds it: 0711 (the sandbox's uid passes through to work/,
    whatever the server's umask), work/ the sandbox's, outputs/, the two logs (0600)."""
    path.mkdir(mode=0o711)
    path.chmod(0o711)
    (path / "work").mkdir(mode=0o700)
    sandbox.hand_over(path / "work")
    (path / "outputs").mkdir(mode=0o700)
    for name in LOGS:
        os.close(os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def make_spare(spares: Path) -> Path | None:
    """A new spare, or None where it cannot be made (each job then makes its own directory,
    and says why it cannot)."""
    path = new_name(spares)
    try:
        make_job_dir(path)
    except OSError as exc:
        log.debug("no spare job directory: %s", exc)
        shutil.rmtree(path, ignore_errors=True)
        return None
    return path


def take(spare: Path | None, job_dir: Path) -> bool:
    """Rename the spare to ``job_dir``; False if there is none, or ``job_dir`` already holds
    something (a rescheduled job's earlier run: the spare stays)."""
    if spare is None:
        return False
    try:
        os.rename(spare, job_dir)
    except OSError:
        return False
    return True


def remove_left(spares: Path) -> list[Path]:
    """Remove the spares of processes that have ended (a killed server's); those of live
    processes (another worker's) stay. The spares removed."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(spares):
            pid, _, _ = entry.name.partition("-")
            if pid.isdigit() and _alive(int(pid)):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
