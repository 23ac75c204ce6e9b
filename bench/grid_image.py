"""Start of a grid job on a node whose cache holds its image: the job wrapper against bwrap.

Builds the busybox image once (mmdebstrap, SquashFS, in a temporary data dir) and lets one
job fetch it into a node cache. Then, N times each, alternating: the job wrapper as DIRAC
starts it (`sh concordia-job.sh ARG` in a job directory: config, runtime search, the cached
image found as checked, bubblewrap on it, as on a node without apptainer) and the bare
bubblewrap command on the same unpacked image. Each run's clock stops when the payload
starts (it opens a FIFO the bench waits on). Also printed: python3's own start (-I -S,
`pass`), the floor of a wrapper in Python; and the same bubblewrap command started by sh
(`sh -c 'exec bwrap ...'`), the floor of any wrapper in sh (DIRAC starts the Executable, a
shell script), with its ratio to bwrap. Last line: `ratio <x>` (median wrapper / median
direct). Goal: <= 1.2.
"""

from __future__ import annotations

import os
import shlex
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from job_start import BUSYBOX, print_ratio  # beside this file (run as a script)
from options import benchmark, parse

from concordia.backends.diracx.jobs import wrapper_arguments, wrapper_files
from concordia.images.build import choose_builder, run_build
from concordia.images.plan import BuildPlan
from concordia.images.store import ImageStore
from concordia.settings import Settings

PAYLOAD = ["sh", "-c", "echo > /work/started"]
NODE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def build_image(data_dir: Path) -> tuple[str, Path, str]:
    """The image's id, SquashFS and its sha256."""
    store = ImageStore(data_dir / "images")
    store.prepare()
    builder = choose_builder(["mmdebstrap"], []).builder
    assert builder is not None, "mmdebstrap is needed (apt-get install mmdebstrap)"
    plan = BuildPlan(image_id="1" * 64, application="bench", recipe=BUSYBOX, build_args={})
    image = run_build(plan, builder, store, ["squashfs"])
    return image.id, image.format_path("squashfs"), image.meta["formats"]["squashfs"]["sha256"]


def job_directory(root: Path, image: dict[str, object]) -> Path:
    """A job's directory as DIRAC makes it from the input sandbox Concordia uploads."""
    work = root / "job"
    work.mkdir(parents=True)
    for name, data in wrapper_files({"image": image, "network": False}).items():
        (work / name).write_bytes(data)
        (work / name).chmod(0o755)
    return work


def until_payload_starts(cmd: list[str], work: Path, env: dict[str, str]) -> float:
    """Seconds from starting ``cmd`` to its payload opening the FIFO; the run then ends."""
    fifo = work / "started"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    started = time.perf_counter()
    process = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    with fifo.open() as reader:  # returns once the payload opened it for writing
        reached = time.perf_counter()
        reader.read()
    assert process.wait(timeout=60) == 0
    return reached - started


def main() -> None:
    parser = benchmark(__doc__)
    parser.add_argument("--runs", type=int, default=60)
    args = parse(parser, runs=3)
    with tempfile.TemporaryDirectory(prefix="concordia-bench-") as tmp:
        root = Path(tmp)
        data_dir = root / "var"
        Settings(data_dir=data_dir).make_data_dir()
        image_id, squashfs, sha256 = build_image(data_dir)
        image = {"id": image_id, "sha256": sha256, "workdir": "/work", "env": {}}
        work = job_directory(root / "node", image)
        env = {**NODE_ENV, "CONCORDIA_NODE_IMAGE_CACHE": str(root / "cache")}
        # The JDL's Arguments, as Concordia writes them.
        arguments = wrapper_arguments(PAYLOAD, str(squashfs), image=True)
        ours_cmd = ["sh", str(work / "concordia-job.sh"), *arguments]
        until_payload_starts(ours_cmd, work, env)  # the node's first job fills its cache
        [rootfs] = (root / "cache").glob("*/*.rootfs")
        bwrap = shutil.which("bwrap") or "bwrap"
        direct_cmd = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", str(rootfs), "/"]
        direct_cmd += ["--bind", str(work), "/work", "--proc", "/proc", "--dev", "/dev"]
        direct_cmd += ["--tmpfs", "/tmp", "--chdir", "/work", "--", *PAYLOAD]
        # The floor of any wrapper in Python: the interpreter starting and stopping.
        floor_cmd = ["python3", "-I", "-S", "-c", "pass"]
        # The floor of any wrapper in sh: sh starting, then bwrap in its place.
        sh_cmd = ["sh", "-c", f"exec {shlex.join(direct_cmd)}"]
        ours, bare, floor, sh_floor = [], [], [], []
        for _ in range(args.runs):  # alternating: all see the same machine load
            ours.append(until_payload_starts(ours_cmd, work, env))
            bare.append(until_payload_starts(direct_cmd, work, NODE_ENV))
            sh_floor.append(until_payload_starts(sh_cmd, work, NODE_ENV))
            started = time.perf_counter()
            subprocess.run(floor_cmd, check=True, env=NODE_ENV)
            floor.append(time.perf_counter() - started)
    print(f"runs {args.runs}")
    print(f"python3_start_median_ms {statistics.median(floor) * 1000:.2f}")
    sh_ms, bare_ms = statistics.median(sh_floor) * 1000, statistics.median(bare) * 1000
    print(f"sh_exec_bwrap_median_ms {sh_ms:.2f} (floor ratio {sh_ms / bare_ms:.2f})")
    print_ratio(ours, bare, name="wrapper")


if __name__ == "__main__":
    main()
