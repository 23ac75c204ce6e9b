"""Grid jobs in their images, end to end: Concordia (a real server) publishes the image and
submits to a real DiracX; the test site runs the jobs as DIRAC's JobWrapper does, with a
stand-in apptainer first on its PATH. The node fetches the image once over the signed link,
or runs it in place from the unpacked tree; the command's exit code comes back."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.diracx.fixtures import DiracX
from tests.diracx.site import Site
from tests.integration.backends.test_diracx_backend import as_jane

REPO = Path(__file__).resolve().parents[3]
STANDIN = REPO / "tests" / "diracx" / "apptainer.py"
LINK_GETS = "GET /api/v1/grid/images/"


@pytest.fixture
def live_server_env(tmp_path: Path, diracx: DiracX) -> dict[str, str]:
    """Concordia acting as jane on the grid, with the hello application; its unpacked tree
    in tmp/published, which nodes would see at tmp/cvmfs (not there until a test mounts it)."""
    apps = tmp_path / "apps"
    apps.mkdir()
    shutil.copy(REPO / "applications" / "hello.sh", apps / "hello.sh")
    hello = (REPO / "applications" / "hello.yaml").read_text()
    (apps / "hello.yaml").write_text(hello.replace("vos: []", "vos: [cta]"))  # DiracX's VO
    return {
        **as_jane(diracx, apps),
        "CONCORDIA_GRID_UNPACKED_DIR": str(tmp_path / "published"),
        "CONCORDIA_GRID_UNPACKED_NODE_PATH": str(tmp_path / "cvmfs"),
    }


@pytest.fixture
def node(site: Site, tmp_path: Path) -> Site:
    """The site as one worker node: a stand-in apptainer first on PATH, one image cache."""
    bin_dir = tmp_path / "node-bin"
    bin_dir.mkdir()
    shutil.copy(STANDIN, bin_dir / "apptainer")
    (bin_dir / "apptainer").chmod(0o755)
    site.node_path = [bin_dir]
    site.node_env = {
        "CONCORDIA_NODE_IMAGE_CACHE": str(tmp_path / "node-cache"),
        "APPTAINER_STANDIN_LOG": str(tmp_path / "apptainer.log"),
    }
    return site


def submit(server: LiveServer, **parameters: object) -> list[dict[str, Any]]:
    """Submit hello jobs to DiracX; the jobs once each has its DiracX JobID."""
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=30
    ) as client:
        made = client.post(
            "/api/v1/submissions",
            json={"application": "hello", "parameters": parameters, "backend": "diracx"},
        )
        assert made.status_code == 201, made.text
        jobs = wait(
            client, made.json()["job_ids"], lambda j: j["backend_ref"] or j["status"] == "Failed"
        )
        assert all(j["backend_ref"] for j in jobs), jobs
        return jobs


def finished(server: LiveServer, ids: list[int]) -> list[dict[str, Any]]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=30
    ) as client:
        return wait(client, ids, lambda j: j["status"] in ("Done", "Failed"))


def wait(client: httpx.Client, ids: list[int], ready: Any, timeout: float = 120) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [client.get(f"/api/v1/jobs/{i}").json() for i in ids]
        if all(ready(j) for j in jobs):
            return jobs
        assert time.monotonic() < deadline, [
            (j["id"], j["status"], j["minor_status"]) for j in jobs
        ]
        time.sleep(0.3)


def apptainer_calls(tmp_path: Path) -> list[list[str]]:
    lines = (tmp_path / "apptainer.log").read_text().splitlines()
    return [json.loads(line)["argv"] for line in lines]


def test_the_node_fetches_the_image_once_over_its_signed_link_and_exit_codes_come_back(
    live_server: LiveServer, node: Site, tmp_path: Path
) -> None:
    jobs = submit(live_server, jobs=3, message="grid")
    failing = submit(live_server, exit_code=3, first_run=9)
    with node.running():
        done = finished(live_server, [j["id"] for j in jobs + failing])
    assert [j["status"] for j in done] == ["Done", "Done", "Done", "Failed"], done
    assert [j["exit_code"] for j in done] == [0, 0, 0, 3]
    assert done[3]["minor_status"] == "Application exited with code 3"
    assert done[3]["application_status"] == "Application exited with code 3"

    # Four jobs of one node, one download (the node has no CVMFS here).
    log = live_server.output()
    assert log.count(LINK_GETS) == 1, log
    assert "sig=REDACTED" in log
    calls = apptainer_calls(tmp_path)
    assert len(calls) == 4
    image_id = done[0]["image_id"]
    for argv, job in zip(calls, sorted(node.runs, key=lambda r: r.job_id), strict=True):
        assert argv[:4] == ["exec", "--contain", "--ipc", "--cleanenv"]
        assert [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"] == [
            f"{job.workdir}:/work"
        ]
        assert any(a.startswith(str(tmp_path / "node-cache")) for a in argv)

    # What the job wrote came back (by file name, as DIRAC's output sandbox has it).
    with httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {live_server.token}"}
    ) as client:
        result = client.get(f"/api/v1/jobs/{done[1]['id']}/outputs/result-2.txt")
        assert result.status_code == 200 and "grid" in result.text

    # Published in the unpacked tree as CVMFS's unpacked.cern.ch lays images out.
    published = tmp_path / "published"
    assert (published / ".flat" / image_id[:2] / image_id / "bin" / "busybox").is_file()
    named = published / "concordia" / f"hello:{image_id[:12]}"
    assert named.is_symlink() and named.resolve() == published / ".flat" / image_id[:2] / image_id
    manifest = published / ".metadata" / "concordia" / f"hello:{image_id[:12]}" / "manifest.json"
    assert json.loads(manifest.read_text())["id"] == image_id


def test_a_node_with_the_unpacked_tree_runs_the_image_in_place(
    live_server: LiveServer, node: Site, tmp_path: Path
) -> None:
    jobs = submit(live_server, jobs=2)
    (tmp_path / "cvmfs").symlink_to(tmp_path / "published")  # the node mounts CVMFS
    with node.running():
        done = finished(live_server, [j["id"] for j in jobs])
    assert [j["status"] for j in done] == ["Done", "Done"], done
    image_id = done[0]["image_id"]
    in_place = f"{tmp_path / 'cvmfs'}/.flat/{image_id[:2]}/{image_id}"
    assert len(apptainer_calls(tmp_path)) == 2
    assert all(in_place in argv for argv in apptainer_calls(tmp_path))
    assert LINK_GETS not in live_server.output()
    assert not (tmp_path / "node-cache").exists() or not any(
        (tmp_path / "node-cache").rglob("*.sqsh")
    )
