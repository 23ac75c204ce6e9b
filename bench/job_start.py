"""Start overhead of a job in its image: the local backend against bubblewrap run directly.

Builds the busybox image once (mmdebstrap, in a temporary data dir), then runs ``true`` in
it N times through the local backend (job directory, launcher with limits, cgroup,
sandbox, outputs collection; submit to final update) and N times as the bare bubblewrap
command on the same rootfs, one of each in turn (all see the same machine load). Last
line: `ratio <x>` (median backend / median direct). Also printed, where the server runs as
root: the same bubblewrap command as the job's user, started as the backend starts it (from
a fork server running as that user, job_process.launch), and its ratio to the direct run:
the floor the privilege drop sets (an unprivileged bubblewrap builds its user namespace
unaided). Goal: <= 1.2.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
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


class OneByOne:
    """The local backend running ``true`` (in ``image``, else without one), one job at a
    time: each timed from submission to its final update."""

    def __init__(self, settings: Settings, image: JobImage | None = None) -> None:
        self.backend = LocalBackend(settings)
        self.image = image
        self.count = 0

    async def __aenter__(self) -> OneByOne:
        await self.backend.start()
        assert self.backend.isolated, self.backend.isolation_problem
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.backend.close()

    async def run(self) -> float:
        self.count += 1
        spec = JobSpec(uuid=str(uuid.uuid4()), job_id=self.count, name="t", argv=["true"],
                       cpu_time=60, image=self.image)  # fmt: skip
        started = time.perf_counter()
        await self.backend.submit([spec])
        while True:
            await self.backend.changed.wait()
            updates = await self.backend.drain()
            if any(u.status in FINAL_STATES for u in updates):
                return time.perf_counter() - started


async def through_backend(
    settings: Settings, runs: int, image: JobImage | None = None
) -> tuple[list[float], str]:
    """Jobs one after the other through the backend; and what bounds them."""
    async with OneByOne(settings, image) as jobs:
        return [await jobs.run() for _ in range(runs)], jobs.backend.limits_summary


def handed_over(workdir: Path) -> Path:
    """``workdir`` made, and the sandbox's user's."""
    workdir.mkdir(exist_ok=True)
    sandbox.hand_over(workdir)
    return workdir


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


async def alternating(
    settings: Settings, image: JobImage, work: Path, runs: int
) -> tuple[list[float], list[float], list[float]]:
    """The backend's job, the bare bubblewrap command, and (where the server runs as root)
    the same command as the job's user from a fork server, started, waited for and reaped
    as the backend does it (without its directory, cgroup or records): one of each in turn,
    so that all three see the same machine."""
    bare_cmd = sandbox.build_command(
        ["true"], handed_over(work / "direct"), isolated=True, rootfs=image.rootfs
    )
    dropped_work = handed_over(work / "dropped")
    server = fork_server() if privilege_drop() else None
    devnull = os.open(os.devnull, os.O_WRONLY)

    def as_the_job_user() -> None:
        code = run_to_end(
            ["true"], dropped_work, forkserver=server, stdout=devnull, stderr=devnull,
            cpu_time=60, isolated=True, rootfs=image.rootfs,
        )  # fmt: skip
        if code != 0:
            raise SystemExit("a run as the job's user failed")

    ours: list[float] = []
    bare: list[float] = []
    dropped: list[float] = []
    try:
        async with OneByOne(settings, image) as jobs:
            for _ in range(runs):
                ours.append(await jobs.run())
                bare.append(
                    timed(lambda: subprocess.run(bare_cmd, check=True, stdin=subprocess.DEVNULL))
                )
                if server is not None:
                    dropped.append(timed(as_the_job_user))
    finally:
        if server is not None:
            server.close()
        os.close(devnull)
    return ours, bare, dropped


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
        ours, bare, dropped = asyncio.run(alternating(settings, image, data_dir, args.runs))
    print(f"runs {args.runs}")
    if dropped:
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
