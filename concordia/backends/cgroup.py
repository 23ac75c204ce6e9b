"""Per-slot cgroup v1 children: a job's memory limit and the CPU time bwrap hides from wait4."""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)
_serial = itertools.count()


@functools.cache
def _cgroup_root(controller: str) -> Path | None:
    """The server's own cgroup v1 directory of a controller, if mounted where expected."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                root = Path("/sys/fs/cgroup", controller, path.lstrip("/"))
                return root if root.is_dir() else None
    return None


class SlotCgroup:
    """With a memory limit, the cgroup v1 children of one slot, each left out where it cannot
    be made: memory (RAM + swap; the kernel OOM-kills a job that exceeds it) and cpuacct (the
    job's CPU time, including the sandbox's processes that wait4 on bwrap cannot see).

    A slot runs one job at a time: a job's figures are the differences of the counters before
    and after it. One cgroup per slot, not per job, saves a mkdir and a busy rmdir (bwrap's
    processes outlive the job by a moment) per job. Without a memory limit there is none:
    joining a cgroup costs a job more than all the rest of its launch (measured: +15%).
    """

    def __init__(self, memory_mb: int = 0) -> None:
        self.dirs: dict[str, Path] = {}
        name = f"concordia-{os.getpid()}-{next(_serial)}"
        for controller in ("memory", "cpuacct") if memory_mb else ():
            root = _cgroup_root(controller)
            if root is None:
                continue
            path = self.dirs[controller] = root / name
            try:
                path.mkdir()
                if controller == "memory":
                    for limit in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
                        if limit == "memory.limit_in_bytes" or (path / limit).exists():
                            (path / limit).write_text(str(memory_mb * 1024 * 1024))
            except OSError as exc:
                log.log(logging.WARNING if controller == "memory" else logging.DEBUG,
                        "no %s cgroup: %s", controller, exc)  # fmt: skip
                del self.dirs[controller]
                rmdir_if_empty(path)

    @property
    def procs(self) -> list[Path]:
        return [path / "cgroup.procs" for path in self.dirs.values()]

    @property
    def memory_limited(self) -> bool:
        return "memory" in self.dirs

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs:
            with contextlib.suppress(OSError, ValueError):
                found.update(map(int, procs.read_text().split()))
        return found

    def counters(self) -> tuple[float | None, int]:
        """(CPU seconds used in the slot, if known; OOM kills in the slot)."""
        cpu, ooms = None, 0
        with contextlib.suppress(KeyError, OSError, ValueError):
            cpu = int((self.dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
        with contextlib.suppress(KeyError, OSError, ValueError):
            control = (self.dirs["memory"] / "memory.oom_control").read_text()
            found = re.search(r"^oom_kill (\d+)", control, re.MULTILINE)
            ooms = int(found[1] if found else (self.dirs["memory"] / "memory.failcnt").read_text())
        return cpu, ooms

    def remove(self) -> bool:
        """Remove the cgroups; False if some are still busy (try again a moment later)."""
        for controller, path in list(self.dirs.items()):
            if rmdir_if_empty(path):
                del self.dirs[controller]
        return not self.dirs


def rmdir_if_empty(path: Path) -> bool:
    """Remove an (empty) cgroup directory; False while it is busy."""
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True
