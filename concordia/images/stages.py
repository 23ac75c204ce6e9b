"""The build cache of image stages (a recipe's base system, then its pip layer), by content."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from concordia.images.builders import BuildCancelled, BuildError, run_logged
from concordia.images.layers import stage_layout

STAGE_ROOTFS = "rootfs"
#: The stage's OCI layout (its layers so far), when a build that wanted OCI stored it.
STAGE_OCI = "oci"
_META = "stage.json"
_LOCK = "lock"
#: Seconds a copy in or out of the cache may take.
_COPY_TIMEOUT = 1800


@dataclass(frozen=True)
class CacheSummary:
    """What the cache holds now, for the operator."""

    stages: int
    size: int
    limit: int


@dataclass
class HeldStage:
    """A cached stage this build uses: a shared lock keeps eviction away until released."""

    key: str
    path: Path
    lock: IO[bytes]

    @property
    def rootfs(self) -> Path:
        return self.path / STAGE_ROOTFS

    @property
    def oci(self) -> Path | None:
        layout = self.path / STAGE_OCI
        return layout if layout.is_dir() else None


class StageCache:
    """``root/KEY/`` (rootfs, optional OCI layout, stage.json) exists only once complete:
    a stage is written in ``root/.tmp/`` and renamed in. Never changed once in: a build copies
    a stage out (copy-on-write where the file system can) and works on its copy. At most
    ``limit`` bytes; the least recently used go first, never one a build holds."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.limit = limit

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def prepare(self) -> None:
        for path in (self.root, self.root / ".tmp", self.root / ".trash"):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def clear_leftovers(self) -> None:
        """Half-written stages of a process that died: only where no build runs."""
        for name in (".tmp", ".trash"):
            shutil.rmtree(self.root / name, ignore_errors=True)
            (self.root / name).mkdir(mode=0o700, exist_ok=True)

    def hold(self, key: str) -> HeldStage | None:
        """The stage of ``key``, locked against eviction and marked as used now; None if
        it is not in the cache (or was evicted as we looked)."""
        path = self.root / key
        try:
            lock = open(path / _LOCK, "rb")  # held until the build ends
        except OSError:
            return None
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:  # still the stage we locked: not evicted, nor replaced, meanwhile
            same = os.fstat(lock.fileno()).st_ino == os.stat(path / _LOCK).st_ino
            if same and (path / _META).is_file():
                os.utime(path / _META)
                return HeldStage(key, path, lock)
        except OSError:
            pass
        lock.close()
        return None

    def store(
        self, key: str, fill: Callable[[Path], None], replace: bool = False
    ) -> HeldStage | None:
        """Add a stage: ``fill`` writes its content into a fresh directory; held, once in.
        If the key is there already, the stage there is kept (``replace``: unless in use)."""
        tmp = self.root / ".tmp" / f"{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(mode=0o700)
        try:
            fill(tmp)
            (tmp / _META).write_text(json.dumps({"key": key, "size": _disk_usage(tmp)}))
            lock = open(tmp / _LOCK, "xb")  # held until the build ends
            fcntl.flock(lock, fcntl.LOCK_SH)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        target = self.root / key
        if replace and target.exists():
            self._discard(target)  # not if a build holds it: then ours goes instead
        try:
            os.rename(tmp, target)
        except OSError:  # another build stored it first
            lock.close()
            shutil.rmtree(tmp, ignore_errors=True)
            return self.hold(key)
        return HeldStage(key, target, lock)

    def evict(self) -> list[str]:
        """Remove the least recently used stages until the cache fits its limit; the keys."""
        entries = []
        for path in self.root.iterdir():
            if path.name.startswith("."):
                continue
            try:
                meta = path / _META
                entries.append(
                    (meta.stat().st_mtime, int(json.loads(meta.read_text())["size"]), path)
                )
            except (OSError, ValueError, KeyError):
                continue
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, path in sorted(entries):
            if total <= self.limit:
                break
            if self._discard(path):
                total -= size
                removed.append(path.name)
        return removed

    def summary(self) -> CacheSummary:
        count = size = 0
        with contextlib.suppress(OSError):
            for path in self.root.iterdir():
                with contextlib.suppress(OSError, ValueError, KeyError):
                    size += int(json.loads((path / _META).read_text())["size"])
                    count += 1
        return CacheSummary(stages=count, size=size, limit=self.limit)

    def _discard(self, path: Path) -> bool:
        """Remove a stage no build holds (an exclusive lock, not waited for); whether it was."""
        try:
            lock = open(path / _LOCK, "rb")
        except OSError:
            return False
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
            trash = self.root / ".trash" / f"{path.name}-{uuid.uuid4().hex[:8]}"
            os.rename(path, trash)  # gone at once; the slow removal after
        shutil.rmtree(trash, ignore_errors=True)
        return True


@dataclass
class BuildStages:
    """One build's use of the cache: the stages it holds (released at its end), and the top
    one its rootfs started from (the lower layers of its OCI form)."""

    cache: StageCache | None
    log: IO[str]
    #: False for a rebuild asked for to pick up newer packages: stages are made afresh.
    reuse: bool = True
    #: The OCI form is wanted: each stage stored keeps its layout too.
    oci: bool = False
    held: list[HeldStage] = field(default_factory=list)

    @property
    def top(self) -> HeldStage | None:
        return self.held[-1] if self.held else None

    def stage(self, name: str, key: str, rootfs: Path, make: Callable[[], None]) -> None:
        """Give ``rootfs`` the stage's content: a copy of the cached stage, or made by
        ``make`` then stored (a copy)."""
        cache = self.cache
        if cache is None or not cache.enabled:
            make()
            return
        held = cache.hold(key) if self.reuse else None
        if held is not None:
            self._note(f"stage {name}: cached ({key[:12]}), copied out")
            try:
                copy_tree(held.rootfs, rootfs, self.log)
            except BuildCancelled:
                held.lock.close()
                raise
            except BuildError:
                held.lock.close()
                shutil.rmtree(rootfs, ignore_errors=True)
                self._note(f"stage {name}: the cached copy failed; made again")
            else:
                self.held.append(held)
                return
        below = self.top
        make()
        try:
            stored = cache.store(key, lambda tmp: self._fill(tmp, rootfs, below), not self.reuse)
        except BuildCancelled:
            raise
        except (BuildError, OSError) as exc:  # the build goes on without it
            self._note(f"stage {name}: not cached ({exc})")
            return
        if stored is not None:
            self.held.append(stored)
            self._note(f"stage {name}: cached as {key[:12]}")
        for evicted in cache.evict():
            self._note(f"stage cache: evicted {evicted[:12]} (least recently used)")

    def _fill(self, tmp: Path, rootfs: Path, below: HeldStage | None) -> None:
        copy_tree(rootfs, tmp / STAGE_ROOTFS, self.log)
        if self.oci:
            lower = below.rootfs if below is not None else None
            base = below.oci if below is not None else None
            if lower is None or base is not None:
                stage_layout(tmp / STAGE_ROOTFS, tmp / STAGE_OCI, lower, base, self.log)

    def release(self) -> None:
        for held in self.held:
            held.lock.close()
        self.held.clear()

    def _note(self, line: str) -> None:
        self.log.write(f"{line}\n")
        self.log.flush()


def copy_tree(source: Path, target: Path, log: IO[str]) -> None:
    """A full copy of a root filesystem (owners, modes, times, links, xattrs), sharing
    blocks only where the file system copies on write: never a hard link, which a later
    step or dpkg could change in place under the cache."""
    run_logged(
        ["cp", "-a", "--reflink=auto", "--", str(source), str(target)], log, timeout=_COPY_TIMEOUT
    )


def _disk_usage(path: Path) -> int:
    """Bytes a tree takes on disk, each hard-linked file once."""
    total, seen = 0, set()
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total
