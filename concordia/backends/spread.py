"""The jobs directory marked as holding unrelated hierarchies (`chattr +T`), where the
filesystem takes that hint."""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

# From linux/fs.h. The kernel reads and writes these flags as an int, whatever the ioctl's
# declared size.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


def spread_subdirectories(path: Path) -> bool:
    """Mark the directory ``path`` as the top of unrelated hierarchies, as /home is meant to
    be; whether it now is. ext4 then gives each new subdirectory a block group of its own
    choosing instead of the parent's: each job's files no longer share one group with every
    other job's, where (on an ext4 without a journal) every inode freed in the last minutes
    is searched past each time a file is created. It is a hint: where the filesystem has no
    such flag (tmpfs, XFS, btrfs) nothing changes (False)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        flags = _flags(fd)
        if flags & FS_TOPDIR_FL:
            return True
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | FS_TOPDIR_FL))
        return bool(_flags(fd) & FS_TOPDIR_FL)
    except OSError:  # no inode flags here, or not this one
        return False
    finally:
        os.close(fd)


def _flags(fd: int) -> int:
    flags: int = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0)))[0]
    return flags
