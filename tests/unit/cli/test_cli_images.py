"""`concordia images` against a scripted server: what a live one cannot be made to do on cue
(ids sharing a prefix, a log stream cut mid-line or closed early, a damaged download)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from rich.console import Console

from concordia.cli.common import Api
from concordia.cli.image_download import ImageFormat, _attachment_name, download
from concordia.cli.image_follow import _sse, follow_build
from concordia.cli.images import resolve

FIRST, SECOND = "abcdef01" + "0" * 56, "abcdef02" + "1" * 56


def api_with(handler: Callable[[httpx.Request], httpx.Response]) -> Api:
    client = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://concordia")
    return Api("http://concordia", "token", client)


def image(image_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": image_id,
        "application": "toy",
        "status": "ready",
        "created_at": "2030-01-01T00:00:00",
        "formats": {},
        **fields,
    }


def events(*items: tuple[str, dict[str, Any]] | str) -> bytes:
    """An SSE body; a bare string is a comment (the keep-alive)."""
    parts = [
        f": {item}\r\n\r\n"
        if isinstance(item, str)
        else f"event: {item[0]}\r\ndata: {json.dumps(item[1])}\r\n\r\n"
        for item in items
    ]
    return "".join(parts).encode()


def test_a_prefix_names_one_image_or_the_command_says_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = api_with(lambda _: httpx.Response(200, json=[image(FIRST), image(SECOND)]))
    assert resolve(api, "abcdef01")["id"] == FIRST
    with pytest.raises(typer.Exit) as ambiguous:
        resolve(api, "abcdef")
    assert ambiguous.value.exit_code == 1
    stderr = capsys.readouterr().err
    assert "abcdef is ambiguous: 2 images start with it; give more digits" in stderr
    assert FIRST in stderr and SECOND in stderr
    with pytest.raises(typer.Exit) as unknown:
        resolve(api, "abcdef03")
    assert unknown.value.exit_code == 1
    assert "no image whose id starts with abcdef03" in capsys.readouterr().err


def test_sse_lines_make_events_and_comments_keep_alive() -> None:
    lines = ["event: log", 'data: {"text": "a"}', "", ": ping", "", "data: x", "data: y", ""]
    assert list(_sse(lines)) == [("log", '{"text": "a"}'), ("", ""), ("message", "x\ny")]


def test_follow_prints_whole_lines_and_resumes_where_a_closed_stream_stopped() -> None:
    offsets: list[str] = []
    bodies = [
        # The first stream ends mid-line and without its end event (the server stopping).
        events(("log", {"text": "step 1\nstep 2 ha"}), "ping"),
        events(
            ("log", {"text": "lf é\n"}), ("log", {"text": "tail"}), ("end", {"status": "ready"})
        ),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        offsets.append(request.url.params["offset"])
        return httpx.Response(200, content=bodies[len(offsets) - 1])

    console = Console(record=True, width=200)
    end = follow_build(api_with(handler), image(FIRST), console, timeout=0)
    assert end == {"status": "ready"}
    assert console.export_text() == "step 1\nstep 2 half é\ntail\n"
    assert offsets == ["0", str(len(b"step 1\nstep 2 ha"))]


def test_follow_gives_up_on_a_stream_that_keeps_closing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("concordia.cli.image_follow.POLL_SECONDS", 0)
    api = api_with(lambda _: httpx.Response(200, content=events("ping")))
    with pytest.raises(typer.Exit) as gave_up:
        follow_build(api, image(FIRST), Console(record=True), timeout=0)
    assert gave_up.value.exit_code == 2
    assert "keeps closing before its end" in capsys.readouterr().err


def test_a_damaged_download_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = b"hsqs and the rest"
    good = {"file": "image.sqsh", "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    api = api_with(lambda _: httpx.Response(200, content=body[:-1] + b"!"))
    target = tmp_path / "toy.sqsh"
    with pytest.raises(typer.Exit) as damaged:
        download(api, image(FIRST, formats={"squashfs": good}), ImageFormat.squashfs, target, False)
    assert damaged.value.exit_code == 1
    assert "the download of toy.sqsh is damaged" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []

    api = api_with(lambda _: httpx.Response(200, content=body))
    written = download(
        api, image(FIRST, formats={"squashfs": good}), ImageFormat.squashfs, target, False
    )
    assert written == (target, len(body), good["sha256"]) and target.read_bytes() == body


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('attachment; filename="toy-abcdef010000.sqsh"', "toy-abcdef010000.sqsh"),
        ("attachment; filename*=utf-8''t%C3%B6y.sqsh", "töy.sqsh"),
        ('attachment; filename="../../etc/passwd"', None),
        ('attachment; filename="/etc/passwd"', None),
        ('attachment; filename=".bashrc"', None),
        ('attachment; filename="a\\\\b"', None),
        ("attachment", None),
        (None, None),
    ],
)
def test_only_a_plain_offered_file_name_is_taken(header: str | None, name: str | None) -> None:
    assert _attachment_name(header) == name
