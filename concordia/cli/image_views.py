"""How `concordia images` shows images: a list, an image's detail, its build arguments,
formats and build time, and the one line a submission prints about its image."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from typing import Any

from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from concordia.cli.common import Api, cell, error_lines, out, status_text, when
from concordia.core.units import size_text

IMAGE_STYLES = {"ready": "green", "building": "cyan", "failed": "red", "cancelled": "red"}


def args_text(build_args: dict[str, Any], sep: str = ", ") -> str:
    """An image's build arguments as name=value."""
    return sep.join(f"{k}={v}" for k, v in build_args.items())


def formats_text(formats: dict[str, Any], sep: str = ", ") -> str:
    """An image's formats with their sizes."""
    return sep.join(f"{name} {size_text(f['size'])}" for name, f in formats.items())


def epoch_seconds(iso: str | None) -> float | None:
    """A time the server gives (ISO 8601, UTC if it names no zone) in seconds since the epoch."""
    if not iso:
        return None
    moment = datetime.fromisoformat(iso)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def elapsed_text(seconds: float) -> str:
    """How long a build took or has taken: 42s, 3m 05s."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, seconds_left = divmod(whole, 60)
    return f"{minutes}m {seconds_left:02d}s"


def show_image_list(images: list[dict[str, Any]]) -> None:
    """Images, a block each: id, application, status, build time, jobs; then build arguments
    and formats."""
    # One block per image, not a table: seven columns never fit 80 characters, and a
    # squeezed table breaks ids, dates and values across lines.
    for i in images:
        head = Text(f"{i['id'][:12]}  {i['application']}  ")
        head.append_text(status_text(i["status"], styles=IMAGE_STYLES))
        if i["built_at"]:
            head.append(f"  built {when(i['built_at'])}")
        head.append(f"  {i['jobs']} job(s)")
        out.print(head)
        for line in (args_text(i["build_args"]), formats_text(i["formats"])):
            if line:
                out.print(Padding(Text(line, overflow="fold"), (0, 0, 0, 2), expand=False))


def show_image(i: dict[str, Any]) -> None:
    """An image's detail, a row each: its configuration, status, builder, then each format's
    size and sha256."""
    info = Table.grid(padding=(0, 2))
    for label, value in (
        ("image", i["id"]),
        ("application", i["application"]),
        ("build args", args_text(i["build_args"]) or "none"),
        ("status", status_text(i["status"], styles=IMAGE_STYLES)),
        ("builder", i["builder"]),
        ("rootfs", size_text(i["rootfs_size"]) if i["rootfs_size"] else ""),
        ("created", when(i["created_at"])),
        ("built", when(i["built_at"])),
        ("jobs", i["jobs"]),
    ):
        info.add_row(Text(label, style="bold"), cell(value))
    if i["error"]:
        info.add_row(Text("error", style="bold"), Text(i["error"], style="red"))
    # A row per format and one for its sha256, whole (a table column would cut it short).
    for name, f in i["formats"].items():
        size = f"{size_text(f['size'])} ({f['size']} bytes), file {f['file']}"
        info.add_row(Text(name, style="bold"), Text(size))
        info.add_row(Text("  sha256"), Text(f["sha256"]))
    out.print(info)


def image_line(api: Api, image_id: str, application: str, build_args: dict[str, Any]) -> Text:
    """One line on a submission's image: selected, being built (and how to watch), failed."""
    short = image_id[:12]
    response = api.send("GET", f"/images/{image_id}")
    if response.is_error:
        return Text(f"image {short}: {' '.join(error_lines(response))}", style="yellow")
    image = response.json()
    if image["status"] == "ready":
        return Text(f"image {short}: selected (it exists)")
    if image["status"] == "building":
        args = "".join(f" -b {shlex.quote(f'{k}={v}')}" for k, v in build_args.items())
        watch = f"concordia images build {shlex.quote(application)}{args} --follow"
        return Text(f"image {short}: being built, the jobs wait for it (watch: {watch})")
    return Text(f"image {short}: {image['status']}: {image['error']}", style="red")
