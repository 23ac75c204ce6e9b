"""The `concordia` command: the server (serve, db upgrade) and a client of the REST API
(applications, submissions, jobs, images)."""

from __future__ import annotations

# Each module adds its commands to `app` as it is imported.
from concordia.cli import account, config, images, jobs, server  # noqa: F401
from concordia.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    app(prog_name="concordia")
