"""`concordia images` against a real server process: select, list, show, export, delete, and
real builds followed live."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, free_port
from tests.integration.cli.test_cli import cli, ok
from tests.integration.images.test_images import BUSYBOX

pytestmark = pytest.mark.slow

TOY_YAML = f"""
name: toy
title: Toy
command: "cat /etc/toy"
cpu_time: 30
build_args:
  flavour: {{type: enum, choices: [vanilla, chocolate], default: vanilla}}
{BUSYBOX}    - echo "the toy step says" {{flavour}} | tee /etc/toy
"""
BROKEN_YAML = f"""
name: broken
title: Broken
command: "true"
{BUSYBOX}    - echo about to fail; exit 3
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hello_image(server: LiveServer) -> dict[str, Any]:
    """The seeded hello image: in the server's store, in its catalogue once asked for."""
    ok(server, "images", "build", "hello")
    [image] = json.loads(ok(server, "images", "list", "--app", "hello", "--json").stdout)
    assert image["status"] == "ready"
    return dict(image)


def test_build_selects_the_seeded_image_and_list_show_it(live_server: LiveServer) -> None:
    built = ok(live_server, "images", "build", "hello").stdout
    image = hello_image(live_server)
    assert built == f"selected existing image {image['id']}\n"
    # Selected at once: --follow has nothing to wait for.
    assert ok(live_server, "images", "build", "hello", "--follow").stdout == built
    selection = json.loads(ok(live_server, "images", "build", "hello", "--json").stdout)
    assert selection["selected"] is True and selection["image"]["id"] == image["id"]

    listing = ok(live_server, "images", "list").stdout
    assert image["id"][:12] in listing and image["id"][:13] not in listing
    assert "hello" in listing and "ready" in listing and "squashfs" in listing
    assert "1 image(s)" in listing
    assert "0 image(s)" in ok(live_server, "images", "list", "--app", "corsika").stdout

    # A prefix of 6 digits names it (any case); the whole id and each format's sha256 show.
    shown = ok(live_server, "images", "show", image["id"][:6].upper()).stdout
    assert image["id"] in shown and "mmdebstrap" in shown
    for fmt in ("squashfs", "oci"):
        assert image["formats"][fmt]["sha256"] in shown
    as_json = json.loads(ok(live_server, "images", "show", image["id"][:10], "--json").stdout)
    assert as_json == image

    # A submission says its image was selected.
    submitted = ok(live_server, "submit", "hello").stdout.splitlines()
    assert submitted[2] == f"image {image['id'][:12]}: selected (it exists)"


def test_export_writes_each_format_checked_and_never_overwrites(
    live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = hello_image(live_server)
    short = image["id"][:12]
    monkeypatch.chdir(tmp_path)
    # The server's name by default, in the current directory.
    squashfs = tmp_path / f"hello-{short}.sqsh"
    result = ok(live_server, "images", "export", short)
    assert (
        f"wrote hello-{short}.sqsh ({image['formats']['squashfs']['size']} bytes" in result.stdout
    )
    assert sha256(squashfs) == image["formats"]["squashfs"]["sha256"]
    assert squashfs.read_bytes()[:4] == b"hsqs"
    # -o a file: that name (its directories made); -o a directory: the default name in it.
    named = tmp_path / "new" / "hello.oci.tar"
    ok(live_server, "images", "export", short, "--format", "oci", "-o", str(named))
    assert sha256(named) == image["formats"]["oci"]["sha256"]
    ok(live_server, "images", "export", short, "--format", "oci", "-o", str(tmp_path / "new"))
    oci = tmp_path / "new" / f"hello-{short}.oci.tar"
    assert sha256(oci) == image["formats"]["oci"]["sha256"]

    # An existing file stays as it is unless --force.
    mine = tmp_path / "mine.sqsh"
    mine.write_bytes(b"my own work")
    refused = cli(live_server, "images", "export", short, "-o", str(mine))
    assert refused.exit_code == 1
    assert f"{mine} exists: not overwritten (--force overwrites it)" in refused.stderr
    assert mine.read_bytes() == b"my own work"
    again = cli(live_server, "images", "export", short)
    assert again.exit_code == 1 and "exists: not overwritten" in again.stderr
    ok(live_server, "images", "export", short, "-o", str(mine), "--force")
    assert sha256(mine) == image["formats"]["squashfs"]["sha256"]
    assert not list(tmp_path.rglob("*.part"))


def test_rm_deletes_and_unknown_ids_are_refused(live_server: LiveServer) -> None:
    image = hello_image(live_server)
    unknown = cli(live_server, "images", "rm", "0" * 64)
    assert unknown.exit_code == 1 and f"no image {'0' * 64}" in unknown.stderr
    prefix = "abcdef12" if not image["id"].startswith("abcdef12") else "12abcdef"
    unknown_prefix = cli(live_server, "images", "rm", prefix)
    assert unknown_prefix.exit_code == 1
    assert f"no image whose id starts with {prefix}" in unknown_prefix.stderr
    for malformed in ("nosuch", image["id"][:5], image["id"] + "0"):
        refused = cli(live_server, "images", "rm", malformed)
        assert refused.exit_code == 2, refused.output
        panel = " ".join(refused.output.replace("│", " ").split())  # Typer's box, unwrapped
        assert f"'{malformed}' is not an image id: give its 64 hex digits" in panel

    removed = ok(live_server, "images", "rm", image["id"][:8]).stdout
    assert removed == f"deleted image {image['id']} of hello\n"
    assert "0 image(s)" in ok(live_server, "images", "list").stdout
    gone = cli(live_server, "images", "show", image["id"])
    assert gone.exit_code == 1 and f"no image {image['id']}" in gone.stderr


def test_builders_and_bad_requests(live_server: LiveServer) -> None:
    builders = ok(live_server, "images", "builders").stdout
    assert builders.startswith("builder: mmdebstrap ")
    assert "formats: squashfs, oci" in builders
    data = json.loads(ok(live_server, "images", "builders", "--json").stdout)
    assert data["builder"].startswith("mmdebstrap") and set(data["problems"]) <= {
        "apptainer",
        "podman",
    }
    if "apptainer" in data["problems"]:  # passed over: the table says why
        assert "apptainer" in builders and "not installed" in builders

    bad_arg = cli(live_server, "images", "build", "hello", "-b", "flavour=mint")
    assert bad_arg.exit_code == 1
    assert "build_args.flavour: is not a build argument of this application" in bad_arg.stderr
    unknown = cli(live_server, "images", "build", "nosuch")
    assert unknown.exit_code == 1 and "no application named 'nosuch'" in unknown.stderr
    malformed = cli(live_server, "images", "build", "hello", "-b", "flavour")
    assert malformed.exit_code == 2 and "expected key=value" in malformed.stderr
    # Nothing was selected, built or changed.
    assert "0 image(s)" in ok(live_server, "images", "list").stdout


@pytest.fixture
def toy_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A server whose applications build real (tiny) images: no seeded store."""
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "toy.yaml").write_text(TOY_YAML)
    (apps / "broken.yaml").write_text(BROKEN_YAML)
    data_dir = tmp_path / "var"
    env = {
        **os.environ,
        "CONCORDIA_DATA_DIR": str(data_dir),
        "CONCORDIA_APPLICATIONS_DIR": str(apps),
        "CONCORDIA_PORT": str(free_port()),
        "CONCORDIA_POLL_INTERVAL": "0.5",
        # Each build from scratch: one that reuses a cached stage can end before --timeout
        # 0.5 s, and following it would not be cut short.
        "CONCORDIA_IMAGE_STAGE_CACHE_GB": "0",
    }
    server = LiveServer(data_dir=data_dir, port=int(env["CONCORDIA_PORT"]), env=env)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill(signal.SIGTERM)


def test_follow_streams_real_builds_to_their_end(toy_server: LiveServer) -> None:
    invalid = cli(toy_server, "images", "build", "toy", "-b", "flavour=mint")
    assert invalid.exit_code == 1
    assert "build_args.flavour: must be one of" in invalid.stderr

    # A build starts; while it runs it cannot be deleted, and a submission says it waits.
    started = ok(toy_server, "images", "build", "toy", "-b", "flavour=chocolate").stdout
    assert started.startswith("building image ")
    image_id = started.split()[-1]
    busy = cli(toy_server, "images", "rm", image_id)
    assert busy.exit_code == 1 and "the image is being built" in busy.stderr
    submitted = ok(toy_server, "submit", "toy", "--build-arg", "flavour=chocolate").stdout
    assert f"image {image_id[:12]}: being built, the jobs wait for it" in submitted
    assert "concordia images build toy -b flavour=chocolate --follow" in submitted

    # Following joins the running build: its whole log, then ready (exit 0).
    followed = ok(toy_server, "images", "build", "toy", "-b", "flavour=chocolate", "--follow")
    # Each line of the log starts with the build's elapsed time, left out here.
    lines = [re.sub(r"^\[ *\d+:\d\d\] ", "", line) for line in followed.stdout.splitlines()]
    assert lines[0] == f"building image {image_id}"
    assert "### step 1/2: /bin/busybox --install -s /bin" in lines
    assert "the toy step says chocolate" in lines
    assert any(line.startswith("built in ") for line in lines)
    assert lines[-1].startswith(f"image {image_id[:12]} is ready in ")
    assert "squashfs" in lines[-1] and "oci" in lines[-1]
    shown = json.loads(ok(toy_server, "images", "show", image_id, "--json").stdout)
    assert shown["status"] == "ready" and shown["build_args"] == {"flavour": "chocolate"}
    again = ok(toy_server, "images", "build", "toy", "-b", "flavour=chocolate", "--follow")
    assert again.stdout == f"selected existing image {image_id}\n"

    # --timeout stops following, not the build; following again picks it up to its end.
    waited = cli(toy_server, "images", "build", "toy", "--follow", "--timeout", "0.5")
    assert waited.exit_code == 1, waited.output
    assert "stopped following after 0.5 s; the build goes on" in waited.stderr
    vanilla = ok(toy_server, "images", "build", "toy", "--follow").stdout
    assert "the toy step says vanilla" in vanilla and "is ready in" in vanilla


def test_a_failing_build_exits_1_with_its_error(toy_server: LiveServer) -> None:
    # With --json the log goes to stderr and stdout is the image's JSON alone.
    failed = cli(toy_server, "images", "build", "broken", "--follow", "--json")
    assert failed.exit_code == 1, failed.output
    image = json.loads(failed.stdout)["image"]
    assert image["status"] == "failed" and "exit code 3" in image["error"]
    assert "about to fail" in failed.stderr and "BUILD FAILED" in failed.stderr
    assert f"image {image['id'][:12]} failed to build: {image['error']}" in failed.stderr

    shown = ok(toy_server, "images", "show", image["id"][:7]).stdout
    assert "failed" in shown and "exit code 3" in shown
    refused = cli(toy_server, "images", "export", image["id"][:7])
    assert refused.exit_code == 1 and "is failed: nothing to export" in refused.stderr

    # Asked again, a failed image is built again; followed in plain text: exit 1 too.
    retried = cli(toy_server, "images", "build", "broken", "--follow")
    assert retried.exit_code == 1, (retried.stdout, retried.stderr)
    assert "### step 2/2: echo about to fail; exit 3" in retried.stdout
    assert "failed to build" in retried.stderr
