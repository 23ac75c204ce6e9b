"""The grid job wrapper (what DiracX jobs run on a worker node), run here as a node would:
plain python3, the job's directory as working directory, the image from the node's unpacked
tree or fetched over HTTP into the node's cache; apptainer is the test sites' stand-in."""

from __future__ import annotations

import ast
import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from concordia.backends.diracx.jobs import wrapper_arguments, wrapper_config, wrapper_files
from concordia.backends.wrapper.concordia_job_base import WRAPPER_FILES
from concordia.backends.wrapper.concordia_job_lake import DATALAKE_MANIFEST
from concordia.backends.wrapper.concordia_job_runtime import CLEARENV_STAMP, DEFAULT_PATH
from concordia.backends.wrapper.concordia_job_shell import SH_ESCAPED, SH_SAFE
from concordia.images.store import ImageStore
from tests.rucio import RucioServer

pytestmark = pytest.mark.real

WRAPPER = resources.files("concordia.backends") / "wrapper"
STANDIN = Path(__file__).resolve().parents[2] / "diracx" / "apptainer.py"
NODE_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
#: What ShowerModel and CORSIKA images set, and a value Apptainer's --env must get quoted.
IMAGE_ENV = {"MPLBACKEND": "Agg", "CORSIKA_DATA": "/opt/corsika/data", "ODD": 'a,b="c"=d'}
SHOW_ENV = 'echo "$MPLBACKEND|$CORSIKA_DATA|$ODD|$HOME" > env.txt; pwd'


@dataclass
class ImageServer:
    """Serves one file as Concordia's image links do, counting GETs; ``refuse`` answers 403
    with a JSON reason instead."""

    data: bytes
    gets: int = 0
    refuse: bool = False
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def image_server(stored: dict[str, Any]) -> Iterator[ImageServer]:
    served = ImageServer(Path(stored["squashfs"]).read_bytes())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with served.lock:
                served.gets += 1
            if served.refuse:
                body = json.dumps({"detail": "this image link is not valid"}).encode()
                self.send_response(403)
            else:
                time.sleep(0.2)  # two jobs asking at once both wait here
                body = served.data
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{server.server_port}/image.sqsh?job=j&sig=SECRET"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def stored(image_seed: Path) -> dict[str, Any]:
    """The hello image of the session's seed: its id, SquashFS, sha256 and root filesystem."""
    store = ImageStore(image_seed)
    [image] = [
        s for p in image_seed.iterdir() if (p / "image.json").is_file() and (s := store.get(p.name))
    ]
    return {
        "id": image.id,
        "squashfs": str(image.format_path("squashfs")),
        "sha256": image.meta["formats"]["squashfs"]["sha256"],
        "rootfs": str(image.rootfs),
    }


def image_config(stored: dict[str, Any], **changes: object) -> dict[str, Any]:
    config = {"id": stored["id"], "sha256": stored["sha256"], "workdir": "/work"}
    return {**config, "env": IMAGE_ENV, "unpacked": None, **changes}


def job_dir(root: Path, image: dict[str, Any] | None) -> Path:
    work = root / "job"
    work.mkdir(parents=True)
    for name in WRAPPER_FILES:
        (work / name).write_bytes((WRAPPER / name).read_bytes())
        (work / name).chmod(0o755)
    (work / "concordia-job.json").write_text(json.dumps({"image": image, "network": False}))
    return work


def node_bin(root: Path) -> Path:
    """A directory with the stand-in apptainer, first on the node's PATH."""
    bin_dir = root / "node-bin"
    bin_dir.mkdir(exist_ok=True)
    shutil.copy(STANDIN, bin_dir / "apptainer")
    (bin_dir / "apptainer").chmod(0o755)
    return bin_dir


def start(
    work: Path,
    argv: list[str],
    cache: Path,
    *,
    url: str | None = None,
    path: str = NODE_PATH,
    options: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    job: dict[str, Any] = {"argv": argv, "image_url": url}
    arg = base64.urlsafe_b64encode(json.dumps(job).encode()).decode().rstrip("=")
    env = {"PATH": path, "CONCORDIA_NODE_IMAGE_CACHE": str(cache)}
    env["APPTAINER_STANDIN_LOG"] = str(work.parent / "apptainer.log")
    return subprocess.Popen(
        [sys.executable, *options, str(work / "concordia_job.py"), arg], cwd=work, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def run(
    work: Path, argv: list[str], cache: Path, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    process = start(work, argv, cache, **kwargs)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def calls(root: Path) -> list[dict[str, Any]]:
    log = root / "apptainer.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_without_an_image_the_command_runs_in_the_job_directory(tmp_path: Path) -> None:
    work = job_dir(tmp_path, None)
    arg = base64.urlsafe_b64encode(json.dumps({"argv": ["sh", "-c", "exit 0"]}).encode()).decode()
    done = subprocess.run(
        ["/bin/sh", str(work / "concordia-job.sh"), arg], cwd=work, capture_output=True,
        text=True, timeout=60, env={"PATH": NODE_PATH}, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = run(work, ["sh", "-c", "echo out; echo made > result.txt; exit 4"], tmp_path / "c")
    assert done.returncode == 4 and done.stdout == "out\n"
    assert (work / "result.txt").read_text() == "made\n"
    missing = run(work, ["no-such-program"], tmp_path / "c")
    assert missing.returncode == 127 and "cannot start no-such-program" in missing.stderr


def test_apptainer_gets_the_image_env_binds_only_the_job_and_the_node_fetches_once(
    tmp_path: Path, stored: dict[str, Any], image_server: ImageServer
) -> None:
    cache = tmp_path / "node-cache"
    path = f"{node_bin(tmp_path)}:{NODE_PATH}"
    image = image_config(stored)
    jobs = [job_dir(tmp_path / f"j{i}", image) for i in range(3)]
    # Two jobs of the node at once with an empty cache, then a third.
    both = [
        start(w, ["sh", "-c", SHOW_ENV], cache, url=image_server.url, path=path) for w in jobs[:2]
    ]
    results = [(*p.communicate(timeout=120), p.returncode) for p in both]
    third = run(
        jobs[2], ["sh", "-c", SHOW_ENV + "; exit 3"], cache, url=image_server.url, path=path
    )
    assert [r[2] for r in results] == [0, 0], results
    assert third.returncode == 3, third.stderr
    assert image_server.gets == 1  # one download per node, the lock held the other job
    assert sum("fetched into the node's cache" in r[1] for r in results) == 1

    for work in jobs:  # the image's environment reached the command, the node's did not
        assert (work / "env.txt").read_text() == 'Agg|/opt/corsika/data|a,b="c"=d|/tmp\n'
    assert "[concordia] runtime: apptainer (" in third.stdout and "on PATH" in third.stdout
    assert third.stdout.endswith("/work\n")
    assert "SECRET" not in third.stdout + third.stderr + "".join(r[0] + r[1] for r in results)

    for work in jobs:
        [call] = calls(work.parent)
        argv = call["argv"]
        assert argv[:5] == ["exec", "--contain", "--ipc", "--cleanenv", "--workdir"]
        binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
        assert binds == [f"{work}:/work"]  # nothing of the node but the job's directory
        envs = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
        assert envs == ["CORSIKA_DATA=/opt/corsika/data", "MPLBACKEND=Agg", '"ODD=a,b=""c""=d"']
        assert "MPLBACKEND" not in call["env"]  # passed with --env, not through the host
        assert argv[argv.index("--network") + 1] == "none"
        assert argv[-4] == f"{cache}/concordia-images-{os.getuid()}/{stored['sha256']}.sqsh"


def test_without_apptainer_bubblewrap_runs_the_cached_image(
    tmp_path: Path, stored: dict[str, Any], image_server: ImageServer
) -> None:
    cache = tmp_path / "node-cache"
    work = job_dir(tmp_path, image_config(stored))
    done = run(work, ["sh", "-c", SHOW_ENV], cache, url=image_server.url)
    assert done.returncode == 0, done.stderr
    assert "runtime: bwrap" in done.stdout and "no apptainer or singularity" in done.stdout
    assert (work / "env.txt").read_text() == 'Agg|/opt/corsika/data|a,b="c"=d|/work\n'
    again = job_dir(tmp_path / "again", image_config(stored))
    assert run(again, ["true"], cache, url=image_server.url).returncode == 0
    assert image_server.gets == 1


def test_the_unpacked_tree_is_run_in_place_with_no_download(
    tmp_path: Path, stored: dict[str, Any], image_server: ImageServer
) -> None:
    work = job_dir(tmp_path, image_config(stored, unpacked=stored["rootfs"]))
    path = f"{node_bin(tmp_path)}:{NODE_PATH}"
    done = run(work, ["sh", "-c", SHOW_ENV], tmp_path / "cache", url=image_server.url, path=path)
    assert done.returncode == 0, done.stderr
    assert f"in place from {stored['rootfs']}" in done.stdout
    [call] = calls(tmp_path)
    assert stored["rootfs"] in call["argv"] and image_server.gets == 0
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.sqsh"))


def test_a_job_whose_image_is_cached_imports_only_what_it_needs(
    tmp_path: Path, stored: dict[str, Any], image_server: ImageServer
) -> None:
    """Nothing to fetch, check or upload, no DiracX to tell: python3's start is most of such a
    job's wait, and none of that code (urllib alone takes longer than bubblewrap) is read."""
    cache = tmp_path / "node-cache"
    first, again = (job_dir(tmp_path / name, image_config(stored)) for name in ("1", "2"))
    assert run(first, ["true"], cache, url=image_server.url).returncode == 0
    options = ("-I", "-S", "-X", "importtime")  # as a node starts it, saying what it imports
    done = run(again, ["true"], cache, url=image_server.url, options=options)
    assert done.returncode == 0, done.stderr
    imported = {
        line.split("|")[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "concordia_wrapper.concordia_job_image" in imported
    heavy = {"urllib", "http", "ssl", "hashlib", "shutil", "subprocess", "fcntl"}
    assert not imported & (heavy | {"concordia_wrapper.concordia_job_lake"})
    assert not (again / "__pycache__").exists()  # nothing left in the job's directory


def test_failures_are_one_line_and_never_a_traceback(
    tmp_path: Path, stored: dict[str, Any], image_server: ImageServer
) -> None:
    def failed(name: str, image: dict[str, Any], **kwargs: Any) -> str:
        work = job_dir(tmp_path / name, image)
        done = run(work, ["sh", "-c", "echo ran > ran.txt"], tmp_path / f"{name}-cache", **kwargs)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and not (work / "ran.txt").exists()
        lines = [line for line in done.stderr.splitlines() if line.startswith("[concordia]")]
        assert len(lines) == 1, done.stderr
        return lines[0]

    forged = image_config(stored, sha256="0" * 64)
    line = failed("forged", forged, url=image_server.url)
    assert "sha256 mismatch" in line and "expected 000000000000" in line
    assert not any(
        p.is_file() and p.suffix != ".lock" for p in (tmp_path / "forged-cache").rglob("*")
    )

    image_server.refuse = True
    line = failed("refused", image_config(stored), url=image_server.url)
    assert "download refused" in line and "HTTP 403: this image link is not valid" in line
    assert "SECRET" not in line  # the link's signature is never printed

    line = failed("missing", image_config(stored, unpacked="/cvmfs/nowhere/image"))
    assert "missing: /cvmfs/nowhere/image is not on this node" in line

    line = failed("no-runtime", image_config(stored), url=image_server.url, path=str(tmp_path))
    assert "no container runtime on this node" in line
    assert "/cvmfs/oasis.opensciencegrid.org/mis/apptainer/current/bin" in line


def test_the_wrapper_runs_on_a_node_s_python3(tmp_path: Path) -> None:
    """Standard library only, and nothing newer than Python 3.6's syntax (EL8's python3); the
    wrapper's own modules, wherever imported, are ones its jobs are given."""
    shipped = {name.removesuffix(".py") for name in WRAPPER_FILES if name.endswith(".py")}
    for name in shipped:
        tree = ast.parse((WRAPPER / f"{name}.py").read_text(), feature_version=(3, 6))
        stdlib: set[str] = set()
        own: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                stdlib |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level:
                own.add(str(node.module))
            elif isinstance(node, ast.ImportFrom):
                stdlib.add(str(node.module).split(".")[0])
        assert stdlib <= set(sys.stdlib_module_names), (name, stdlib)
        assert own <= shipped, (name, own - shipped)
    assert shutil.which("python3")


# --- the start without python3 (concordia-job.sh on a node that has the image)

#: Every character concordia-job.sh decodes from its own form of the command.
EVERY_CHARACTER = "".join(sorted(SH_SAFE | SH_ESCAPED))
SAVE_ARG = 'printf "%s" "$1" > arg.txt; ' + SHOW_ENV + "; exit 3"


@dataclass
class Node:
    """A worker node for concordia-job.sh: its environment (python3 and the runtime first on
    its PATH record their starts), its image link and the statuses DiracX was told."""

    root: Path
    env: dict[str, str]
    url: str
    diracx_url: str
    statuses: list[str] = field(default_factory=list)

    @property
    def cache(self) -> Path:
        return Path(self.env["CONCORDIA_NODE_IMAGE_CACHE"]) / f"concordia-images-{os.getuid()}"

    def log(self, name: str) -> list[dict[str, Any]]:
        log = self.root / f"{name}.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def wrapper_starts(self) -> list[list[str]]:
        """python3's starts of the Python wrapper (the stand-in apptainer is python3 too)."""
        return [c["argv"] for c in self.log("python3") if "concordia_job.py" in " ".join(c["argv"])]

    def job(
        self, name: str, stored: dict[str, Any], datalake: dict[str, Any] | None = None
    ) -> Path:
        """A job's directory as DIRAC makes it from the input sandbox Concordia uploads."""
        settings = {"diracx_url": self.diracx_url}
        config = wrapper_config(image_config(stored), False, settings, datalake=datalake)
        work = self.root / name / "job"
        work.mkdir(parents=True)
        for file, data in wrapper_files(config).items():
            (work / file).write_bytes(data)
            (work / file).chmod(0o755)
        return work

    def run(
        self, work: Path, argv: list[str], arguments: list[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The job as DIRAC starts it, with the JDL's Arguments as Concordia writes them."""
        if arguments is None:
            arguments = wrapper_arguments(argv, self.url, image=True)
        return subprocess.run(
            ["/bin/sh", str(work / "concordia-job.sh"), *arguments], cwd=work, env=self.env,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip


def logging_standin(path: Path, log: Path, real: str) -> None:
    """``path`` records its argv and environment in ``log``, then becomes ``real``."""
    python = shutil.which("python3", path=NODE_PATH)
    path.write_text(
        f"#!{python} -I\nimport json, os, sys\n"
        f"with open({str(log)!r}, 'a') as fh:\n"
        "    fh.write(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}) + '\\n')\n"
        f"os.execv({real!r}, [{real!r}] + sys.argv[1:])\n"
    )
    path.chmod(0o755)


@pytest.fixture
def node(tmp_path: Path, image_server: ImageServer) -> Iterator[Node]:
    """The stand-in apptainer and a recording python3 first on PATH; a DiracX stand-in
    that takes the jobs' application statuses; a proxy with a DiracX token."""
    bin_dir = node_bin(tmp_path)
    real_python = shutil.which("python3", path=NODE_PATH)
    assert real_python
    logging_standin(bin_dir / "python3", tmp_path / "python3.log", real_python)
    statuses: list[str] = []

    class DiracX(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            statuses.extend(s["ApplicationStatus"] for j in body.values() for s in j.values())
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), DiracX)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = base64.b64encode(json.dumps({"access_token": "t"}).encode()).decode()
    proxy = tmp_path / "proxy.pem"
    proxy.write_text(f"-----BEGIN DIRACX-----\n{token}\n-----END DIRACX-----\n")
    env = {
        "PATH": f"{bin_dir}:{NODE_PATH}",
        "CONCORDIA_NODE_IMAGE_CACHE": str(tmp_path / "node-cache"),
        "APPTAINER_STANDIN_LOG": str(tmp_path / "apptainer.log"),
        "DIRACJOBID": "7",
        "X509_USER_PROXY": str(proxy),
        # The node's own: the job has it under apptainer (which drops it), never under bwrap.
        "NODE_ONLY": "a value\nexport PATH=/evil",
    }
    url = f"http://127.0.0.1:{server.server_port}"
    yield Node(tmp_path, env, image_server.url, url, statuses)
    server.shutdown()
    thread.join(timeout=10)


def same_start(node: Node, first: Path, second: Path, log: str) -> None:
    """The runtime started for the second job exactly as for the first (its own directory
    apart), and the job's output and status the same."""
    calls = {c["env"]["PWD"]: c for c in node.log(log)}
    one, two = calls[str(first)], calls[str(second)]
    assert json.loads(json.dumps(one).replace(str(first), str(second))) == two
    for name in ("arg.txt", "env.txt"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (second / "arg.txt").read_text() == EVERY_CHARACTER


def test_a_second_job_with_the_cached_image_starts_without_python3(
    node: Node, stored: dict[str, Any]
) -> None:
    first, second = node.job("first", stored), node.job("second", stored)
    argv = ["sh", "-c", SAVE_ARG, "sh", EVERY_CHARACTER]
    one = node.run(first, argv)
    assert one.returncode == 3, one.stderr
    assert len(node.wrapper_starts()) == 1  # the first job on the node: python3's
    two = node.run(second, argv)
    assert two.returncode == 3, two.stderr

    # No python3 before the command: only after it, to tell DiracX its exit code.
    assert node.wrapper_starts()[1:] == [
        ["-I", "-S", f"{second}/concordia_job.py", "--exited", "3"]
    ]
    assert node.statuses == ["Application exited with code 3"] * 2
    same_start(node, first, second, "apptainer")
    assert one.stdout.splitlines()[:2] == two.stdout.splitlines()[:2]
    assert "[concordia] runtime: apptainer (" in two.stdout and "on PATH" in two.stdout
    assert f"image {stored['id'][:12]}: from the node's cache {node.cache}" in two.stdout
    assert two.stderr.startswith("[concordia] running sh -c ")
    assert one.stderr.endswith(two.stderr)  # after "fetched into the node's cache"
    assert (second / ".concordia-tmp").is_dir()  # apptainer's --workdir, made as python3 does


def test_a_job_started_without_python3_stores_its_data_through_python3(
    node: Node, stored: dict[str, Any], rucio_server: RucioServer
) -> None:
    # DIRAC 9's proxy file: the user's certificate and key, then the DiracX token.
    state = rucio_server.state_dir
    pem = (state / "webdav.crt").read_text() + (state / "etc" / "webdav.key").read_text()
    proxy = Path(node.env["X509_USER_PROXY"])
    proxy.write_text(pem + proxy.read_text())
    lake = {
        "url": rucio_server.webdav_url,
        "scope": "user.jane",
        "data": ["*.zst", "*.readonly"],
        "outputs": [],
        "sandbox_max_bytes": 1 << 20,
        "ca": Path(rucio_server.ca).read_text(),
    }
    names = f"sh-{uuid.uuid4().hex[:10]}."
    jobs = [node.job(name, stored, lake) for name in ("first", "second", "third")]
    argv = ["sh", "-c", "head -c 3000000 /dev/urandom > out.zst"]
    arguments = wrapper_arguments(argv, node.url, image=True, datalake_names=names)
    for work in jobs[:2]:
        done = node.run(work, argv, arguments)
        assert done.returncode == 0, done.stderr
        [entry] = json.loads((work / DATALAKE_MANIFEST).read_text())
        assert (entry["name"], entry["bytes"]) == (names + "out.zst", 3000000)
        assert not (work / "out.zst").exists()
    # The second job started without python3; python3 stored its data after the command.
    assert node.wrapper_starts()[1:] == [
        ["-I", "-S", f"{jobs[1]}/concordia_job.py", "--exited", "0", arguments[0]]
    ]
    refused = ["sh", "-c", "echo x > out.readonly"]
    arguments = wrapper_arguments(refused, node.url, image=True, datalake_names=names)
    done = node.run(jobs[2], refused, arguments)
    reason = "data lake: upload of out.readonly refused: HTTP 403 Forbidden"
    assert done.returncode == 1 and done.stderr.endswith(f"[concordia] {reason}\n")
    assert len(node.wrapper_starts()) == 3  # this one, too, without python3 before it
    assert node.statuses == ["Application exited with code 0"] * 2 + [reason]


def bwrap_0_4(path: Path, log: Path, real: str) -> None:
    """``path`` is bubblewrap as EL9 has it (0.4): no --clearenv; it records its starts."""
    python = shutil.which("python3", path=NODE_PATH)
    path.write_text(
        f"#!{python} -I\nimport json, os, sys\n"
        "if '--clearenv' in sys.argv:\n"
        "    sys.exit('bwrap: Unknown option --clearenv')\n"
        f"with open({str(log)!r}, 'a') as fh:\n"
        "    fh.write(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}) + '\\n')\n"
        f"os.execv({real!r}, [{real!r}] + sys.argv[1:])\n"
    )
    path.chmod(0o755)


@pytest.mark.parametrize("version", ["0.8", "0.4"])
def test_under_bubblewrap_the_second_job_gets_the_image_environment_alone(
    node: Node, stored: dict[str, Any], version: str
) -> None:
    """Bubblewrap 0.5 and newer clear the node's environment themselves (--clearenv, found
    by the node's first job); sh clears it for 0.4. Either way the same command and
    environment for both jobs, and the image's environment alone for the command."""
    bwrap = shutil.which("bwrap", path=NODE_PATH)
    assert bwrap
    (node.root / "node-bin" / "apptainer").unlink()
    standin = logging_standin if version == "0.8" else bwrap_0_4
    standin(node.root / "node-bin" / "bwrap", node.root / "bwrap.log", bwrap)
    first, second = node.job("first", stored), node.job("second", stored)
    argv = ["sh", "-c", "env > env.all; " + SAVE_ARG, "sh", EVERY_CHARACTER]
    assert node.run(first, argv).returncode == 3
    two = node.run(second, argv)
    assert two.returncode == 3, two.stderr
    assert len(node.wrapper_starts()) == 2  # the first job, then the second's status
    assert "runtime: bwrap" in two.stdout and "no apptainer or singularity" in two.stdout
    image_env = {"PATH": DEFAULT_PATH, "HOME": "/work", "LANG": "C.UTF-8", **IMAGE_ENV}
    for work in (first, second):
        lines = (work / "env.all").read_text().splitlines()
        own = {"PWD": "/work", "SHLVL": "1"}  # set by bwrap's --chdir and the command's sh
        assert dict(line.split("=", 1) for line in lines) == {**image_env, **own}
    [call] = [c for c in node.log("bwrap") if str(second) in c["argv"]]
    if version == "0.8":
        assert call["argv"][0] == "--clearenv"
        assert call["env"]["NODE_ONLY"] == node.env["NODE_ONLY"]  # cleared by bwrap itself
    else:
        assert "--clearenv" not in call["argv"]
        assert call["env"] == image_env
    # The node's environment again for the status: python3 saw what the node gave.
    [status] = [c for c in node.log("python3") if "--exited" in c["argv"]]
    assert status["env"]["NODE_ONLY"] == node.env["NODE_ONLY"]
    # All of it and nothing of the image's (sh sets PWD; python3 coerces the C locale).
    assert {k: v for k, v in status["env"].items() if k not in ("PWD", "LC_CTYPE")} == node.env
    # Asked once per node, by python3 (0.4 refuses before its stand-in records it).
    probes = [c for c in node.log("bwrap") if "--version" in c["argv"]]
    assert [c["argv"] for c in probes] == (
        [["--clearenv", "--version"]] if version == "0.8" else []
    )
    calls = [c for c in node.log("bwrap") if c not in probes]
    for call in calls:
        call["env"]["PWD"] = call["argv"][call["argv"].index("--bind") + 1]
    (node.root / "bwrap.log").write_text("".join(json.dumps(c) + "\n" for c in calls))
    same_start(node, first, second, "bwrap")


def test_bubblewrap_clears_the_environment_only_as_the_node_s_stamp_says(
    node: Node, stored: dict[str, Any]
) -> None:
    """A stamp naming another bubblewrap, older than this one, or a link: sh clears the
    node's environment itself, and the command still gets the image's alone."""
    bwrap = shutil.which("bwrap", path=NODE_PATH)
    assert bwrap
    (node.root / "node-bin" / "apptainer").unlink()
    binary = node.root / "node-bin" / "bwrap"
    logging_standin(binary, node.root / "bwrap.log", bwrap)
    argv = ["sh", "-c", "env > env.all"]
    assert node.run(node.job("first", stored), argv).returncode == 0
    stamp = node.cache / CLEARENV_STAMP
    assert stamp.read_text() == f"{binary}\n"

    def cleared_by_bwrap(name: str) -> bool:
        work = node.job(name, stored)
        before = len(node.wrapper_starts())
        assert node.run(work, argv).returncode == 0
        assert "--exited" in node.wrapper_starts()[before]  # started by sh, not python3
        [call] = [c for c in node.log("bwrap") if str(work) in c["argv"]]
        lines = (work / "env.all").read_text().splitlines()
        env = dict(line.split("=", 1) for line in lines)
        assert "NODE_ONLY" not in env and env["MPLBACKEND"] == "Agg", name
        return bool(call["argv"][0] == "--clearenv")

    assert cleared_by_bwrap("stamped")
    stamp.write_text(f"{bwrap}\n")
    assert not cleared_by_bwrap("another-bwrap")
    stamp.write_text(f"{binary}\n")
    later = time.time() + 60
    os.utime(binary, (later, later))  # replaced after the stamp was written
    assert not cleared_by_bwrap("changed-bwrap")
    os.utime(stamp, (later + 1, later + 1))
    assert cleared_by_bwrap("stamped-again")
    stamp.rename(node.root / "elsewhere")
    stamp.symlink_to(node.root / "elsewhere")
    assert not cleared_by_bwrap("stamp-a-link")


def test_anything_not_known_good_goes_to_python3(
    node: Node, stored: dict[str, Any], image_server: ImageServer
) -> None:
    """A missing, stale or tampered marker, settings or argument: python3 starts the job."""
    argv = ["sh", "-c", "echo ran > ran.txt"]
    assert node.run(node.job("filling", stored), argv).returncode == 0
    stamp = node.cache / f"{stored['sha256']}.sqsh.verified"

    def through_python(name: str, arguments: list[str] | None = None) -> None:
        work = node.job(name, stored)
        before = len(node.wrapper_starts())
        done = node.run(work, argv, arguments)
        assert done.returncode == 0 and (work / "ran.txt").exists(), (name, done.stderr)
        started = node.wrapper_starts()[before:]
        assert started[0][:3] == ["-I", "-S", f"{work}/concordia_job.py"], name
        assert "--exited" not in started[0], name

    def fast(name: str) -> None:
        before = len(node.wrapper_starts())
        assert node.run(node.job(name, stored), argv).returncode == 0
        assert "--exited" in node.wrapper_starts()[before], name

    fast("fast")
    stamp.unlink()  # no stamp: fetched and checked again
    through_python("no-stamp")
    assert image_server.gets == 2 and stamp.exists()
    fast("stamped-again")

    stamp.rename(node.root / "elsewhere")
    stamp.symlink_to(node.root / "elsewhere")  # a link could point anywhere
    through_python("stamp-a-link")
    stamp.unlink()
    (node.root / "elsewhere").rename(stamp)

    node.cache.chmod(0o700)  # no longer marked as closed to others: python3 checks it
    through_python("cache-unmarked")
    assert node.cache.stat().st_mode & 0o1000  # and marks it again
    fast("marked-again")

    if os.getuid() == 0:  # another user's stamp (only root can make one here)
        os.chown(stamp, 12345, -1)
        through_python("stamp-of-another")
        os.chown(stamp, 0, -1)
        # Another user's cache beside this user's, marked as closed: sh never takes it.
        other = node.cache.parent / "concordia-images-12345"
        shutil.copytree(node.cache, other, symlinks=True)
        other.chmod(0o1700)
        for path in [other, *other.iterdir()]:
            os.lchown(path, 12345, 12345)
        fast("beside-another-s")
        assert (
            f"from the node's cache {node.cache}\n"
            in node.run(node.job("again-beside", stored), argv).stdout
        )

    settings_file = "concordia-job.env"
    work = node.job("no-settings", stored)
    (work / settings_file).unlink()
    before = len(node.wrapper_starts())
    assert node.run(work, argv).returncode == 0
    assert "--exited" not in node.wrapper_starts()[before]

    work = node.job("stale-settings", stored)
    text = (work / settings_file).read_text()
    (work / settings_file).write_text(text.replace("cj_settings=1", "cj_settings=2"))
    before = len(node.wrapper_starts())
    assert node.run(work, argv).returncode == 0
    assert "--exited" not in node.wrapper_starts()[before]

    unusual = ["sh", "-c", "echo ran > ran.txt # é"]  # a character sh does not decode
    [json_only] = wrapper_arguments(unusual, node.url, image=True)
    through_python("not-sh-s", [json_only])
    through_python("no-sh-argument", wrapper_arguments(argv, node.url, image=True)[:1])
    through_python("garbled", [*wrapper_arguments(argv, node.url, image=True)[:1], "1,sh,_zz,"])
    fast("still-fast")
