"""Container runtimes of jobs in images: which one runs them (chosen by probing at start) and
the command lines of Apptainer and podman (bubblewrap's are in sandbox.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from concordia.backends import sandbox
from concordia.backends.base import JobImage
from concordia.backends.cgroup import Counters, rmdir_if_empty
from concordia.backends.job_process import CPU_HARD_MARGIN

log = logging.getLogger(__name__)

#: In the order ``auto`` tries them.
RUNTIMES = ("apptainer", "bwrap", "podman")
NOT_INSTALLED = {
    "apptainer": "neither apptainer nor singularity is installed (not in Debian 12: see "
    "apptainer.org)",
    "podman": "podman is not installed (Debian: apt-get install podman runc)",
}
#: Every podman container of Concordia is named so and labelled with its jobs directory.
CONTAINER_PREFIX = "concordia-"
PODMAN_LABEL = "org.concordia.jobs"
#: What podman needs on a Debian 12 VM with cgroup v1 in hybrid mode: runc (crun refuses
#: hybrid cgroups), cgroupfs (no systemd), events to a file (no journald); ulimits within the
#: server's own hard limits (podman's default nofile is above them: every run would fail).
PODMAN_CONF = """\
# Written by Concordia for its own podman runs (CONTAINERS_CONF); rewritten at each start.
[containers]
default_ulimits = [{ulimits}]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROBE_DIRS = ("proc", "dev", "sys", "tmp", "run", "etc", "work")
#: Beyond the job's wall-time limit and grace period, when conmon kills a container whose
#: server is gone (then nothing else would).
PODMAN_TIMEOUT_MARGIN = 60
_serial = itertools.count()


@dataclass
class RuntimeChoice:
    """The runtime jobs in images run in (None: they cannot run) and why the others were not
    chosen, runtime by runtime."""

    name: str | None
    #: The runtime's executable (apptainer or singularity, podman); None for bwrap.
    command: str | None = None
    problems: dict[str, str] = field(default_factory=dict)
    #: Why no runtime is used; None where one is.
    problem: str | None = None

    @property
    def summary(self) -> str:
        """One line for people: the runtime and why not the others."""
        others = "; ".join(f"not {name}: {why}" for name, why in self.problems.items())
        head = self.name or f"none: {self.problem}"
        return f"{head} ({others})" if others and self.name else head


def choose_runtime(
    mode: str,
    *,
    isolation: str,
    bwrap_problem: str | None,
    probe_podman: Callable[[str], str | None],
) -> RuntimeChoice:
    """The runtime of ``mode`` (local_runtime): auto tries apptainer (installed), bwrap (its
    probe, done already: ``bwrap_problem``), podman (``probe_podman(executable)`` runs one).

    local_isolation = none turns every runtime off under auto; a runtime named explicitly is
    used alone, its problem said as such.
    """
    if mode not in ("auto", *RUNTIMES):
        raise ValueError(f"unknown runtime {mode!r} (auto, {', '.join(RUNTIMES)})")
    if mode == "auto" and isolation == "none":
        return RuntimeChoice(None, problem=bwrap_problem or "isolation is turned off")
    problems = {name: f"not tried (local_runtime = {mode})" for name in RUNTIMES if name != mode}
    if mode == "auto":
        problems = {}
    for name in RUNTIMES if mode == "auto" else (mode,):
        command, why = _usable(name, bwrap_problem, probe_podman)
        if why is None:
            for later in RUNTIMES[RUNTIMES.index(name) + 1 :] if mode == "auto" else ():
                problems[later] = f"not tried ({name} comes first)"
            return RuntimeChoice(name, command, problems)
        problems[name] = why
    if mode != "auto":
        why = f"local_runtime is {mode!r} but {problems.pop(mode)}"
        return RuntimeChoice(None, problems=problems, problem=why)
    reasons = "; ".join(f"{name}: {why}" for name, why in problems.items())
    return RuntimeChoice(None, problems=problems, problem=f"none is usable ({reasons})")


def _usable(
    name: str, bwrap_problem: str | None, probe_podman: Callable[[str], str | None]
) -> tuple[str | None, str | None]:
    """(its executable, None) where the runtime can run jobs, else (None, why not)."""
    if name == "bwrap":
        return None, bwrap_problem
    if name == "apptainer":
        command = shutil.which("apptainer") or shutil.which("singularity")
        return (command, None) if command else (None, NOT_INSTALLED["apptainer"])
    command = shutil.which("podman")
    if command is None:
        return None, NOT_INSTALLED["podman"]
    problem = probe_podman(command)
    return (command, None) if problem is None else (None, problem)


def bind_path(path: Path | str) -> str:
    """A path fit for a bind specification (src:dest), or ValueError."""
    text = str(path)
    if ":" in text or "," in text:
        raise ValueError(f"a container cannot bind {text!r}: its path has ':' or ','")
    return text


def apptainer_command(
    executable: str,
    argv: Sequence[str],
    image: JobImage,
    work: Path,
    env: Mapping[str, str],
    *,
    network: bool,
) -> list[str]:
    """The command that runs ``argv`` in the image with Apptainer, as on grid worker nodes:
    the SquashFS if the image has one, else its rootfs directory (a sandbox), the work
    directory bound at the image's working directory, nothing of the host's environment or
    home. It runs as the job's user (the slot's fork server starts it, as it starts bwrap)."""
    workdir = bind_path(image.workdir)
    cmd = [executable, "exec", "--containall", "--cleanenv"]
    cmd += ["--pwd", workdir, "-B", f"{bind_path(work)}:{workdir}"]
    for key, value in env.items():
        cmd += ["--env", f"{key}={value}"]
    if not network:
        cmd += ["--net", "--network", "none"]
    return [*cmd, str(image.squashfs or image.rootfs), *argv]


class ContainerCgroup:
    """The parent cgroup (v1, cgroupfs) of one slot's podman containers: podman makes each
    container's cgroup below it. It holds the slot's memory limit, and its counters add up
    its containers' (whose own cgroups go with them).

    A kernel OOM kill below it is not counted in it (memory.oom_control is local): a job's
    peak usage reaching the limit says it, reset before each job.
    """

    def __init__(self, memory_mb: int = 0) -> None:
        self.name = f"concordia-podman-{os.getpid()}-{next(_serial)}"
        self.parent = f"/{self.name}"
        self.limit = memory_mb * 1024 * 1024
        self.memory_limited = False
        self._cpu = _CGROUP_ROOT / "cpuacct" / self.name
        self._memory = _CGROUP_ROOT / "memory" / self.name
        with contextlib.suppress(OSError):
            self._cpu.mkdir(exist_ok=True)  # before the first job, for its first counters
        if memory_mb:
            try:
                self._memory.mkdir(exist_ok=True)
                (self._memory / "memory.limit_in_bytes").write_text(str(self.limit))
                with contextlib.suppress(FileNotFoundError):  # swap accounting may be off
                    (self._memory / "memory.memsw.limit_in_bytes").write_text(str(self.limit))
                self.memory_limited = True
            except OSError as exc:
                log.warning("no memory cgroup for podman jobs (podman --memory instead): %s", exc)

    def begin(self) -> None:
        """Before a job: its peak memory usage starts from now."""
        if self.memory_limited:
            with contextlib.suppress(OSError):
                (self._memory / "memory.max_usage_in_bytes").write_text("0")

    def counters(self) -> Counters:
        """CPU seconds used below it (if known); 1 OOM kill if the peak usage reached the limit."""
        cpu, full = None, 0
        with contextlib.suppress(OSError, ValueError):
            cpu = int((self._cpu / "cpuacct.usage").read_text()) / 1e9
        if self.memory_limited:
            with contextlib.suppress(OSError, ValueError):
                peak = int((self._memory / "memory.max_usage_in_bytes").read_text())
                full = int(peak >= self.limit - 65536)
        return Counters(cpu, full)

    def remove(self) -> bool:
        """Remove it in every hierarchy podman made it in; False if some part is still busy."""
        done = True
        for path in [*_CGROUP_ROOT.glob(f"*/{self.name}"), _CGROUP_ROOT / self.name]:
            for child in sorted(path.glob("*/"), reverse=True):  # conmon's, emptied containers'
                if child.is_dir():
                    done = rmdir_if_empty(child) and done
            done = rmdir_if_empty(path) and done
        return done


def podman_ulimits() -> list[str]:
    """nofile and nproc as the reference configuration has them, within the server's own hard
    limits (a container may not raise them)."""
    found = []
    for name, which, soft, cap in (
        ("nofile", resource.RLIMIT_NOFILE, 1024, 1 << 20),
        ("nproc", resource.RLIMIT_NPROC, 4096, 4096),
    ):
        hard = resource.getrlimit(which)[1]
        hard = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        found.append(f"{name}={min(soft, hard)}:{hard}")
    return found


class Podman:
    """Jobs run by ``podman run`` from their image's rootfs (an overlay on it: podman writes
    mount points into a root it is given; the image stays as built), with the configuration
    Concordia writes into the data dir (never the host's /etc/containers)."""

    def __init__(self, executable: str, config_dir: Path, jobs_dir: Path) -> None:
        self.executable = executable
        self.config_file = config_dir / "containers.conf"
        self.jobs_dir = jobs_dir
        self.rootless = os.geteuid() != 0
        self.ulimits = podman_ulimits()

    def write_config(self) -> None:
        self.config_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        ulimits = ", ".join(f'"{u}"' for u in self.ulimits)
        self.config_file.write_text(PODMAN_CONF.format(ulimits=ulimits))

    @property
    def env(self) -> dict[str, str]:
        """podman's own environment: not the server's (settings, tokens)."""
        env = {"PATH": sandbox.SANDBOX_PATH, "CONTAINERS_CONF": str(self.config_file)}
        if self.rootless:  # where rootless podman keeps its state
            for key in ("HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
                if key in os.environ:
                    env[key] = os.environ[key]
        return env

    def command(
        self,
        name: str,
        argv: Sequence[str],
        image: JobImage,
        work: Path,
        env: Mapping[str, str],
        *,
        network: bool,
        cpu_time: int,
        wall_seconds: float,
        cgroup: ContainerCgroup | None = None,
        memory_mb: int = 0,
        processes: int = 0,
        read_only: Sequence[Path] = (),
    ) -> list[str]:
        """``podman run`` of ``argv`` in the image, the work directory at its working directory.

        The job's output goes straight to the client's stdout and stderr (passthrough: no
        copy through conmon, no container log). ``--init`` passes signals on and reaps; the
        client passes SIGTERM on to the container, but its death does not end it: whoever
        kills the client must then run remove(). ``read_only``: host directories lent as they
        are (the probe's).
        """
        soft = max(1, cpu_time)
        workdir = bind_path(image.workdir)
        cmd = [self.executable, "run", "--rm", "--replace", "--name", name]
        cmd += ["--label", f"{PODMAN_LABEL}={self.jobs_dir}", "--rootfs", "--read-only", "--init"]
        # A network of the job's own (slirp4netns), never the host's: its loopback is the job's.
        net = "slirp4netns:allow_host_loopback=false" if network else "none"
        cmd += ["--log-driver", "passthrough", "--network", net]
        cmd += ["--hostname", "job", "--cap-drop", "all", "--security-opt", "no-new-privileges"]
        # Rootless, the job keeps the server's uid (mapped); as root it is never root.
        user = f"{sandbox.JOB_UID}:{sandbox.JOB_GID}"
        cmd += ["--userns", "keep-id"] if self.rootless else ["--user", user]
        cmd += ["-v", f"{bind_path(work)}:{workdir}", "--workdir", workdir]
        for path in read_only:
            cmd += ["-v", f"{bind_path(path)}:{path}:ro"]
        cmd += ["--ulimit", f"cpu={soft}:{soft + CPU_HARD_MARGIN}"]
        for ulimit in self.ulimits:  # --ulimit replaces the configured ones: all of them again
            cmd += ["--ulimit", ulimit]
        cmd += ["--timeout", str(math.ceil(wall_seconds) + PODMAN_TIMEOUT_MARGIN)]
        if cgroup is not None:
            cmd += ["--cgroup-parent", cgroup.parent]
        if processes:
            cmd += ["--pids-limit", str(processes)]
        if memory_mb and not (cgroup is not None and cgroup.memory_limited):
            cmd += ["--memory", f"{memory_mb}m", "--memory-swap", f"{memory_mb}m"]
        variables = {"PATH": sandbox.SANDBOX_PATH, "HOME": workdir, "TMPDIR": sandbox.JOB_TMP}
        for key, value in {**variables, **env}.items():
            cmd += ["--env", f"{key}={value}"]
        return [*cmd, "--", f"{bind_path(image.rootfs)}:O", *argv]

    def probe(self, probe_dir: Path, memory_mb: int = 0) -> str | None:
        """Run ``true`` as a job runs (same options, limits, user), on a tiny rootfs lending
        the host's /usr; None if it worked, else why not."""
        self.write_config()
        probe_dir.mkdir(parents=True, exist_ok=True)
        top = Path(tempfile.mkdtemp(prefix=".podman-probe-", dir=probe_dir))
        name = f"{CONTAINER_PREFIX}probe-{os.getpid()}-{next(_serial)}"
        cgroup = None if self.rootless else ContainerCgroup(memory_mb)
        try:
            rootfs, lent = _probe_rootfs(top / "rootfs")
            (top / "work").mkdir()
            sandbox.hand_over(top / "work")
            image = JobImage(id="probe", rootfs=rootfs)
            cmd = self.command(
                name, ["true"], image, top / "work", {}, network=False, cpu_time=10,
                wall_seconds=30, cgroup=cgroup, memory_mb=memory_mb, read_only=lent,
            )  # fmt: skip
            try:
                done = subprocess.run(
                    cmd, capture_output=True, env=self.env, timeout=120, cwd=top, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"the probe run failed: {exc}"
            if done.returncode == 0:
                return None
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            return f"a probe run failed: {lines[-1] if lines else f'exit code {done.returncode}'}"
        finally:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._remove_now([name])
            if cgroup is not None:
                cgroup.remove()
            shutil.rmtree(top, ignore_errors=True)

    def remove_leftovers(self) -> list[str]:
        """Remove the containers of this jobs directory a previous server left running."""
        try:
            listed = subprocess.run(
                [self.executable, "ps", "-a", "--format", "{{.Names}}",
                 "--filter", f"label={PODMAN_LABEL}={self.jobs_dir}"],
                capture_output=True, text=True, env=self.env, timeout=60, check=True,
            )  # fmt: skip
            names = listed.stdout.split()
            if names:
                self._remove_now(names)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("podman: cannot remove the containers of an earlier run: %s", exc)
            return []
        return names

    def _remove_now(self, names: list[str]) -> None:
        subprocess.run(
            [self.executable, "rm", "-f", "-t", "0", *names],
            capture_output=True, env=self.env, timeout=60, check=False,
        )  # fmt: skip

    async def remove(self, name: str) -> None:
        """Stop the container at once (SIGKILL) and remove it; nothing if it is gone."""
        proc = await asyncio.create_subprocess_exec(
            self.executable, "rm", "-f", "-t", "0", name, env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await proc.communicate()
        if proc.returncode:
            log.warning("podman rm %s: %s", name, stderr.decode(errors="replace").strip())


def _probe_rootfs(rootfs: Path) -> tuple[Path, list[Path]]:
    """A root of mount points and the host's merged-/usr links; the host directories to lend."""
    for name in _PROBE_DIRS:
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    lent = []
    for path in ("/usr", *sandbox.MERGED_DIRS):
        if os.path.islink(path):
            (rootfs / path.lstrip("/")).symlink_to(os.readlink(path))
        elif os.path.isdir(path):
            (rootfs / path.lstrip("/")).mkdir()
            lent.append(Path(path))
    rootfs.parent.chmod(0o711)
    return rootfs, lent
