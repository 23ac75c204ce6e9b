"""A job run to its end as the local backend starts it, without its directory or records:
the baseline the benchmarks put the backend's own work against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from concordia.backends.job_exit import until_ended
from concordia.backends.job_process import launch


def run_to_end(argv: list[str], workdir: Path, **launch_args: Any) -> int:
    """Start ``argv`` through a fork server (job_process.launch, with ``launch_args``), wait
    for it to end, reap it: its exit code."""
    job = launch(argv, workdir, **launch_args)
    until_ended(job.pid)
    job.reap()
    assert job.returncode is not None
    return job.returncode
