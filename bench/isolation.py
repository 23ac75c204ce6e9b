"""What isolating and bounding a job costs at its start: its sandbox as the local backend
starts it, under the full default bounds, against bubblewrap run directly.

Ours: ``true`` as a job without an image, started as the local backend starts one: by the
slot's fork server (the job's user, in the slot's memory, pids and cpuacct cgroups with the
job's bounds written) with the job's rlimits, bwrap with the job's own user, PID, IPC, UTS,
network, cgroup and mount namespaces, none nested, the minimal /etc, tmpfs /tmp and /dev/shm
of their default size, a read-only root. Direct: the command that runs a job in bubblewrap
(user namespace, all namespaces, /proc, /dev, a tmpfs /tmp: the reference command) on the
same root (the host's /usr, the same /etc). One run of each in turn, N times. For reference it
also prints the median of a whole job through the backend (job directory, outputs, status
updates; bench/job_start.py compares that part). Last line: `ratio <x>` (median ours / median
direct). Goal: <= 1.3.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from forked import run_to_end
from job_start import print_ratio, through_backend
from options import benchmark, parse

from concordia.backends import job_process, sandbox
from concordia.backends.cgroup import slot_cgroup
from concordia.backends.local import LocalBackend
from concordia.settings import Settings


def reference_command(etc: Path, workdir: Path) -> list[str]:
    """bubblewrap as one runs a job in it by hand, on the host's /usr with ``etc``."""
    cmd = ["bwrap", "--unshare-user", "--uid", "1000", "--gid", "1000"]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for path in sandbox.MERGED_DIRS:
        if Path(path).is_symlink():
            cmd += ["--symlink", str(Path(path).readlink()), path]
    cmd += ["--ro-bind", str(etc), "/etc", "--bind", str(workdir), "/work"]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    cmd += ["--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    cmd += ["--setenv", "PATH", sandbox.SANDBOX_PATH, "--setenv", "HOME", "/work"]
    return [*cmd, "--chdir", "/work", "--hostname", "job", "--", "true"]


def side_by_side(settings: Settings, runs: int) -> tuple[list[float], list[float]]:
    """(ours, direct): one of each in turn, ours through a slot's fork server."""
    limits = LocalBackend(settings).defaults
    etc = sandbox.minimal_etc(settings.jobs_dir)
    work = settings.jobs_dir / "bench-work"
    work.mkdir(exist_ok=True)
    sandbox.hand_over(work)
    direct_cmd = reference_command(etc, work)
    cgroup = slot_cgroup()
    server = job_process.fork_server(cgroup)
    null = os.open(os.devnull, os.O_WRONLY)

    def ours() -> float:
        cgroup.configure(limits)
        started = time.perf_counter()
        code = run_to_end(
            ["true"], work, forkserver=server, stdout=null, stderr=null, cpu_time=60,
            isolated=True, cgroup=cgroup, etc=etc, limits=limits,
        )  # fmt: skip
        if code != 0:
            raise RuntimeError(f"the sandboxed job failed: exit code {code}")
        return time.perf_counter() - started

    mine, direct = [], []
    try:
        ours()  # the fork server starts with the slot's first job
        for _ in range(runs):
            mine.append(ours())
            started = time.perf_counter()
            subprocess.run(direct_cmd, check=True, stdin=subprocess.DEVNULL)
            direct.append(time.perf_counter() - started)
    finally:
        server.close()
        os.close(null)
        cgroup.remove()
    return mine, direct


def main() -> None:
    parser = benchmark(__doc__)
    parser.add_argument("--runs", type=int, default=100)
    args = parse(parser, runs=3)
    with tempfile.TemporaryDirectory(prefix="concordia-bench-") as tmp:
        data_dir = Path(tmp) / "var"
        settings = Settings(data_dir=data_dir, local_slots=1)
        settings.make_data_dir()
        Path(tmp).chmod(0o711)  # the job uid passes through to the work directories
        whole, bounds = asyncio.run(through_backend(settings, max(10, args.runs // 4)))
        mine, direct = side_by_side(settings, args.runs)
    print(f"runs {args.runs}")
    print(f"bounds {bounds}")
    print(f"whole_job_through_backend_median_ms {statistics.median(whole) * 1000:.2f}")
    print_ratio(mine, direct, "sandbox_under_bounds")


if __name__ == "__main__":
    main()
