"""Concordia's job wrapper on a grid worker node: get the job's image, run its command in it.

Shipped in every DiracX job's input sandbox and run by DIRAC's own job wrapper with the
node's python3 (3.6 or newer, standard library only: nothing of Concordia is installed on a
node). Usage: concordia_job.py ARG, where ARG is base64 (urlsafe) of the job's JSON
  {"argv": [...], "image_url": null | "https://...signed, per job"}
and the submission's settings are in concordia-job.json beside this file:
  {"image": null | {"id", "sha256", "workdir", "env", "unpacked": null | "/cvmfs/...",
             "registry": null | {"oci": "host/name:id", "squashfs": "host/name:id"}},
   "network": bool, "diracx_url": str, "apptainer_dirs": [...], "cache_dir": str}
The image runs in place from its unpacked tree when the node has that path (CVMFS), else
its SquashFS is fetched once per node into a shared cache, checked against its sha256 once,
and reused. The runtime is apptainer (on PATH, then under CVMFS), singularity, or bubblewrap.
The command's exit status is the wrapper's, and it becomes the job's application status in
DiracX; whatever stops a job before its command runs is one line on std.err and there too.
A job whose image is on the node already is started by concordia-job.sh without python3,
with what shell_settings wrote (concordia-job.env) and its second argument (sh_argument);
it then runs `concordia_job.py --exited N` to tell DiracX the exit code.
"""

# Only what every job needs is imported here: a job whose image is in the node's cache
# starts without the rest (urllib alone takes longer to import than bubblewrap to start).
import binascii
import contextlib
import json
import os
import stat
import sys

if False:  # for type checkers alone: typing takes longer to import than bubblewrap to start
    from typing import Any, Dict, List, Optional

CONFIG = "concordia-job.json"
#: What concordia-job.sh sources to start a job without python3 (see shell_settings).
SH_SETTINGS = "concordia-job.env"
CHUNK = 1 << 20
#: Where EGI and OSG nodes without an apptainer package have one (OSG's CVMFS repository).
CVMFS_APPTAINER = "/cvmfs/oasis.opensciencegrid.org/mis/apptainer/current/bin"
#: Concordia reads the exit code back from this application status (keep the two in step).
EXITED = "Application exited with code {}"
#: Apptainer's --workdir, in the job's directory (made before apptainer starts).
SCRATCH = ".concordia-tmp"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The marker of DIRAC 9's DiracX token inside the job's proxy file.
DIRACX_PEM = ("-----BEGIN DIRACX-----", "-----END DIRACX-----")
URLSAFE = str.maketrans("-_", "+/")


class Failure(Exception):
    """What stops a job before its command runs, said in one line."""


def say(message):
    sys.stderr.write("[concordia] " + message + "\n")
    sys.stderr.flush()


def tell(message):
    sys.stdout.write("[concordia] " + message + "\n")
    sys.stdout.flush()


# --- the node's image cache


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


def which(name):
    for directory in os.get_exec_path():
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


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


# --- the runtime


def find_runtime(config):
    """(kind, executable, why), in the order grid nodes have them."""
    found = which("apptainer")
    if found:
        return "apptainer", found, "on PATH"
    places = apptainer_places(config)
    for place in places:
        candidate = os.path.join(place, "apptainer")
        if os.access(candidate, os.X_OK):
            return "apptainer", candidate, f"from {place} (none on PATH)"
    found = which("singularity")
    if found:
        return (
            "singularity",
            found,
            "on PATH (no apptainer on PATH or in {})".format(", ".join(places)),
        )
    found = which("bwrap")
    if found:
        return (
            "bwrap",
            found,
            "no apptainer or singularity (on PATH or in {})".format(", ".join(places)),
        )
    raise Failure(
        "no container runtime on this node: no apptainer (on PATH or in {}), "
        "no singularity, no bwrap".format(", ".join(places))
    )


def apptainer_places(config):
    """Where apptainer is looked for when it is not on PATH, in order."""
    return [CVMFS_APPTAINER, *list(config.get("apptainer_dirs") or [])]


def env_flag(name, value):
    """One --env value as Apptainer reads it (a key=value map flag: a pair with more than
    one "=" is read as CSV, so it is quoted as CSV)."""
    pair = f"{name}={value}"
    if pair.count("=") == 1 and '"' not in pair and "," not in pair:
        return pair
    return '"' + pair.replace('"', '""') + '"'


def apptainer_command(binary, image_path, image, argv, network, here):
    """As DIRAC's SingularityComputingElement runs a job: --contain --ipc, scratch /tmp in the
    job's directory, HOME there; the job's directory is the only thing bound in. The image's
    environment goes in with --env (--cleanenv drops the host's)."""
    workdir = image.get("workdir") or "/work"
    scratch = os.path.join(here, SCRATCH)
    cmd = [binary, "exec", "--contain", "--ipc", "--cleanenv", "--workdir", scratch]
    cmd += ["--home", "/tmp", "--bind", f"{here}:{workdir}", "--pwd", workdir]
    if not network:
        cmd += ["--net", "--network", "none"]
    for name, value in sorted((image.get("env") or {}).items()):
        cmd += ["--env", env_flag(name, value)]
    return [*cmd, image_path, *argv]


def bwrap_command(binary, rootfs, image, argv, network, here):
    workdir = image.get("workdir") or "/work"
    cmd = [binary, "--unshare-all"] + (["--share-net"] if network else [])
    cmd += ["--die-with-parent", "--ro-bind", rootfs, "/", "--bind", here, workdir]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", workdir]
    return [*cmd, "--", *argv]


def bwrap_env(image):
    """What a job under bubblewrap starts with: the image's environment, not the node's
    (given to bwrap itself: --clearenv is newer than EL9's bubblewrap 0.4)."""
    env = {"PATH": DEFAULT_PATH, "HOME": image.get("workdir") or "/work", "LANG": "C.UTF-8"}
    env.update(image.get("env") or {})
    return env


def container_command(config, image, image_url, argv):
    """The command line that runs ``argv`` in the image, and its environment."""
    here = os.getcwd()
    network = bool(config.get("network"))
    kind, binary, why = find_runtime(config)
    tell(f"runtime: {kind} ({binary}), {why}")
    unpacked = image.get("unpacked")
    if unpacked and os.path.isdir(unpacked):
        tell(f"image {short(image)}: in place from {unpacked}")
        if kind == "bwrap":
            return bwrap_command(binary, unpacked, image, argv, network, here), bwrap_env(image)
        os.makedirs(os.path.join(here, SCRATCH), exist_ok=True)
        return apptainer_command(binary, unpacked, image, argv, network, here), None
    if not image_url:
        where = f"{unpacked} is not on this node" if unpacked else "no unpacked tree"
        raise Failure(f"image {short(image)} missing: {where} and no URL to fetch it")
    cache = cache_dir(config)
    squashfs = cached_squashfs(image, image_url, cache)
    tell(f"image {short(image)}: from the node's cache {cache}")
    if kind == "bwrap":
        rootfs = unpacked_rootfs(image, squashfs, cache)
        return bwrap_command(binary, rootfs, image, argv, network, here), bwrap_env(image)
    os.makedirs(os.path.join(here, SCRATCH), exist_ok=True)
    return apptainer_command(binary, squashfs, image, argv, network, here), None


# --- the start without python3 (concordia-job.sh)
#
# A job whose image is already on the node (its unpacked tree, or checked in the node's
# cache) is started by concordia-job.sh itself: python3 starting takes longer than
# bubblewrap. What sh needs is written here, by the functions that build the command line
# above, so that both start exactly the same command; anything else is left to python3.

#: Characters of an argument that pass as they are in the JDL and through DIRAC's shell.
SH_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-./:=+@")
#: The others concordia-job.sh decodes (as _XX, hex): keep both lists in step.
SH_ESCAPED = frozenset(" !\"#$%&'()*,;<>?[\\]^_`{|}~\t\n")
#: Placeholders for what only the node knows, as sh variables.
_NODE_VALUES = {
    "\0binary\0": '"$cj_binary"',
    "\0image\0": '"$cj_image"',
    "\0here\0": '"$cj_here"',
}
_ARGV = "\0argv\0"


def sh_argument(argv: "List[str]", image_url: "Optional[str]") -> "Optional[str]":
    """The job's second argument, for concordia-job.sh: whether it has an image link (1 or 0),
    then each argument, all ended by ","; None if an argument has a character sh does not
    decode (the job then starts through python3)."""
    words = ["1" if image_url else "0"]
    for arg in argv:
        if not set(arg) <= SH_SAFE | SH_ESCAPED:
            return None
        words.append("".join(c if c in SH_SAFE else f"_{ord(c):02x}" for c in arg))
    return "".join(word + "," for word in words)


def _sh_word(word: str) -> str:
    """``word`` quoted for sh, its placeholders as the variables they stand for."""
    import re
    import shlex

    if word == _ARGV:
        return '"$@"'
    parts = re.split("(" + "|".join(_NODE_VALUES) + ")", word)
    return "".join(_NODE_VALUES.get(part) or shlex.quote(part) for part in parts if part)


def _sh_function(name: str, cmd: "List[str]") -> str:
    """A function of sh that runs ``cmd`` and waits for it."""
    return "{}() {{ {}; }}".format(name, " ".join(_sh_word(word) for word in cmd))


def shell_settings(config: "Dict[str, Any]") -> "Optional[str]":
    """What concordia-job.sh sources (concordia-job.env) for a submission's jobs: shell-quoted
    assignments and the two command lines, with $cj_binary, $cj_image and $cj_here for what
    only the node knows; None for jobs without an image (they start through python3)."""
    import re
    import shlex

    image = config.get("image")
    if image is None:
        return None
    network = bool(config.get("network"))
    binary, path, here = _NODE_VALUES
    places = apptainer_places(config)
    values = {
        "sha256": image["sha256"],
        "short": short(image),
        "unpacked": image.get("unpacked") or "",
        "cache_dir": config.get("cache_dir") or "",
        "apptainer_dirs": "\n".join(places),
        "places": ", ".join(places),
        "scratch": SCRATCH,
    }
    lines = [
        "# concordia-job.sh's settings for this submission's jobs, written by Concordia with",
        "# concordia_job.py's own command builders (the same command, without python3).",
        "cj_settings=1",
        *(f"cj_{name}={shlex.quote(value)}" for name, value in values.items()),
        # Its data to the data lake after the command: python3's work (store_outputs).
        "cj_datalake={}".format(1 if config.get("datalake") else 0),
        _sh_function(
            "cj_run_apptainer", apptainer_command(binary, path, image, [_ARGV], network, here)
        ),
    ]
    env = bwrap_env(image)
    # Bubblewrap gets the image's environment alone (execve's env in call()): sh exports
    # it, so its names must be ones sh can export; else python3 starts such jobs.
    if all(re.fullmatch("[A-Za-z_][A-Za-z0-9_]*", name) for name in env):
        exports = " ".join(shlex.quote(f"{n}={v}") for n, v in sorted(env.items()))
        lines.append("cj_bwrap=1")
        lines.append(f"cj_bwrap_env() {{ export {exports}; }}")
        lines.append(
            _sh_function("cj_run_bwrap", bwrap_command(binary, path, image, [_ARGV], network, here))
        )
    return "\n".join(lines) + "\n"


# --- telling DiracX


def diracx_token(proxy):
    """The DiracX access token DIRAC 9 writes into the job's proxy file, if any."""
    try:
        with open(proxy) as fh:
            pem = fh.read()
    except (OSError, TypeError):
        return None
    begin, end = DIRACX_PEM
    if begin not in pem or end not in pem:
        return None
    body = pem.split(begin, 1)[1].split(end, 1)[0]
    try:
        return json.loads(binascii.a2b_base64("".join(body.split())).decode())["access_token"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None


def report(config, text):
    """The job's application status in DiracX (what Concordia shows); a node that cannot
    tell it still runs the job."""
    url, job_id = config.get("diracx_url"), os.environ.get("DIRACJOBID")
    token = diracx_token(os.environ.get("X509_USER_PROXY"))
    if not (url and job_id and token):
        return
    import urllib.error
    import urllib.request
    from datetime import datetime, timezone

    when = datetime.now(timezone.utc).isoformat()  # noqa: UP017 - datetime.UTC is 3.11+
    body = {job_id: {when: {"ApplicationStatus": text[:255], "Source": "Concordia"}}}
    request = urllib.request.Request(  # noqa: S310 - DiracX's URL, from Concordia
        url.rstrip("/") + "/api/jobs/status",
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(request, timeout=30).close()  # noqa: S310
    except (urllib.error.URLError, OSError) as exc:
        say(f"could not set the application status in DiracX: {exc}")


# --- the data lake (an RSE's WebDAV storage; Concordia registers what is stored in Rucio)

#: What the wrapper stored, for Concordia to register: in the output sandbox.
DATALAKE_MANIFEST = "concordia-datalake.json"
#: Bytes read and sent at a time (http.client's own 8 KB blocks make a GB upload slow).
UPLOAD_BLOCK = 4 << 20
#: DIRAC's own limit of an output sandbox, where Concordia did not say one.
SANDBOX_MAX_BYTES = 10 << 20
#: The wrapper's own files in the job's directory and the job's logs (the JDL's StdOutput
#: and StdError, which DIRAC is still writing): never data.
OWN_FILES = frozenset(
    {"concordia-job.sh", "concordia_job.py", CONFIG, SH_SETTINGS, DATALAKE_MANIFEST}
    | {"std.out", "std.err"}
)


def lake_path(scope, name):
    """Where Rucio's deterministic "hash" lfn2pfn puts ``scope:name`` under an RSE's prefix:
    user.jane -> user/jane, then the md5 of "scope:name" in two levels, then the name."""
    import hashlib

    text = f"{scope}:{name}".encode()
    try:  # not a secret: Rucio's layout (FIPS nodes refuse md5 unless told so, 3.9+)
        digest = hashlib.md5(text, usedforsecurity=False).hexdigest()
    except TypeError:
        digest = hashlib.md5(text).hexdigest()  # noqa: S324
    top = scope.replace(".", "/") if scope.startswith(("user", "group")) else scope
    return f"{top}/{digest[0:2]}/{digest[2:4]}/{name}"


def lake_url(lake, name, quoted=False):
    """The WebDAV URL of ``scope:name`` on the RSE whose prefix is lake["url"]: as Rucio
    writes its PFN, or ``quoted`` as it goes in a request."""
    from urllib.parse import quote

    path = lake_path(lake["scope"], name)
    return lake["url"].rstrip("/") + "/" + (quote(path) if quoted else path)


def lake_files(lake):
    """The job's outputs that go to the data lake, as (path, name): whatever a data glob
    matches, and what an output-sandbox glob matches that is too big for the sandbox."""
    import glob

    limit = int(lake.get("sandbox_max_bytes") or SANDBOX_MAX_BYTES)
    chosen = {}
    for patterns, big_only in ((lake.get("data") or [], False), (lake.get("outputs") or [], True)):
        for pattern in patterns:
            for path in sorted(glob.glob(pattern)):
                if path in chosen or path in OWN_FILES or not os.path.isfile(path):
                    continue
                if big_only and os.path.getsize(path) <= limit:
                    continue
                chosen[path] = lake.get("names", "") + os.path.basename(path)
    seen = {}
    for path, name in sorted(chosen.items()):
        if name in seen:
            raise Failure(f"data lake: {seen[name]} and {path} would both be stored as {name}")
        seen[name] = path
    return sorted(chosen.items())


def lake_context(lake):
    """TLS as the node verifies the RSE (its CA if Concordia gave it, else the node's and
    the grid's CAs), with the user's proxy as client certificate where there is no token."""
    import ssl

    context = ssl.create_default_context(cadata=lake.get("ca") or None)
    grid_cas = os.environ.get("X509_CERT_DIR") or "/etc/grid-security/certificates"
    if not lake.get("ca") and os.path.isdir(grid_cas):
        context.load_verify_locations(capath=grid_cas)
    proxy = os.environ.get("X509_USER_PROXY")
    if not lake.get("token") and proxy and has_certificate(proxy):
        try:
            context.load_cert_chain(proxy)
        except (OSError, ssl.SSLError) as exc:
            raise Failure(f"data lake: cannot use the proxy in $X509_USER_PROXY: {exc}") from None
    return context


def has_certificate(proxy):
    """Whether the job's proxy file holds an X.509 certificate (DIRAC 9's may hold only its
    DiracX token: then the storage is asked without one, and says if it wants one)."""
    try:
        with open(proxy) as fh:
            return "-----BEGIN CERTIFICATE-----" in fh.read()
    except OSError:
        return False


def lake_put(lake, path, url, context=None):
    """PUT the file at ``path`` to ``url``, streamed, its adler32 computed as it is sent, then
    a HEAD to see the storage holds all of it: (bytes, adler32 as 8 hex digits)."""
    import http.client
    import zlib
    from urllib.parse import urlsplit

    label = os.path.basename(path)
    parts = urlsplit(url.replace("davs://", "https://", 1))  # Rucio's name for WebDAV over TLS
    if parts.scheme != "https":
        raise Failure(f"data lake: upload of {label} refused: {parts.scheme} is not https")
    headers = {"Authorization": "Bearer " + lake["token"]} if lake.get("token") else {}
    connection = http.client.HTTPSConnection(
        parts.hostname, parts.port, context=context or lake_context(lake), timeout=600
    )
    size = os.path.getsize(path)
    adler32 = 1
    try:
        try:
            connection.putrequest("PUT", parts.path, skip_accept_encoding=True)
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.putheader("Content-Length", str(size))
            connection.putheader("Content-Type", "application/octet-stream")
            connection.endheaders()
            sent = 0
            with open(path, "rb") as fh:
                while sent < size:
                    block = fh.read(min(UPLOAD_BLOCK, size - sent))
                    if not block:
                        break
                    adler32 = zlib.adler32(block, adler32)
                    connection.send(block)
                    sent += len(block)
                if sent != size:  # shorter now: the storage would wait for the rest
                    raise Failure(f"data lake: {label} changed while it was uploaded")
                changed = os.fstat(fh.fileno()).st_size != size
        except OSError as exc:
            # The storage may refuse before it has read the body, and close: its answer.
            try:
                response = connection.getresponse()
            except (OSError, http.client.HTTPException):
                raise Failure(f"data lake: upload of {label} failed: {exc}") from None
            changed = False
        else:
            response = connection.getresponse()
        response.read()
        if response.status not in (201, 204):
            raise Failure(
                f"data lake: upload of {label} refused: HTTP {response.status} {response.reason}"
            )
        if changed:
            raise Failure(f"data lake: {label} changed while it was uploaded")
        stored, digest = lake_head(connection, parts.path, headers)
    except (OSError, http.client.HTTPException) as exc:
        raise Failure(f"data lake: upload of {label} failed: {exc}") from None
    finally:
        connection.close()
    if stored != size:
        raise Failure(f"data lake: the storage holds {stored} bytes of {label}, not {size}")
    adler32 = f"{adler32 & 0xFFFFFFFF:08x}"
    if digest is not None and digest != adler32:
        raise Failure(f"data lake: {label} stored with adler32 {digest}, sent {adler32}")
    return size, adler32


def lake_head(connection, target, headers):
    """The size the storage holds at ``target``, and its adler32 where it keeps one."""
    connection.request("HEAD", target, headers={**headers, "Want-Digest": "adler32"})
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise OSError(f"HEAD answered HTTP {response.status} {response.reason}")
    digest = None
    for item in (response.getheader("Digest") or "").split(","):
        kind, _, value = item.strip().partition("=")
        if kind.lower() == "adler32" and value:
            digest = value.lower().zfill(8)
    return int(response.getheader("Content-Length") or -1), digest


def write_manifest(entries):
    """concordia-datalake.json, whole or not at all (what Concordia reads and registers)."""
    partial = DATALAKE_MANIFEST + ".part"
    with open(partial, "w") as fh:
        json.dump(entries, fh, indent=1)
    os.replace(partial, DATALAKE_MANIFEST)


def store_outputs(lake):
    """Every data output of the job into the data lake, then out of the job's directory (the
    sandbox does not carry it); the manifest lists what is stored, even if one fails."""
    stored = []
    write_manifest(stored)
    files = lake_files(lake)
    if not files:
        return
    context = lake_context(lake)
    for path, name in files:
        url = lake_url(lake, name)
        size, adler32 = lake_put(lake, path, lake_url(lake, name, quoted=True), context)
        stored.append({"name": name, "file": path, "bytes": size, "adler32": adler32, "url": url})
        write_manifest(stored)
        os.unlink(path)
        tell(f"data lake: {path} stored as {lake['scope']}:{name} ({size} bytes)")


def lake_settings(config, job):
    """The job's data-lake settings: the submission's, with the job's own name prefix."""
    lake = config.get("datalake")
    if not lake:
        return None
    lake = dict(lake)
    if (job or {}).get("datalake_names") is not None:
        lake["names"] = job["datalake_names"]
    return lake


# --- the job


def run(config, job):
    argv = [str(a) for a in job["argv"]]
    image = config.get("image")
    # A job without an image runs on the node as DIRAC started it (env None: the node's).
    cmd, env = argv, None
    if image is not None:
        cmd, env = container_command(config, image, job.get("image_url"), argv)
    say("running " + " ".join(argv))
    return call(cmd, env)


def call(cmd, env):
    """Run ``cmd`` and wait: its exit status, 128 + N for signal N as a shell says it (fork
    and exec: the subprocess module is slower to import than this job is to start)."""
    program = cmd[0] if os.sep in cmd[0] else which(cmd[0])
    if program is None or not os.access(program, os.X_OK):
        raise Failure(f"cannot start {cmd[0]}: not found or not executable")
    pid = os.fork()
    if pid == 0:  # the child: the command, or 127 and why
        try:
            os.execve(program, cmd, os.environ if env is None else env)  # noqa: S606
        except OSError as exc:
            say(f"cannot start {cmd[0]}: {exc.strerror}")
        os._exit(127)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:  # Python 3.6 does not retry it itself everywhere
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def exited(code, arg=None):
    """concordia-job.sh's report of a command it started itself: its data stored if it
    succeeded, its exit code to DiracX (the job's own exit code, or 1 if its data failed)."""
    here = os.path.dirname(os.path.abspath(__file__))
    config = {}
    try:
        with open(os.path.join(here, CONFIG)) as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        say(f"could not set the application status in DiracX: {exc}")
        return 1 if code == 0 and arg is not None else code
    try:
        if code == 0:
            lake = lake_settings(config, decode_job(arg) if arg else None)
            if lake:
                store_outputs(lake)
    except Failure as failure:
        return failed(config, str(failure), 1)
    except Exception as exc:  # one line, never a traceback, on a node
        return failed(config, f"wrapper error: {type(exc).__name__}: {exc}", 1)
    report(config, EXITED.format(code))
    return code


def failed(config, message, code):
    say(message)
    report(config, message)
    return code


def decode_job(arg):
    """The job's JSON from its base64 (urlsafe, maybe without padding) argument."""
    padded = arg + "=" * (-len(arg) % 4)
    return json.loads(binascii.a2b_base64(padded.translate(URLSAFE).encode()).decode())


def main(args):
    if len(args) in (2, 3) and args[0] == "--exited":
        return exited(int(args[1]), args[2] if len(args) == 3 else None)
    # A second argument is concordia-job.sh's own form of the command (sh_argument).
    if len(args) not in (1, 2):
        say("usage: concordia_job.py ARG [SH_ARG] (base64 of the job's JSON)")
        return 2
    config = {}
    try:
        job = decode_job(args[0])
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, CONFIG)) as fh:
            config = json.load(fh)
        code = run(config, job)
        lake = lake_settings(config, job)
        if code == 0 and lake:
            store_outputs(lake)  # a failure here fails the job: never Done without its data
    except Failure as failure:
        message = str(failure)
        code = 127 if message.startswith("cannot start") else 1
    except Exception as exc:  # one line, never a traceback, on a node
        message = f"wrapper error: {type(exc).__name__}: {exc}"
        code = 1
    else:
        report(config, EXITED.format(code))
        return code
    return failed(config, message, code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
