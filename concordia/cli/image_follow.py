"""Following an image build live: its log printed as the server writes it, under a status
line with the build's time and phase."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
from rich.console import Console
from rich.text import Text

from concordia.cli.common import POLL_SECONDS, Api, fail, say
from concordia.cli.image_views import elapsed_text, epoch_seconds
from concordia.core.build_progress import BuildProgress

#: How often a live log may close early (the server restarting) before following gives up.
MAX_RECONNECTS = 3


class _Elapsed:
    """The status line under a followed log: rendered afresh on every refresh, so the time runs;
    with the build's phase and n of N (its "progress" events)."""

    def __init__(self, label: str, since: float) -> None:
        self.label, self.since = label, since
        self.progress = ""

    def __rich__(self) -> Text:
        phase = f" — {self.progress}" if self.progress else ""
        return Text(f"{self.label} — {elapsed_text(time.time() - self.since)}{phase}")


def _sse(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Server-sent events as (event, data); a comment (the server's keep-alive) as ("", "")."""
    event, data = "", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
        elif line.startswith(":"):
            yield "", ""
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


def _decoded(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def follow_build(
    api: Api, image: dict[str, Any], console: Console, timeout: float
) -> dict[str, Any]:
    """Print the build log as it is written, whole lines only, under a spinner that shows the
    build's time; returns the end event ({status, error}). Ctrl-C or --timeout stop the
    following, never the build."""
    deadline = time.monotonic() + timeout if timeout else math.inf
    path = f"/images/{image['id']}/log/events"
    since = min(time.time(), epoch_seconds(image["created_at"]) or time.time())
    label = f"building image {image['id'][:12]} of {image['application']}"
    status = _Elapsed(label, since)
    try:
        with console.status(status):
            return _follow(api, path, console, deadline, timeout, status)
    except KeyboardInterrupt:
        fail(f"stopped following image {image['id'][:12]}; the build goes on", 130)


def _follow(
    api: Api, path: str, console: Console, deadline: float, timeout: float, status: _Elapsed
) -> dict[str, Any]:
    offset, pending, reconnects = 0, "", 0
    while True:
        end: dict[str, Any] | None = None
        started_at = offset
        read = min(60.0, max(0.5, deadline - time.monotonic()))
        timeouts = httpx.Timeout(60, connect=5, read=read)
        with api.stream(path, params={"offset": offset}, timeout=timeouts) as response:
            try:
                for event, data in _sse(response.iter_lines()):
                    if event == "log":
                        text = str(_decoded(data).get("text", ""))
                        offset += len(text.encode())
                        *lines, pending = (pending + text).split("\n")
                        for line in lines:
                            say(line, console=console)
                    elif event == "progress":
                        status.progress = BuildProgress.model_validate(_decoded(data)).text
                    elif event == "end":
                        end = _decoded(data)
                        break
                    if time.monotonic() >= deadline:
                        break
            except httpx.ReadTimeout:
                if time.monotonic() < deadline:
                    raise  # the server went silent (no keep-alive): exit 2
        if pending and (end is not None or time.monotonic() >= deadline):
            say(pending, console=console)
            pending = ""
        if end is not None:
            return end
        if time.monotonic() >= deadline:
            fail(f"stopped following after {timeout:g} s; the build goes on")
        # Closed before the end (the server stopping): open it again where it stopped.
        reconnects = 0 if offset > started_at else reconnects + 1
        if reconnects > MAX_RECONNECTS:
            fail(f"the build log at {api.url}/api/v1{path} keeps closing before its end", 2)
        time.sleep(POLL_SECONDS)
