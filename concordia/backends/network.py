"""A sandbox's own network namespace with outbound access only (bubblewrap + slirp4netns).

bubblewrap gives the sandbox an empty network namespace (``--unshare-net``); slirp4netns, a
user-mode TCP/IP stack running outside it, plugs a tap device into it and makes the
sandbox's connections from the host's side, as an ordinary unprivileged program would.

What stays out of reach:

- the host's loopback: ``--disable-host-loopback`` makes slirp refuse 10.0.2.2 (its alias
  for the host's 127.0.0.1), and 127.0.0.0/8 inside is the namespace's own loopback;
- link-local addresses (169.254.0.0/16: cloud metadata services): slirp would forward any
  destination, so a ``prohibit`` route for them is set in the namespace before the sandbox
  runs, and the sandbox must not hold CAP_NET_ADMIN (bwrap ``--cap-drop CAP_NET_ADMIN`` where
  it runs as root in its namespace; an unprivileged sandbox never has it);
- IPv6 altogether (::1, fe80::/10): slirp4netns runs without ``--enable-ipv6``.

DNS: slirp answers on 10.0.2.3 (forwarding to the host's resolver); give the sandbox a
resolv.conf naming it (RESOLV_CONF) rather than the host's.

Use, for a blocking run or a Popen'd job alike::

    net = OutboundNetwork(prefix)             # prefix: how bwrap itself is started (setpriv)
    cmd = [*prefix, "bwrap", *net.bwrap_args(), ...]
    proc = subprocess.Popen(cmd, pass_fds=net.pass_fds, ...)
    net.started()                            # after Popen: our copies of bwrap's ends closed
    try:
        net.connect(timeout=10)              # slirp4netns up, routes set, sandbox released
    except NetworkError:
        ...                                  # kill proc: its command has not started
    ...                                      # the sandbox runs; reap proc as usual
    net.close()                              # once proc has ended (or was killed)

slirp4netns also ends by itself when the sandbox does (its ``--exit-fd`` is the other end
of bwrap's ``--sync-fd``), so a server killed mid-run leaves nothing behind. ``child_pid``
gives the sandbox's first process before it is released (e.g. to write an id map).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: slirp4netns's DNS forwarder inside the namespace.
SLIRP_DNS = "10.0.2.3"
#: The resolv.conf a sandbox with this network gets.
RESOLV_CONF = f"nameserver {SLIRP_DNS}\n"
#: Destinations made unreachable inside the namespace before the sandbox runs.
BLOCKED_ROUTES = (("prohibit", "169.254.0.0/16"),)
#: slirp4netns's largest MTU: fewer, bigger packets through the user-mode stack.
_MTU = 65520
_TAP = "tap0"
_TOOLS = {"slirp4netns": "slirp4netns", "nsenter": "util-linux", "ip": "iproute2"}
#: ioctl on a namespace's descriptor: the user namespace owning it (linux/nsfs.h).
_NS_GET_USERNS = 0xB701


class NetworkError(Exception):
    """The sandbox's network could not be set up; the message says why."""


def missing() -> str | None:
    """None if the tools are installed, else what to install."""
    absent = sorted({pkg for tool, pkg in _TOOLS.items() if shutil.which(tool) is None})
    return f"apt-get install {' '.join(absent)}" if absent else None


class OutboundNetwork:
    """The network of one sandbox: the bwrap arguments, then slirp4netns for it.

    ``prefix`` runs slirp4netns and the route set-up as the same user as bwrap (e.g. the
    setpriv of a build step's): as the owner of the sandbox's user namespace they may enter
    it, and they never hold more rights than the sandbox's own launcher. Without one, as root
    (a job's, whose namespace maps no root to enter as), slirp4netns confines itself
    (--enable-sandbox: no capabilities, an empty root; --enable-seccomp).
    """

    def __init__(self, prefix: Sequence[str] = ()) -> None:
        self.prefix = list(prefix)
        self._info_r, self._info_w = os.pipe()
        self._block_r, self._block_w = os.pipe()
        self._exit_r, self._sync_w = os.pipe()
        #: The descriptors still ours to close: each is closed once, never a number another
        #: thread has since been given.
        self._open = {self._info_r, self._info_w, self._block_r, self._block_w}
        self._open |= {self._exit_r, self._sync_w}
        self._info: dict[str, Any] | None = None
        self._slirp: subprocess.Popen[bytes] | None = None

    def bwrap_args(self) -> list[str]:
        """Add these to the bwrap line: its own network namespace, held until connect()."""
        return [
            "--unshare-net",
            *("--info-fd", str(self._info_w)),
            *("--block-fd", str(self._block_r)),
            *("--sync-fd", str(self._sync_w)),
        ]

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """The descriptors bwrap must inherit (Popen's pass_fds)."""
        return (self._info_w, self._block_r, self._sync_w)

    def started(self) -> None:
        """Call once bwrap is started: our copies of its descriptors are closed, so that its
        end (or failure) is seen as end of file."""
        self._close(self._info_w, self._block_r, self._sync_w)

    def _close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self._open:
                self._open.discard(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def child_pid(self, timeout: float = 10) -> int:
        """The pid of the sandbox's first process (bwrap's --info-fd), waiting for it."""
        if self._info is None:
            self._info = _read_json(self._info_r, timeout)
        return int(self._info["child-pid"])

    def connect(self, timeout: float = 10) -> None:
        """Start slirp4netns for the sandbox, block the forbidden routes, release it."""
        deadline = time.monotonic() + timeout
        pid = self.child_pid(timeout)
        _wait_for_loopback(pid, deadline)
        # The user namespace owning the sandbox's network, which the tools enter: the
        # sandbox's own may be one nested below it (bwrap --disable-userns), with no right
        # over the network.
        owner = _owning_userns(pid)
        try:
            self._start_slirp(pid, owner, deadline)
            self._block_routes(pid, owner, deadline)
        finally:
            os.close(owner)
        os.write(self._block_w, b"1")

    def _start_slirp(self, pid: int, owner: int, deadline: float) -> None:
        ready_r, ready_w = os.pipe()
        slirp = [shutil.which("slirp4netns") or "slirp4netns", "--configure", f"--mtu={_MTU}"]
        slirp += ["--disable-host-loopback", "--enable-sandbox", "--enable-seccomp"]
        slirp += [f"--userns-path=/proc/self/fd/{owner}", f"--ready-fd={ready_w}"]
        slirp += [f"--exit-fd={self._exit_r}", str(pid), _TAP]
        try:
            self._slirp = subprocess.Popen(
                [*self.prefix, *slirp], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, pass_fds=(ready_w, self._exit_r, owner),
                start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(ready_w)
        try:
            if _read_some(ready_r, deadline - time.monotonic()) != b"1":
                raise NetworkError(f"slirp4netns did not start: {self._slirp_error()}")
        finally:
            os.close(ready_r)

    def _block_routes(self, pid: int, owner: int, deadline: float) -> None:
        enter = [shutil.which("nsenter") or "nsenter", f"--net=/proc/{pid}/ns/net"]
        if self.prefix or os.geteuid() != 0:  # root outside needs no rights of the namespace's
            enter += [f"--user=/proc/self/fd/{owner}", "--preserve-credentials"]
        enter += ["--", shutil.which("ip") or "ip"]
        for kind, destination in BLOCKED_ROUTES:
            done = subprocess.run(
                [*self.prefix, *enter, "route", "add", kind, destination], pass_fds=(owner,),
                capture_output=True, timeout=max(1.0, deadline - time.monotonic()), check=False,
            )  # fmt: skip
            if done.returncode != 0:
                why = done.stderr.decode(errors="replace").strip()
                raise NetworkError(f"cannot block {destination} in the sandbox: {why}")

    def close(self) -> None:
        """Stop slirp4netns (if the sandbox's end has not already) and free the descriptors."""
        if self._slirp is not None:
            if self._slirp.poll() is None:
                self._slirp.kill()
            self._slirp.wait()
            if self._slirp.stderr is not None:
                self._slirp.stderr.close()
            self._slirp = None
        self._close(*list(self._open))

    def _slirp_error(self) -> str:
        assert self._slirp is not None
        if self._slirp.poll() is None:
            self._slirp.kill()
        _, err = self._slirp.communicate()
        return err.decode(errors="replace").strip() or f"exit code {self._slirp.returncode}"


def _wait_for_loopback(pid: int, deadline: float) -> None:
    """Wait until bwrap has set up the sandbox's loopback (its local routes exist) before
    slirp4netns joins: a build's sandbox died once in CI with bwrap's "loopback: Failed
    RTM_NEWADDR", slirp4netns having joined the namespace while bwrap set it up."""
    while time.monotonic() < deadline:
        try:
            if "127.0.0.1" in Path(f"/proc/{pid}/net/fib_trie").read_text():
                return
        except OSError as exc:
            raise NetworkError(f"the sandbox ended before its network was set up: {exc}") from exc
        time.sleep(0.0005)
    raise NetworkError("the sandbox did not set up its loopback in time")


def _owning_userns(pid: int) -> int:
    """A descriptor of the user namespace that owns the network namespace of ``pid``."""
    netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(netns, _NS_GET_USERNS)
    except OSError as exc:
        raise NetworkError(f"cannot find who owns the sandbox's network: {exc}") from exc
    finally:
        os.close(netns)


def _read_some(fd: int, timeout: float) -> bytes:
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    return os.read(fd, 4096) if ready else b""


def _read_json(fd: int, timeout: float) -> dict[str, Any]:
    """bwrap's info: one JSON object, written once its namespaces exist."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        chunk = _read_some(fd, deadline - time.monotonic())
        if not chunk:
            raise NetworkError("the sandbox ended or stalled before its network was set up")
        data += chunk
        with contextlib.suppress(ValueError):
            info = json.loads(data)
            if isinstance(info, dict) and "child-pid" in info:
                return info
