"""The container runtime on the node, and the command line that runs the job's command in it.

Part of the grid job wrapper (see concordia_job.py): standard library only, Python 3.6+.
"""

import os

from .concordia_job_base import Failure, tell, which
from .concordia_job_image import cache_dir, cached_squashfs, short, unpacked_rootfs

#: Where EGI and OSG nodes without an apptainer package have one (OSG's CVMFS repository).
CVMFS_APPTAINER = "/cvmfs/oasis.opensciencegrid.org/mis/apptainer/current/bin"
#: Apptainer's --workdir, in the job's directory (made before apptainer starts).
SCRATCH = ".concordia-tmp"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: In the node's cache: the bubblewrap found to take --clearenv (see bwrap_clears_env).
CLEARENV_STAMP = "bwrap-clearenv"


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
    where = ", ".join(places)
    for kind, why in (
        ("singularity", f"on PATH (no apptainer on PATH or in {where})"),
        ("bwrap", f"no apptainer or singularity (on PATH or in {where})"),
    ):
        found = which(kind)
        if found:
            return kind, found, why
    raise Failure(
        f"no container runtime on this node: no apptainer (on PATH or in {where}), "
        "no singularity, no bwrap"
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


def bwrap_command(binary, rootfs, image, argv, network, here, clearenv=False):
    """Bubblewrap on the unpacked image; with ``clearenv`` it sets the image's environment
    itself (bwrap_env), else it is given that environment to pass on."""
    workdir = image.get("workdir") or "/work"
    cmd = [binary]
    if clearenv:
        cmd.append("--clearenv")
        for name, value in sorted(bwrap_env(image).items()):
            cmd += ["--setenv", name, value]
    cmd += ["--unshare-all"] + (["--share-net"] if network else [])
    cmd += ["--die-with-parent", "--ro-bind", rootfs, "/", "--bind", here, workdir]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", workdir]
    return [*cmd, "--", *argv]


def bwrap_env(image):
    """What a job under bubblewrap starts with: the image's environment, not the node's."""
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
        if bwrap_clears_env(binary, cache):
            return bwrap_command(binary, rootfs, image, argv, network, here, True), None
        return bwrap_command(binary, rootfs, image, argv, network, here), bwrap_env(image)
    os.makedirs(os.path.join(here, SCRATCH), exist_ok=True)
    return apptainer_command(binary, squashfs, image, argv, network, here), None


def bwrap_clears_env(binary, cache):
    """Whether ``binary`` takes --clearenv (bubblewrap 0.5 and newer; EL9's 0.4 does not).
    Asked once per node and kept in the cache (CLEARENV_STAMP: the binary's path, not older
    than the binary) for concordia-job.sh, which cannot ask without starting a program:
    without it, sh forks to list the node's environment and clear it."""
    stamp = os.path.join(cache, CLEARENV_STAMP)
    try:
        with open(stamp) as fh:
            if (
                fh.read() == binary + "\n"
                and os.stat(binary).st_mtime <= os.fstat(fh.fileno()).st_mtime
            ):
                return True
    except OSError:
        pass
    import subprocess

    probe = [binary, "--clearenv", "--version"]  # --version ends bwrap where it is read
    if subprocess.call(probe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
        return False
    partial = f"{stamp}.{os.getpid()}.part"
    with open(partial, "w") as fh:
        fh.write(binary + "\n")
    os.replace(partial, stamp)
    return True
