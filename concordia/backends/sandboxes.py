"""DIRAC sandboxes: reproducible input archives (content-addressed) and safe output extraction."""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: Entries an output sandbox may hold (a tar of millions of empty files is a bomb too).
MAX_MEMBERS = 10_000


class UnsafeArchive(ValueError):
    """An output sandbox Concordia refuses to unpack (traversal, links, devices, too big)."""


@dataclass(frozen=True)
class Sandbox:
    data: bytes
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)


def input_sandbox(files: dict[str, bytes], executables: frozenset[str] = frozenset()) -> Sandbox:
    """A tar.bz2 of ``files`` (archive name -> bytes) that is the same bytes for the same
    files: sorted, no times, no owners; so DiracX's content addressing finds it again."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name in executables else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    return Sandbox(data, hashlib.sha256(data).hexdigest())


def extract_outputs(archive: Path, dest: Path, max_bytes: int) -> list[Path]:
    """Unpack an output sandbox into ``dest``: regular files and directories only, every
    path inside ``dest``, at most ``max_bytes`` in all. Refuses the whole archive otherwise:
    nothing is written before every member is checked, and an archive that fails while it
    is unpacked leaves nothing behind (it is unpacked beside ``dest``, then moved in)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = _checked_members(tar, max_bytes)
            _check_fits(members, dest)
            staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
            try:
                tar.extractall(staging, members=members, filter="data")
                _move_into(staging, dest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchive(f"the output sandbox cannot be read: {exc}") from None
    return sorted(dest / m.name for m in members if m.isfile())


def _checked_members(tar: tarfile.TarFile, max_bytes: int) -> list[tarfile.TarInfo]:
    """Every member, each checked as soon as its header is read: a bomb (a member declaring
    terabytes, millions of members) is refused before its data is decompressed."""
    members: list[tarfile.TarInfo] = []
    total = 0
    while (member := tar.next()) is not None:
        members.append(member)
        if len(members) > MAX_MEMBERS:
            raise UnsafeArchive(f"the output sandbox has over {MAX_MEMBERS} entries")
        _check(member)
        total += member.size
        if total > max_bytes:
            raise UnsafeArchive(f"the output sandbox is larger than {max_bytes} bytes")
    return members


def _check(member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not member.name.strip("./"):
        raise UnsafeArchive(f"the output sandbox names a path outside it: {member.name!r}")
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise UnsafeArchive(f"the output sandbox holds a {kind}: {member.name!r}")
    if member.mode & (stat.S_ISUID | stat.S_ISGID):
        raise UnsafeArchive(f"the output sandbox holds a setuid file: {member.name!r}")


def _check_fits(members: list[tarfile.TarInfo], dest: Path) -> None:
    """What is already in ``dest`` (an earlier sandbox of the job) takes each member's place
    without a clash: a file over a file, a directory in a directory, never a link."""
    for member in members:
        target = dest.joinpath(*PurePosixPath(member.name).parts)
        for parent in [target, *target.parents]:
            if parent == dest.parent:
                break
            if not parent.exists() and not parent.is_symlink():
                continue
            is_dir = parent.is_dir() and not parent.is_symlink()
            wanted_dir = parent != target or member.isdir()
            if parent.is_symlink() or is_dir != wanted_dir or not (is_dir or parent.is_file()):
                raise UnsafeArchive(f"the output sandbox clashes with {member.name!r} there")


def _move_into(staging: Path, dest: Path) -> None:
    """Move what was unpacked in ``staging`` into ``dest`` (both on one file system)."""
    if not dest.exists():
        staging.rename(dest)
        return
    for path in sorted(staging.rglob("*")):
        target = dest / path.relative_to(staging)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            path.replace(target)
