"""What a local slot's cgroup offers the backend, whichever cgroup version gives it."""

from __future__ import annotations

import abc
import contextlib
import itertools
import logging
import os
from pathlib import Path
from typing import ClassVar, NamedTuple

from concordia.core.limits import JobLimits

log = logging.getLogger(__name__)
_serial = itertools.count()
#: Bytes read of a counter file: each is a few short lines.
_MAX_READ = 4096


class Counters(NamedTuple):
    """A cgroup's cumulative figures: CPU seconds (if known), OOM kills, forks refused at the
    process bound."""

    cpu: float | None = None
    ooms: int = 0
    refused: int = 0


class SlotCgroup(abc.ABC):
    """The cgroup of one slot: memory (RAM + swap, tmpfs pages included; the kernel OOM-kills
    a job that exceeds it), processes (fork fails past the bound) and the CPU time of every
    process of the job, the sandbox's included (bwrap hides them from wait4).

    A slot runs one job at a time: a job's figures are the differences of the counters before
    and after it, and its bounds are written before it starts (only when they change). One
    cgroup per slot, not per job, saves a mkdir and a busy rmdir (bwrap's processes outlive
    the job by a moment) per job. A controller missing or not writable is left out: the job
    runs without that bound (rlimits instead, where there are).
    """

    #: The cgroup version, for the summary of what bounds a job.
    version: ClassVar[int]

    def __init__(self) -> None:
        #: The slot's directory of each controller it has (on v2 the same one for all).
        self.dirs: dict[str, Path] = {}
        self._written: dict[str, int] = {}
        #: The slot's fork server, in the slot's cgroups but not one of the job's processes.
        self.resident: int | None = None
        #: The counter files read so far, each kept open: a look at a job's counters is three
        #: preads, not three opens (each far dearer than its read).
        self._open: dict[Path, int] = {}

    @property
    def procs(self) -> list[Path]:
        """The slot's cgroup.procs files, one per hierarchy."""
        return list(dict.fromkeys(path / "cgroup.procs" for path in self.dirs.values()))

    @property
    def bounds(self) -> list[str]:
        """The controllers this slot has, as the kernel names them."""
        return list(self.dirs)

    @property
    def memory_limited(self) -> bool:
        return "memory" in self.dirs and bool(self._written.get("memory"))

    def adopt(self, pid: int) -> None:
        """Take in the slot's fork server (its jobs start in the slot as its children); a
        hierarchy it cannot join is dropped (the job runs without those bounds). It is not
        the job's: left out of pids(), one more process in the pids bound."""
        for path in list(dict.fromkeys(self.dirs.values())):
            try:
                self._write(path / "cgroup.procs", str(pid))
            except OSError as exc:
                log.warning("cannot join the slot's cgroup %s: %s", path, exc)
                self.dirs = {c: p for c, p in self.dirs.items() if p != path}
                rmdir_if_empty(path)
        self.resident = pid

    def configure(self, limits: JobLimits) -> None:
        """Write a job's bounds before it starts, those that changed since the last job's; a
        bound that cannot be written is dropped (the job runs without it, as where the
        controller is missing)."""
        if "memory" in self.dirs:
            self._set_memory((limits.memory_mb or 0) * 1024 * 1024)
        processes = limits.processes or 0
        if "pids" in self.dirs and self._written.get("pids") != processes:
            # One more than the job's: the slot's fork server is in it too.
            bound = str(processes + 1) if processes else "max"
            try:
                self._write(self.dirs["pids"] / "pids.max", bound)
            except OSError as exc:
                log.warning("cannot write pids.max: %s", exc)
                self._written.pop("pids", None)
                return
            self._written["pids"] = processes

    def _write(self, path: Path, value: str) -> None:
        """Write one value to a cgroup file (one write: the kernel takes it as one command)."""
        path.write_text(value)

    @abc.abstractmethod
    def counters(self) -> Counters:
        """CPU seconds used in the slot (if known), OOM kills in it, forks refused in it."""

    def _set_memory(self, limit: int) -> None:
        """Bound the slot's memory to ``limit`` bytes (0: none) if that changed; left unbounded
        if it cannot be."""
        if self._written.get("memory") == limit:
            return
        try:
            self._write_memory(limit)
        except OSError as exc:
            log.warning("cannot set a job's memory limit: %s", exc)
            self._written.pop("memory", None)
            return
        self._written["memory"] = limit

    @abc.abstractmethod
    def _write_memory(self, limit: int) -> None:
        """Write the memory bound (``_written`` still holds the one before)."""

    def pids(self) -> set[int]:
        """The job's processes in the slot's cgroups: the fork server's left out."""
        found: set[int] = set()
        for procs in self.procs:
            with contextlib.suppress(OSError, ValueError):
                found.update(map(int, procs.read_text().split()))
        return found - {self.resident}

    def value(self, path: Path, key: str | None = None) -> int | None:
        """The number a cgroup file holds, or with ``key`` its value in that flat-keyed file
        ("key value" lines); None if it is not there."""
        with contextlib.suppress(OSError, ValueError):
            text = self._read(path)
            if key is None:
                return int(text)
            for line in text.splitlines():
                name, _, number = line.partition(" ")
                if name == key:
                    return int(number)
        return None

    def _read(self, path: Path) -> str:
        fd = self._open.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            if self._open.setdefault(path, fd) != fd:  # another thread opened it meanwhile
                os.close(fd)
                fd = self._open[path]
        return os.pread(fd, _MAX_READ, 0).decode()

    def remove(self) -> bool:
        """Remove the cgroups; False if some are still busy (try again a moment later)."""
        while self._open:  # each taken out before it is closed: never closed twice
            os.close(self._open.popitem()[1])
        for controller, path in list(self.dirs.items()):
            if rmdir_if_empty(path):
                del self.dirs[controller]
        return not self.dirs


def slot_name() -> str:
    """A slot cgroup's directory name, unique among this host's servers."""
    return f"concordia-{os.getpid()}-{next(_serial)}"


def rmdir_if_empty(path: Path) -> bool:
    """Remove an (empty) cgroup directory; False while it is busy."""
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True
