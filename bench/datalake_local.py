"""A local job's big output stored in the data lake through Concordia, against `rucio upload`.

Starts a throw-away Rucio (scripts/rucio-server, from .venv-rucio: `make rucio-venv`) and
`concordia serve` with the data lake on its POSIX RSE, acting as the service account for the
local user jane. Then, --runs times, alternating: a local job writes --mb MB of random bytes as
a data output, and Concordia stores it in the lake (timed from the job's "Uploading data to
the data lake" step to its Done, by the job's own history: checksum, copy, registration,
rule, dataset and metadata); then `rucio upload` (Rucio's own client, as jane, from
.venv-rucio) of the same bytes (the copy the lake holds) under another name to the same RSE,
timed as the command runs. Last line: `ratio <x>` (median Concordia / median rucio upload).
Goal: <= 1.2.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

from datalake import REPO, running_rucio  # beside this file (run as a script)
from options import benchmark, parse
from server import serve

APP = """\
name: big
title: One big data output
command: "sh big.sh {mb} {run}"
input_files: [big.sh]
outputs: ["data-*.bin"]
datalake:
  default: true
  data: ["data-*.bin"]
cpu_time: 600
parameters:
  run: {type: int, default: 1, min: 0, max: 1000000}
  mb: {type: int, default: 1024, min: 1, max: 4096}
"""
SCRIPT = 'head -c "$1"M /dev/urandom > "data-$2.bin"\n'
UPLOADING = "Uploading data to the data lake"
USER = "jane"


def client_config(state: Path, rucio: dict[str, object]) -> Path:
    """A rucio.cfg for jane's own client (no [database]: that would make it a server)."""
    accounts = rucio["accounts"]
    assert isinstance(accounts, dict)
    config = state / "jane.cfg"
    config.write_text(
        "[client]\n"
        f"rucio_host = {rucio['url']}\nauth_host = {rucio['url']}\n"
        f"auth_type = userpass\nusername = {USER}\npassword = {accounts[USER]}\n"
        f"account = {USER}\nca_cert = {rucio['ca']}\nrequest_retries = 1\n"
    )
    config.chmod(0o600)
    return config


def concordia_upload(client: object, mb: int, run: int) -> tuple[float, str]:
    """Seconds from the job's upload step to its Done; the DID stored."""
    import httpx

    assert isinstance(client, httpx.Client)
    body = {"application": "big", "parameters": {"run": run, "mb": mb}}
    answer = client.post("/api/v1/submissions", json=body)
    assert answer.status_code == 201, answer.text
    [job_id] = answer.json()["job_ids"]
    deadline = time.monotonic() + 1800
    while (job := client.get(f"/api/v1/jobs/{job_id}").json())["status"] not in (
        "Done",
        "Failed",
        "Killed",
    ):
        assert time.monotonic() < deadline, f"job {job_id} never ended"
        time.sleep(0.2)
    assert job["status"] == "Done", job["minor_status"]
    steps = {h["minor_status"]: datetime.fromisoformat(h["timestamp"]) for h in job["history"]}
    done = datetime.fromisoformat(job["history"][-1]["timestamp"])
    [stored] = client.get(f"/api/v1/jobs/{job_id}/datalake").json()
    return (done - steps[UPLOADING]).total_seconds(), stored["did"]


def main() -> None:
    parser = benchmark(__doc__)
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parse(parser, mb=4, runs=1)
    rucio_bin = REPO / ".venv-rucio" / "bin" / "rucio"
    if not rucio_bin.exists():
        raise SystemExit("the Rucio client is in .venv-rucio: `make rucio-venv` installs it")
    with tempfile.TemporaryDirectory(prefix="concordia-bench-") as tmp:
        root = Path(tmp)
        apps = root / "apps"
        apps.mkdir()
        (apps / "big.yaml").write_text(APP)
        (apps / "big.sh").write_text(SCRIPT)
        with running_rucio(root / "rucio") as rucio:
            accounts, rses = rucio["accounts"], rucio["rses"]
            assert isinstance(accounts, dict) and isinstance(rses, dict)
            config = client_config(root / "rucio", rucio)
            posix = Path(str(rucio["posix_prefix"]))
            settings = {
                "applications_dir": str(apps),
                "local_user": USER,
                "poll_interval": "0.2",
                "datalake_url": str(rucio["url"]),
                "datalake_account": str(rucio["service_account"]),
                "datalake_password": str(accounts[str(rucio["service_account"])]),
                "datalake_verify": str(rucio["ca"]),
                "datalake_rse": str(rses["posix"]),
            }
            env = {"RUCIO_CONFIG": str(config), "TMPDIR": str(root), "RUCIO_CLIENT_MODE": "1"}
            ours, theirs = [], []
            with serve(root / "var", **settings) as server, server.client() as client:
                for run in range(args.runs):
                    seconds, did = concordia_upload(client, args.mb, run)
                    ours.append(seconds)
                    print(f"concordia run {run}: {seconds:.2f} s ({did})", flush=True)
                    scope, name = did.split(":", 1)
                    [stored] = posix.rglob(name)  # the bytes the lake holds: the same file
                    copy = root / f"direct-{uuid.uuid4().hex[:8]}.bin"
                    copy.hardlink_to(stored)
                    command = [str(rucio_bin), "upload", "--rse", str(rses["posix"])]
                    command += ["--scope", scope, str(copy)]
                    started = time.perf_counter()
                    done = subprocess.run(
                        command, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True,
                        text=True,
                    )  # fmt: skip
                    theirs.append(time.perf_counter() - started)
                    # The CLI exits 0 even when nothing was uploaded: its words say.
                    output = done.stdout + done.stderr
                    if done.returncode != 0 or "ERROR" in output:
                        raise SystemExit(f"rucio upload failed:\n{output}")
                    print(f"rucio upload run {run}: {theirs[-1]:.2f} s", flush=True)
    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    print(f"size_mb {args.mb}")
    print(f"concordia_median_s {ours_s:.2f}")
    print(f"rucio_upload_median_s {theirs_s:.2f}")
    print(f"ratio {ours_s / theirs_s:.2f}")


if __name__ == "__main__":
    main()
