"""The job's image in the node's cache: fetched once per node, checked against its sha256 once.

Part of the grid job wrapper (see concordia_job.py): standard library only, Python 3.6+.
"""

import contextlib
import json
import os
import stat

from .concordia_job_base import Failure, say, which

CHUNK = 1 << 20


def cache_dir(config):
    """One per node and user, shared by the node's jobs; the job's own directory if nothing
    else is usable. A directory someone else could write to is never used."""
    uid = os.getuid()
    for base in (
        os.environ.get("CONCORDIA_NODE_IMAGE_CACHE"),
        config.get("cache_dir"),
        "/var/tmp",  # survives the job and, unlike $TMPDIR on many batch systems, is shared
        "/tmp",
    ):
        if not base:
            continue
        path = os.path.join(base, f"concordia-images-{uid}")
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            info = os.lstat(path)
        except OSError:
            continue
        if info.st_uid == uid and not info.st_mode & 0o077 and os.path.isdir(path):
            if not info.st_mode & stat.S_ISVTX:
                # Sticky: concordia-job.sh trusts it (it cannot read a mode, only test this
                # bit), and no one else could rename this user's files in it if it were
                # ever opened up; chmod to a numeric mode clears it.
                os.chmod(path, stat.S_IMODE(info.st_mode) | stat.S_ISVTX)
            return path
    path = os.path.join(os.getcwd(), ".concordia-images")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(path):
    """The node's jobs one at a time on ``path`` (a job that dies lets go: flock)."""
    import fcntl

    fd = os.open(path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sha256_of(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_squashfs(image, url, cache):
    """The image's SquashFS in the node's cache: fetched and checked by the first job that
    needs it, then reused as it is (the stamp says it was checked)."""
    target = os.path.join(cache, image["sha256"] + ".sqsh")
    stamp = target + ".verified"
    if os.path.exists(stamp) and os.path.exists(target):
        return target
    with locked(target):
        if os.path.exists(stamp) and os.path.exists(target):
            return target  # another job fetched it while this one waited
        partial = target + ".part"
        download(image, url, partial)
        found = sha256_of(partial)
        if found != image["sha256"]:
            os.unlink(partial)
            raise Failure(
                "image {}: sha256 mismatch (got {}, expected {})".format(
                    short(image), found[:12], image["sha256"][:12]
                )
            )
        os.replace(partial, target)  # whole or absent: a job never sees half an image
        with open(stamp, "w") as fh:
            fh.write(image["sha256"] + "\n")
    say(f"image {short(image)} fetched into the node's cache")
    return target


def download(image, url, partial):
    """Into ``partial``, going on from what an interrupted job left there (Range, If-Range:
    the server's ETag is the image's sha256, so a part of other bytes starts again)."""
    import shutil
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        path = url[len("file://") :] if url.startswith("file://") else url
        try:
            shutil.copyfile(path, partial)
        except OSError as exc:
            raise Failure(f"image {short(image)}: cannot read {path}: {exc.strerror}") from None
        return
    request = urllib.request.Request(url)  # noqa: S310 - http(s) only, checked above
    have = os.path.getsize(partial) if os.path.exists(partial) else 0
    if have:
        request.add_header("Range", f"bytes={have}-")
        request.add_header("If-Range", '"{}"'.format(image["sha256"]))
    where = url.split("?", 1)[0]  # the query is the job's signature: never printed
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            mode = "ab" if response.status == 206 else "wb"
            with open(partial, mode) as fh:
                shutil.copyfileobj(response, fh, CHUNK)
    except urllib.error.HTTPError as exc:
        raise Failure(
            f"image {short(image)}: download refused by {where} (HTTP {exc.code}: {_detail(exc)})"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise Failure(f"image {short(image)}: cannot download from {where}: {reason}") from None


def _detail(error):
    try:
        return str(json.loads(error.read().decode())["detail"])[:200]
    except (ValueError, KeyError, TypeError, OSError):
        return error.reason


def unpacked_rootfs(image, squashfs, cache):
    """The SquashFS unpacked once per node, for bubblewrap (which cannot mount it)."""
    rootfs = os.path.join(cache, image["sha256"] + ".rootfs")
    if os.path.isdir(rootfs):
        return rootfs
    import shutil
    import subprocess

    unsquashfs = which("unsquashfs")
    if unsquashfs is None:
        raise Failure(f"no runtime for image {short(image)}: bubblewrap needs unsquashfs")
    with locked(rootfs):
        if not os.path.isdir(rootfs):
            unpacking = rootfs + ".part"
            shutil.rmtree(unpacking, ignore_errors=True)
            done = subprocess.call(
                [unsquashfs, "-q", "-no-xattrs", "-d", unpacking, squashfs],
                stdout=subprocess.DEVNULL,
            )
            if done != 0:
                raise Failure(f"image {short(image)}: unsquashfs failed ({done})")
            os.rename(unpacking, rootfs)
    return rootfs


def short(image):
    return image["id"][:12]
