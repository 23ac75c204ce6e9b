"""The CLI says what is wrong before anything runs, and shows what a submission would make."""

from __future__ import annotations

import json

from tests.conftest import LiveServer
from tests.integration.cli.test_cli import cli, ok


def stored_jobs(server: LiveServer) -> int:
    total: int = json.loads(ok(server, "jobs", "--json").stdout)["total"]
    return total


def test_an_inverted_energy_range_is_refused_naming_both_fields(live_server: LiveServer) -> None:
    args = ("-p", "energy_min=50", "-p", "energy_max=5")
    result = cli(live_server, "submit", "showermodel", *args)
    assert result.exit_code == 1, result.output
    assert "parameters.energy_min: the minimum energy" in result.stderr
    assert "parameters.energy_max: the minimum energy" in result.stderr
    assert stored_jobs(live_server) == 0


def test_a_dry_run_shows_the_jobs_and_the_jdl_and_submits_nothing(live_server: LiveServer) -> None:
    args = ("-p", "jobs=12", "-p", "first_run=7", "-p", "message=hi")
    shown = ok(live_server, "submit", "hello", *args, "--dry-run").stdout
    assert "dry run: 12 job(s) on local" in shown and "nothing stored" in shown
    assert "hello_7" in shown and "sh hello.sh hi" in shown
    assert "… and 2 more" in shown
    assert 'JobName = "hello_7"' in shown
    plan = json.loads(ok(live_server, "submit", "hello", *args, "--dry-run", "--json").stdout)
    assert [job["name"] for job in plan["jobs"]][-1] == "hello_18"
    assert all("Executable" in job["jdl"] for job in plan["jobs"])
    assert stored_jobs(live_server) == 0


def test_a_dry_run_shows_the_cpu_time_estimate(live_server: LiveServer) -> None:
    args = ("-p", "jobs=4", "-p", "showers=700", "-p", "layout=grid-25", "-p", "primary=proton")
    shown = ok(live_server, "submit", "showermodel", *args, "--dry-run").stdout
    assert "CPU time (estimate): 530 s (9 min) per job, 2,120 s (35 min) in all" in shown
    assert "limit 600 s (10 min) per job" in shown
    assert "a slow worker node may stop it" in shown
