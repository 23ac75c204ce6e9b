"""The server side of the command: `concordia serve` and `concordia db upgrade`."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
def serve() -> None:
    """Run the Concordia server (web pages, REST API, job backends) until interrupted."""
    import uvicorn

    from concordia.web.app import create_app

    settings = get_settings()

    def banner(login_url: str, platform: Platform) -> None:
        _banner(settings, login_url, platform)

    config = uvicorn.Config(
        create_app(settings, on_ready=banner),
        host=settings.host,
        port=settings.port,
        log_level="info",
        # One handler for every logger, whose filters mask login tokens and add request ids.
        log_config=logging_config(settings.log_format),
        # concordia.access logs each request instead, with its id and duration.
        access_log=False,
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database, or bring it to the latest schema."""
    from concordia.db.migrate import upgrade

    settings = get_settings()
    settings.make_data_dir()
    upgrade(settings.database_url)
    say(f"database is up to date: {_database_kind(settings.database_url)}")
