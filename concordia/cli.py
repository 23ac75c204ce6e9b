"""The `concordia` command: the server (serve, db upgrade) and a client of the REST API."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column, Table
from rich.text import Text

from concordia.settings import Settings

if TYPE_CHECKING:
    from concordia.logic.platform import Platform

app = typer.Typer(
    help="Concordia: run containerised applications locally or on DIRAC, watch them, get results.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold the API token
)
db_app = typer.Typer(help="The database.", no_args_is_help=True)
app.add_typer(db_app, name="db")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
POLL_SECONDS = 0.5
TOKEN_IN_QUERY = re.compile(r"(token=)[^&\s]+")
NOT_AUTHENTICATED = "not authenticated: check --token / CONCORDIA_TOKEN or the api-token file"
NO_ISOLATION = "jobs run WITHOUT isolation"
STATUS_STYLES = {"Done": "green", "Failed": "red", "Killed": "yellow", "Running": "cyan"}

JSON_OPTION = typer.Option(False, "--json", help="Print the API's JSON instead.")
TIMEOUT_OPTION = typer.Option(0.0, min=0, help="Stop waiting after this many seconds (0: never).")
JOB_ARG = typer.Argument(..., help="The job id.", show_default=False)
JOBS_ARG = typer.Argument(..., help="Job ids.", show_default=False)


class LogStream(StrEnum):
    stdout = "stdout"
    stderr = "stderr"


def say(text: str | Text, style: str = "", console: Console = out) -> None:
    """One line as plain text (never Rich markup: it holds users' values), not wrapped."""
    console.print(text if isinstance(text, Text) else Text(text, style=style), soft_wrap=True)


def _fail(lines: str | list[str], code: int = 1) -> NoReturn:
    for line in [lines] if isinstance(lines, str) else lines:
        say(line, "red", err)
    raise typer.Exit(code)


@cache
def _settings() -> Settings:
    """Built on first need only, so that --help and a client with --url/--token work anywhere."""
    try:
        return Settings()
    except ValidationError as exc:
        _fail(f"invalid Concordia settings: {exc}", 2)


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
        return (self.url_option or _settings().public_url).rstrip("/")

    def client(self) -> httpx.Client:
        if self._client is None:
            token = self.token_option
            if not token:
                try:
                    token = _settings().api_token_file.read_text()
                except OSError:
                    token = None  # the server's 401 then says where a token comes from
            headers = {"Authorization": f"Bearer {token.strip()}"} if token else {}
            timeout = httpx.Timeout(60, connect=5)
            self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    @contextmanager
    def reaching(self) -> Iterator[None]:
        """Network failures, before or during a transfer, end the command with code 2."""
        try:
            yield
        except httpx.TimeoutException:
            _fail(f"Concordia at {self.url} did not answer in time", 2)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            _fail(f"not a Concordia URL: {self.url!r} (expected http(s)://host:port)", 2)
        except httpx.TransportError:
            hint = "is it running? (start it with `make run`)"
            _fail(f"cannot reach Concordia at {self.url} — {hint}", 2)

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self.reaching():
            return self.client().request(method, f"/api/v1{path}", **kwargs)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded answer; an error ends the command (exit 1) with the server's reason."""
        response = self.send(method, path, **kwargs)
        if response.is_error:
            _fail(error_lines(response))
        return response.json()

    @contextmanager
    def download(self, path: str) -> Iterator[httpx.Response]:
        with self.reaching(), self.client().stream("GET", f"/api/v1{path}") as response:
            if response.is_error:
                response.read()
                _fail(error_lines(response))
            yield response


@app.callback()
def _global_options(
    ctx: typer.Context,
    url: str | None = typer.Option(
        None, envvar="CONCORDIA_URL", help="Concordia's URL (default: its public_url setting)."
    ),
    token: str | None = typer.Option(
        None, envvar="CONCORDIA_TOKEN", help="API token (default: the data dir's api-token)."
    ),
) -> None:
    ctx.obj = Api(url, token)
    ctx.call_on_close(ctx.obj.close)


def _api(ctx: typer.Context) -> Api:
    api = ctx.find_object(Api)
    assert api is not None
    return api


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _when(iso: str | None) -> str:
    if not iso:
        return ""
    moment = datetime.fromisoformat(iso)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _status(status: str, minor: str = "") -> Text:
    text = Text(status, style=STATUS_STYLES.get(status, ""))
    return text.append(f" ({minor})", "dim") if minor else text


def _cell(value: Any) -> Text:
    """Plain text: names and messages come from users and are never Rich markup."""
    return value if isinstance(value, Text) else Text("" if value is None else str(value))


def _table(columns: str, rows: list[list[Any]], title: str | None = None) -> Table:
    names = [name.strip() for name in columns.split(",")]
    table = Table(*(Column(n, no_wrap=n in ("time", "updated")) for n in names), title=title)
    for row in rows:
        table.add_row(*map(_cell, row))
    return table


def _id_list(ids: list[int]) -> str:
    if len(ids) > 2 and ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]} to {ids[-1]}"
    return " ".join(map(str, ids))


def _isolation(backend: str, problem: str | None) -> Text:
    if problem is None:
        return Text(f"{backend} (jobs are isolated)")
    return Text(f"{backend} — {NO_ISOLATION}: {problem}", style="bold yellow")


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
        say(Text("  Backend:   ").append_text(_isolation(name, backend.isolation_problem)))
    say("\n  Open this URL to log in (one-time link):")
    say(f"      {login_url}", "bold cyan")
    say(f"\n  The CLI uses the API token in {settings.api_token_file.resolve()}\n")


class RedactTokens(logging.Filter):
    """Masks `token=...` in log arguments (the one-time login link's request line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                TOKEN_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        return True


@app.command(rich_help_panel="Server")
def serve() -> None:
    """Run the Concordia server (web pages, REST API, job backends) until interrupted."""
    import uvicorn

    from concordia.web.app import create_app

    settings = _settings()

    def banner(login_url: str, platform: Platform) -> None:
        _banner(settings, login_url, platform)

    config = uvicorn.Config(
        create_app(settings, on_ready=banner),
        host=settings.host,
        port=settings.port,
        log_level="info",
    )
    # After uvicorn set its logging up: the access log must not keep login tokens.
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database, or bring it to the latest schema."""
    from concordia.db.migrate import upgrade

    settings = _settings()
    settings.make_data_dir()
    upgrade(settings.database_url)
    say(f"database is up to date: {_database_kind(settings.database_url)}")


@app.command("apps")
def list_apps(ctx: typer.Context) -> None:
    """The applications you can run."""
    rows = []
    for a in _api(ctx).call("GET", "/applications"):
        params = [
            n if p.get("default") is None else f"{n}={p['default']}"
            for n, p in a["parameters"].items()
        ]
        rows.append([a["name"], a["title"], ", ".join(params)])
    out.print(_table("name, title, parameters (defaults)", rows))


def _rule(spec: dict[str, Any]) -> str:
    if spec["type"] == "enum":
        return " | ".join(spec["choices"])
    if spec["type"] == "str":
        pattern = f", matching {spec['pattern']}" if spec.get("pattern") else ""
        return f"≤ {spec['max_length']} chars{pattern}"
    low, high = spec.get("min"), spec.get("max")
    if low is not None and high is not None:
        return f"{low} .. {high}"
    return f">= {low}" if low is not None else (f"<= {high}" if high is not None else "")


@app.command("app")
def show_app(ctx: typer.Context, name: str = typer.Argument(..., help="Its name.")) -> None:
    """An application's parameters and build arguments."""
    a = _api(ctx).call("GET", f"/applications/{quote(name, safe='')}")
    say(f"{a['name']}: {a['title']}", "bold")
    if a.get("description"):
        say(a["description"].strip())
    for title in ("parameters", "build_args"):
        rows = [
            [n, p["type"], p.get("default"), _rule(p), p.get("help")] for n, p in a[title].items()
        ]
        if rows:
            out.print(_table("name, type, default, range / choices, help", rows, title))


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or key.strip() in pairs:
            _fail(f"{option} {item!r}: expected key=value, each key once", 2)
        pairs[key.strip()] = value
    return pairs


def _wait_for(api: Api, view: dict[str, Any], timeout: float, show: bool) -> dict[str, Any]:
    """Poll the submission until every job is final, with a progress bar."""
    deadline = time.monotonic() + timeout if timeout else math.inf
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=out, disable=not show) as bar:
        task = bar.add_task("", total=view["job_count"])
        while True:
            p = view["progress"]
            counts = "  ".join(f"{k} {p[k]}" for k in ("waiting", "running", "done", "failed"))
            finished = p["done"] + p["failed"] + p["killed"] + p["deleted"]
            bar.update(task, completed=finished, description=counts)
            if view["finished"]:
                return view
            if time.monotonic() >= deadline:
                _fail(f"stopped waiting after {timeout:g} s; the jobs go on")
            time.sleep(POLL_SECONDS)
            view = api.call("GET", f"/submissions/{view['id']}")


@app.command()
def submit(
    ctx: typer.Context,
    application: str = typer.Argument(..., help="The application's name."),
    param: list[str] | None = typer.Option(None, "--param", "-p", help="key=value (repeat)."),
    build_arg: list[str] | None = typer.Option(None, help="key=value (repeat)."),
    backend: str | None = typer.Option(None, help="Where to run (default: local)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the jobs to their end."),
    timeout: float = TIMEOUT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Submit a batch of jobs; with --wait, exit 0 only if every job is Done."""
    api = _api(ctx)
    body = {
        "application": application,
        "parameters": _pairs(param, "--param"),
        "build_args": _pairs(build_arg, "--build-arg"),
        "backend": backend,
    }
    view = api.call("POST", "/submissions", json=body)
    if not as_json:
        say(f"submission {view['id']}: {view['job_count']} job(s) on {view['backend']}")
        say(f"jobs: {_id_list(view['job_ids'])}")
    if wait:
        view = _wait_for(api, view, timeout, show=not as_json)
    if as_json:
        _print_json(view)
    elif wait:
        rows = [[_status(s), n] for s, n in sorted(view["counts"].items())]
        out.print(_table("status, jobs", rows))
    if wait and view["counts"].get("Done", 0) != view["job_count"]:
        raise typer.Exit(1)


@app.command("jobs")
def list_jobs(
    ctx: typer.Context,
    status: list[str] | None = typer.Option(None, help="Only this status (repeat)."),
    submission: int | None = typer.Option(None, help="Only this submission's jobs."),
    application: str | None = typer.Option(None, help="Only this application's jobs."),
    page: int = typer.Option(1, min=1),
    per_page: int = typer.Option(50, min=1, max=500),
    as_json: bool = JSON_OPTION,
) -> None:
    """Your jobs, most recently changed first."""
    query = {"status": status, "submission": submission, "application": application}
    params = {k: v for k, v in query.items() if v not in (None, [])}
    data = _api(ctx).call("GET", "/jobs", params={**params, "page": page, "per_page": per_page})
    if as_json:
        return _print_json(data)
    rows = [
        [
            j["id"],
            j["name"],
            j["application"],
            _status(j["status"]),
            j["minor_status"],
            _when(j["updated_at"]),
        ]
        for j in data["items"]
    ]
    out.print(_table("id, name, application, status, minor status, updated", rows))
    say(f"page {page} of {max(1, math.ceil(data['total'] / per_page))} ({data['total']} jobs)")


@app.command()
def status(ctx: typer.Context, job: int = JOB_ARG, as_json: bool = JSON_OPTION) -> None:
    """A job's detail and its status history."""
    d = _api(ctx).call("GET", f"/jobs/{job}")
    if as_json:
        return _print_json(d)
    info = Table.grid(padding=(0, 2))
    for label, value in (
        ("job", f"{d['id']} ({d['name']}) of {d['application']}, submission {d['submission_id']}"),
        ("status", _status(d["status"], d["minor_status"])),
        ("parameters", ", ".join(f"{k}={v}" for k, v in d["parameters"].items())),
        ("backend", f"{d['backend']} {d['backend_ref'] or ''}"),
        ("isolation", {True: "isolated", False: "NONE", None: "not known yet"}[d["isolated"]]),
        ("exit code", d["exit_code"]),
        ("rescheduled", f"{d['reschedule_count']} time(s)"),
        ("created", _when(d["created_at"])),
        ("started", _when(d["started_at"])),
        ("ended", _when(d["ended_at"])),
    ):
        info.add_row(Text(label, style="bold"), _cell(value))
    out.print(info)
    if d["isolated"] is False:
        say("⚠ this job ran without isolation (see `concordia me`)", "bold yellow")
    rows = [
        [_when(h["timestamp"]), _status(h["status"]), h["minor_status"], h["source"]]
        for h in d["history"]
    ]
    out.print(_table("time, status, minor status, source", rows, "history"))


@app.command()
def logs(
    ctx: typer.Context,
    job: int = JOB_ARG,
    stream: LogStream = typer.Option(LogStream.stdout, help="Which log."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Follow it to the job's end."),
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """A job's output or error log, as written (raw text)."""
    api, offset = _api(ctx), 0
    deadline = time.monotonic() + timeout if timeout else math.inf
    while True:
        params = {"stream": stream.value, "offset": offset}
        chunk = api.call("GET", f"/jobs/{job}/logs", params=params)
        sys.stdout.write(chunk["data"])
        sys.stdout.flush()
        progressed, offset = chunk["next_offset"] > offset, chunk["next_offset"]
        if chunk["final"]:
            return
        if progressed and offset < chunk["size"]:
            continue  # more is there already
        if not follow:
            return
        if time.monotonic() >= deadline:
            _fail(f"stopped following after {timeout:g} s; the job goes on")
        time.sleep(POLL_SECONDS)


def _safe_relative(name: str) -> PurePosixPath | None:
    """Defence in depth: a name from the server must stay inside the target directory."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        return None
    return path


def _save(api: Api, path: str, target: Path, bar: Progress) -> None:
    """Stream to target.part, then rename: an interrupted download leaves no half file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with api.download(path) as response, partial.open("wb") as fh:
            size = response.headers.get("content-length")
            task = bar.add_task(target.name, total=int(size) if size else None)
            for data in response.iter_bytes(1 << 16):
                fh.write(data)
                bar.advance(task, len(data))
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


@app.command()
def get(
    ctx: typer.Context,
    job: int = JOB_ARG,
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Where to write."),
    as_zip: bool = typer.Option(False, "--zip", help="One zip file of all outputs."),
) -> None:
    """Download a job's outputs (result files, std.out, std.err)."""
    api, root = _api(ctx), output_dir.resolve()
    refused: list[str] = []
    plan = [(f"/jobs/{job}/outputs.zip", root / f"job-{job}-outputs.zip")]  # (API path, file)
    if not as_zip:
        files = api.call("GET", f"/jobs/{job}/outputs")
        refused = [f["path"] for f in files if _safe_relative(f["path"]) is None]
        plan = [
            (f"/jobs/{job}/outputs/{quote(f['path'])}", root / relative)
            for f in files
            if (relative := _safe_relative(f["path"]))
        ]
    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=out
    ) as bar:
        for source, target in plan:
            _save(api, source, target, bar)
    for _, target in plan:
        say(f"wrote {target} ({target.stat().st_size} bytes)")
    if not plan and not refused:
        say(f"job {job} has no outputs (yet)")
    if refused:
        _fail([f"refused output name {name!r}: not a relative path inside -o" for name in refused])


def _act(ctx: typer.Context, method: str, suffix: str, jobs: list[int]) -> None:
    """One call per job; every job is tried, and the exit code is 1 if any was refused."""
    api, failed = _api(ctx), False
    for job in jobs:
        response = api.send(method, f"/jobs/{job}{suffix}")
        if response.status_code == 401:
            _fail(error_lines(response))
        if response.is_error:
            failed = True
            for line in error_lines(response):
                say(line, "red", err)
        else:
            s = response.json()
            say(Text(f"job {job}: ").append_text(_status(s["status"], s["minor_status"])))
    if failed:
        raise typer.Exit(1)


@app.command()
def kill(ctx: typer.Context, jobs: list[int] = JOBS_ARG) -> None:
    """Kill jobs (waiting or running)."""
    _act(ctx, "POST", "/kill", jobs)


@app.command()
def reschedule(ctx: typer.Context, jobs: list[int] = JOBS_ARG) -> None:
    """Run finished jobs (Failed, Killed) again."""
    _act(ctx, "POST", "/reschedule", jobs)


@app.command("rm")
def remove(ctx: typer.Context, jobs: list[int] = JOBS_ARG) -> None:
    """Delete jobs and their files (kill running ones first)."""
    _act(ctx, "DELETE", "", jobs)


@app.command()
def me(ctx: typer.Context) -> None:
    """Who you are to the server, and where your jobs can run."""
    d = _api(ctx).call("GET", "/me")
    say(f"{d['username']} ({d['display_name'] or 'no display name'})", "bold")
    say(f"mode: {d['mode']}, signed in by {d['auth']}")
    for b in d["backends"]:
        say(Text("backend ").append_text(_isolation(b["name"], b["isolation_problem"])))


def main() -> None:
    app(prog_name="concordia")
