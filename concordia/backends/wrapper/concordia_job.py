"""Concordia's job wrapper on a grid worker node: fetch the job's image, run its command in it.

Shipped in every DiracX job's input sandbox and run by DIRAC's own job wrapper with plain
python3 (3.6 or newer, standard library only: nothing of Concordia is installed on a node).
Usage: concordia_job.py ARG, where ARG is base64 (urlsafe) of the JSON {"argv": [...]};
the submission's settings are in concordia-job.json beside this file:
  {"image": null | {"id", "url", "sha256", "workdir", "env"}, "network": bool}
The image is a SquashFS, fetched from its URL (http(s) or a path such as CVMFS), checked
against its sha256 and cached per node; it runs under apptainer or singularity, else
unpacked and run with bubblewrap. The command's exit status is the wrapper's.
"""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

CONFIG = "concordia-job.json"
CHUNK = 1 << 20


def say(message):
    sys.stderr.write("[concordia] " + message + "\n")
    sys.stderr.flush()


def cache_dir():
    """Per node, shared by the node's jobs; the job's own directory if nothing else works."""
    for base in (os.environ.get("CONCORDIA_IMAGE_CACHE"), os.environ.get("TMPDIR"), "/tmp"):
        if not base:
            continue
        path = os.path.join(base, f"concordia-images-{os.getuid()}")
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            return path
        except OSError:
            continue
    return os.getcwd()


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_image(image):
    """The image's SquashFS in the node's cache, fetched once and checked against its sha256."""
    target = os.path.join(cache_dir(), image["sha256"] + ".sqsh")
    if os.path.exists(target) and sha256_of(target) == image["sha256"]:
        say("image {} from the node's cache".format(image["id"][:12]))
        return target
    url = image["url"]
    partial = tempfile.NamedTemporaryFile(dir=os.path.dirname(target), delete=False)
    try:
        if url.startswith(("http://", "https://")):
            say("fetching image {} from {}".format(image["id"][:12], url))
            with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
                shutil.copyfileobj(response, partial, CHUNK)
        else:
            path = url[len("file://") :] if url.startswith("file://") else url
            say("copying image {} from {}".format(image["id"][:12], path))
            with open(path, "rb") as source:
                shutil.copyfileobj(source, partial, CHUNK)
        partial.close()
        found = sha256_of(partial.name)
        if found != image["sha256"]:
            raise SystemExit(
                "image {}: sha256 {}, expected {}".format(image["id"][:12], found, image["sha256"])
            )
        os.replace(partial.name, target)  # whole or absent: a concurrent job never sees half
    finally:
        if os.path.exists(partial.name):
            os.unlink(partial.name)
    return target


def container_command(image, squashfs, argv, network):
    """apptainer/singularity where installed, else bubblewrap on the unpacked image."""
    workdir = image.get("workdir") or "/work"
    here = os.getcwd()
    for runtime in ("apptainer", "singularity"):
        binary = shutil.which(runtime)
        if binary:
            cmd = [binary, "exec", "--containall", "--cleanenv", "--no-home"]
            cmd += ["--bind", f"{here}:{workdir}", "--pwd", workdir]
            if not network:
                cmd += ["--net", "--network", "none"]
            return [*cmd, squashfs, *argv]
    bwrap, unsquashfs = shutil.which("bwrap"), shutil.which("unsquashfs")
    if not (bwrap and unsquashfs):
        raise SystemExit("no container runtime on this node (apptainer, singularity or bwrap)")
    rootfs = squashfs[: -len(".sqsh")] + ".rootfs"
    if not os.path.isdir(rootfs):
        unpacking = f"{rootfs}.{os.getpid()}"
        subprocess.check_call(
            [unsquashfs, "-q", "-no-xattrs", "-d", unpacking, squashfs], stdout=subprocess.DEVNULL
        )
        try:
            os.rename(unpacking, rootfs)
        except OSError:  # another job unpacked it first
            shutil.rmtree(unpacking, ignore_errors=True)
    cmd = [bwrap, "--ro-bind", rootfs, "/", "--bind", here, workdir, "--chdir", workdir]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--die-with-parent"]
    cmd += ["--unshare-all"] + (["--share-net"] if network else [])
    return cmd + argv


def main(args):
    if len(args) != 1:
        raise SystemExit("usage: concordia_job.py ARG (base64 of the job's JSON)")
    padded = args[0] + "=" * (-len(args[0]) % 4)
    job = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, CONFIG)) as fh:
        config = json.load(fh)
    argv = [str(a) for a in job["argv"]]
    image = config.get("image")
    env = dict(os.environ)
    if image is None:
        cmd = argv
    else:
        cmd = container_command(image, fetch_image(image), argv, bool(config.get("network")))
        env.update(image.get("env") or {})
    say("running " + " ".join(argv))
    try:
        return subprocess.call(cmd, env=env)
    except OSError as exc:
        say("cannot start {}: {}".format(argv[0] if argv else "?", exc))
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
