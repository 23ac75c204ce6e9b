"""How the job commands show what the server says: applications' rules, a new submission,
a dry run's plan, the progress of jobs waited for, a page of jobs, a job's detail."""

from __future__ import annotations

import math
import shlex
import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from concordia.cli.common import POLL_SECONDS, Api, cell, fail, out, say, status_text, table, when
from concordia.cli.image_views import image_line
from concordia.core.units import duration


def id_list(ids: list[int]) -> str:
    """Job ids as few words as possible: 3 to 7 for a run of them."""
    if len(ids) > 2 and ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]} to {ids[-1]}"
    return " ".join(map(str, ids))


def why_not(application: dict[str, Any]) -> list[str]:
    """Why an application cannot be submitted: its image cannot be built here, or the caller
    is not in its VOs."""
    return [application[key] for key in ("unavailable", "not_allowed") if application.get(key)]


def rule_text(spec: dict[str, Any]) -> str:
    """What values a parameter or build argument takes: its choices, length or range."""
    if spec["type"] == "enum":
        return " | ".join(spec["choices"])
    if spec["type"] == "str":
        pattern = f", matching {spec['pattern']}" if spec.get("pattern") else ""
        return f"≤ {spec['max_length']} chars{pattern}"
    low, high = spec.get("min"), spec.get("max")
    if low is not None and high is not None:
        return f"{low} .. {high}"
    return f">= {low}" if low is not None else (f"<= {high}" if high is not None else "")


def wait_for(api: Api, view: dict[str, Any], timeout: float, show: bool) -> dict[str, Any]:
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


#: Jobs a dry run lists before it says how many more there are (--json has them all).
PLAN_ROWS = 10


def show_plan(plan: dict[str, Any]) -> None:
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


def say_submitted(api: Api, view: dict[str, Any]) -> None:
    """What a new submission made: its jobs, where their data outputs go, its image."""
    say(f"submission {view['id']}: {view['job_count']} job(s) on {view['backend']}")
    say(f"jobs: {id_list(view['job_ids'])}")
    if lake := view.get("datalake"):
        say(f"data outputs go to the data lake: dataset {lake['did']} on {lake['rse']}")
    if view.get("image_id"):
        say(image_line(api, view["image_id"], view["application"], view["build_args"]))


def show_job_page(data: dict[str, Any], page: int, per_page: int) -> None:
    """A page of jobs as a table, and where it is among the pages."""
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


def show_job(d: dict[str, Any]) -> None:
    """A job's detail, then its status history."""
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
