"""The ids of a build step's user namespace: root in the image, an unprivileged range outside."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import struct
from pathlib import Path

#: A server running as root runs build steps in a user namespace mapping uids and gids
#: 0..STEP_IDS-1 to STEP_ID_BASE.. outside (a range no host user has): the rootfs is shifted
#: into that range for the steps, so that apt, dpkg and pip run as root in the image while
#: owning nothing of the host's and holding no capability outside the namespace.
STEP_ID_BASE = 100000
STEP_IDS = 65536


def step_privileges() -> list[str]:
    """setpriv from root to the namespace's root outside: no capability, no group of ours."""
    ids = [f"--reuid={STEP_ID_BASE}", f"--regid={STEP_ID_BASE}", "--clear-groups"]
    drop = ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return [shutil.which("setpriv") or "setpriv", *ids, *drop]


def let_steps_through(directory: Path) -> None:
    """Let the steps' bwrap (STEP_ID_BASE outside) reach the rootfs: search permission for its
    group only on each private directory of ours on the way (the store's, 0700); every other
    directory must be open to all (o+x), as jobs need it too, else PermissionError."""
    for path in [directory, *directory.parents]:
        st = path.stat()
        if st.st_mode & 0o001 or (st.st_gid == STEP_ID_BASE and st.st_mode & 0o010):
            continue  # open to all, or to the steps already (an earlier build)
        if st.st_mode & 0o070 or st.st_uid != os.geteuid():  # another's: not ours to open
            raise PermissionError(
                f"the build steps (uid {STEP_ID_BASE}) cannot pass {path}: chmod o+x {path}"
            )
        os.chown(path, -1, STEP_ID_BASE)
        path.chmod(stat.S_IMODE(st.st_mode) | 0o010)


def map_ids(pid: int) -> None:
    """Map 0..STEP_IDS-1 of the steps' user namespace to STEP_ID_BASE.. outside (as root: an
    unprivileged bwrap may only map its own uid)."""
    for kind in ("uid_map", "gid_map"):
        Path(f"/proc/{pid}/{kind}").write_text(f"0 {STEP_ID_BASE} {STEP_IDS}\n")


#: File capabilities (setcap) are cleared by chown: kept across the shift.
_CAPS = "security.capability"
_CAPS_V3 = 0x03000000


def shift_ids(rootfs: Path, delta: int) -> None:
    """Add ``delta`` to the owner and group of every file of ``rootfs`` in the range being
    left (0..STEP_IDS-1 going in, STEP_ID_BASE.. coming back); a hard-linked file once.

    chown clears set-user-ID/set-group-ID bits and file capabilities: both are put back.
    Capabilities set by a step (version 3, naming the namespace's root) come back as version
    2, for whoever is root where the image runs.
    """
    low = 0 if delta > 0 else STEP_ID_BASE
    seen: set[tuple[int, int]] = set()
    device = os.lstat(rootfs).st_dev

    def shift(path: str) -> None:
        st = os.lstat(path)
        if st.st_dev != device:  # something mounted in the image is not the image's
            return
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
        uid = st.st_uid + delta if low <= st.st_uid < low + STEP_IDS else st.st_uid
        gid = st.st_gid + delta if low <= st.st_gid < low + STEP_IDS else st.st_gid
        if (uid, gid) == (st.st_uid, st.st_gid):
            return
        caps = None
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            with contextlib.suppress(OSError):
                caps = os.getxattr(path, _CAPS, follow_symlinks=False)
        os.lchown(path, uid, gid)
        if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        if caps is not None:
            (magic,) = struct.unpack_from("<I", caps)
            if magic & 0xFF000000 == _CAPS_V3 and delta < 0:
                caps = struct.pack("<I", magic & ~0xFF000000 | 0x02000000) + caps[4:20]
            os.setxattr(path, _CAPS, caps, follow_symlinks=False)

    shift(str(rootfs))
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == device]
        for name in dirnames + filenames:
            shift(os.path.join(dirpath, name))
