"""A slot's cgroup v1 children (memory, pids, cpuacct), holding its fork server."""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

from concordia.backends.cgroup.base import Counters, SlotCgroup, slot_name

log = logging.getLogger(__name__)
#: The controllers a slot uses, each left out where it cannot be made.
CONTROLLERS = ("memory", "pids", "cpuacct")


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


class SlotCgroupV1(SlotCgroup):
    """The cgroup v1 children of one slot, one per controller. The slot's jobs are forked by
    its fork server, moved in once (``adopt``): a process begins in its parent's cgroups, so no
    job is moved into them (each move waits for the kernel's RCU grace period, once per
    hierarchy).
    """

    version = 1

    def __init__(self) -> None:
        super().__init__()
        name = slot_name()
        for controller in CONTROLLERS:
            root = _cgroup_root(controller)
            if root is None:
                continue
            path = root / name
            try:
                path.mkdir()
            except OSError as exc:
                log.log(logging.WARNING if controller != "cpuacct" else logging.DEBUG,
                        "no %s cgroup: %s", controller, exc)  # fmt: skip
                continue
            self.dirs[controller] = path

    def _write_memory(self, limit: int) -> None:
        value = str(limit or -1)
        files = ["memory.limit_in_bytes"]
        if (self.dirs["memory"] / "memory.memsw.limit_in_bytes").exists():
            # RAM + swap may never be below RAM alone: raise it first, lower it last.
            raising = limit == 0 or limit > self._written.get("memory", 0) > 0
            files = [*files, "memory.memsw.limit_in_bytes"]
            files = files[::-1] if raising else files
        for file in files:
            (self.dirs["memory"] / file).write_text(value)

    def counters(self) -> Counters:
        cpu, ooms, refused = None, None, None
        if "cpuacct" in self.dirs:
            usage = self.value(self.dirs["cpuacct"] / "cpuacct.usage")
            cpu = None if usage is None else usage / 1e9
        if "memory" in self.dirs:
            memory = self.dirs["memory"]
            ooms = self.value(memory / "memory.oom_control", "oom_kill")
            if ooms is None:  # kernels before 4.13 count no OOM kill: the times the limit was hit
                ooms = self.value(memory / "memory.failcnt")
        if "pids" in self.dirs:
            refused = self.value(self.dirs["pids"] / "pids.events", "max")
        return Counters(cpu, ooms or 0, refused or 0)
