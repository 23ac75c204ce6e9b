"""A slot's cgroup v2 directory, made beside a leaf that holds the server's own processes."""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

from concordia.backends.cgroup.base import Counters, SlotCgroup, slot_name

log = logging.getLogger(__name__)
MOUNT = Path("/sys/fs/cgroup")
#: The controllers a slot uses, those the server's cgroup offers.
CONTROLLERS = ("memory", "pids", "cpu")
#: Where the server's processes go: a cgroup may enable controllers for its children only
#: while it holds no process itself (v2's no-internal-processes rule).
SERVER_LEAF = "concordia-server"


def is_cgroup2(mount: Path = MOUNT) -> bool:
    """Whether ``mount`` is a cgroup v2 hierarchy (v1's and a hybrid's tmpfs have no
    cgroup.controllers)."""
    return (mount / "cgroup.controllers").is_file()


def own_cgroup() -> str | None:
    """The path of the server's cgroup v2 (its /proc/self/cgroup line "0::/path")."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    return None


def write(path: Path, value: str) -> None:
    """Write one value to a cgroup file (one write: the kernel takes it as one command)."""
    path.write_text(value)


@functools.cache
def slots_parent(mount: Path, own: str) -> tuple[Path, tuple[str, ...]] | None:
    """The server's cgroup made, once per process, the parent of its slots: its processes
    moved to a leaf, the CONTROLLERS it offers enabled for its children; with those. None
    (logged) where it cannot be made so: not delegated to the server's user, read-only."""
    server = mount / own.lstrip("/")
    if server.name == SERVER_LEAF:  # moved there by another process of the service: its parent
        server = server.parent
    try:
        offered = (server / "cgroup.controllers").read_text().split()
        controllers = tuple(name for name in CONTROLLERS if name in offered)
        if controllers:
            _move_to_leaf(server)
            write(server / "cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))
    except OSError as exc:
        log.warning("no cgroup v2 for local jobs in %s: %s", server, exc)
        return None
    return server, controllers


def _move_to_leaf(server: Path) -> None:
    """Move the processes of the server's cgroup (all of them: the rule counts every one; its
    children's stay) to SERVER_LEAF. The host's root cgroup (no cgroup.type) is exempt from
    the rule, and holds the kernel's threads, which never move."""
    if not (server / "cgroup.type").exists():
        return
    pids = (server / "cgroup.procs").read_text().split()
    if not pids:
        return
    leaf = server / SERVER_LEAF
    leaf.mkdir(exist_ok=True)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            write(leaf / "cgroup.procs", pid)


class SlotCgroupV2(SlotCgroup):
    """The cgroup v2 directory of one slot, a child of the server's cgroup: one directory for
    every controller, the slot's fork server moved in once (``adopt``)."""

    version = 2

    def __init__(self, mount: Path = MOUNT, own: str | None = None) -> None:
        """``mount``, ``own``: the hierarchy and the server's path in it (tests give a fake
        tree; else the server's own, from /proc/self/cgroup)."""
        super().__init__()
        own = own_cgroup() if own is None else own
        parent = None if own is None else slots_parent(mount, own)
        if parent is None:
            return
        server, controllers = parent
        path = server / slot_name()
        try:
            path.mkdir()
        except OSError as exc:
            log.warning("no cgroup v2 for a local slot: %s", exc)
            return
        # cpu.stat's usage_usec is there whether the cpu controller is enabled or not.
        self.dirs = dict.fromkeys((*controllers, "cpu"), path)

    def _write(self, path: Path, value: str) -> None:
        write(path, value)

    def _write_memory(self, limit: int) -> None:
        path = self.dirs["memory"]
        write(path / "memory.max", str(limit) if limit else "max")
        if (path / "memory.swap.max").exists():  # absent without swap accounting
            # RAM and swap together within the bound, as v1's memsw: no swap at all.
            write(path / "memory.swap.max", "0" if limit else "max")

    def counters(self) -> Counters:
        if not self.dirs:
            return Counters()
        path = next(iter(self.dirs.values()))
        usec = self.value(path / "cpu.stat", "usage_usec")
        return Counters(
            None if usec is None else usec / 1e6,
            self.value(path / "memory.events", "oom_kill") or 0,
            self.value(path / "pids.events", "max") or 0,
        )
