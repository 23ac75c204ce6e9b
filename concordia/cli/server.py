"""The server side of the command: `concordia serve`, `concordia worker`, `concordia db upgrade`."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.text import Text

from concordia.cli.common import app, err, fail, get_settings, isolation, say
from concordia.logs import logging_config
from concordia.settings import IamSettings, ServerSettings, Settings

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


def _banner(settings: ServerSettings, platform: Platform) -> None:
    say("\nConcordia is running", "bold green")
    say(f"  Data dir:  {settings.data_dir.resolve()}")
    say(f"  Database:  {_database_kind(settings.database_url)}")
    for name, backend in platform.backends.items():
        say(Text("  Backend:   ").append_text(isolation(name, backend.isolation_problem)))
        say(f"             containers: {backend.runtime_summary}")
        say(f"             bounds: {backend.limits_summary}")
    choice = platform.images.choice
    images = f"{settings.images_dir.resolve()}, built with {choice.summary}"
    say(f"  Images:    {images}", "" if choice.builder else "bold red")


def _sign_in(settings: IamSettings, token_file: Path, login_url: str) -> None:
    """How people and the CLI sign in (in local mode, with the API token in ``token_file``):
    the end of both banners."""
    if settings.iam_mode:
        say(f"  Sign-in:   IAM at {settings.oidc_issuer}")
        say("\n  Open this URL to sign in with your IAM account:")
        say(f"      {login_url}", "bold cyan")
        say("\n  The CLI signs in with `concordia login`\n")
        return
    say("\n  Open this URL to log in (one-time link):")
    say(f"      {login_url}", "bold cyan")
    say(f"  It works once, within {_link_minutes()} minutes; `concordia login-link`")
    say("  makes a new one, and the sign-in page also takes the API token.")
    say(f"\n  The CLI uses the API token in {token_file.resolve()}\n")


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
    from concordia.service import keep_files_private

    keep_files_private()
    import uvicorn

    from concordia.web.app import create_app
    from concordia.web.timeouts import http_protocol

    settings = get_settings()
    uvicorn_options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": http_protocol(settings.request_read_timeout),
        # An idle connection stays open as long as a client may take to send its next
        # request's head: uvicorn's own 5 s is the idle expiry of httpx's pools (the CLI's),
        # and a request sent on a connection the server was closing at that moment was lost
        # ("Server disconnected without sending a response").
        "timeout_keep_alive": max(1, math.ceil(settings.request_read_timeout)),
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
        _banner(settings, platform)
        _sign_in(settings, settings.api_token_file, login_url)

    from concordia.service import tune_server_process

    config = uvicorn.Config(create_app(settings, on_ready=banner), **uvicorn_options)
    server = uvicorn.Server(config)
    tune_server_process()
    server.run()
    if not server.started:
        raise typer.Exit(1)


# The whole Settings: the server's data dir, the keys of secrets and IAM's sign-in.
def _serve_web_processes(settings: Settings, workers: int, options: dict[str, Any]) -> None:
    import uvicorn

    from concordia.auth.vault import open_vault
    from concordia.service import prepare_web_processes

    settings.make_data_dir()
    # Made once here: the processes would race to make it.
    open_vault(settings.encryption_keys, settings.encryption_key_file)

    def waiting() -> None:
        say("waiting for the database schema: run `concordia db upgrade` or start a worker")

    login_url = asyncio.run(prepare_web_processes(settings, settings.iam_mode, waiting))
    say(f"\nConcordia: {workers} web processes", "bold green")
    say(f"  Data dir:  {settings.data_dir.resolve()}")
    say(f"  Database:  {_database_kind(settings.database_url)}")
    say("  Jobs and image builds run in `concordia worker` (same settings)")
    _sign_in(settings, settings.api_token_file, login_url)
    uvicorn.run("concordia.web.app:web_app", factory=True, workers=workers, **options)


@app.command(rich_help_panel="Server")
def worker() -> None:
    """Run the background work (reconciler, local jobs, image builds) beside `concordia serve
    --workers N`; on PostgreSQL several share the work; on SQLite a second waits as a
    standby and takes over if the first dies."""
    import logging.config

    from concordia.service import LeaseLost, keep_files_private, run_worker, tune_server_process
    from concordia.web.worker_metrics import serve_worker_metrics

    keep_files_private()
    settings = get_settings()
    settings.make_data_dir()
    logging.config.dictConfig(logging_config(settings.log_format))

    def standby() -> None:
        say("another worker runs the background work: waiting as a standby")

    metrics = serve_worker_metrics(settings, settings.host)
    tune_server_process()
    try:
        asyncio.run(run_worker(settings, standby))
    except LeaseLost as exc:
        say(str(exc), "bold red")
        raise typer.Exit(75) from None  # EX_TEMPFAIL: started again, it waits or takes over
    finally:
        if metrics is not None:
            metrics.close()


@app.command("login-link", rich_help_panel="Server")
def login_link() -> None:
    """Print a new one-time sign-in link (local mode), for a new browser or after signing
    out: run it on the server's machine as the owner of its data dir; no restart needed."""
    import os
    import pwd

    from concordia.service import NotSetUp, keep_files_private, new_login_link

    keep_files_private()  # what SQLite may write beside the database
    settings = get_settings()
    if settings.iam_mode:
        fail(
            f"Concordia signs people in with IAM ({settings.oidc_issuer}): open "
            f"{settings.public_url}/login; one-time links are for local mode."
        )
    data_dir = settings.data_dir
    try:
        owner = data_dir.stat().st_uid
    except OSError:
        fail(f"there is no data dir at {data_dir}: start the server with `concordia serve`")
    # The link opens the local user's account: only who owns its files may ask for one.
    if owner != os.geteuid():
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = f"uid {owner}"
        fail(f"only the owner of the data dir {data_dir} ({name}) may make a sign-in link")
    try:
        url = asyncio.run(new_login_link(settings))
    except NotSetUp as exc:
        fail(f"no sign-in link: {exc}; start the server with `concordia serve`")
    say(url)
    say(
        f"(one-time link: it works once, within {_link_minutes()} minutes)",
        console=err,
    )


def _link_minutes() -> int:
    """How long a one-time link works (imported here: not every command needs the tables)."""
    from concordia.logic.identity import LOGIN_TOKEN_LIFETIME

    return int(LOGIN_TOKEN_LIFETIME.total_seconds() // 60)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database, or bring it to the latest schema (processes that run this at
    once on PostgreSQL do it in turn)."""
    from sqlalchemy.engine import make_url

    from concordia.db.migrate import upgrade_database
    from concordia.service import keep_files_private

    keep_files_private()  # the database it may create
    settings = get_settings()
    # SQLite's file is in the data dir; PostgreSQL needs none, and the service's user (no
    # home, no right to make it) runs this before its first start.
    if make_url(settings.database_url).get_backend_name() == "sqlite":
        settings.make_data_dir()
    asyncio.run(upgrade_database(settings.database_url))
    say(f"database is up to date: {_database_kind(settings.database_url)}")
