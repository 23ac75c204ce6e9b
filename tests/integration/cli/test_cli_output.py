"""What the CLI prints: why an application cannot run, UTC times, binary sizes, 80 columns."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from concordia.core.units import size_text
from tests.conftest import LiveServer
from tests.integration.cli.test_cli import done_jobs, ok
from tests.integration.cli.test_cli_images import hello_image


def test_apps_and_app_say_why_an_application_cannot_be_submitted(
    live_server: LiveServer,
) -> None:
    listing = ok(live_server, "apps").stdout
    # CORSIKA's source is for registered users only: not configured here.
    assert "corsika: CORSIKA air showers for CTA is unavailable: its build needs" in listing
    assert "hello: " not in listing
    shown = ok(live_server, "app", "corsika").stdout
    assert "cannot be submitted: CORSIKA air showers for CTA is unavailable" in shown
    assert "sources.corsika" in shown
    assert "cannot be submitted" not in ok(live_server, "app", "hello").stdout


def test_get_zip_to_a_file_name_writes_that_file(live_server: LiveServer, tmp_path: Path) -> None:
    [job] = done_jobs(live_server, "message=hi")
    target = tmp_path / "out.zip"
    wrote = ok(live_server, "get", str(job), "--zip", "-o", str(target)).stdout
    assert target.is_file() and f"wrote {target}" in wrote
    with zipfile.ZipFile(target) as archive:
        assert any(name.endswith("result-1.txt") for name in archive.namelist())
    ok(live_server, "get", str(job), "--zip", "-o", str(tmp_path))  # a directory: in it
    assert (tmp_path / f"job-{job}-outputs.zip").is_file()


def test_times_say_utc(live_server: LiveServer) -> None:
    [job] = done_jobs(live_server)
    status = ok(live_server, "status", str(job)).stdout
    created = next(line for line in status.splitlines() if line.startswith("created"))
    assert created.rstrip().endswith(" UTC")
    assert "time (UTC)" in status
    assert "updated (UTC)" in ok(live_server, "jobs").stdout


def test_images_list_fits_80_columns_with_binary_sizes(live_server: LiveServer) -> None:
    image = hello_image(live_server)
    listing = ok(live_server, "images", "list").stdout
    assert max(len(line) for line in listing.splitlines()) <= 80, listing
    first = listing.splitlines()[0]
    assert first.startswith(f"{image['id'][:12]}  hello  ready  built ") and " UTC" in first
    squashfs = size_text(image["formats"]["squashfs"]["size"])
    assert f"squashfs {squashfs}" in listing and "iB" in squashfs
    shown = ok(live_server, "images", "show", image["id"]).stdout
    assert re.search(rf"squashfs +{re.escape(squashfs)} \(", shown), shown
