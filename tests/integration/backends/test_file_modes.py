"""The data dir of a real server is private: only what a job's sandbox must reach is not."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, free_port

pytestmark = pytest.mark.real

# An image built by the server itself: a file a build step writes, one the recipe copies in
# (below a directory the build makes), both read by the job as the sandbox's uid.
APP_YAML = """
name: private
title: Private data dir
command: "cat /etc/made-by-step /opt/copied/in.txt"
cpu_time: 30
outputs: ["*.txt"]
image:
  variant: extract
  packages: [busybox-static]
  shell: /bin/busybox sh
  steps:
    - /bin/busybox --install -s /bin
    - echo made by a step > /etc/made-by-step
  files: {in.txt: /opt/copied/in.txt}
"""


def _wait(client: httpx.Client, url: str, done: set[str], timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while (body := client.get(url).json())["status"] not in done:
        assert time.monotonic() < deadline, body
        time.sleep(0.2)
    return body  # type: ignore[no-any-return]


def _open_to_others(data_dir: Path, public: set[Path]) -> list[str]:
    """Paths group or others may read or write, except ``public`` and what is below it, and
    what is below a directory they cannot enter (0700: an image's cached build stages)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(data_dir):
        here = Path(dirpath)
        if not here.lstat().st_mode & 0o011:  # its content is out of their reach
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if here / d not in public]
        for name in dirnames + filenames:
            path = here / name
            mode = path.lstat().st_mode
            if path in public:
                continue
            if not stat.S_ISLNK(mode) and mode & 0o066:
                found.append(f"{path.relative_to(data_dir)} {stat.filemode(mode)}")
    return found


def test_a_server_keeps_its_files_private_and_jobs_still_run_in_images(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "private.yaml").write_text(APP_YAML)
    (apps / "in.txt").write_text("copied in\n")
    data_dir = tmp_path / "var"
    port = free_port()
    env = {
        **os.environ,
        "CONCORDIA_DATA_DIR": str(data_dir),
        "CONCORDIA_APPLICATIONS_DIR": str(apps),
        "CONCORDIA_PORT": str(port),
        "CONCORDIA_IMAGE_FORMATS": '["squashfs"]',
        "CONCORDIA_LOCAL_KEEP_WORKDIR": "true",
    }
    # The server inherits a shell's usual umask (022): what it makes private is its own doing.
    old = os.umask(0o022)
    server = LiveServer(data_dir=data_dir, port=port, env=env)
    try:
        server.start()
        client = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=30
        )
        submitted = client.post("/api/v1/submissions", json={"application": "private"})
        assert submitted.status_code == 201, submitted.text
        [job] = client.get(f"/api/v1/jobs?submission={submitted.json()['id']}").json()["items"]
        job = _wait(client, f"/api/v1/jobs/{job['id']}", {"Done", "Failed"})
        out = client.get(f"/api/v1/jobs/{job['id']}/logs").json()["data"]
        client.close()
        assert (job["status"], out) == ("Done", "made by a step\ncopied in\n"), (job, out)
        # While it runs: the database's -wal and -shm exist.
        images = [p for p in (data_dir / "images").iterdir() if (p / "image.json").is_file()]
        assert len(images) == 1
        jobs = [p for p in (data_dir / "jobs").iterdir() if not p.name.startswith(".")]
        work_dirs = {p / "work" for p in jobs}
        assert work_dirs and all(p.is_dir() for p in work_dirs)  # kept: the job's own files
        # Readable by others, as they must be: an image's rootfs (the job's root) and squashfs
        # (Apptainer runs it as the job's uid); a kept work directory is the job's own; the
        # minimal /etc of jobs without an image (stubs and public host files).
        etc = set((data_dir / "jobs").glob(".etc-*"))
        public = {images[0] / "rootfs", images[0] / "image.sqsh", *work_dirs, *etc}
        assert _open_to_others(data_dir, public) == []
        for name in ("concordia.db", "concordia.db-wal", "concordia.db-shm"):
            assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
        # Only traversal (o+x), never listing, on the way to a job's work directory and image.
        for path in (data_dir, data_dir / "jobs", data_dir / "images", images[0]):
            assert stat.S_IMODE(path.stat().st_mode) == 0o711, path
    finally:
        os.umask(old)
        if server.process is not None and server.process.poll() is None:
            server.kill(signal.SIGTERM)
