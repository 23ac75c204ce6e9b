"""`concordia images`: select or build an application's image, follow its build, list, show,
export and delete images, and say which builder the server uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from concordia.cli.common import (
    JSON_OPTION,
    TIMEOUT_OPTION,
    Api,
    api_of,
    app,
    err,
    error_lines,
    fail,
    out,
    pairs,
    print_json,
    say,
    table,
)
from concordia.cli.image_download import ImageFormat, download
from concordia.cli.image_follow import follow_build
from concordia.cli.image_views import (
    elapsed_text,
    epoch_seconds,
    formats_text,
    show_image,
    show_image_list,
)
from concordia.core.units import size_text

images_app = typer.Typer(
    help="Container images: select or build, follow a build, list, export, delete.",
    no_args_is_help=True,
)
app.add_typer(images_app, name="images")

HEX_DIGITS = frozenset("0123456789abcdef")
ID_LENGTH, MIN_PREFIX = 64, 6
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
    show_image_list(images)
    say(f"{len(images)} image(s)")


@images_app.command("show")
def show(ctx: typer.Context, image: str = IMAGE_ARG, as_json: bool = JSON_OPTION) -> None:
    """An image's detail: configuration, status, builder, each format's size and sha256."""
    i = resolve(api_of(ctx), image)
    if as_json:
        return print_json(i)
    show_image(i)


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
        made, started = epoch_seconds(image["built_at"]), epoch_seconds(image["created_at"])
        took = f" in {elapsed_text(made - started)}" if made and started else ""
        say(f"image {image['id'][:12]} is ready{took}: {formats_text(image['formats'])}", "green")


@images_app.command("rm")
def remove(ctx: typer.Context, image: str = IMAGE_ARG) -> None:
    """Delete an image's files (refused while it builds or unfinished jobs use it)."""
    api = api_of(ctx)
    found = resolve(api, image)
    response = api.send("DELETE", f"/images/{found['id']}")
    if response.is_error:
        fail(error_lines(response))
    say(f"deleted image {found['id']} of {found['application']}")


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
    target, size, sha256 = download(api, found, fmt, output, force)
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
