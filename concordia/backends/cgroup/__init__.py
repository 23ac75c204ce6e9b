"""Per-slot cgroups of the local backend: a job's memory and process bounds, and the CPU time
of all its processes; cgroup v2 where /sys/fs/cgroup is one, else v1's controllers."""

from __future__ import annotations

from pathlib import Path

from concordia.backends.cgroup.base import Counters, SlotCgroup, rmdir_if_empty
from concordia.backends.cgroup.v1 import SlotCgroupV1
from concordia.backends.cgroup.v2 import MOUNT, SlotCgroupV2, is_cgroup2

__all__ = ["Counters", "SlotCgroup", "rmdir_if_empty", "slot_cgroup"]


def slot_cgroup(mount: Path = MOUNT) -> SlotCgroup:
    """A new slot's cgroup, of the version mounted at ``mount``; without a controller (its
    ``bounds`` empty) where none can be made."""
    return SlotCgroupV2(mount) if is_cgroup2(mount) else SlotCgroupV1()
