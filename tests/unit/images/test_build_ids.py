"""The build steps' ids: the rootfs's ownership shift keeps owners, set-id bits and
capabilities; the way to the rootfs is opened to the steps' group only where it is ours."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from concordia.images.stepids import STEP_ID_BASE, let_steps_through, shift_ids

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root shifts owners")

#: cap_net_raw+ep, version 2 (as setcap writes it on the host).
CAPS = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def owners(root: Path) -> dict[str, tuple[int, int, int]]:
    found = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_uid, st.st_gid, st.st_mode)
    return found


def test_a_round_trip_keeps_every_owner_and_set_id_bit(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "var" / "mail").mkdir(parents=True)
    os.chown(root / "var" / "mail", 0, 8)  # root:mail
    su = root / "usr" / "bin" / "su"
    su.write_text("#!/bin/sh\n")
    su.chmod(0o4755)
    ping = root / "usr" / "bin" / "ping"
    ping.write_text("#!/bin/sh\n")
    ping.chmod(0o755)
    os.setxattr(ping, "security.capability", CAPS)
    os.link(ping, root / "usr" / "bin" / "ping-again")  # shifted once, not twice
    (root / "home").mkdir()
    os.chown(root / "home", 1000, 1000)
    (root / "usr" / "bin" / "sh").symlink_to("busybox")
    before = owners(root)

    shift_ids(root, STEP_ID_BASE)
    shifted = owners(root)
    assert shifted["."][:2] == (STEP_ID_BASE, STEP_ID_BASE)
    assert shifted["var/mail"][:2] == (STEP_ID_BASE, STEP_ID_BASE + 8)
    assert shifted["home"][:2] == (STEP_ID_BASE + 1000, STEP_ID_BASE + 1000)
    assert shifted["usr/bin/ping-again"][:2] == (STEP_ID_BASE, STEP_ID_BASE)
    assert shifted["usr/bin/sh"][:2] == (STEP_ID_BASE, STEP_ID_BASE)  # the link, not its target
    assert shifted["usr/bin/su"][2] == before["usr/bin/su"][2]  # chown cleared set-uid: put back
    assert os.getxattr(ping, "security.capability") == CAPS

    shift_ids(root, -STEP_ID_BASE)
    assert owners(root) == before
    assert os.getxattr(ping, "security.capability") == CAPS


def test_the_way_to_the_rootfs_opens_to_the_steps_once_and_only_where_it_is_ours(
    tmp_path: Path,
) -> None:
    tmp_path.chmod(0o711)
    store = tmp_path / "images" / ".tmp" / "work"
    store.mkdir(parents=True, mode=0o700)
    (tmp_path / "images").chmod(0o711)
    (tmp_path / "images" / ".tmp").chmod(0o700)
    for _ in range(2):  # a second build in the same store passes what the first opened
        let_steps_through(store)
    for path in (store, store.parent):
        st = path.stat()
        assert (st.st_gid, st.st_mode & 0o777) == (STEP_ID_BASE, 0o710)
    closed = tmp_path / "operators"
    (closed / "work").mkdir(parents=True)
    closed.chmod(0o750)  # another group's: not ours to open
    with pytest.raises(PermissionError, match=f"chmod o\\+x {closed}$"):
        let_steps_through(closed / "work")
