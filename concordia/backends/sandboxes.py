"""DIRAC sandboxes: reproducible input archives (content-addressed) and safe output extraction."""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
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
    path inside ``dest``, at most ``max_bytes`` in all. Refuses the whole archive otherwise
    (nothing is written before every member is checked)."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            _check(members, max_bytes)
            dest.mkdir(parents=True, exist_ok=True)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchive(f"the output sandbox cannot be read: {exc}") from None
    return sorted(dest / m.name for m in members if m.isfile())


def _check(members: list[tarfile.TarInfo], max_bytes: int) -> None:
    if len(members) > MAX_MEMBERS:
        raise UnsafeArchive(f"the output sandbox has over {MAX_MEMBERS} entries")
    total = 0
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or not member.name.strip("./"):
            raise UnsafeArchive(f"the output sandbox names a path outside it: {member.name!r}")
        if not (member.isfile() or member.isdir()):
            kind = "link" if member.issym() or member.islnk() else "special file"
            raise UnsafeArchive(f"the output sandbox holds a {kind}: {member.name!r}")
        if member.mode & (stat.S_ISUID | stat.S_ISGID):
            raise UnsafeArchive(f"the output sandbox holds a setuid file: {member.name!r}")
        total += member.size
        if total > max_bytes:
            raise UnsafeArchive(f"the output sandbox is larger than {max_bytes} bytes")
