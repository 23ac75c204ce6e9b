"""The server side of the command: `concordia serve`, `concordia worker`, `concordia db upgrade`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import typer
from rich.text import Text

from concordia.cli.common import app, get_settings, isolation, say
from concordia.logs import logging_config
from concordia.settings import Settings

if TYPE_CHECKING:
    from concordia.logic.platform import Platform

db_app = typer.Typer(help="The database.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _database_kind(database_url: str) -> str:
    """Kind and place, never the URL itself: it may hold a password."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return f"SQLite ({url.database})"
    if url.get_backend_name() == "postgresql":
        return f"PostgreSQL ({url.host}:{url.port or 5432}/{url.database})"
    return url.get_backend_name()


def _banner(settings: Settings, login_url: str, platform: Platform) -> None:
    say("\nConcordia is running", "bold green")
    say(f"  Data dir:  {settings.data_dir.resolve()}")
    say(f"  Database:  {_database_kind(settings.database_url)}")
    for name, backend in platform.backends.items():
        say(Text("  Backend:   ").append_text(isolation(name, backend.isolation_problem)))
        say(f"             containers: {backend.runtime_summary}")
    choice = platform.images.choice
    images = f"{settings.images_dir.resolve()}, built with {choice.summary}"
    say(f"  Images:    {images}", "" if choice.builder else "bold red")
    if settings.iam_mode:
        say(f"  Sign-in:   IAM at {settings.oidc_issuer}")
        say("\n  Open this URL to sign in with your IAM account:")
        say(f"      {login_url}", "bold cyan")
        say("\n  The CLI signs in with `concordia login`\n")
        return
    say("\n  Open this URL to log in (one-time link):")
    say(f"      {login_url}", "bold cyan")
    say(f"\n  The CLI uses the API token in {settings.api_token_file.resolve()}\n")


@app.command(rich_help_panel="Server")
def serve(
    workers: int = typer.Option(
        0,
        "--workers",
        min=0,
        help="Web processes to run; the background work (jobs, image builds) is then left "
        "to `concordia worker`. 0: one process does everything.",
    ),
) -> None:
    """Run the Concordia server (web pages, REST API, job backends) until interrupted."""
    import uvicorn

    from concordia.web.app import create_app

    settings = get_settings()
    uvicorn_options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        # One handler for every logger, whose filters mask login tokens and add request ids.
        "log_config": logging_config(settings.log_format),
        # concordia.access logs each request instead, with its id and duration.
        "access_log": False,
    }
    if workers:
        _serve_web_processes(settings, workers, uvicorn_options)
        return

    def banner(login_url: str, platform: Platform) -> None:
        _banner(settings, login_url, platform)

    from concordia.service import tune_server_process

    config = uvicorn.Config(create_app(settings, on_ready=banner), **uvicorn_options)
    server = uvicorn.Server(config)
    tune_server_process()
    server.run()
    if not server.started:
        raise typer.Exit(1)


def _serve_web_processes(settings: Settings, workers: int, options: dict[str, Any]) -> None:
    import uvicorn

    from concordia.auth.vault import open_vault
    from concordia.service import prepare_web_processes
    from concordia.web.app import secret_key

    settings.make_data_dir()
    # Made once here: the processes would race to make them.
    secret_key(settings)
    open_vault(settings.encryption_keys, settings.encryption_key_file)

    def waiting() -> None:
        say("waiting for the database schema: run `concordia db upgrade` or start a worker")

    login_url = asyncio.run(prepare_web_processes(settings, waiting))
    say(f"\nConcordia: {workers} web processes", "bold green")
    say(f"  Data dir:  {settings.data_dir.resolve()}")
    say(f"  Database:  {_database_kind(settings.database_url)}")
    say("  Jobs and image builds run in `concordia worker` (same settings)")
    say("\n  Open this URL to sign in:" if settings.iam_mode else "\n  Open this URL to log in:")
    say(f"      {login_url}\n", "bold cyan")
    uvicorn.run("concordia.web.app:web_app", factory=True, workers=workers, **options)


@app.command(rich_help_panel="Server")
def worker() -> None:
    """Run the background work (reconciler, local jobs, image builds) beside `concordia serve
    --workers N`; on PostgreSQL several share the work; on SQLite a second waits as a
    standby and takes over if the first dies."""
    import logging.config

    from concordia.service import LeaseLost, run_worker, tune_server_process

    settings = get_settings()
    settings.make_data_dir()
    logging.config.dictConfig(logging_config(settings.log_format))

    def standby() -> None:
        say("another worker runs the background work: waiting as a standby")

    tune_server_process()
    try:
        asyncio.run(run_worker(settings, standby))
    except LeaseLost as exc:
        say(str(exc), "bold red")
        raise typer.Exit(75) from None  # EX_TEMPFAIL: started again, it waits or takes over


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database, or bring it to the latest schema."""
    from concordia.db.migrate import upgrade

    settings = get_settings()
    settings.make_data_dir()
    upgrade(settings.database_url)
    say(f"database is up to date: {_database_kind(settings.database_url)}")
