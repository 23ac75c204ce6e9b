"""Upload to the data lake's WebDAV storage: the grid wrapper against curl, on one big file.

Starts a throw-away Rucio with its nginx WebDAV RSE (scripts/rucio-server), writes a file of
random bytes once (--mb, default 1024), then alternately, --runs times each: the grid job
wrapper's upload of it (a fresh `python3 -I -S` as on a worker node: lake_put, streamed,
adler32 as it is sent, then a HEAD) and `curl -T` of it to the same storage. Each upload goes
to a name of its own and is deleted after it is timed. Last line: `ratio <x>` (median
wrapper / median curl). Goal: <= 1.1.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from options import benchmark, parse

REPO = Path(__file__).resolve().parents[1]
#: The wrapper's upload as a node runs it: its own module, standard library only (imported
#: from this checkout, whose concordia package imports nothing else).
UPLOAD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from concordia.backends.wrapper.concordia_job_lake import lake_put
lake = json.loads(sys.argv[2])
print(json.dumps(lake_put(lake, sys.argv[3], sys.argv[4])))
"""


@contextmanager
def running_rucio(state: Path) -> Iterator[dict[str, object]]:
    script = [sys.executable, str(REPO / "scripts" / "rucio-server")]
    subprocess.run([*script, "start", str(state)], check=True, stdout=subprocess.DEVNULL)
    try:
        yield json.loads((state / "env.json").read_text())
    finally:
        subprocess.run([*script, "stop", str(state)], check=True)


def write_random(path: Path, mb: int) -> None:
    with path.open("wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = benchmark(__doc__)
    parser.add_argument("--mb", type=int, default=1024, help="the file's size in MB")
    parser.add_argument("--runs", type=int, default=3, help="uploads of each kind")
    args = parse(parser, mb=4, runs=1)
    curl = shutil.which("curl")
    python3 = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    if curl is None:
        sys.exit("curl is needed to compare with")
    with tempfile.TemporaryDirectory(prefix="concordia-bench-lake-") as tmp:
        root = Path(tmp)
        source = root / "data.bin"
        write_random(source, args.mb)
        with running_rucio(root / "rucio") as info:
            base, ca = str(info["webdav_url"]).rstrip("/"), str(info["ca"])
            lake = {"url": base, "scope": "user.bench", "ca": Path(ca).read_text()}
            http = httpx.Client(verify=ssl.create_default_context(cafile=ca))
            times: dict[str, list[float]] = {"wrapper": [], "curl": []}
            for run in range(args.runs):
                for kind in ("wrapper", "curl"):
                    url = f"{base}/bench/{kind}-{run}-{uuid.uuid4().hex[:8]}.bin"
                    if kind == "wrapper":
                        command = [python3, "-I", "-S", "-c", UPLOAD, str(REPO)]
                        command += [json.dumps(lake), str(source), url]
                    else:
                        command = [curl, "-sSf", "--cacert", ca, "-T", str(source), url]
                    seconds = timed(command)
                    stored = http.head(url)
                    if int(stored.headers.get("Content-Length", -1)) != args.mb << 20:
                        sys.exit(f"{kind}: the storage holds {stored.headers} after the upload")
                    http.delete(url)
                    times[kind].append(seconds)
                    rate = args.mb / seconds
                    print(f"{kind:8} run {run + 1}: {seconds:.2f} s ({rate:.0f} MB/s)", flush=True)
            http.close()
    wrapper, reference = (statistics.median(times[k]) for k in ("wrapper", "curl"))
    print(f"median wrapper {wrapper:.2f} s, curl {reference:.2f} s ({args.mb} MB)")
    print(f"ratio {wrapper / reference:.2f}")


if __name__ == "__main__":
    main()
