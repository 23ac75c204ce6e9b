"""Settings of the local backend: its slots, isolation, runtime and each job's limits."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field
from pydantic_settings import BaseSettings

from concordia.settings.base import CONFIG, DEFAULT_TEXT


class LocalSettings(BaseSettings):
    """The local backend: jobs run on this machine."""

    model_config = CONFIG

    local_slots: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="Jobs the local backend runs at once.",
        json_schema_extra={DEFAULT_TEXT: "the number of CPU cores"},
    )
    local_isolation: Literal["auto", "bwrap", "none"] = Field(
        default="auto",
        description="bwrap: jobs run under bubblewrap or the server does not start; auto: "
        "bubblewrap if its probe passes, else jobs run without isolation (and say so); none: "
        "never isolated.",
    )
    local_runtime: Literal["auto", "apptainer", "bwrap", "podman"] = Field(
        default="auto",
        description="What runs jobs in their images. auto: apptainer (or singularity) if "
        "installed, else bubblewrap if its probe passes, else podman if a probe run works; "
        "with local_isolation = none, auto chooses none.",
    )
    local_wall_time_factor: float = Field(
        default=2.0, gt=0, description="Wall-clock limit = factor x the job's CPU time."
    )
    local_memory_mb: int = Field(
        default=4096,
        ge=0,
        description="Memory of a job, its processes and its files in /tmp and /dev/shm together "
        "(a cgroup, where writable); 0: none. An application's limits.memory_mb replaces it.",
    )
    local_max_processes: int = Field(
        default=1024,
        ge=0,
        description="Processes (threads included) a job may have at once (a pids cgroup, else "
        "RLIMIT_NPROC of the job's user); 0: none. An application's limits.processes replaces it.",
    )
    local_tmp_mb: int = Field(
        default=512,
        ge=0,
        description="Size of each of a sandboxed job's /tmp and /dev/shm (tmpfs; also counted in "
        "its memory); 0: no size of its own. An application's limits.tmp_mb replaces it.",
    )
    local_work_mb: int = Field(
        default=10240,
        ge=0,
        description="Bytes a job may keep in its work directory (no file above it; the whole "
        "directory is measured while the job runs); 0: none. An application's limits.work_mb "
        "replaces it.",
    )
    local_keep_workdir: bool = Field(
        default=False, description="Keep a finished job's work directory (for debugging)."
    )
    kill_grace_seconds: float = Field(
        default=5.0, ge=0, description="Seconds between a kill's SIGTERM and its SIGKILL."
    )


class LocalBackendSettings(Protocol):
    """What the local backend reads: its own settings (LocalSettings), the server's data dir
    its jobs' directories are in (ServerSettings) and the bounds of a job's outputs
    (OperationSettings). Settings has them all."""

    data_dir: Path
    local_slots: int
    local_isolation: Literal["auto", "bwrap", "none"]
    local_runtime: Literal["auto", "apptainer", "bwrap", "podman"]
    local_wall_time_factor: float
    local_memory_mb: int
    local_max_processes: int
    local_tmp_mb: int
    local_work_mb: int
    local_keep_workdir: bool
    kill_grace_seconds: float
    max_output_files: int
    max_output_bytes: int

    @property
    def jobs_dir(self) -> Path: ...

    def make_data_dir(self) -> Path: ...
