"""The job commands: applications, submissions, jobs (status, logs, outputs, kill, rm), me."""

from __future__ import annotations

import math
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer
from rich.text import Text

from concordia.cli.common import (
    JSON_OPTION,
    POLL_SECONDS,
    TIMEOUT_OPTION,
    api_of,
    app,
    download_bar,
    err,
    error_lines,
    fail,
    out,
    pairs,
    print_json,
    say,
    status_text,
    table,
)
from concordia.cli.job_outputs import download_plan, one_target, save
from concordia.cli.job_views import (
    rule_text,
    say_submitted,
    show_job,
    show_job_page,
    show_plan,
    wait_for,
    why_not,
)
from concordia.core.units import size_text

JOB_ARG = typer.Argument(..., help="The job id.", show_default=False)
JOBS_ARG = typer.Argument(None, help="Job ids.", show_default=False)
SUBMISSION_OPTION = typer.Option(
    None, "--submission", "-s", help="Every job of this submission.", show_default=False
)


class LogStream(StrEnum):
    stdout = "stdout"
    stderr = "stderr"


@app.command("apps")
def list_apps(ctx: typer.Context) -> None:
    """The applications, their parameters, and why one cannot be run (by you, or here)."""
    rows, reasons = [], []
    for a in api_of(ctx).call("GET", "/applications"):
        params = [
            n if p.get("default") is None else f"{n}={p['default']}"
            for n, p in a["parameters"].items()
        ]
        why = why_not(a)
        rows.append([a["name"], a["title"], "no" if why else "yes", ", ".join(params)])
        reasons += [f"{a['name']}: {reason}" for reason in why]
    out.print(table("name, title, usable, parameters (defaults)", rows))
    for reason in reasons:
        say(reason, "yellow")


@app.command("app")
def show_app(ctx: typer.Context, name: str = typer.Argument(..., help="Its name.")) -> None:
    """An application's parameters and build arguments."""
    a = api_of(ctx).call("GET", f"/applications/{quote(name, safe='')}")
    say(f"{a['name']}: {a['title']}", "bold")
    if a.get("description"):
        say(a["description"].strip())
    for reason in why_not(a):
        say(f"cannot be submitted: {reason}", "bold yellow")
    for title in ("parameters", "build_args"):
        rows = [
            [n, p["type"], p.get("default"), rule_text(p), p.get("help")]
            for n, p in a[title].items()
        ]
        if rows:
            out.print(table("name, type, default, range / choices, help", rows, title))


@app.command()
def submit(
    ctx: typer.Context,
    application: str = typer.Argument(..., help="The application's name."),
    param: list[str] | None = typer.Option(None, "--param", "-p", help="key=value (repeat)."),
    build_arg: list[str] | None = typer.Option(None, help="key=value (repeat)."),
    backend: str | None = typer.Option(
        None, help="Where to run: local or diracx (default: the server's default_backend)."
    ),
    datalake: bool | None = typer.Option(
        None,
        "--datalake/--no-datalake",
        help="Store the data outputs in the data lake, or not (default: the application's).",
    ),
    rse: str | None = typer.Option(
        None, help="The data lake's RSE they go to (implies --datalake); default the server's."
    ),
    dataset: str | None = typer.Option(
        None, help="Their dataset's name (implies --datalake); default <application>.<id>."
    ),
    wait: bool = typer.Option(False, "--wait", help="Follow the jobs to their end."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check everything, show the jobs and JDLs; submit nothing."
    ),
    timeout: float = TIMEOUT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Submit a batch of jobs; with --wait, exit 0 only if every job is Done."""
    api = api_of(ctx)
    body = _submission_body(application, param, build_arg, backend, datalake, rse, dataset)
    if dry_run:
        plan = api.call("POST", "/submissions", json=body, params={"dry_run": "true"})
        return print_json(plan) if as_json else show_plan(plan)
    view = api.call("POST", "/submissions", json=body)
    if not as_json:
        say_submitted(api, view)
    if wait:
        view = wait_for(api, view, timeout, show=not as_json)
    if as_json:
        print_json(view)
    elif wait:
        rows = [[status_text(s), n] for s, n in sorted(view["counts"].items())]
        out.print(table("status, jobs", rows))
    if wait and view["counts"].get("Done", 0) != view["job_count"]:
        raise typer.Exit(1)


def _submission_body(
    application: str,
    param: list[str] | None,
    build_arg: list[str] | None,
    backend: str | None,
    datalake: bool | None,
    rse: str | None,
    dataset: str | None,
) -> dict[str, Any]:
    """The submission asked for, as the API takes it; a contradiction ends the command."""
    body = {
        "application": application,
        "parameters": pairs(param, "--param"),
        "build_args": pairs(build_arg, "--build-arg"),
        "backend": backend,
    }
    if datalake is False and (rse or dataset):
        fail("--rse and --dataset go with the data lake: not with --no-datalake")
    if datalake is False:
        body["datalake"] = None
    elif datalake or rse or dataset:  # absent otherwise: the application's default
        body["datalake"] = {k: v for k, v in {"rse": rse, "dataset": dataset}.items() if v}
    return body


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
    data = api_of(ctx).call("GET", "/jobs", params={**params, "page": page, "per_page": per_page})
    if as_json:
        return print_json(data)
    show_job_page(data, page, per_page)


@app.command()
def status(ctx: typer.Context, job: int = JOB_ARG, as_json: bool = JSON_OPTION) -> None:
    """A job's detail and its status history."""
    d = api_of(ctx).call("GET", f"/jobs/{job}")
    if as_json:
        return print_json(d)
    show_job(d)


@app.command()
def logs(
    ctx: typer.Context,
    job: int = JOB_ARG,
    stream: LogStream = typer.Option(LogStream.stdout, help="Which log."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Follow it to the job's end."),
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """A job's output or error log, as written (raw text)."""
    api, offset = api_of(ctx), 0
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
            fail(f"stopped following after {timeout:g} s; the job goes on")
        time.sleep(POLL_SECONDS)


@app.command()
def get(
    ctx: typer.Context,
    job: int | None = typer.Argument(None, help="The job id.", show_default=False),
    output_dir: Path = typer.Option(
        ...,
        "--output-dir",
        "-o",
        help="Where to write: a directory; with --zip or --submission, a file NAME.zip or a "
        "directory.",
    ),
    as_zip: bool = typer.Option(False, "--zip", help="One zip file of all outputs."),
    submission: int | None = SUBMISSION_OPTION,
) -> None:
    """Download a job's outputs (result files, std.out, std.err), or with --submission one
    zip of every job's of a submission."""
    api, root = api_of(ctx), output_dir.resolve()
    source = one_target(job, submission)  # /jobs/N or /submissions/N: job-N-outputs.zip...
    name = source.strip("/").replace("s/", "-")
    plan, refused = download_plan(api, source, name, root, None if as_zip else job)
    with download_bar() as bar:
        for source, target in plan:
            save(api, source, target, bar)
    for _, target in plan:
        say(f"wrote {target} ({size_text(target.stat().st_size)})")
    if not plan and not refused:
        say(f"{name.replace('-', ' ')} has no outputs (yet)")
    if refused:
        fail([f"refused output name {name!r}: not a relative path inside -o" for name in refused])


def _act_on_submission(ctx: typer.Context, method: str, suffix: str, submission: int) -> None:
    """One call for the whole submission; the exit code is 1 if a job was refused."""
    outcome = api_of(ctx).call(method, f"/submissions/{submission}{suffix}")
    done = {"kill": "killed", "reschedule": "rescheduled", "delete": "deleted"}[outcome["action"]]
    say(f"submission {submission}: {len(outcome['succeeded'])} job(s) {done}")
    for reason in outcome["refused"]:
        say(reason, "red", err)
    if outcome["refused"]:
        raise typer.Exit(1)


def _act(
    ctx: typer.Context, method: str, suffix: str, jobs: list[int] | None, submission: int | None
) -> None:
    """One call per job; every job is tried, and the exit code is 1 if any was refused."""
    if submission is not None and not jobs:
        _act_on_submission(ctx, method, suffix, submission)
        return
    if submission is not None or not jobs:
        fail(["give job ids or --submission N (not both)"])
    api, failed = api_of(ctx), False
    for job in jobs:
        response = api.send(method, f"/jobs/{job}{suffix}")
        if response.status_code == 401:
            fail(error_lines(response))
        if response.is_error:
            failed = True
            for line in error_lines(response):
                say(line, "red", err)
        else:
            s = response.json()
            say(Text(f"job {job}: ").append_text(status_text(s["status"], s["minor_status"])))
    if failed:
        raise typer.Exit(1)


@app.command()
def kill(
    ctx: typer.Context,
    jobs: list[int] | None = JOBS_ARG,
    submission: int | None = SUBMISSION_OPTION,
) -> None:
    """Kill jobs (waiting or running), or every unfinished job of a submission."""
    _act(ctx, "POST", "/kill", jobs, submission)


@app.command()
def reschedule(
    ctx: typer.Context,
    jobs: list[int] | None = JOBS_ARG,
    submission: int | None = SUBMISSION_OPTION,
) -> None:
    """Run finished jobs (Failed, Killed) again, or every failed job of a submission."""
    _act(ctx, "POST", "/reschedule", jobs, submission)


@app.command("rm")
def remove(
    ctx: typer.Context,
    jobs: list[int] | None = JOBS_ARG,
    submission: int | None = SUBMISSION_OPTION,
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete a submission without asking."),
) -> None:
    """Delete jobs and their files (kill running ones first), or a whole submission (its
    unfinished jobs are killed first)."""
    if submission is not None and not jobs and not yes:
        view = api_of(ctx).call("GET", f"/submissions/{submission}")
        question = (
            f"Delete submission {submission}: {view['job_count']} job(s) of "
            f"{view['application']} with their logs and outputs?"
        )
        if not typer.confirm(question):
            raise typer.Exit(1)
    _act(ctx, "DELETE", "", jobs, submission)
