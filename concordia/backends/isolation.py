"""Whether local jobs without an image run under bubblewrap: a probe job, started exactly as
a job is."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path

from concordia.backends.job_exit import until_ended
from concordia.backends.job_process import fork_server, launch
from concordia.backends.sandbox import JOB_UID, drops_privileges, hand_over, minimal_etc
from concordia.core.limits import JobLimits

log = logging.getLogger(__name__)


def isolation_problem(mode: str, probe_dir: Path | None = None) -> str | None:
    """None where jobs run under bubblewrap, else why not: "none" never, "bwrap" always (or
    raise), "auto" if usable.

    The probe runs ``true`` exactly as a job runs: same flags, privilege drop and limits, in a
    work directory under ``probe_dir`` (the jobs directory).
    """
    if mode == "none":
        return "isolation is turned off (local_isolation = none)"
    if mode not in ("auto", "bwrap"):
        raise ValueError(f"unknown isolation mode {mode!r} (auto, bwrap or none)")
    error = _probe(str(probe_dir) if probe_dir else None)
    if error is None:
        return None
    if mode == "bwrap":
        raise RuntimeError(f"local_isolation is 'bwrap' but bubblewrap cannot run jobs: {error}")
    log.warning("local jobs run without isolation: bubblewrap cannot run them: %s", error)
    return error


def detect_isolation(mode: str, probe_dir: Path | None = None) -> bool:
    return isolation_problem(mode, probe_dir) is None


@functools.cache
def _probe(probe_dir: str | None) -> str | None:
    """Run ``true`` in the sandbox; None if it worked, else why not. Cached per process."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (Debian: apt-get install bubblewrap)"
    if probe_dir:
        os.makedirs(probe_dir, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".probe-", dir=probe_dir))
    server = fork_server()
    try:
        hand_over(workdir)
        with tempfile.TemporaryFile() as stderr:
            try:
                proc = launch(
                    ["true"], workdir, forkserver=server, stdout=stderr.fileno(),
                    stderr=stderr.fileno(), cpu_time=10, isolated=True,
                    etc=minimal_etc(workdir.parent), limits=JobLimits(tmp_mb=1, work_mb=1),
                )  # fmt: skip
            except OSError as exc:
                return f"the probe failed: {exc}"
            ended = until_ended(proc.pid, timeout=30)
            proc.reap()
            if not ended:
                return "the probe failed: it did not end within 30 s"
            stderr.seek(0)
            output = stderr.read().decode(errors="replace").strip()
        if proc.returncode == 0:
            return None
        error = output or f"exit code {proc.returncode}"
        if drops_privileges() and "Permission denied" in error:
            error += (
                f" (jobs of a server running as root run as uid {JOB_UID}: every parent"
                " directory of the data dir must be traversable by it, chmod o+x)"
            )
        return error
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
