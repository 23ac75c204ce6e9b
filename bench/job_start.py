"""Start overhead of a job in its image: the local backend against bubblewrap run directly.

Builds the busybox image once (mmdebstrap, in a temporary data dir), then runs ``true`` in
it N times one after the other through the local backend (job directory, launcher with
limits, cgroup, sandbox, outputs collection; submit to final update) and, last, N times as
the bare bubblewrap command on the same rootfs. Last line: `ratio <x>` (median backend /
median direct). Also printed, where the server runs as root: the same bubblewrap command
as the job's user, started as the backend starts it (from a fork server running as that
user, job_process.launch), and its ratio to the direct run: the floor the privilege drop
sets (an unprivileged bubblewrap builds its user namespace unaided). Goal: <= 1.2.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from forked import run_to_end
from options import benchmark, parse

from concordia.backends import sandbox
from concordia.backends.base import JobImage, JobSpec
from concordia.backends.job_process import fork_server, privilege_drop
from concordia.backends.local import LocalBackend
from concordia.core.recipe import Recipe
from concordia.core.states import FINAL_STATES
from concordia.images.build import choose_builder, run_build
from concordia.images.plan import BuildPlan
from concordia.images.store import ImageStore
from concordia.settings import Settings

BUSYBOX = Recipe(  # noqa: S604 (shell names the image's shell; nothing runs here)
    variant="extract",
    packages=["busybox-static"],
    shell="/bin/busybox sh",
    steps=["/bin/busybox --install -s /bin"],
)


def build_image(data_dir: Path) -> Path:
    store = ImageStore(data_dir / "images")
    store.prepare()
    builder = choose_builder(["mmdebstrap"], []).builder
    assert builder is not None, "mmdebstrap is needed (apt-get install mmdebstrap)"
    plan = BuildPlan(image_id="0" * 64, application="bench", recipe=BUSYBOX, build_args={})
    return run_build(plan, builder, store, []).rootfs


async def through_backend(
    settings: Settings, runs: int, image: JobImage | None = None
) -> tuple[list[float], str]:
    """Jobs running ``true`` (in ``image``, else without one) one after the other, submit to
    final update; and what bounds them."""
    backend = LocalBackend(settings)
    await backend.start()
    assert backend.isolated, backend.isolation_problem
    times = []
    try:
        for index in range(runs):
            spec = JobSpec(uuid=str(uuid.uuid4()), job_id=index, name="t", argv=["true"],
                           cpu_time=60, image=image)  # fmt: skip
            started = time.perf_counter()
            await backend.submit([spec])
            while True:
                await backend.changed.wait()
                updates = await backend.drain()
                if any(u.status in FINAL_STATES for u in updates):
                    break
            times.append(time.perf_counter() - started)
    finally:
        await backend.close()
    return times, backend.limits_summary


def direct(rootfs: Path, workdir: Path, runs: int) -> list[float]:
    """The bare bubblewrap command, run by this process."""
    workdir.mkdir(exist_ok=True)
    sandbox.hand_over(workdir)
    cmd = sandbox.build_command(["true"], workdir, isolated=True, rootfs=rootfs)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def as_the_job_user(rootfs: Path, workdir: Path, runs: int) -> list[float]:
    """The same bubblewrap command from a fork server running as the job's user, started,
    waited for and reaped as the backend does it (without its directory, cgroup or
    records)."""
    workdir.mkdir(exist_ok=True)
    sandbox.hand_over(workdir)
    server = fork_server()
    devnull = os.open(os.devnull, os.O_WRONLY)
    times = []
    try:
        for _ in range(runs):
            started = time.perf_counter()
            code = run_to_end(
                ["true"], workdir, forkserver=server, stdout=devnull, stderr=devnull,
                cpu_time=60, isolated=True, rootfs=rootfs,
            )  # fmt: skip
            if code != 0:
                raise SystemExit("a run as the job's user failed")
            times.append(time.perf_counter() - started)
    finally:
        server.close()
        os.close(devnull)
    return times


def main() -> None:
    parser = benchmark(__doc__)
    parser.add_argument("--runs", type=int, default=60)
    args = parse(parser, runs=3)
    with tempfile.TemporaryDirectory(prefix="concordia-bench-") as tmp:
        data_dir = Path(tmp) / "var"
        Settings(data_dir=data_dir).make_data_dir()
        Path(tmp).chmod(0o711)  # the job uid passes through to the work directories
        rootfs = build_image(data_dir)
        settings = Settings(data_dir=data_dir, local_slots=1)
        image = JobImage(id="0" * 64, rootfs=rootfs)
        ours, _ = asyncio.run(through_backend(settings, args.runs, image))
        bare = direct(rootfs, data_dir / "direct-work", args.runs)
        # What part of the gap is the drop to the job's user.
        dropped = as_the_job_user(rootfs, data_dir / "dropped-work", args.runs)
    print(f"runs {args.runs}")
    if privilege_drop():
        floor = statistics.median(dropped) / statistics.median(bare)
        print(f"bwrap_as_the_job_user_median_ms {statistics.median(dropped) * 1000:.2f}", end="")
        print(f" (floor ratio {floor:.2f})")
    print_ratio(ours, bare)


def print_ratio(ours: list[float], bare: list[float], name: str = "backend") -> None:
    """The medians (and 90th percentiles) of both, in ms; last, their ratio."""
    ours_ms, bare_ms = statistics.median(ours) * 1000, statistics.median(bare) * 1000
    print(f"{name}_median_ms {ours_ms:.2f}  (p90 {_p90(ours) * 1000:.2f})")
    print(f"bwrap_direct_median_ms {bare_ms:.2f}  (p90 {_p90(bare) * 1000:.2f})")
    print(f"ratio {ours_ms / bare_ms:.2f}")


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


if __name__ == "__main__":
    main()
