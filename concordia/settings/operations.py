"""Settings of the service's bounds and operation: backends, limits, threads, logs, metrics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from concordia.settings.base import CONFIG


class OperationSettings(BaseSettings):
    """The service's bounds: the default backend, per-user limits, sizes, threads, logs."""

    model_config = CONFIG

    default_backend: Literal["local", "diracx"] = Field(
        default="local", description="The backend a submission naming none goes to."
    )

    # The reconciler.
    max_reschedules: int = Field(default=3, ge=0, description="As DIRAC's MaxRescheduling.")
    poll_interval: float = Field(default=5.0, gt=0, description="Seconds between backend polls.")

    # Users' shares.
    max_queued_jobs_per_user: int = Field(
        default=5000,
        ge=0,
        description="Jobs one user may have not yet over (Received to Completing, on any "
        "backend), counted at each submission: one that would go over is refused (429) and "
        "creates nothing. 0: no limit.",
    )
    max_running_jobs_per_user: int = Field(
        default=0,
        ge=0,
        description="Jobs of one user a backend with slots (local) holds at once, over all "
        'workers; the user\'s others wait ("Waiting: user limit of N running jobs"). 0: no '
        "limit: the slots are shared round-robin between the users who wait, and one user "
        "alone may use them all.",
    )

    # Uploads and downloads.
    max_log_chunk: int = Field(
        default=1 << 20, ge=1024, description="Bytes of a log one read returns at the most."
    )
    max_request_bytes: int = Field(
        default=1 << 20, ge=64 * 1024, description="Any request body larger is refused (413)."
    )
    max_output_files: int = Field(
        default=10_000,
        ge=1,
        description="Files a local job may leave as outputs (besides std.out and std.err); "
        "more: collection stops and the job fails saying so.",
    )
    max_output_bytes: int = Field(
        default=20 << 30,
        ge=1 << 20,
        description="Bytes a local job may leave as outputs; more: collection stops and the "
        "job fails saying so.",
    )
    max_zip_bytes: int = Field(
        default=4 << 30,
        ge=1 << 20,
        description="Outputs larger in all are not zipped (413): their files are downloaded "
        "one by one.",
    )
    # Heavy work runs on a few threads of its own per kind, never on the pool every request
    # shares; one user holds at most so many of them at once (more: 429).
    zip_threads: int = Field(default=4, ge=1, description="Zip downloads streamed at once.")
    zip_per_user: int = Field(
        default=2, ge=1, description="Zip downloads one user may stream at once."
    )
    listing_threads: int = Field(default=4, ge=1, description="Output listings made at once.")
    listing_per_user: int = Field(
        default=4, ge=1, description="Output listings one user may ask for at once."
    )
    credential_threads: int = Field(
        default=2, ge=1, description="Uploaded credentials opened at once."
    )
    credential_per_user: int = Field(
        default=1, ge=1, description="Uploaded credentials one user may have opened at once."
    )
    max_event_streams_per_user: int = Field(
        default=10,
        ge=1,
        description="Open GET /api/v1/events streams one user may hold in one server process; "
        "one more is refused (429).",
    )

    # Operating: logs and metrics.
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="How `concordia serve` logs to stderr: text lines for a console, or one "
        "JSON object per line (time, level, logger, message, request_id; access lines add "
        "method, path, status, duration_ms) for a log collector.",
    )
    metrics_enabled: bool = Field(
        default=True,
        description="Serve Prometheus metrics at /metrics (job counts and latencies, no "
        "user data); off: 404.",
    )
    metrics_token: SecretStr = Field(
        default=SecretStr(""),
        description="If set, /metrics asks for `Authorization: Bearer <this token>`; empty: "
        "open to whoever reaches the server.",
    )
    worker_metrics_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="TCP port on which `concordia worker` serves its own /metrics (its "
        "reconciler rounds and image builds; the web processes serve theirs), on the address "
        "of `host`, with the metrics token if set; 0: none. Several workers on one host need "
        "one port each: one whose port is taken runs without.",
    )
    worker_absence_seconds: float = Field(
        default=60.0,
        gt=0,
        description="/readyz?workers=true answers 503 once no worker has held its lease for "
        "this long (a worker restarting takes a few seconds), as seen by the process asked.",
    )
