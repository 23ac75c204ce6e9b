"""A test site playing the grid for DiracX, which has no matcher: it takes Received jobs, runs
them as a pilot's job wrapper would, and reports their states, outputs and exit statuses."""

from __future__ import annotations

import base64
import bz2
import hashlib
import io
import json
import os
import shlex
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.diracx.fixtures import ADMIN_GROUP, SITE_USER, DiracX
from tests.diracx.jdl import as_list, parse_jdl

T = TypeVar("T")
SOURCE = "TestSite"
PER_PAGE = 100
#: Answers of DiracX tried again: 502-504 from a proxy or a starting server; 500 from its own
#: passing failures (its configuration cache raced: KeyError 'latest_revision'), which a
#: pilot reports through again.
RETRIED = frozenset({500, 502, 503, 504})
# States after which the site must let go of a job: someone killed or deleted it.
ABANDONED = frozenset({"Killed", "Deleted"})
# What a sandbox PFN looks like in a JDL: "SB:SandboxSE|/S3/<bucket>/..." (or the bare path).
PFN_PREFIXES = ("SB:", "/S3/")
#: What DIRAC's JobWrapper reports when the payload exits non-zero (JobMinorStatus.APP_ERRORS).
APP_ERRORS = "Application Finished With Errors"
try:  # tar.zst needs the zstandard package (not in the standard library before Python 3.14)
    import zstandard  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None


class JobAbandoned(Exception):
    """The job left the site's hands: killed, deleted, or a status DiracX did not take."""


@dataclass
class Run:
    """What the site did with one job."""

    job_id: int
    status: str  # the last status the site set: Done, Failed, or the one it stopped at
    exit_code: int | None = None
    workdir: Path | None = None
    output_pfn: str | None = None
    error: str | None = None


@dataclass
class Site:
    """``Site(diracx, token)``: the token is the site user's (JobAdministrator: it sees and moves
    every job). Sandboxes are moved with the job owner's token, as a pilot's job wrapper acts with
    the owner's delegated credentials; DiracX checks that the owner may read its input sandbox,
    and only an output sandbox in the owner's area is downloadable by the owner."""

    diracx: DiracX
    token: str
    workdir: Path | None = None  # the jobs' scratch dirs go here (default: a new temp dir)
    timeout: float = 60.0  # a job running longer is killed and Failed
    outage_tolerance: float = 60.0  # how long a call retries while DiracX is down or starting
    kill_poll: float = 0.3  # how often a running job's status is checked (killed or deleted?)
    #: (i, n): this node runs the jobs whose JobID is i modulo n (n nodes share a grid).
    shard: tuple[int, int] = (0, 1)
    #: The site's DIRAC name, set on each job it takes as DIRAC's matcher does.
    name: str = "LCG.Test.org"
    runs: list[Run] = field(default_factory=list)
    #: The node: directories put first on the jobs' PATH (e.g. a stand-in apptainer), and
    #: more of their environment (e.g. CONCORDIA_NODE_IMAGE_CACHE, one per node).
    node_path: list[Path] = field(default_factory=list)
    node_env: dict[str, str] = field(default_factory=dict)
    #: What stopped the background loop of running(), if anything did.
    failure: BaseException | None = None
    _client: httpx.Client | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="diracx-site-"))

    # --- DiracX calls, retried while it is down (tests stop and start it mid-batch)

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.diracx.url,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=30,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _retrying(self, call: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.outage_tolerance
        while True:
            try:
                result = call()
                # Anything but RETRIED is the caller's answer.
                if isinstance(result, httpx.Response) and result.status_code in RETRIED:
                    raise httpx.TransportError(f"{result.status_code} from DiracX")
                return result
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)

    def _request(
        self, method: str, path: str, client: httpx.Client | None = None, **kwargs: Any
    ) -> httpx.Response:
        use = client or self.client
        response = self._retrying(lambda: use.request(method, path, **kwargs))
        response.raise_for_status()
        return response

    # --- the jobs

    def received_jobs(self) -> list[dict[str, Any]]:
        """Every job in Received (all pages), oldest first."""
        jobs: list[dict[str, Any]] = []
        body = {
            "parameters": ["JobID", "Owner", "OwnerGroup", "Status"],
            "search": [{"parameter": "Status", "operator": "eq", "value": "Received"}],
            "sort": [{"parameter": "JobID", "direction": "asc"}],
        }
        page = 1
        while True:
            response = self._retrying(
                lambda p=page: self.client.post(  # type: ignore[misc]
                    "/api/jobs/search", params={"page": p, "per_page": PER_PAGE}, json=body
                )
            )
            if response.status_code == 416:  # past the last page
                break
            response.raise_for_status()
            batch = response.json()
            jobs.extend(batch)
            # 206 with Content-Range "jobs FIRST-LAST/TOTAL" while pages remain.
            if response.status_code != 206 or len(batch) < PER_PAGE:
                break
            page += 1
        return jobs

    def status(self, job_id: int) -> str:
        response = self._request(
            "POST",
            "/api/jobs/search",
            json={
                "parameters": ["JobID", "Status"],
                "search": [{"parameter": "JobID", "operator": "eq", "value": job_id}],
            },
        )
        rows = response.json()
        return str(rows[0]["Status"]) if rows else "Deleted"

    def set_statuses(self, job_id: int, *steps: tuple[str, str]) -> None:
        """Walk the job through (Status, MinorStatus) steps in one call, at increasing real
        timestamps; raises JobAbandoned when DiracX did not end on the last one (it ignores an
        invalid transition silently, e.g. anything after Killed)."""
        now = datetime.now(UTC)
        changes: dict[str, dict[str, str]] = {}
        for i, (status, minor) in enumerate(steps):
            changes[(now + timedelta(milliseconds=i)).isoformat()] = {
                "Status": status,
                "MinorStatus": minor,
                "Source": SOURCE,
            }
        response = self._request("PATCH", "/api/jobs/status", json={str(job_id): changes})
        answer = response.json()
        reached = answer.get("success", {}).get(str(job_id), {}).get("Status")
        if reached != steps[-1][0]:
            raise JobAbandoned(f"job {job_id} is {reached}, not {steps[-1][0]}: {answer}")

    def run_once(self) -> list[Run]:
        """Run every job now in Received, one after the other; what was done with each."""
        done: list[Run] = []
        index, nodes = self.shard
        for job in self.received_jobs():
            if int(job["JobID"]) % nodes != index:
                continue
            run = self.run_job(int(job["JobID"]), str(job["Owner"]), str(job["OwnerGroup"]))
            self.runs.append(run)
            done.append(run)
        return done

    def run_job(self, job_id: int, owner: str, owner_group: str) -> Run:
        assert self.workdir is not None
        workdir = self.workdir / f"job-{job_id}"
        run = Run(job_id, "Received", workdir=workdir)
        try:
            self.set_statuses(
                job_id,
                ("Checking", "JobSanity"),
                ("Waiting", "Pilot Agent Submission"),
                ("Matched", "Assigned"),
            )
            run.status = "Matched"
            self._request("PATCH", "/api/jobs/metadata", json={str(job_id): {"Site": self.name}})
            jdl = parse_jdl(self.diracx.job_jdl(job_id))
            with self.diracx.client(owner, owner_group) as as_owner:
                workdir.mkdir(parents=True)
                self.set_statuses(job_id, ("Running", "Input Sandbox Download"))
                run.status = "Running"
                for entry in as_list(jdl.get("InputSandbox")):
                    if isinstance(entry, str) and entry.startswith(PFN_PREFIXES):
                        self._download_sandbox(as_owner, entry, workdir)
                self.set_statuses(job_id, ("Running", "Application"))
                proxy = self._proxy(workdir, owner, owner_group)
                run.exit_code = self._execute(job_id, jdl, workdir, proxy)
                self.set_statuses(job_id, ("Completing", "Uploading Output Sandbox"))
                run.status = "Completing"
                run.output_pfn = self._upload_outputs(as_owner, job_id, jdl, workdir)
            if run.exit_code == 0:
                self.set_statuses(job_id, ("Done", "Execution Complete"))
                run.status = "Done"
            else:
                self.set_statuses(job_id, ("Failed", APP_ERRORS))
                run.status = "Failed"
        except JobAbandoned as abandoned:
            run.error = str(abandoned)
        except (OSError, tarfile.TarError, ValueError, httpx.HTTPStatusError) as error:
            # The site's own trouble (bad sandbox, unreadable JDL...): the job fails, as on a
            # grid site whose job wrapper hits an error.
            run.error = f"{type(error).__name__}: {error}"
            try:
                self.set_statuses(job_id, ("Failed", f"Site error: {run.error}"[:255]))
                run.status = "Failed"
            except (JobAbandoned, httpx.HTTPError):
                pass
        return run

    # --- sandboxes

    def _download_sandbox(self, client: httpx.Client, pfn: str, workdir: Path) -> None:
        response = self._request("GET", "/api/jobs/sandbox", client, params={"pfn": pfn})
        # A presigned URL: fetched without DiracX's bearer (S3 would refuse it).
        blob = self._retrying(lambda: httpx.get(response.json()["url"], timeout=60))
        blob.raise_for_status()
        extract(blob.content, pfn, workdir)

    def _upload_outputs(
        self, client: httpx.Client, job_id: int, jdl: dict[str, Any], workdir: Path
    ) -> str | None:
        files: list[Path] = []
        for pattern in as_list(jdl.get("OutputSandbox")):
            if not isinstance(pattern, str) or pattern.startswith("LFN:"):
                continue
            files.extend(p for p in sorted(workdir.glob(pattern)) if p.is_file())
        if not files:
            return None
        # By file name, as DIRAC's JobWrapper uploads them (a "data/*" glob loses "data/").
        blob, fmt = pack(files, workdir, flat=True)
        pfn = upload_sandbox(client, blob, fmt, retrying=self._retrying)
        self._request("PATCH", f"/api/jobs/{job_id}/sandbox/output", client, json=pfn)
        return pfn

    # --- the application

    def _proxy(self, workdir: Path, owner: str, group: str) -> Path:
        """The job's proxy file as DIRAC 9 gives it: here only the owner's DiracX token in
        its DIRACX block (nothing in these tests reads an X.509 part)."""
        token = {"access_token": self.diracx.token(owner, group), "expires_on": 0}
        data = base64.b64encode(json.dumps(token).encode()).decode()
        body = "\n".join(data[i : i + 64] for i in range(0, len(data), 64))
        proxy = workdir / ".proxy"
        proxy.write_text(f"-----BEGIN DIRACX-----\n{body}\n-----END DIRACX-----\n")
        proxy.chmod(0o600)
        return proxy

    def _execute(self, job_id: int, jdl: dict[str, Any], workdir: Path, proxy: Path) -> int:
        executable = str(jdl.get("Executable", ""))
        if not executable:
            raise ValueError("the JDL has no Executable")
        local = workdir / executable
        if not executable.startswith("/") and local.is_file():
            local.chmod(local.stat().st_mode | 0o111)  # tar members may lose their x bit
            executable = str(local)
        arguments = shlex.split(str(jdl.get("Arguments", "")))
        home = workdir / ".home"
        home.mkdir(exist_ok=True)
        env = {
            "PATH": os.pathsep.join(
                [*map(str, self.node_path), os.environ.get("PATH", "/usr/bin:/bin")]
            ),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "DIRACJOBID": str(job_id),
            "JOBID": str(job_id),
            "X509_USER_PROXY": str(proxy),
            **self.node_env,
        }
        stdout = workdir / str(jdl.get("StdOutput", "std.out"))
        stderr = workdir / str(jdl.get("StdError", "std.err"))
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [executable, *arguments],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # to kill what it started too
            )
            deadline = time.monotonic() + self.timeout
            next_check = time.monotonic() + self.kill_poll
            while (code := process.poll()) is None:
                if time.monotonic() > deadline:
                    _kill(process)
                    err.write(f"\nTestSite: killed after {self.timeout:.0f} s\n".encode())
                    return process.wait()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.kill_poll
                    if (status := self.status(job_id)) in ABANDONED:
                        _kill(process)
                        raise JobAbandoned(f"job {job_id} was {status} while running")
                time.sleep(0.02)
            return code

    # --- in the background

    @contextmanager
    def running(self, interval: float = 0.2) -> Iterator[Site]:
        """The site polling for Received jobs in a thread until the block ends; an error of the
        site is raised at the end of the block."""
        stop = threading.Event()
        self.failure = None

        def loop() -> None:
            while not stop.is_set():
                try:
                    self.run_once()
                except Exception as error:
                    self.failure = error
                    return
                stop.wait(interval)

        thread = threading.Thread(target=loop, name="diracx-test-site", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=self.timeout + self.outage_tolerance + 10)
        self.check()

    def check(self) -> None:
        """Raise what stopped the background loop (a test waiting on the site's jobs sees it
        at once, not at its deadline)."""
        if self.failure is not None:
            raise self.failure


@contextmanager
def grid_nodes(diracx: DiracX, workdir: Path, count: int) -> Iterator[list[Site]]:
    """The test site as ``count`` nodes running for the block, each taking its share of the
    jobs (JobID modulo ``count``), side by side as a grid's nodes do."""
    token = diracx.token(SITE_USER, ADMIN_GROUP)
    nodes = [Site(diracx, token, workdir=workdir, shard=(i, count)) for i in range(count)]
    with ExitStack() as stack:
        for node in nodes:
            stack.callback(node.close)
            stack.enter_context(node.running())
        yield nodes


def _kill(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def sandbox_format(pfn_or_name: str) -> str:
    for fmt in ("tar.bz2", "tar.zst", "tar.gz", "tar.xz", "tar"):
        if pfn_or_name.endswith(f".{fmt}"):
            return fmt
    raise ValueError(f"not a sandbox archive: {pfn_or_name}")


def extract(blob: bytes, name: str, target: Path) -> None:
    """Unpack a sandbox into ``target``: members that would land outside it, links, devices and
    the like are refused (tarfile's "data" filter)."""
    if sandbox_format(name) == "tar.zst":
        if zstandard is None:
            raise ValueError("a tar.zst sandbox needs the zstandard package")
        blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as archive:
        archive.extractall(target, filter="data")


def pack(files: list[Path], root: Path, *, flat: bool = False) -> tuple[bytes, str]:
    """The files as a sandbox archive (tar.zst when zstandard is there, else tar.bz2), names
    relative to ``root`` (``flat``: their base names); its bytes and format."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in files:
            name = path.name if flat else str(path.relative_to(root))
            archive.add(path, arcname=name, recursive=False)
    if zstandard is not None:
        return zstandard.ZstdCompressor().compress(buffer.getvalue()), "tar.zst"
    return bz2.compress(buffer.getvalue()), "tar.bz2"


def upload_sandbox(
    client: httpx.Client,
    blob: bytes,
    fmt: str = "tar.bz2",
    *,
    retrying: Callable[[Callable[[], httpx.Response]], httpx.Response] | None = None,
) -> str:
    """Upload a sandbox archive content-addressed, as DIRAC's clients do: ask DiracX with its
    sha256 and size; send the bytes to the presigned URL only when it gives one (null: the
    store has them already). Returns the PFN ("SB:SandboxSE|/S3/<bucket>/<vo>/<group>/<user>/
    sha256:<hex>.<format>")."""
    again = retrying or (lambda call: call())
    checksum = hashlib.sha256(blob).hexdigest()
    info = {"checksum_algorithm": "sha256", "checksum": checksum, "size": len(blob), "format": fmt}
    response = again(lambda: client.post("/api/jobs/sandbox", json=info))
    response.raise_for_status()
    answer = response.json()
    if answer["url"]:
        upload = again(
            lambda: httpx.post(
                answer["url"], data=answer["fields"], files={"file": ("sandbox", blob)}, timeout=60
            )
        )
        upload.raise_for_status()
    return str(answer["pfn"])
