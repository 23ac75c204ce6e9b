"""Job directories made ahead: each slot keeps the next job's, made while the last one runs.

A job's directory is five new files (itself, work/, outputs/ and the two logs). Where the
filesystem is slow to allocate them (ext4 without a journal searches past every inode freed
in the last minutes) that is a millisecond or more on each job's start. A slot's spare is
made while its last job runs and renamed into place when the next one starts: one rename.
Each process keeps its spares in a directory of its own below the jobs directory's
``.spares/`` (no job's uuid starts with a dot), locked (flock) while the process lives:
workers sharing the jobs directory, in containers whose process ids may coincide, never
touch each other's, and a killed process's are removed by the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import shutil
import uuid
from pathlib import Path

from concordia.backends import sandbox
from concordia.backends.spread import spread_subdirectories

log = logging.getLogger(__name__)

SPARES = ".spares"
#: The logs a job's process writes, in its directory.
LOGS = ("std.out", "std.err")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


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


class Spares:
    """This process's spare job directories, in a directory of its own that it holds locked
    until ``close`` (or its end). Made with a jobs directory, after removing the spares that
    ended processes left there."""

    def __init__(self, jobs_dir: Path) -> None:
        root = jobs_dir / SPARES
        root.mkdir(mode=0o700, exist_ok=True)
        spread_subdirectories(root)
        if removed := remove_left(root):
            log.info("removed the spare job directories of %d ended runs", len(removed))
        self.dir = root / uuid.uuid4().hex
        self.dir.mkdir(mode=0o700)
        self._lock: int | None = os.open(self.dir, _DIR_FLAGS)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._serial = itertools.count()

    def make(self) -> Path | None:
        """A new spare, or None where it cannot be made (each job then makes its own
        directory, and says why it cannot)."""
        path = self.dir / str(next(self._serial))
        try:
            make_job_dir(path)
        except OSError as exc:
            log.debug("no spare job directory: %s", exc)
            shutil.rmtree(path, ignore_errors=True)
            return None
        return path

    def close(self) -> None:
        """Remove the spares not taken, and let go of the directory."""
        if self._lock is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            os.close(self._lock)
            self._lock = None


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


def remove_left(root: Path) -> list[Path]:
    """Remove the directories of spares whose process has ended: those whose lock can be
    taken. Another live process's stay. The directories removed."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            try:
                fd = os.open(entry.path, _DIR_FLAGS)
            except OSError:  # not a directory: nothing of ours
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its process lives
                os.close(fd)
                continue
            try:
                shutil.rmtree(entry.path, ignore_errors=True)
            finally:
                os.close(fd)
            removed.append(Path(entry.path))
    return removed
