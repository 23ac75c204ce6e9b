#!/usr/bin/env python3
"""A stand-in `apptainer` for test sites (Apptainer is not packaged here): it records how it
was called (arguments and environment, one JSON line in $APPTAINER_STANDIN_LOG), refuses
options Apptainer would not take, and runs the job for real under bubblewrap on the image
(a directory as it is; a SquashFS unpacked once beside the log)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The options of `apptainer exec` this stand-in knows: name -> takes a value.
OPTIONS = {
    "--contain": False, "--containall": False, "--ipc": False, "--cleanenv": False,
    "--net": False, "--no-home": False, "--workdir": True, "--home": True, "--bind": True,
    "--pwd": True, "--network": True, "--env": True,
}  # fmt: skip


def env_pairs(value: str) -> list[tuple[str, str]]:
    """--env as Apptainer's key=value map flag reads it: one "=" taken whole (quotes
    trimmed), more read as a CSV record of pairs."""
    if value.count("=") == 1:
        fields = [value.strip('"')]
    else:
        fields = next(csv.reader([value]))
    pairs = []
    for field in fields:
        name, _, val = field.partition("=")
        pairs.append((name, val))
    return pairs


def rootfs_of(image: str, scratch: Path) -> str:
    if os.path.isdir(image):
        return image
    target = scratch / (Path(image).name + ".rootfs")
    if not target.is_dir():
        subprocess.run(
            ["unsquashfs", "-q", "-no-xattrs", "-d", str(target), image],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return str(target)


def main(args: list[str]) -> int:
    log = Path(os.environ["APPTAINER_STANDIN_LOG"])
    with log.open("a") as fh:
        fh.write(json.dumps({"argv": args, "env": dict(os.environ)}) + "\n")
    if not args or args[0] != "exec":
        sys.stderr.write("stand-in apptainer: only exec\n")
        return 255
    flags: list[tuple[str, str | None]] = []
    i = 1
    while i < len(args) and args[i].startswith("-"):
        name = args[i]
        if name not in OPTIONS:
            sys.stderr.write(f"Error: unknown flag: {name}\n")
            return 255
        value = args[i + 1] if OPTIONS[name] else None
        flags.append((name, value))
        i += 2 if OPTIONS[name] else 1
    image, argv = args[i], args[i + 1 :]
    given = dict(flags)
    env = {"PATH": DEFAULT_PATH} if "--cleanenv" in given else dict(os.environ)
    home = given.get("--home") or "/tmp"
    env["HOME"] = home
    cmd = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent"]
    if "--net" not in given:
        cmd.append("--share-net")
    cmd += ["--ro-bind", rootfs_of(image, log.parent), "/"]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for name, value in flags:
        if name == "--bind" and value:
            source, _, rest = value.partition(":")
            cmd += ["--bind", source, rest.split(":")[0] or source]
        elif name == "--env" and value:
            env.update(env_pairs(value))
    cmd += ["--chdir", given.get("--pwd") or "/", "--", *argv]
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
