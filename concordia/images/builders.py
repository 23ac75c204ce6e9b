"""What every image builder shares: its interface, its errors, and its commands, run with
their output in the build's log, cancellable, and killed with the server."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from concordia.backends import network
from concordia.images.plan import BuildPlan

if TYPE_CHECKING:
    from concordia.images.stages import BuildStages

#: The PATH of build commands and of the steps they run.
BUILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The host's trust store, lent to the build steps (pip behind a TLS proxy).
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
#: Docs, man pages and translations are never needed by a batch job and weigh a lot.
DPKG_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
)


#: Build processes running now (their process groups), stopped when the server stops.
_RUNNING: set[subprocess.Popen[bytes]] = set()
#: The image id of the build a thread works for (asyncio.to_thread passes it on): what
#: cancel_build looks for.
CURRENT_BUILD: ContextVar[str | None] = ContextVar("concordia_current_build", default=None)
#: Builds asked to stop: their commands are stopped and none starts again.
_CANCELLED: set[str] = set()
#: How often a running build command looks whether its build was cancelled (seconds), and
#: how long it has to clean up (mmdebstrap unmounts what it mounted) before it is killed.
_CANCEL_POLL = 0.5
_CANCEL_GRACE = 10.0


class TimedLog(io.TextIOWrapper):
    """A build log whose every line starts with the time since the build started (minutes
    and seconds): a quiet phase shows as a gap, not as nothing. Its commands' output passes
    through it line by line (run_logged)."""

    def __init__(self, path: Path) -> None:
        super().__init__(open(path, "wb"), encoding="utf-8", errors="replace", line_buffering=True)
        self._started = time.monotonic()
        self._line_start = True
        self._lock = threading.Lock()  # a command's output and the build's own lines

    def write(self, text: str) -> int:
        with self._lock:
            pieces = []
            for piece in text.splitlines(keepends=True):
                if self._line_start:
                    minutes, seconds = divmod(int(time.monotonic() - self._started), 60)
                    pieces.append(f"[{minutes:3d}:{seconds:02d}] ")
                pieces.append(piece)
                self._line_start = piece.endswith(("\n", "\r"))
            return super().write("".join(pieces))


def _copy_lines(output: IO[bytes], log: IO[str]) -> None:
    """A command's output into the build log as it comes, line by line."""
    for line in iter(output.readline, b""):
        log.write(line.decode("utf-8", errors="replace"))
    output.close()


def stop_running_builds() -> None:
    """Kill every build process: their builds are left unpublished, to start again later."""
    for proc in list(_RUNNING):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def cancel_build(image_id: str) -> None:
    """Stop the build of ``image_id`` (its running command within a second; none after)."""
    _CANCELLED.add(image_id)


def forget_cancel(image_id: str) -> None:
    """The build has ended: a later build of the same image runs."""
    _CANCELLED.discard(image_id)


def check_cancelled() -> None:
    """Raise BuildCancelled if the build of this thread was cancelled."""
    build = CURRENT_BUILD.get()
    if build is not None and build in _CANCELLED:
        raise BuildCancelled("cancelled")


class BuildError(Exception):
    """A build failed; the message says why (its log has the details)."""


class BuildCancelled(BuildError):
    """The build was cancelled: its commands were stopped."""


class Builder(Protocol):
    name: str
    #: Part of every image id: another builder (or version) makes another image.
    version: str

    def build(
        self, plan: BuildPlan, context: Path, rootfs: Path, log: IO[str],
        stages: BuildStages | None = None,
    ) -> None:  # fmt: skip
        """Make the image's rootfs; ``stages``: the cache of stages, for a builder that has
        stages of its own to reuse."""
        ...

    def remove_leftovers(self) -> list[str]:
        """Remove what builds of a killed process left outside the store; what was removed."""
        ...


class NoLeftovers:
    """For a builder whose builds leave nothing outside the store's workspace."""

    def remove_leftovers(self) -> list[str]:
        return []


def run_logged(
    cmd: Sequence[str],
    log: IO[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    pass_fds: Sequence[int] = (),
    started: Callable[[], None] | None = None,
) -> None:
    """Run a build command with its output in the log; BuildError if it fails or overruns.
    ``env`` adds to the build environment; ``name`` is what the error names (its program);
    ``started`` runs once the command is started (its failure kills the command)."""
    check_cancelled()
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    name = name or Path(cmd[0]).name
    variables = {"PATH": BUILD_PATH, "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    variables.update(env or {})
    # Killed with the server (SIGKILL included): its restart builds again, from scratch.
    guarded = [shutil.which("setpriv") or "setpriv", "--pdeathsig=KILL", "--", *cmd]
    proc = subprocess.Popen(
        guarded, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=cwd, env=variables, start_new_session=True, pass_fds=tuple(pass_fds),
        umask=0o022,  # not the server's 077: jobs read the image as another uid
    )  # fmt: skip
    _RUNNING.add(proc)
    assert proc.stdout is not None
    copier = threading.Thread(target=_copy_lines, args=(proc.stdout, log), daemon=True)
    copier.start()
    try:
        if started is not None:
            started()
        code = _wait(proc, timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise BuildError(f"{name} took longer than {timeout:.0f} s") from None
    except network.NetworkError as exc:
        raise BuildError(f"{name}: {exc}") from exc
    finally:
        _RUNNING.discard(proc)
        if proc.returncode is None:  # interrupted: leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # What it wrote last; not forever if something it started still holds the pipe.
        copier.join(timeout=5)
    if code != 0:
        raise BuildError(f"{name} failed with exit code {code}")


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """The command's exit code; stopped (TERM, then KILL after a grace) if its build is
    cancelled meanwhile. Raises subprocess.TimeoutExpired after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return proc.wait(timeout=min(_CANCEL_POLL, max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
        try:
            check_cancelled()
        except BuildCancelled:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=_CANCEL_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise
