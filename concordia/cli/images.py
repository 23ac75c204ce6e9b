"""`concordia images`: select or build an application's image, follow its build, list, show,
export and delete images, and say which builder the server uses."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from email.message import Message
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.padding import Padding
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from concordia.cli.common import (
    JSON_OPTION,
    POLL_SECONDS,
    TIMEOUT_OPTION,
    Api,
    api_of,
    app,
    cell,
    download_bar,
    err,
    error_lines,
    fail,
    out,
    pairs,
    print_json,
    say,
    status_text,
    table,
    when,
)
from concordia.core.build_progress import BuildProgress
from concordia.core.units import size_text

images_app = typer.Typer(
    help="Container images: select or build, follow a build, list, export, delete.",
    no_args_is_help=True,
)
app.add_typer(images_app, name="images")

IMAGE_STYLES = {"ready": "green", "building": "cyan", "failed": "red", "cancelled": "red"}
HEX_DIGITS = frozenset("0123456789abcdef")
ID_LENGTH, MIN_PREFIX = 64, 6
#: How often a live log may close early (the server restarting) before following gives up.
MAX_RECONNECTS = 3


class ImageFormat(StrEnum):
    squashfs = "squashfs"
    oci = "oci"


SUFFIXES = {ImageFormat.squashfs: "sqsh", ImageFormat.oci: "oci.tar"}
FOLLOW_OPTION = typer.Option(
    False, "--follow", "-f", help="Show the build log live; exit 0 if the image is made."
)


def _image_ref(value: str) -> str:
    ref = value.strip().lower()
    if not MIN_PREFIX <= len(ref) <= ID_LENGTH or not set(ref) <= HEX_DIGITS:
        raise typer.BadParameter(
            f"{value!r} is not an image id: give its {ID_LENGTH} hex digits "
            f"or a unique prefix of at least {MIN_PREFIX}"
        )
    return ref


IMAGE_ARG = typer.Argument(
    ...,
    help=f"The image id, or a unique prefix of it (at least {MIN_PREFIX} hex digits).",
    callback=_image_ref,
    show_default=False,
)


def resolve(api: Api, ref: str) -> dict[str, Any]:
    """The image a full id or a unique prefix names; an unknown or ambiguous prefix ends the
    command (exit 1) naming the candidates."""
    if len(ref) == ID_LENGTH:
        image: dict[str, Any] = api.call("GET", f"/images/{ref}")
        return image
    matches = [i for i in api.call("GET", "/images") if i["id"].startswith(ref)]
    if not matches:
        fail(f"no image whose id starts with {ref} (`concordia images list` shows them)")
    if len(matches) > 1:
        fail(
            [f"{ref} is ambiguous: {len(matches)} images start with it; give more digits"]
            + [f"  {i['id']}  {i['application']} ({i['status']})" for i in matches]
        )
    found: dict[str, Any] = matches[0]
    return found


def _args(build_args: dict[str, Any], sep: str = ", ") -> str:
    return sep.join(f"{k}={v}" for k, v in build_args.items())


def _formats(formats: dict[str, Any], sep: str = ", ") -> str:
    return sep.join(f"{name} {size_text(f['size'])}" for name, f in formats.items())


def _timestamp(iso: str | None) -> float | None:
    if not iso:
        return None
    moment = datetime.fromisoformat(iso)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _duration(seconds: float) -> str:
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, seconds_left = divmod(whole, 60)
    return f"{minutes}m {seconds_left:02d}s"


@images_app.command("list")
def list_images(
    ctx: typer.Context,
    application: str | None = typer.Option(
        None, "--app", "--application", help="Only this application's images."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """The images on the server, newest first."""
    params = {"application": application} if application else {}
    images = api_of(ctx).call("GET", "/images", params=params)
    if as_json:
        return print_json(images)
    # One block per image, not a table: seven columns never fit 80 characters, and a
    # squeezed table breaks ids, dates and values across lines.
    for i in images:
        head = Text(f"{i['id'][:12]}  {i['application']}  ")
        head.append_text(status_text(i["status"], styles=IMAGE_STYLES))
        if i["built_at"]:
            head.append(f"  built {when(i['built_at'])}")
        head.append(f"  {i['jobs']} job(s)")
        out.print(head)
        for line in (_args(i["build_args"]), _formats(i["formats"])):
            if line:
                out.print(Padding(Text(line, overflow="fold"), (0, 0, 0, 2), expand=False))
    say(f"{len(images)} image(s)")


@images_app.command("show")
def show(ctx: typer.Context, image: str = IMAGE_ARG, as_json: bool = JSON_OPTION) -> None:
    """An image's detail: configuration, status, builder, each format's size and sha256."""
    i = resolve(api_of(ctx), image)
    if as_json:
        return print_json(i)
    info = Table.grid(padding=(0, 2))
    for label, value in (
        ("image", i["id"]),
        ("application", i["application"]),
        ("build args", _args(i["build_args"]) or "none"),
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


@images_app.command("build")
def build(
    ctx: typer.Context,
    application: str = typer.Argument(..., help="The application's name.", show_default=False),
    build_arg: list[str] | None = typer.Option(
        None, "--build-arg", "-b", help="name=value (repeat)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Build again even if the image exists (newer packages)."
    ),
    follow: bool = FOLLOW_OPTION,
    timeout: float = TIMEOUT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Select the image of this configuration if it exists, else build it (once)."""
    api = api_of(ctx)
    body = {
        "application": application,
        "build_args": pairs(build_arg, "--build-arg"),
        "force": force,
    }
    selection = api.call("POST", "/images", json=body)
    _selected_or_built(api, selection, follow, timeout, as_json)


@images_app.command("cancel")
def cancel(ctx: typer.Context, image: str = IMAGE_ARG, as_json: bool = JSON_OPTION) -> None:
    """Stop an image's build; its waiting jobs fail (`concordia images retry` builds again)."""
    api = api_of(ctx)
    found = api.call("POST", f"/images/{resolve(api, image)['id']}/cancel")
    if as_json:
        return print_json(found)
    say(f"cancelled the build of image {found['id'][:12]}", "yellow")


@images_app.command("retry")
def retry(
    ctx: typer.Context,
    image: str = IMAGE_ARG,
    follow: bool = FOLLOW_OPTION,
    timeout: float = TIMEOUT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Build a failed or cancelled image again (the same application and build arguments)."""
    api = api_of(ctx)
    selection = api.call("POST", f"/images/{resolve(api, image)['id']}/retry")
    _selected_or_built(api, selection, follow, timeout, as_json)


def _selected_or_built(
    api: Api, selection: dict[str, Any], follow: bool, timeout: float, as_json: bool
) -> None:
    """Say what was selected or started; with ``follow``, the build's log until it ends (exit
    1 unless the image is made)."""
    image = selection["image"]
    if not as_json:
        verb = "selected existing image" if selection["selected"] else "building image"
        say(f"{verb} {image['id']}")
    if selection["selected"] or not follow:
        return print_json(selection) if as_json else None
    # With --json the log goes to stderr: stdout holds the JSON alone.
    end = follow_build(api, image, err if as_json else out, timeout)
    image = api.call("GET", f"/images/{image['id']}")
    if as_json:
        print_json({**selection, "image": image})
    if end.get("status") == "cancelled":
        fail(f"the build of image {image['id'][:12]} was cancelled: {end.get('error')}")
    if end.get("status") != "ready":
        fail(f"image {image['id'][:12]} failed to build: {end.get('error') or 'no reason given'}")
    if not as_json:
        made, started = _timestamp(image["built_at"]), _timestamp(image["created_at"])
        took = f" in {_duration(made - started)}" if made and started else ""
        say(f"image {image['id'][:12]} is ready{took}: {_formats(image['formats'])}", "green")


class _Elapsed:
    """The status line under a followed log: rendered afresh on every refresh, so the time runs;
    with the build's phase and n of N (its "progress" events)."""

    def __init__(self, label: str, since: float) -> None:
        self.label, self.since = label, since
        self.progress = ""

    def __rich__(self) -> Text:
        phase = f" — {self.progress}" if self.progress else ""
        return Text(f"{self.label} — {_duration(time.time() - self.since)}{phase}")


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
    since = min(time.time(), _timestamp(image["created_at"]) or time.time())
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


@images_app.command("rm")
def remove(ctx: typer.Context, image: str = IMAGE_ARG) -> None:
    """Delete an image's files (refused while it builds or unfinished jobs use it)."""
    api = api_of(ctx)
    found = resolve(api, image)
    response = api.send("DELETE", f"/images/{found['id']}")
    if response.is_error:
        fail(error_lines(response))
    say(f"deleted image {found['id']} of {found['application']}")


def _attachment_name(header: str | None) -> str | None:
    """The file name a Content-Disposition offers, if it is a plain name (no directory)."""
    if not header:
        return None
    message = Message()
    message["content-disposition"] = header
    name = message.get_filename()
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        return None
    return name


def _publish(partial: Path, target: Path, force: bool) -> None:
    """Give the finished download its name; without --force never over an existing file
    (a hard link fails if the name exists, at the moment it is made)."""
    if force:
        partial.replace(target)
        return
    try:
        os.link(partial, target)
    except FileExistsError:
        fail(f"{target} exists: not overwritten (--force overwrites it)")
    except OSError:  # a file system without hard links
        if target.exists():
            fail(f"{target} exists: not overwritten (--force overwrites it)")
        partial.replace(target)


def _download(
    api: Api, image: dict[str, Any], fmt: ImageFormat, output: Path | None, force: bool
) -> tuple[Path, int, str]:
    """Stream the format's file to FILE.part, check its sha256 against the catalogue, then
    name it FILE: an interrupted or damaged download leaves nothing behind."""
    expected = image["formats"][fmt.value]
    default = f"{image['application']}-{image['id'][:12]}.{SUFFIXES[fmt]}"
    with api.stream(f"/images/{image['id']}/download/{fmt.value}") as r:
        name = _attachment_name(r.headers.get("content-disposition")) or default
        target = output / name if output and output.is_dir() else (output or Path(name))
        if target.exists() and not force:
            fail(f"{target} exists: not overwritten (--force overwrites it)")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        digest, size = hashlib.sha256(), 0
        try:
            with download_bar() as bar, partial.open("wb") as fh:
                task = _add_task(bar, target.name, r.headers.get("content-length"))
                for data in r.iter_bytes(1 << 16):
                    fh.write(data)
                    digest.update(data)
                    size += len(data)
                    bar.advance(task, len(data))
            if digest.hexdigest() != expected["sha256"]:
                fail(
                    f"the download of {target.name} is damaged (sha256 {digest.hexdigest()}, "
                    f"expected {expected['sha256']}); nothing was written"
                )
            _publish(partial, target, force)
        finally:
            partial.unlink(missing_ok=True)
    return target, size, digest.hexdigest()


def _add_task(bar: Progress, name: str, length: str | None) -> Any:
    return bar.add_task(name, total=int(length) if length and length.isdigit() else None)


@images_app.command("export")
def export(
    ctx: typer.Context,
    image: str = IMAGE_ARG,
    fmt: ImageFormat = typer.Option(
        ImageFormat.squashfs, "--format", help="SquashFS (Apptainer) or an OCI layout (tar)."
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="The file to write, or a directory for the default name "
        "(<application>-<id12>.sqsh or .oci.tar, in the current directory).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite the file if it exists."),
) -> None:
    """Download one format of an image, checked against its sha256."""
    api = api_of(ctx)
    found = resolve(api, image)
    if found["status"] != "ready":
        why = found["error"] if found["status"] == "failed" else "wait for its build to end"
        fail(f"image {found['id'][:12]} is {found['status']}: nothing to export ({why})")
    if fmt.value not in found["formats"]:
        made = ", ".join(found["formats"]) or "none"
        fail(f"image {found['id'][:12]} has no {fmt.value} format (it has: {made})")
    target, size, sha256 = _download(api, found, fmt, output, force)
    say(f"wrote {target} ({size} bytes, {size_text(size)}; sha256 {sha256})")


@images_app.command("builders")
def builders(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """The image builder the server uses, and why each other one is not used."""
    d = api_of(ctx).call("GET", "/builders")
    if as_json:
        return print_json(d)
    if d["builder"]:
        say(Text("builder: ", style="bold").append(d["builder"], style="green"))
    else:
        say("no image builder can run: images cannot be built on this server", "bold red")
    say(f"formats: {', '.join(d['formats']) or 'none'}")
    rows = [[name, why] for name, why in d["problems"].items()]
    if rows:
        out.print(table("builder, why it is not used", rows, "passed over"))
