"""What every command shares: the Typer app and its global options, the REST API client,
output helpers (plain text, tables, JSON) and the exit codes (1 refused, 2 unreachable)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, NoReturn

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console, OverflowMethod
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Column, Table
from rich.text import Text

from concordia.cli.tokens import access_token
from concordia.settings import Settings

app = typer.Typer(
    help="Concordia: run containerised applications locally or on DIRAC, watch them, get results.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold the API token
)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
POLL_SECONDS = 0.5
NOT_AUTHENTICATED = (
    "not authenticated: run `concordia login` (IAM), or check --token / CONCORDIA_TOKEN or "
    "the api-token file (local mode)"
)
NO_ISOLATION = "jobs run WITHOUT isolation"
STATUS_STYLES = {"Done": "green", "Failed": "red", "Killed": "yellow", "Running": "cyan"}

JSON_OPTION = typer.Option(False, "--json", help="Print the API's JSON instead.")
TIMEOUT_OPTION = typer.Option(0.0, min=0, help="Stop waiting after this many seconds (0: never).")


def say(text: str | Text, style: str = "", console: Console = out) -> None:
    """One line as plain text (never Rich markup: it holds users' values), not wrapped."""
    console.print(text if isinstance(text, Text) else Text(text, style=style), soft_wrap=True)


def fail(lines: str | list[str], code: int = 1) -> NoReturn:
    for line in [lines] if isinstance(lines, str) else lines:
        say(line, "red", err)
    raise typer.Exit(code)


@cache
def get_settings() -> Settings:
    """Built on first need only, so that --help and a client with --url/--token work anywhere."""
    try:
        return Settings()
    except ValidationError as exc:
        fail(f"invalid Concordia settings: {exc}", 2)


def error_lines(response: httpx.Response) -> list[str]:
    """The server's reason; a 422's list as 'field.path: msg' lines."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if response.status_code == 401:
        return [NOT_AUTHENTICATED + (f" ({detail})" if isinstance(detail, str) else "")]
    if isinstance(detail, str):
        return [detail]
    if isinstance(detail, list):
        lines = []
        for item in detail:
            loc = [str(part) for part in item.get("loc", [])]
            if loc and loc[0] in ("body", "query", "path", "header"):
                loc = loc[1:]
            lines.append(": ".join(filter(None, [".".join(loc), item.get("msg", "")])))
        return lines
    return [f"HTTP {response.status_code} from {response.url} (is this a Concordia server?)"]


@dataclass
class Api:
    """The REST API at --url with --token; the HTTP client is built on first use."""

    url_option: str | None
    token_option: str | None = field(repr=False)
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return (self.url_option or get_settings().public_url).rstrip("/")

    def client(self) -> httpx.Client:
        if self._client is None:
            token = self.token_option or access_token(get_settings().cli_tokens_file, self.url)
            if not token:
                try:
                    token = get_settings().api_token_file.read_text()
                except OSError:
                    token = None  # the server's 401 then says where a token comes from
            headers = {"Authorization": f"Bearer {token.strip()}"} if token else {}
            timeout = httpx.Timeout(60, connect=5)
            self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def use_token(self, token: str) -> None:
        self.token_option = token
        self.close()

    @contextmanager
    def reaching(self) -> Iterator[None]:
        """Network failures, before or during a transfer, end the command with code 2."""
        try:
            yield
        except httpx.TimeoutException:
            fail(f"Concordia at {self.url} did not answer in time", 2)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            fail(f"not a Concordia URL: {self.url!r} (expected http(s)://host:port)", 2)
        except httpx.TransportError:
            hint = "is it running? (start it with `make run`)"
            fail(f"cannot reach Concordia at {self.url} — {hint}", 2)

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self.reaching():
            return self.client().request(method, f"/api/v1{path}", **kwargs)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded answer; an error ends the command (exit 1) with the server's reason."""
        response = self.send(method, path, **kwargs)
        if response.is_error:
            fail(error_lines(response))
        return response.json()

    @contextmanager
    def stream(self, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A GET whose body is read as it comes (downloads, live logs); errors as `call`."""
        with self.reaching(), self.client().stream("GET", f"/api/v1{path}", **kwargs) as response:
            if response.is_error:
                response.read()
                fail(error_lines(response))
            yield response


@app.callback()
def _global_options(
    ctx: typer.Context,
    url: str | None = typer.Option(
        None, envvar="CONCORDIA_URL", help="Concordia's URL (default: its public_url setting)."
    ),
    token: str | None = typer.Option(
        None,
        envvar="CONCORDIA_TOKEN",
        help="API token (default: `concordia login`'s IAM token, else the data dir's api-token).",
    ),
) -> None:
    ctx.obj = Api(url, token)
    ctx.call_on_close(ctx.obj.close)


def pairs(items: list[str] | None, option: str) -> dict[str, str]:
    """Repeated key=value options as a dict; a malformed or repeated key is a usage error."""
    found: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or key.strip() in found:
            fail(f"{option} {item!r}: expected key=value, each key once", 2)
        found[key.strip()] = value
    return found


def api_of(ctx: typer.Context) -> Api:
    api = ctx.find_object(Api)
    assert api is not None
    return api


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def when(iso: str | None, zone: bool = True) -> str:
    """A time in UTC, as the web pages show it; ``zone=False`` in a column whose heading
    says (UTC)."""
    if not iso:
        return ""
    moment = datetime.fromisoformat(iso)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if zone else "")


def status_text(status: str, minor: str = "", styles: dict[str, str] = STATUS_STYLES) -> Text:
    text = Text(status, style=styles.get(status, ""))
    return text.append(f" ({minor})", "dim") if minor else text


def cell(value: Any) -> Text:
    """Plain text: names and messages come from users and are never Rich markup."""
    return value if isinstance(value, Text) else Text("" if value is None else str(value))


def table(
    columns: str,
    rows: list[list[Any]],
    title: str | None = None,
    no_wrap: tuple[str, ...] = ("time (UTC)", "updated (UTC)"),
    overflow: OverflowMethod = "ellipsis",
) -> Table:
    names = [name.strip() for name in columns.split(",")]
    cols = (Column(n, no_wrap=n in no_wrap, overflow=overflow) for n in names)
    grid = Table(*cols, title=title)
    for row in rows:
        grid.add_row(*map(cell, row))
    return grid


def download_bar() -> Progress:
    """The progress bar of downloads: one line per file, bytes done of the total."""
    # Binary units, as every size Concordia shows (concordia.core.units).
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True))
    return Progress(*columns, console=out)


def isolation(backend: str, problem: str | None) -> Text:
    if problem is None:
        return Text(f"{backend} (jobs are isolated)")
    return Text(f"{backend} — {NO_ISOLATION}: {problem}", style="bold yellow")
