"""The `concordia` CLI against a real server process running real jobs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from concordia.cli import app
from concordia.settings import SHIPPED_APPLICATIONS
from tests.conftest import LiveServer, free_port, make_settings, seed_images

pytestmark = pytest.mark.slow

runner = CliRunner()


def cli(server: LiveServer, *args: str, input: str | None = None) -> Result:
    """The CLI in-process, pointed at the server by its options (as a user passes them)."""
    return runner.invoke(app, ["--url", server.url, "--token", server.token, *args], input=input)


def ok(server: LiveServer, *args: str) -> Result:
    result = cli(server, *args)
    assert result.exit_code == 0, result.output
    return result


def submit(server: LiveServer, *params: str) -> dict[str, Any]:
    args = [arg for p in params for arg in ("-p", p)]
    view: dict[str, Any] = json.loads(ok(server, "submit", "hello", *args, "--json").stdout)
    return view


def job_detail(server: LiveServer, job: int) -> dict[str, Any]:
    detail: dict[str, Any] = json.loads(ok(server, "status", str(job), "--json").stdout)
    return detail


def wait_status(server: LiveServer, job: int, *wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (status := job_detail(server, job)["status"]) not in wanted:
        assert time.monotonic() < deadline, f"job {job} still {status}, wanted {wanted}"
        time.sleep(0.2)


def done_jobs(server: LiveServer, *params: str) -> list[int]:
    view = submit(server, *params)
    for job in view["job_ids"]:
        wait_status(server, job, "Done", "Failed", "Killed")
    return [int(job) for job in view["job_ids"]]


def test_apps_lists_hello_with_its_parameters(live_server: LiveServer) -> None:
    listing = ok(live_server, "apps").stdout
    assert "hello" in listing and "jobs=1" in listing and "message=hello" in listing

    detail = ok(live_server, "app", "hello").stdout
    for expected in ("first_run", "exit_code", "1 .. 1000", "Number of jobs"):
        assert expected in detail

    missing = cli(live_server, "app", "nosuch")
    assert missing.exit_code == 1
    assert "no application named 'nosuch'" in missing.stderr


def test_submit_wait_reports_every_job_done(live_server: LiveServer) -> None:
    result = ok(
        live_server,
        "submit",
        "hello",
        "-p",
        "jobs=3",
        "-p",
        "message=hi",
        "--wait",
        "--timeout",
        "60",
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("submission ") and "3 job(s) on local" in lines[0]
    assert lines[1].startswith("jobs: ")
    # The summary table: every job is Done, and nothing else is counted.
    assert any("Done" in line and "3" in line for line in lines)
    assert "Failed" not in result.stdout

    submission = lines[0].split()[1].rstrip(":")
    listing = ok(live_server, "jobs", "--status", "Done", "--submission", submission).stdout
    assert listing.count("hello_") == 3
    assert "page 1 of 1 (3 jobs)" in listing
    assert "page 1 of 1 (0 jobs)" in ok(live_server, "jobs", "--status", "Failed").stdout


def test_a_failing_job_makes_wait_exit_1(live_server: LiveServer) -> None:
    result = cli(live_server, "submit", "hello", "-p", "exit_code=3", "--wait", "--timeout", "60")
    assert result.exit_code == 1, result.output
    assert "Failed" in result.stdout


def test_bad_input_is_reported_and_changes_nothing(live_server: LiveServer) -> None:
    result = cli(live_server, "submit", "hello", "-p", "jobs=0", "--wait")
    assert result.exit_code == 1
    assert "parameters.jobs: must be >= 1" in result.stderr
    assert json.loads(ok(live_server, "jobs", "--json").stdout)["total"] == 0

    malformed = cli(live_server, "submit", "hello", "-p", "jobs")
    assert malformed.exit_code == 2
    assert "expected key=value" in malformed.stderr

    for command in ("status", "logs", "kill"):
        unknown = cli(live_server, command, "999999")
        assert unknown.exit_code == 1
        assert "no job 999999" in unknown.stderr

    wrong = runner.invoke(app, ["--url", live_server.url, "--token", "tok-7f3a9", "jobs"])
    assert wrong.exit_code == 1
    assert "check --token" in wrong.stderr
    assert "tok-7f3a9" not in wrong.output


def test_the_data_lake_options_are_checked(live_server: LiveServer) -> None:
    # This server has no data lake: asking for it is refused, naming the option's field.
    wanted = cli(live_server, "submit", "hello", "--datalake")
    assert wanted.exit_code == 1
    assert "datalake: this server has no data lake" in wanted.stderr
    mixed = cli(live_server, "submit", "hello", "--no-datalake", "--rse", "SOME_DISK")
    assert mixed.exit_code == 1
    assert "not with --no-datalake" in mixed.stderr
    assert json.loads(ok(live_server, "jobs", "--json").stdout)["total"] == 0
    plan = ok(live_server, "submit", "hello", "--no-datalake", "--dry-run").stdout
    assert "data outputs: not to the data lake" in plan


def test_status_and_logs_of_finished_jobs(live_server: LiveServer) -> None:
    jobs = done_jobs(live_server, "jobs=2", "first_run=7", "message=hi")
    shown = ok(live_server, "status", str(jobs[0])).stdout
    assert "hello_7" in shown and "message=hi" in shown and "exit code" in shown
    # The warning shows exactly when the job ran unconfined.
    unconfined = job_detail(live_server, jobs[0])["isolated"] is False
    assert ("this job ran without isolation" in shown) == unconfined
    history = shown[shown.index("history") :]
    assert history.index("Received") < history.index("Running") < history.index("Done")

    assert ok(live_server, "logs", str(jobs[0])).stdout.startswith("run 7: hi\n")
    assert "run 8: hi" in ok(live_server, "logs", str(jobs[1])).stdout
    stderr_log = ok(live_server, "logs", str(jobs[0]), "--stream", "stderr").stdout
    assert stderr_log == "hello from stderr (run 7)\n"


def test_logs_follow_a_running_job_to_its_end(live_server: LiveServer) -> None:
    [job] = submit(live_server, "sleep=2", "message=[bold]x[/bold]")["job_ids"]
    started = time.monotonic()
    followed = ok(live_server, "logs", str(job), "-f", "--timeout", "30").stdout
    # The first line, raw (no Rich markup applied), and the last, written after the sleep.
    assert followed.startswith("run 1: [bold]x[/bold]\n")
    assert followed.endswith("run 1 finished with code 0\n")
    assert time.monotonic() - started > 1
    assert job_detail(live_server, job)["status"] == "Done"


def test_get_writes_each_output_or_one_zip(live_server: LiveServer, tmp_path: Path) -> None:
    jobs = done_jobs(live_server, "jobs=2", "first_run=4", "message=hi")
    target = tmp_path / "results"
    result = ok(live_server, "get", str(jobs[1]), "-o", str(target))
    assert (target / "result-5.txt").read_text() == "run=5\nmessage=hi\n"
    assert (target / "std.out").read_text().startswith("run 5: hi\n")
    assert "result-5.txt" in result.stdout
    assert not list(target.rglob("*.part"))

    ok(live_server, "get", str(jobs[0]), "-o", str(tmp_path), "--zip")
    with zipfile.ZipFile(tmp_path / f"job-{jobs[0]}-outputs.zip") as archive:
        assert archive.testzip() is None
        result_file = next(n for n in archive.namelist() if n.endswith("result-4.txt"))
        assert archive.read(result_file) == b"run=4\nmessage=hi\n"


def test_kill_reschedule_and_rm(live_server: LiveServer) -> None:
    first, second = submit(live_server, "jobs=2", "sleep=60")["job_ids"]
    wait_status(live_server, first, "Running")
    wait_status(live_server, second, "Running")

    killed = ok(live_server, "kill", str(first))
    assert f"job {first}: Killed" in killed.stdout
    assert job_detail(live_server, first)["status"] == "Killed"

    # Killing again is refused with the server's reason; the other job is still acted on.
    again = cli(live_server, "kill", str(first), str(second))
    assert again.exit_code == 1
    assert f"job {first} is Killed: it cannot be killed" in again.stderr
    assert f"job {second}: Killed" in again.stdout

    # A killed job rescheduled runs again, to its end.
    [short] = submit(live_server, "sleep=3")["job_ids"]
    wait_status(live_server, short, "Running")
    ok(live_server, "kill", str(short))
    rescheduled = ok(live_server, "reschedule", str(short))
    assert f"job {short}: Received" in rescheduled.stdout
    wait_status(live_server, short, "Done")
    detail = job_detail(live_server, short)
    assert detail["reschedule_count"] == 1 and detail["exit_code"] == 0

    assert f"job {first}: Deleted" in ok(live_server, "rm", str(first)).stdout
    assert "(1 jobs)" in ok(live_server, "jobs", "--status", "Killed").stdout


def test_a_whole_submission_killed_downloaded_and_removed(
    live_server: LiveServer, tmp_path: Path
) -> None:
    view = submit(live_server, "jobs=2", "sleep=60")
    sid, jobs = view["id"], view["job_ids"]
    wait_status(live_server, jobs[0], "Running")
    assert cli(live_server, "kill").exit_code != 0  # neither ids nor a submission
    assert cli(live_server, "kill", str(jobs[0]), "--submission", str(sid)).exit_code != 0
    killed = ok(live_server, "kill", "--submission", str(sid))
    assert f"submission {sid}: 2 job(s) killed" in killed.stdout
    assert {job_detail(live_server, j)["status"] for j in jobs} == {"Killed"}

    ok(live_server, "get", "--submission", str(sid), "-o", str(tmp_path))
    with zipfile.ZipFile(tmp_path / f"submission-{sid}-outputs.zip") as archive:
        assert {f"job-{j}/std.out" for j in jobs} <= set(archive.namelist())

    refused = cli(live_server, "rm", "--submission", str(sid), input="n\n")
    assert refused.exit_code == 1 and "Delete submission" in refused.stdout
    assert job_detail(live_server, jobs[0])["status"] == "Killed"  # nothing changed
    removed = ok(live_server, "rm", "--submission", str(sid), "--yes")
    assert f"submission {sid}: 2 job(s) deleted" in removed.stdout
    assert cli(live_server, "get", "--submission", str(sid), "-o", str(tmp_path)).exit_code != 0


def test_an_unreachable_server_exits_2() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["--url", url, "--token", "x", "apps"])
    assert result.exit_code == 2
    assert f"cannot reach Concordia at {url}" in result.stderr

    garbled = runner.invoke(app, ["--url", "localhost", "--token", "x", "apps"])
    assert garbled.exit_code == 2
    assert "not a Concordia URL: 'localhost'" in garbled.stderr


def test_jobs_without_isolation_are_flagged_everywhere(tmp_path: Path, image_seed: Path) -> None:
    apps = tmp_path / "apps"
    shutil.copytree(SHIPPED_APPLICATIONS, apps)
    (apps / "plain.yaml").write_text("name: plain\ntitle: Plain\ncommand: echo plain\n")
    seed_images(make_settings(tmp_path / "var"), image_seed)
    port = free_port()
    env = {
        **os.environ,
        "CONCORDIA_DATA_DIR": str(tmp_path / "var"),
        "CONCORDIA_APPLICATIONS_DIR": str(apps),
        "CONCORDIA_PORT": str(port),
        "CONCORDIA_POLL_INTERVAL": "0.5",
        "CONCORDIA_LOCAL_ISOLATION": "none",
    }
    server = LiveServer(data_dir=tmp_path / "var", port=port, env=env)
    try:
        server.start()
        reason = "local — jobs run WITHOUT isolation: isolation is turned off (local_isolation"
        assert reason in server.output()
        assert reason in ok(server, "me").stdout
        # A job without an image runs on the host, and says so.
        plain = json.loads(ok(server, "submit", "plain", "--json").stdout)["job_ids"][0]
        wait_status(server, plain, "Done")
        assert "this job ran without isolation" in ok(server, "status", str(plain)).stdout
        # A job in an image cannot run without a container runtime, and says why.
        [job] = done_jobs(server)
        detail = job_detail(server, job)
        assert detail["status"] == "Failed"
        assert detail["minor_status"].startswith(
            "Cannot start application: its image needs a container runtime (isolation is turned off"
        )
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill(signal.SIGTERM)


def run_concordia(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "concordia", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_finds_the_token_in_the_data_dir(live_server: LiveServer) -> None:
    # As a user who ran `make run`: no token anywhere but in the server's data dir.
    env = {"CONCORDIA_DATA_DIR": str(live_server.data_dir), "CONCORDIA_URL": live_server.url}
    me = run_concordia(env, "me")
    assert me.returncode == 0, me.stderr
    assert me.stdout.startswith("local") and "backend local" in me.stdout
    assert live_server.token not in me.stdout + me.stderr

    banner = live_server.output()
    kind = "PostgreSQL" if live_server.database_url.startswith("postgresql") else "SQLite"
    assert "Concordia is running" in banner and f"Database:  {kind} (" in banner
    assert "Open this URL to log in (one-time link):" in banner
    assert f"{live_server.data_dir.resolve()}/api-token" in banner
    assert f"Images:    {live_server.data_dir.resolve()}/images, built with mmdebstrap" in banner
    assert "containers: bwrap" in banner
    assert "+aiosqlite" not in banner and "+asyncpg" not in banner  # no URL, no password
    assert live_server.token not in banner


def test_db_upgrade_creates_the_database(tmp_path: Path) -> None:
    env = {"CONCORDIA_DATA_DIR": str(tmp_path / "var")}
    result = run_concordia(env, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "database is up to date: SQLite" in result.stdout
    assert (tmp_path / "var" / "concordia.db").is_file()


@pytest.mark.parametrize("args", [["--help"], ["submit", "--help"]])
def test_help_works_without_any_settings(args: list[str]) -> None:
    # An invalid setting only matters to commands that need settings.
    result = run_concordia({"CONCORDIA_PORT": "not-a-port"}, *args)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_the_server_log_never_keeps_the_login_token(live_server: LiveServer) -> None:
    login = next(
        line.split()[-1] for line in live_server.output().splitlines() if "/login?token=" in line
    )
    token = login.split("token=", 1)[1]
    httpx.get(login, follow_redirects=False)
    deadline = time.monotonic() + 5
    while "/login?token=***" not in live_server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    access_lines = [line for line in live_server.output().splitlines() if "GET /login" in line]
    assert access_lines and all(token not in line for line in access_lines)
