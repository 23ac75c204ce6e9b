"""The job commands: applications, submissions, jobs (status, logs, outputs, kill, rm), me."""

from __future__ import annotations

import math
import shlex
import sys
import time
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from concordia.cli.common import (
    JSON_OPTION,
    POLL_SECONDS,
    TIMEOUT_OPTION,
    Api,
    api_of,
    app,
    cell,
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
    when,
)
from concordia.cli.image_views import image_line
from concordia.core.units import duration, size_text

JOB_ARG = typer.Argument(..., help="The job id.", show_default=False)
JOBS_ARG = typer.Argument(None, help="Job ids.", show_default=False)
SUBMISSION_OPTION = typer.Option(
    None, "--submission", "-s", help="Every job of this submission.", show_default=False
)


class LogStream(StrEnum):
    stdout = "stdout"
    stderr = "stderr"


def _id_list(ids: list[int]) -> str:
    if len(ids) > 2 and ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]} to {ids[-1]}"
    return " ".join(map(str, ids))


@app.command("apps")
def list_apps(ctx: typer.Context) -> None:
    """The applications, their parameters, and why one cannot be run (by you, or here)."""
    rows, reasons = [], []
    for a in api_of(ctx).call("GET", "/applications"):
        params = [
            n if p.get("default") is None else f"{n}={p['default']}"
            for n, p in a["parameters"].items()
        ]
        why = _why_not(a)
        rows.append([a["name"], a["title"], "no" if why else "yes", ", ".join(params)])
        reasons += [f"{a['name']}: {reason}" for reason in why]
    out.print(table("name, title, usable, parameters (defaults)", rows))
    for reason in reasons:
        say(reason, "yellow")


def _why_not(application: dict[str, Any]) -> list[str]:
    """Why an application cannot be submitted: its image cannot be built here, or the caller
    is not in its VOs."""
    return [application[key] for key in ("unavailable", "not_allowed") if application.get(key)]


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
    a = api_of(ctx).call("GET", f"/applications/{quote(name, safe='')}")
    say(f"{a['name']}: {a['title']}", "bold")
    if a.get("description"):
        say(a["description"].strip())
    for reason in _why_not(a):
        say(f"cannot be submitted: {reason}", "bold yellow")
    for title in ("parameters", "build_args"):
        rows = [
            [n, p["type"], p.get("default"), _rule(p), p.get("help")] for n, p in a[title].items()
        ]
        if rows:
            out.print(table("name, type, default, range / choices, help", rows, title))


def _wait_for(api: Api, view: dict[str, Any], timeout: float, show: bool) -> dict[str, Any]:
    """Poll the submission until every job is final, with a progress bar."""
    deadline = time.monotonic() + timeout if timeout else math.inf
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=out, disable=not show) as bar:
        task = bar.add_task("", total=view["job_count"])
        while True:
            p = view["progress"]
            counts = "  ".join(f"{k} {p[k]}" for k in ("waiting", "running", "done", "failed"))
            if view["handed_over"] < view["job_count"] and p["waiting"]:
                counts = f"handed to {view['backend']} {view['handed_over']}  {counts}"
            finished = p["done"] + p["failed"] + p["killed"] + p["deleted"]
            bar.update(task, completed=finished, description=counts)
            if view["finished"]:
                return view
            if time.monotonic() >= deadline:
                fail(f"stopped waiting after {timeout:g} s; the jobs go on")
            time.sleep(POLL_SECONDS)
            view = api.call("GET", f"/submissions/{view['id']}")


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
    if dry_run:
        plan = api.call("POST", "/submissions", json=body, params={"dry_run": "true"})
        return print_json(plan) if as_json else _show_plan(plan)
    view = api.call("POST", "/submissions", json=body)
    if not as_json:
        say(f"submission {view['id']}: {view['job_count']} job(s) on {view['backend']}")
        say(f"jobs: {_id_list(view['job_ids'])}")
        if lake := view.get("datalake"):
            say(f"data outputs go to the data lake: dataset {lake['did']} on {lake['rse']}")
        if view.get("image_id"):
            say(image_line(api, view["image_id"], view["application"], view["build_args"]))
    if wait:
        view = _wait_for(api, view, timeout, show=not as_json)
    if as_json:
        print_json(view)
    elif wait:
        rows = [[status_text(s), n] for s, n in sorted(view["counts"].items())]
        out.print(table("status, jobs", rows))
    if wait and view["counts"].get("Done", 0) != view["job_count"]:
        raise typer.Exit(1)


#: Jobs a dry run lists before it says how many more there are (--json has them all).
PLAN_ROWS = 10


def _show_plan(plan: dict[str, Any]) -> None:
    """What a submission would create: its jobs, the first JDL, the CPU time it needs."""
    count = plan["job_count"]
    say(f"dry run: {count} job(s) on {plan['backend']} as {plan['vo'] or 'no VO'}; nothing stored")
    if lake := plan.get("datalake"):
        did = lake["did"] or f"{lake['scope']}:<application>.<submission id>.<uuid>"
        say(f"data outputs to the data lake: dataset {did} on {lake['rse']}")
    else:
        say("data outputs: not to the data lake (they come back with the outputs)")
    if plan["image_id"]:
        state = plan["image_status"] or "not built yet: a submission builds it first"
        say(f"image {plan['image_id'][:12]}: {state}")
    if cpu := plan["cpu"]:
        per_job, total = duration(cpu["per_job_seconds"]), duration(cpu["total_seconds"])
        limit = duration(cpu["limit_seconds"])
        say(f"CPU time (estimate): {per_job} per job, {total} in all; limit {limit} per job")
        if cpu["warning"]:
            say(f"⚠ {cpu['warning']}", "bold yellow")
    shown = plan["jobs"][:PLAN_ROWS]
    rows = [[j["index"] + 1, j["name"], shlex.join(j["argv"])] for j in shown]
    out.print(table("job, name, command", rows))
    if count > len(shown):
        say(f"… and {count - len(shown)} more (--json lists every job and JDL)")
    say("JDL of the first job:", "bold")
    out.print(Text(plan["jobs"][0]["jdl"]))


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
    rows = [
        [
            j["id"],
            j["name"],
            j["application"],
            status_text(j["status"]),
            j["minor_status"],
            when(j["updated_at"], zone=False),
        ]
        for j in data["items"]
    ]
    out.print(table("id, name, application, status, minor status, updated (UTC)", rows))
    plus = "+" if data.get("more") else ""  # counted up to a bound: more than that
    pages = max(1, math.ceil(data["total"] / per_page))
    say(f"page {page} of {pages}{plus} ({data['total']}{plus} jobs)")


@app.command()
def status(ctx: typer.Context, job: int = JOB_ARG, as_json: bool = JSON_OPTION) -> None:
    """A job's detail and its status history."""
    d = api_of(ctx).call("GET", f"/jobs/{job}")
    if as_json:
        return print_json(d)
    info = Table.grid(padding=(0, 2))
    for label, value in (
        ("job", f"{d['id']} ({d['name']}) of {d['application']}, submission {d['submission_id']}"),
        ("status", status_text(d["status"], d["minor_status"])),
        ("parameters", ", ".join(f"{k}={v}" for k, v in d["parameters"].items())),
        ("backend", f"{d['backend']} {d['backend_ref'] or ''}"),
        ("isolation", {True: "isolated", False: "NONE", None: "not known yet"}[d["isolated"]]),
        ("exit code", d["exit_code"]),
        ("rescheduled", f"{d['reschedule_count']} time(s)"),
        ("created", when(d["created_at"])),
        ("started", when(d["started_at"])),
        ("ended", when(d["ended_at"])),
    ):
        info.add_row(Text(label, style="bold"), cell(value))
    out.print(info)
    if d["isolated"] is False:
        say("⚠ this job ran without isolation (see `concordia me`)", "bold yellow")
    rows = [
        [when(h["timestamp"], zone=False), status_text(h["status"]), h["minor_status"], h["source"]]
        for h in d["history"]
    ]
    out.print(table("time (UTC), status, minor status, source", rows, "history"))


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
        with api.stream(path) as response, partial.open("wb") as fh:
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
    refused: list[str] = []
    source = _one_target(job, submission)  # /jobs/N or /submissions/N: job-N-outputs.zip...
    name = source.strip("/").replace("s/", "-")
    # -o out.zip names the file itself; a directory gets job-N-outputs.zip in it.
    named = root.suffix.lower() == ".zip" and not root.is_dir()
    archive = root if named else root / f"{name}-outputs.zip"
    plan = [(f"{source}/outputs.zip", archive)]  # (API path, file)
    if not as_zip and job is not None:
        files = _all_outputs(api, job)
        refused = [f["path"] for f in files if _safe_relative(f["path"]) is None]
        plan = [
            (f"/jobs/{job}/outputs/{quote(f['path'])}", root / relative)
            for f in files
            if (relative := _safe_relative(f["path"]))
        ]
    with download_bar() as bar:
        for source, target in plan:
            _save(api, source, target, bar)
    for _, target in plan:
        say(f"wrote {target} ({size_text(target.stat().st_size)})")
    if not plan and not refused:
        say(f"{name.replace('-', ' ')} has no outputs (yet)")
    if refused:
        fail([f"refused output name {name!r}: not a relative path inside -o" for name in refused])


def _all_outputs(api: Api, job: int) -> list[dict[str, Any]]:
    """Every output of the job, a page at a time."""
    files: list[dict[str, Any]] = []
    page, total = 1, 1
    while len(files) < total:
        found = api.call("GET", f"/jobs/{job}/outputs", params={"page": page, "per_page": 500})
        if not found["items"]:
            break
        files += found["items"]
        page, total = page + 1, found["total"]
    return files


def _one_target(job: int | None, submission: int | None) -> str:
    """The API path of the job or the submission asked for (exactly one of them)."""
    if (job is None) == (submission is None):
        fail(["give a job id or --submission N (not both)"])
    return f"/jobs/{job}" if submission is None else f"/submissions/{submission}"


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
