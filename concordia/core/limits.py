"""The resource bounds of one job: what an application asks for over the platform's defaults."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class JobLimits(BaseModel):
    """Bounds of a whole job (all its processes together); 0 means none. In an application
    definition a bound left out is the platform's default (the local_* settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    processes: int | None = Field(
        default=None, ge=0, description="Processes and threads the job may have at once."
    )
    memory_mb: int | None = Field(
        default=None, ge=0, description="Memory of the job, its files in /tmp and /dev/shm too."
    )
    tmp_mb: int | None = Field(
        default=None, ge=0, description="Size of each of the job's /tmp and /dev/shm."
    )
    work_mb: int | None = Field(
        default=None, ge=0, description="Bytes the job may keep in its work directory."
    )

    def over(self, defaults: JobLimits) -> JobLimits:
        """These bounds, each one left out taken from ``defaults``."""
        mine = self.model_dump(exclude_none=True)
        return defaults.model_copy(update=mine)

    def describe(self) -> str:
        """One line for people, e.g. "1024 processes, 2048 MB memory"."""
        parts = []
        for value, what in (
            (self.processes, "processes"),
            (self.memory_mb, "MB memory"),
            (self.tmp_mb, "MB /tmp and /dev/shm each"),
            (self.work_mb, "MB in /work"),
        ):
            parts.append(f"{value} {what}" if value else f"no bound on {what.removeprefix('MB ')}")
        return ", ".join(parts)


#: CPU seconds a whole job may use over its CPU time before it is killed. A job of one process
#: gets SIGXCPU from its own RLIMIT_CPU first, whatever its runtime's processes (a container's
#: init) added to the whole job's count.
CPU_GRACE = 0.5


def exceeded(
    limits: JobLimits,
    cpu_time: int,
    *,
    cpu_used: float | None = None,
    forks_refused: int = 0,
    work_bytes: int | None = None,
) -> str | None:
    """The bound a running job is over, as its minor status, or None. ``cpu_time`` is the
    CPU seconds of the whole job; a refused fork means it reached its process bound."""
    if cpu_used is not None and cpu_used > max(1, cpu_time) + CPU_GRACE:
        return "CPU time limit exceeded"
    if forks_refused and limits.processes:
        return f"Process limit exceeded ({limits.processes} processes)"
    if work_bytes is not None and limits.work_mb and work_bytes >= limits.work_mb * 1024 * 1024:
        return disk_exceeded(limits.work_mb)
    return None


def disk_exceeded(work_mb: int) -> str:
    """The minor status of a job over the bound of its work directory."""
    return f"Disk limit exceeded ({work_mb} MB in /work)"
