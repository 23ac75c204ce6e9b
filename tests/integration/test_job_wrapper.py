"""The grid job wrapper (what DiracX jobs run on a worker node), run here as a node would:
plain python3, the job's directory as working directory, the image from its URL or path."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from concordia.images.store import ImageStore

# A grid node runs it: no database anywhere.
pytestmark = pytest.mark.one_database

WRAPPER = resources.files("concordia.backends") / "wrapper"


def job_dir(tmp_path: Path, image: dict[str, object] | None) -> Path:
    work = tmp_path / "job"
    work.mkdir(parents=True)
    for name in ("concordia-job.sh", "concordia_job.py"):
        (work / name).write_bytes((WRAPPER / name).read_bytes())
        (work / name).chmod(0o755)
    (work / "concordia-job.json").write_text(json.dumps({"image": image, "network": False}))
    return work


def run(work: Path, argv: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    arg = base64.urlsafe_b64encode(json.dumps({"argv": argv}).encode()).decode().rstrip("=")
    return subprocess.run(
        ["/bin/sh", str(work / "concordia-job.sh"), arg],
        cwd=work, capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "CONCORDIA_IMAGE_CACHE": str(cache)},
    )  # fmt: skip


def test_without_an_image_the_command_runs_in_the_job_directory(tmp_path: Path) -> None:
    work = job_dir(tmp_path, None)
    done = run(work, ["sh", "-c", "echo out; echo made > result.txt; exit 4"], tmp_path / "c")
    assert done.returncode == 4 and done.stdout == "out\n"
    assert (work / "result.txt").read_text() == "made\n"
    missing = run(work, ["no-such-program"], tmp_path / "c")
    assert missing.returncode == 127 and "cannot start no-such-program" in missing.stderr


def test_the_image_is_fetched_checked_cached_and_run(tmp_path: Path, image_seed: Path) -> None:
    store = ImageStore(image_seed)
    [stored] = [
        s for p in image_seed.iterdir() if (p / "image.json").is_file() and (s := store.get(p.name))
    ]
    squashfs = stored.format_path("squashfs")
    sha256 = stored.meta["formats"]["squashfs"]["sha256"]
    image = {"id": stored.id, "url": str(squashfs), "sha256": sha256, "workdir": "/work"}
    work = job_dir(tmp_path, image)
    cache = tmp_path / "cache"
    argv = ["sh", "-c", "test -x /bin/busybox && echo inside > result.txt && pwd"]
    first = run(work, argv, cache)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "/work\n" and (work / "result.txt").read_text() == "inside\n"
    assert "copying image" in first.stderr
    again = run(work, argv, cache)
    assert again.returncode == 0 and "from the node's cache" in again.stderr

    forged = job_dir(tmp_path / "forged", {**image, "sha256": "0" * 64})
    refused = run(forged, argv, tmp_path / "other-cache")
    assert refused.returncode != 0 and "expected 000" in refused.stderr
    assert not (forged / "result.txt").exists()
    assert [p for p in (tmp_path / "other-cache").rglob("*") if p.is_file()] == []  # no half


def test_the_wrapper_needs_only_python3(tmp_path: Path) -> None:
    """Nothing of Concordia (nor any third-party module) is imported on a node."""
    source = (WRAPPER / "concordia_job.py").read_text()
    imported = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.startswith(("import ", "from "))
    }
    assert imported <= set(sys.stdlib_module_names), imported
    assert shutil.which("python3")
