"""The DiracX harness against a real DiracX 0.7.0: tokens, sandboxes, the test site, restarts."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.diracx.fixtures import ADMIN_GROUP, JANE, USER_GROUP, DiracX
from tests.diracx.site import Site, extract, upload_sandbox

RUN_SH = b"""#!/bin/sh
echo "hello $1"
echo "home=$HOME job=$DIRACJOBID"
echo "$1" > result.txt
"""


@pytest.fixture
def jane(diracx: DiracX) -> Iterator[httpx.Client]:
    with diracx.client(JANE, USER_GROUP) as client:
        yield client


def tar_bz2(files: dict[str, bytes]) -> bytes:
    """A sandbox as a client makes it: the files at the top of a tar.bz2."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size, member.mode, member.mtime = len(data), 0o755, 1_700_000_000
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def submit(client: httpx.Client, jdl: str) -> int:
    response = client.post("/api/jobs/jdl", json=[jdl])
    assert response.status_code == 201, response.text
    [job] = response.json()
    assert job["Status"] == "Received"
    return int(job["JobID"])


def job(client: httpx.Client, job_id: int, *parameters: str) -> dict[str, Any]:
    response = client.post(
        "/api/jobs/search",
        json={
            "parameters": ["JobID", "Status", "MinorStatus", *parameters],
            "search": [{"parameter": "JobID", "operator": "eq", "value": job_id}],
        },
    )
    assert response.status_code == 200, response.text
    [row] = response.json()
    return dict(row)


def wait_status(client: httpx.Client, job_id: int, *statuses: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while (status := str(job(client, job_id)["Status"])) not in statuses:
        assert time.monotonic() < deadline, f"job {job_id} still {status}, not in {statuses}"
        time.sleep(0.1)
    return status


def output_files(client: httpx.Client, job_id: int, target: Path) -> set[str]:
    """Download the job's output sandbox as its owner and unpack it; the names in it."""
    response = client.get(f"/api/jobs/{job_id}/sandbox/output")
    assert response.status_code == 200, response.text
    [pfn] = response.json()  # listed without its "SB:SandboxSE|" prefix
    url = client.get("/api/jobs/sandbox", params={"pfn": pfn})
    assert url.status_code == 200, url.text
    blob = httpx.get(url.json()["url"], timeout=30)  # presigned: no bearer
    assert blob.status_code == 200
    extract(blob.content, pfn, target)
    return {p.name for p in target.iterdir()}


def test_tokens_come_from_the_legacy_exchange_with_the_registry_checks(diracx: DiracX) -> None:
    with diracx.client(JANE, USER_GROUP) as client:
        info = client.get("/api/auth/userinfo").json()
    assert (info["preferred_username"], info["vo"], info["dirac_group"]) == (
        JANE,
        diracx.vo,
        USER_GROUP,
    )
    assert "NormalUser" in info["properties"]
    refused = diracx.exchange(JANE, ADMIN_GROUP)  # jane is not in cta_admin
    assert refused.status_code == 403, refused.text
    assert diracx.exchange("stranger", USER_GROUP).status_code == 400
    with pytest.raises(PermissionError):
        diracx.token(JANE, ADMIN_GROUP)
    bad_secret = httpx.get(
        f"{diracx.url}/api/auth/legacy-exchange",
        params={"preferred_username": JANE, "scope": f"vo:{diracx.vo} group:{USER_GROUP}"},
        headers={"Authorization": "Bearer diracx:legacy:bm90LXRoZS1zZWNyZXQ="},
    )
    assert bad_secret.status_code in (401, 403), bad_secret.text


def test_a_job_with_an_input_sandbox_runs_to_done(
    diracx: DiracX, jane: httpx.Client, site: Site, tmp_path: Path
) -> None:
    blob = tar_bz2({"run.sh": RUN_SH})
    pfn = upload_sandbox(jane, blob)
    assert pfn.startswith(f"SB:SandboxSE|/S3/sandboxes/{diracx.vo}/{USER_GROUP}/{JANE}/sha256:")
    assert pfn.endswith(".tar.bz2")
    # Content addressed: the same bytes again are not uploaded again (no URL is given).
    again = jane.post(
        "/api/jobs/sandbox",
        json={
            "checksum_algorithm": "sha256",
            "checksum": pfn.rsplit("sha256:", 1)[1].split(".")[0],
            "size": len(blob),
            "format": "tar.bz2",
        },
    )
    assert again.status_code == 200, again.text
    assert again.json()["url"] is None and again.json()["pfn"] == pfn

    job_id = submit(
        jane,
        f"""[
            JobName = "harness";
            Executable = "run.sh";
            Arguments = "world";
            InputSandbox = {{"{pfn}"}};
            OutputSandbox = {{"std.out", "std.err", "result.txt"}};
            StdOutput = "std.out";
            StdError = "std.err";
        ]""",
    )
    # Upstream issue #756: a JDL's input sandbox is not assigned to the job; the site reads
    # the PFN from the JDL.
    assert jane.get(f"/api/jobs/{job_id}/sandbox/input").json() == []

    [run] = [r for r in site.run_once() if r.job_id == job_id]
    assert (run.status, run.exit_code, run.error) == ("Done", 0, None)

    row = job(jane, job_id, "LoggingInfo")
    assert (row["Status"], row["MinorStatus"]) == ("Done", "Execution Complete")
    history = [entry["Status"] for entry in row["LoggingInfo"]]
    assert history[0] == "Received" and history[-1] == "Done"
    for status in ("Checking", "Waiting", "Matched", "Running", "Completing"):
        assert status in history
    assert {e["Source"] for e in row["LoggingInfo"][1:]} == {"TestSite"}

    out = tmp_path / "out"
    assert {"std.out", "std.err", "result.txt"} <= output_files(jane, job_id, out)
    stdout = (out / "std.out").read_text()
    assert "hello world" in stdout
    assert f"job={job_id}" in stdout
    assert (out / "result.txt").read_text() == "world\n"


def test_a_failing_job_ends_failed_with_its_exit_status(
    jane: httpx.Client, site: Site, tmp_path: Path
) -> None:
    job_id = submit(
        jane,
        """[
            Executable = "/bin/sh";
            Arguments = "-c 'echo oops >&2 && exit 3'";
            OutputSandbox = {"std.out", "std.err"};
            StdOutput = "std.out";
            StdError = "std.err";
        ]""",
    )
    [run] = [r for r in site.run_once() if r.job_id == job_id]
    assert (run.status, run.exit_code) == ("Failed", 3)
    row = job(jane, job_id)
    assert (row["Status"], row["MinorStatus"]) == ("Failed", "Application Finished With Errors")
    out = tmp_path / "out"
    assert "std.err" in output_files(jane, job_id, out)
    assert (out / "std.err").read_text() == "oops\n"


def test_a_job_killed_while_running_is_stopped(jane: httpx.Client, site: Site) -> None:
    job_id = submit(jane, '[Executable = "/bin/sleep"; Arguments = "60";]')
    started = time.monotonic()
    with site.running():
        # Its application started: the site's last status before it, so that the kill's
        # timestamp is after all of the site's (an earlier one would not be the job's status).
        deadline = time.monotonic() + 30
        while (row := job(jane, job_id))["MinorStatus"] != "Application":
            assert time.monotonic() < deadline, f"job {job_id} never ran its application: {row}"
            time.sleep(0.05)
        killed = jane.patch(
            "/api/jobs/status",
            json={
                str(job_id): {
                    datetime.now(UTC).isoformat(): {
                        "Status": "Killed",
                        "MinorStatus": "Marked for termination",
                        "Source": "jane",
                    }
                }
            },
        )
        assert killed.status_code == 200, killed.text
        deadline = time.monotonic() + 30  # the site polls DiracX; a loaded machine is slow
        while not any(r.job_id == job_id for r in site.runs):
            assert time.monotonic() < deadline, "the site did not let go of the killed job"
            time.sleep(0.05)
    [run] = [r for r in site.runs if r.job_id == job_id]
    assert run.status == "Running" and run.error and "Killed" in run.error
    assert time.monotonic() - started < 20
    assert job(jane, job_id)["Status"] == "Killed"


def test_jobs_survive_diracx_stopped_and_restarted_mid_batch(
    diracx: DiracX, jane: httpx.Client, site: Site
) -> None:
    jdl = '[Executable = "/bin/sh"; Arguments = "-c \'sleep 0.3 && echo ok\'";]'
    job_ids = [submit(jane, jdl) for _ in range(4)]
    with site.running():
        wait_status(jane, job_ids[0], "Running", "Completing", "Done")
        with diracx.stopped(kill=True):  # a crash: no graceful shutdown
            assert not diracx.running
        restart = diracx.info["restart_seconds"]
        for job_id in job_ids:
            assert wait_status(jane, job_id, "Done", "Failed") == "Done"
    assert restart < 30
    search = jane.post(
        "/api/jobs/search",
        json={
            "parameters": ["JobID", "Status"],
            "search": [{"parameter": "JobID", "operator": "in", "values": job_ids}],
        },
    )
    assert {row["JobID"]: row["Status"] for row in search.json()} == dict.fromkeys(job_ids, "Done")
