"""A job's bounds: the application's over the platform's defaults, and which one a job is over."""

from __future__ import annotations

from concordia.core.limits import JobLimits, exceeded

DEFAULTS = JobLimits(processes=1024, memory_mb=4096, tmp_mb=512, work_mb=10240)


def test_an_application_bound_replaces_the_default_and_the_rest_stay() -> None:
    mine = JobLimits(memory_mb=256, work_mb=0).over(DEFAULTS)
    assert mine == JobLimits(processes=1024, memory_mb=256, tmp_mb=512, work_mb=0)


def test_the_bound_a_job_is_over_names_itself() -> None:
    small = JobLimits(processes=64, work_mb=16)
    assert exceeded(small, 10, cpu_used=10.4, work_bytes=0) is None  # SIGXCPU's turn first
    assert exceeded(small, 10, cpu_used=10.6) == "CPU time limit exceeded"
    assert exceeded(small, 10, forks_refused=3) == "Process limit exceeded (64 processes)"
    assert exceeded(small, 10, work_bytes=16 * 2**20) == "Disk limit exceeded (16 MB in /work)"
    assert exceeded(JobLimits(work_mb=0), 10, work_bytes=2**40) is None  # 0: no bound


def test_the_summary_says_what_is_unbounded() -> None:
    text = JobLimits(processes=0, memory_mb=100, tmp_mb=0, work_mb=5).describe()
    assert text == (
        "no bound on processes, 100 MB memory, no bound on /tmp and /dev/shm each, 5 MB in /work"
    )
