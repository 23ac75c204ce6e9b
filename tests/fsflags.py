"""What a directory's filesystem is and which inode flags it carries, as the tools say."""

from __future__ import annotations

import subprocess
from pathlib import Path

#: How `stat -f` names the ext family (ext4 included).
EXT4 = "ext2/ext3"


def filesystem(path: Path) -> str:
    return subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def attributes(path: Path) -> str:
    """The flags lsattr shows of the directory itself, e.g. "-------A------e-------"."""
    out = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]
