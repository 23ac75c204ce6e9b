"""The runtimes of jobs in images: podman for real (jobs, limits, kills, cleanup), the choice
at start, and Apptainer's command line (Apptainer itself cannot be installed here)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from concordia.backends import job_exit, runtimes, sandbox
from concordia.backends.base import JobImage
from concordia.backends.local import LocalBackend
from concordia.backends.runtimes import ContainerCgroup, Podman, choose_runtime
from concordia.core.recipe import Recipe
from concordia.core.states import JobStatus
from concordia.images.build import choose_builder, run_build
from concordia.images.plan import BuildPlan
from concordia.images.store import ImageStore
from tests.integration.backends.test_local_backend import job, ref, run, until, within
from tests.integration.conftest import Factory

pytestmark = pytest.mark.real

S = JobStatus
AS_ROOT = os.geteuid() == 0
HAS_PODMAN = shutil.which("podman") is not None
needs_podman = pytest.mark.skipif(
    not HAS_PODMAN, reason="needs podman (apt-get install podman runc; make test-deps)"
)

PROOF = Recipe(  # noqa: S604 (shell names the image's shell; nothing runs here)
    variant="extract",
    packages=["busybox-static"],
    shell="/bin/busybox sh",
    steps=["/bin/busybox --install -s /bin", "echo made in the image > /etc/concordia-proof"],
    env={"GREETING": "from the image", "SHADOWED": "image"},
    workdir="/data",
)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> JobImage:
    """A busybox image with a file only it has, built for real (rootfs only)."""
    if shutil.which("mmdebstrap") is None:
        pytest.skip("needs mmdebstrap (make system-deps)")
    store = ImageStore(tmp_path_factory.mktemp("runtime-images") / "images")
    store.prepare()
    builder = choose_builder(["mmdebstrap"], []).builder
    assert builder is not None
    plan = BuildPlan(image_id="1" * 64, application="proof", recipe=PROOF, build_args={})
    built = run_build(plan, builder, store, [])
    return JobImage(
        id=built.id, rootfs=built.rootfs, env=built.meta["env"], workdir=built.meta["workdir"]
    )


def containers(backend: LocalBackend) -> list[str]:
    """The podman containers of this backend's jobs directory, running or not."""
    label = f"label={runtimes.PODMAN_LABEL}={backend.settings.jobs_dir}"
    listed = subprocess.run(
        ["podman", "ps", "-a", "--filter", label, "--format", "{{.Names}}"],
        capture_output=True, text=True, check=True, env=podman_env(backend),
    )  # fmt: skip
    return listed.stdout.split()


def podman_env(backend: LocalBackend) -> dict[str, str]:
    conf = backend.settings.data_dir / "podman" / "containers.conf"
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def started(backend: LocalBackend, uuid: str) -> bool:
    std_out = backend.job_dir(uuid) / "std.out"
    return std_out.exists() and "started" in std_out.read_text()


def out(backend: LocalBackend, uuid: str) -> str:
    return (backend.job_dir(uuid) / "outputs" / "std.out").read_text()


# podman, for real.


@needs_podman
async def test_podman_runs_a_job_in_its_image(make_backend: Factory, image: JobImage) -> None:
    backend = await make_backend(local_runtime="podman")
    assert backend.runtime == "podman" and backend.runtime_problem is None
    assert backend.isolated and backend.isolation_problem is None  # bwrap for plain jobs
    conf = (backend.settings.data_dir / "podman" / "containers.conf").read_text()
    for line in ('runtime = "runc"', 'cgroup_manager = "cgroupfs"', 'events_logger = "file"'):
        assert line in conf
    script = (
        "cat /etc/concordia-proof; id -u; pwd; echo $HOME $GREETING $SHADOWED;"
        " echo result > r.txt; touch /in-the-root 2>/dev/null || echo read-only"
    )
    spec = job("pod", "sh", "-c", script, outputs=["r.txt"], image=image, env={"SHADOWED": "job"})
    updates = await run(backend, spec, seconds=30)
    history = updates["pod"]
    assert [u.status for u in history] == [S.MATCHED, S.RUNNING, S.COMPLETING, S.DONE]
    assert history[1].state["runtime"] == "podman" and history[1].state["isolated"] is True
    assert history[-1].exit_code == 0 and history[-1].state["cpu_seconds"] is not None
    uid = sandbox.JOB_UID if AS_ROOT else os.getuid()
    assert out(backend, "pod").splitlines() == [
        "made in the image",  # a file only the image has
        str(uid),
        "/data",  # the image's working directory, where the work directory is
        "/data from the image job",
        "read-only",
    ]
    assert (backend.job_dir("pod") / "outputs" / "r.txt").read_text() == "result\n"
    # podman's mount points went to an overlay: the image is as built.
    assert not (image.rootfs / "run" / ".containerenv").exists()
    assert not (image.rootfs / "etc" / "hosts").exists()


@needs_podman
async def test_podman_exit_codes_and_start_failures(make_backend: Factory, image: JobImage) -> None:
    backend = await make_backend(local_runtime="podman")
    updates = await run(
        backend,
        job("code", "sh", "-c", "echo bye; exit 3", image=image),
        job("noexe", "no-such-program", image=image),
        seconds=30,
    )
    assert updates["code"][-1].status == S.FAILED
    assert updates["code"][-1].minor_status == "Application exited with code 3"
    assert updates["code"][-1].exit_code == 3
    assert out(backend, "code") == "bye\n"
    minor = updates["noexe"][-1].minor_status
    assert minor.startswith("Cannot start application:") and "no-such-program" in minor


@needs_podman
async def test_podman_cpu_and_wall_time_limits(make_backend: Factory, image: JobImage) -> None:
    backend = await make_backend(local_runtime="podman", local_wall_time_factor=12)
    updates = await run(
        backend,
        job("spin", "sh", "-c", "while :; do :; done", cpu_time=1, image=image),
        job("stubborn", "sh", "-c", "trap '' XCPU; while :; do :; done", cpu_time=1, image=image),
        seconds=40,
    )
    for uuid in ("spin", "stubborn"):  # SIGXCPU at the soft limit; SIGKILL at the hard one
        assert updates[uuid][-1].minor_status == "CPU time limit exceeded", uuid
    assert updates["spin"][-1].exit_code == 128 + 24
    assert updates["stubborn"][-1].exit_code == 128 + 9
    assert updates["stubborn"][-1].state["cpu_seconds"] >= 1
    backend = await make_backend(local_runtime="podman", local_wall_time_factor=1)
    updates = await run(backend, job("wall", "sleep", "30", cpu_time=1, image=image), seconds=30)
    assert [u.status for u in updates["wall"]][-2:] == [S.COMPLETING, S.FAILED]
    assert updates["wall"][-1].minor_status == "Wall time limit exceeded"
    assert updates["wall"][-1].state["wall_seconds"] < 5
    assert containers(backend) == []


@needs_podman
async def test_podman_kill(make_backend: Factory, image: JobImage) -> None:
    backend = await make_backend(local_runtime="podman")
    # SIGTERM first (the client passes it on); a job that ignores it is killed after the grace.
    polite = "trap 'echo got TERM; exit 1' TERM; echo started; sleep 300 & wait"
    deaf = "trap '' TERM; echo started; while :; do sleep 1; done"
    await backend.submit([job("k1", "sh", "-c", polite, image=image)])
    await backend.submit([job("k2", "sh", "-c", deaf, image=image)])
    for uuid in ("k1", "k2"):
        await until(lambda uuid=uuid: started(backend, uuid), 30)  # type: ignore[misc]
    assert len(containers(backend)) == 2
    await within(backend.kill([ref("k1"), ref("k2")]))
    assert not backend.running("k1") and not backend.running("k2")
    assert containers(backend) == []
    await asyncio.sleep(0.2)
    assert await backend.poll([]) == []  # the caller records Killed itself
    assert out(backend, "k1") == "started\ngot TERM\n"
    assert out(backend, "k2") == "started\n"
    # Closing the backend (the server stopping) removes its containers too.
    await backend.submit([job("k3", "sh", "-c", deaf, image=image)])
    await until(lambda: started(backend, "k3"), 30)
    await within(backend.close())
    assert containers(backend) == []
    assert out(backend, "k3") == "started\n"


@needs_podman
async def test_podman_has_no_network_unless_asked(make_backend: Factory, image: JobImage) -> None:
    backend = await make_backend(local_runtime="podman")
    interfaces = "sed 1,2d /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '"
    updates = await run(
        backend,
        job("closed", "sh", "-c", interfaces, image=image),
        job("open", "sh", "-c", interfaces, image=image, network=True),
        seconds=30,
    )
    assert updates["closed"][-1].status == updates["open"][-1].status == S.DONE
    assert out(backend, "closed").split() == ["lo"]
    assert len(out(backend, "open").split()) > 1  # its own, through slirp4netns


@needs_podman
async def test_podman_memory_limit(make_backend: Factory, image: JobImage) -> None:
    probe = ContainerCgroup(64)
    limited = probe.memory_limited
    probe.remove()
    if not limited:
        pytest.skip("no writable cgroup v1 memory controller")
    backend = await make_backend(local_runtime="podman", local_memory_mb=64)
    hog = "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived"
    updates = await run(
        backend,
        job("hog", "sh", "-c", hog, image=image),
        job(
            "small", "sh", "-c", "x=$(head -c 1000000 /dev/zero | tr '\\0' a); echo ok", image=image
        ),
        seconds=30,
    )
    assert updates["hog"][1].state["memory_limit"] is True
    assert updates["hog"][-1].minor_status == "Memory limit exceeded"
    assert updates["small"][-1].status == S.DONE


@needs_podman
async def test_podman_containers_of_an_earlier_run_are_removed(
    make_backend: Factory, image: JobImage, tmp_path: Path
) -> None:
    first = await make_backend(local_runtime="podman")
    label = f"{runtimes.PODMAN_LABEL}={first.settings.jobs_dir}"
    leftover = subprocess.run(
        ["podman", "run", "-d", "--rootfs", "--name", "concordia-leftover", "--label", label,
         f"{image.rootfs}:O", "sleep", "300"],
        capture_output=True, text=True, env=podman_env(first), check=False,
    )  # fmt: skip
    assert leftover.returncode == 0, leftover.stderr  # (CI once saw 126 here, unexplained)
    assert containers(first) == ["concordia-leftover"]
    await first.close()
    second = await make_backend(local_runtime="podman")  # as a restarted server
    assert containers(second) == []


@needs_podman
async def test_a_failing_podman_probe_says_why(
    make_backend: Factory, image: JobImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin" / "podman"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Error: crun: cgroups in hybrid mode' >&2\nexit 125\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    backend = await make_backend(local_runtime="podman")
    assert backend.runtime is None
    assert backend.runtime_problem == (
        "local_runtime is 'podman' but a probe run failed: Error: crun: cgroups in hybrid mode"
    )
    updates = await run(backend, job("img", "true", image=image))
    assert [u.status for u in updates["img"]] == [S.MATCHED, S.FAILED]
    assert updates["img"][-1].minor_status == (
        f"Cannot start application: its image needs a container runtime ({backend.runtime_problem})"
    )


# The choice at start.


async def test_auto_picks_bwrap_here(make_backend: Factory) -> None:
    if shutil.which("apptainer") or shutil.which("singularity") or not shutil.which("bwrap"):
        pytest.skip("this machine has Apptainer, or no bubblewrap")
    backend = await make_backend()
    assert backend.runtime == "bwrap" and backend.isolated
    assert backend.runtime_problems == {
        "apptainer": runtimes.NOT_INSTALLED["apptainer"],
        "podman": "not tried (bwrap comes first)",
    }
    assert backend.runtime_summary.startswith("bwrap (not apptainer: neither apptainer nor")


async def test_apptainer_asked_for_but_not_installed(
    make_backend: Factory, image: JobImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("apptainer") or shutil.which("singularity"):
        pytest.skip("this machine has Apptainer")
    backend = await make_backend(local_runtime="apptainer")
    assert backend.runtime is None
    assert backend.runtime_problem == (
        "local_runtime is 'apptainer' but neither apptainer nor singularity is installed"
        " (not in Debian 12: see apptainer.org)"
    )
    updates = await run(backend, job("img", "true", image=image), job("plain", "true"))
    assert updates["img"][-1].minor_status.startswith(
        "Cannot start application: its image needs a container runtime (local_runtime is"
        " 'apptainer' but neither apptainer nor singularity is installed"
    )
    assert updates["plain"][-1].status == S.DONE  # a job without an image runs as before


async def test_isolation_none_turns_auto_off(make_backend: Factory, image: JobImage) -> None:
    backend = await make_backend(local_isolation="none")
    assert not backend.isolated and backend.runtime is None
    assert backend.isolation_problem == "isolation is turned off (local_isolation = none)"
    updates = await run(backend, job("img", "true", image=image))
    assert updates["img"][-1].minor_status == (
        "Cannot start application: its image needs a container runtime"
        " (isolation is turned off (local_isolation = none))"
    )


@needs_podman
async def test_podman_with_isolation_none(make_backend: Factory, image: JobImage) -> None:
    backend = await make_backend(local_isolation="none", local_runtime="podman")
    assert backend.runtime == "podman" and not backend.isolated
    assert backend.isolation_problem == (
        "jobs without an image run without isolation: isolation is turned off"
        " (local_isolation = none) (jobs in images run in podman)"
    )
    updates = await run(backend, job("img", "cat", "/etc/concordia-proof", image=image), seconds=30)
    assert updates["img"][-1].status == S.DONE and out(backend, "img") == "made in the image\n"


async def test_apptainer_is_launched_as_a_job(
    make_backend: Factory, image: JobImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a stand-in apptainer that shows how it was called (Apptainer is not installable
    here): the launcher, the privilege drop and the command line reach it."""
    fake = tmp_path / "bin" / "apptainer"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nid -u\nprintf "%s\\n" "$@"\nulimit -t\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    backend = await make_backend()
    assert backend.runtime == "apptainer"
    assert backend.runtime_problems == {
        "bwrap": "not tried (apptainer comes first)",
        "podman": "not tried (apptainer comes first)",
    }
    updates = await run(backend, job("app", "echo", "hi", cpu_time=7, image=image))
    assert updates["app"][-1].status == S.DONE
    assert updates["app"][1].state["runtime"] == "apptainer"
    uid, *args, cpu_limit = out(backend, "app").splitlines()
    assert int(uid) == (sandbox.JOB_UID if AS_ROOT else os.getuid())
    work = backend.job_dir("app") / "work"
    assert args == [
        "exec", "--containall", "--cleanenv", "--pwd", "/data", "-B", f"{work}:/data",
        "--env", "GREETING=from the image", "--env", "SHADOWED=image",
        "--net", "--network", "none", str(image.rootfs), "echo", "hi",
    ]  # fmt: skip
    assert cpu_limit == "7"


# Command lines and the choice, without running anything.


def test_apptainer_command_line() -> None:
    image = JobImage(
        id="x", rootfs=Path("/img/rootfs"), squashfs=Path("/img/image.sqsh"), workdir="/work"
    )
    work = Path("/var/jobs/j1/work")
    cmd = runtimes.apptainer_command(
        "/usr/bin/apptainer", ["python3", "run.py", "--n", "5"], image, work,
        {"A": "1", "B": "x y"}, network=False,
    )  # fmt: skip
    assert cmd == [
        "/usr/bin/apptainer", "exec", "--containall", "--cleanenv", "--pwd", "/work",
        "-B", "/var/jobs/j1/work:/work", "--env", "A=1", "--env", "B=x y",
        "--net", "--network", "none", "/img/image.sqsh", "python3", "run.py", "--n", "5",
    ]  # fmt: skip
    # With network, and without a SquashFS (the rootfs directory, a sandbox).
    plain = image.model_copy(update={"squashfs": None})
    cmd = runtimes.apptainer_command("apptainer", ["true"], plain, work, {}, network=True)
    assert cmd == [
        "apptainer", "exec", "--containall", "--cleanenv", "--pwd", "/work",
        "-B", "/var/jobs/j1/work:/work", "/img/rootfs", "true",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="':' or ','"):
        runtimes.apptainer_command("apptainer", ["true"], plain, Path("/a:b"), {}, network=True)


def test_podman_command_line(tmp_path: Path) -> None:
    podman = Podman("/usr/bin/podman", tmp_path / "conf", tmp_path / "jobs")
    podman.rootless = False
    podman.ulimits = ["nofile=1024:20000", "nproc=4096:4096"]
    image = JobImage(id="x", rootfs=Path("/img/rootfs"), workdir="/data", env={"A": "1"})
    cmd = podman.command(
        "concordia-j1", ["sh", "-c", "exit 3"], image, Path("/jobs/j1/work"), {"A": "2"},
        network=False, cpu_time=10, wall_seconds=20, memory_mb=64,
    )  # fmt: skip
    text = " ".join(cmd)
    assert cmd[:2] == ["/usr/bin/podman", "run"]
    assert cmd[-5:] == ["--", "/img/rootfs:O", "sh", "-c", "exit 3"]
    for part in (
        "--rm --replace --name concordia-j1",
        f"--label {runtimes.PODMAN_LABEL}={tmp_path / 'jobs'}",
        "--rootfs --read-only --init",
        "--network none",
        f"--user {sandbox.JOB_UID}:{sandbox.JOB_GID}",
        "-v /jobs/j1/work:/data --workdir /data",
        "--ulimit cpu=10:15 --ulimit nofile=1024:20000 --ulimit nproc=4096:4096",
        "--timeout 80",
        "--memory 64m --memory-swap 64m",  # no cgroup of ours to hold the limit
        "--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        " --env HOME=/data --env TMPDIR=/tmp --env A=2",
    ):
        assert part in text, part
    cmd = podman.command(
        "concordia-j2", ["true"], image, Path("/w"), {}, network=True, cpu_time=1,
        wall_seconds=2,
    )  # fmt: skip
    assert "--network slirp4netns:allow_host_loopback=false" in " ".join(cmd)
    assert "--memory" not in cmd
    podman.rootless = True
    cmd = podman.command("c", ["true"], image, Path("/w"), {}, network=False, cpu_time=1,
                         wall_seconds=2)  # fmt: skip
    assert "--userns keep-id" in " ".join(cmd) and "--user" not in cmd


def test_choose_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: set[str] = set()
    monkeypatch.setattr(
        shutil, "which", lambda name: f"/usr/bin/{name}" if name in installed else None
    )
    probed: list[str] = []

    def probe(executable: str) -> str | None:
        probed.append(executable)
        return None if "podman" in installed else "a probe run failed: Error: no"

    def choose(
        mode: str, bwrap: str | None = None, isolation: str = "auto"
    ) -> runtimes.RuntimeChoice:
        return choose_runtime(mode, isolation=isolation, bwrap_problem=bwrap, probe_podman=probe)

    # auto: apptainer (or singularity) first, whatever the others; then bwrap; then podman.
    installed.update({"singularity", "podman"})
    chosen = choose("auto", bwrap=None)
    assert (chosen.name, chosen.command) == ("apptainer", "/usr/bin/singularity")
    installed.add("apptainer")
    assert choose("auto").command == "/usr/bin/apptainer" and probed == []
    installed.clear()
    installed.add("podman")
    chosen = choose("auto", bwrap=None)
    assert chosen.name == "bwrap" and probed == []
    chosen = choose("auto", bwrap="bwrap is not installed")
    assert (chosen.name, chosen.command, probed) == (
        "podman",
        "/usr/bin/podman",
        ["/usr/bin/podman"],
    )
    assert chosen.problems == {
        "apptainer": runtimes.NOT_INSTALLED["apptainer"],
        "bwrap": "bwrap is not installed",
    }
    assert chosen.summary == (
        f"podman (not apptainer: {runtimes.NOT_INSTALLED['apptainer']};"
        " not bwrap: bwrap is not installed)"
    )
    installed.clear()
    chosen = choose("auto", bwrap="bwrap is not installed")
    assert chosen.name is None
    assert chosen.problem == (
        f"none is usable (apptainer: {runtimes.NOT_INSTALLED['apptainer']};"
        f" bwrap: bwrap is not installed; podman: {runtimes.NOT_INSTALLED['podman']})"
    )
    # Named: that one or none.
    assert (
        choose("podman").problem
        == f"local_runtime is 'podman' but {runtimes.NOT_INSTALLED['podman']}"
    )
    installed.add("podman")
    chosen = choose("bwrap")
    assert chosen.name == "bwrap" and chosen.summary == (
        "bwrap (not apptainer: not tried (local_runtime = bwrap);"
        " not podman: not tried (local_runtime = bwrap))"
    )
    assert choose("bwrap", bwrap="x").problem == "local_runtime is 'bwrap' but x"
    off = "isolation is turned off (local_isolation = none)"
    assert choose("auto", bwrap=off, isolation="none").problem == off
    assert choose("podman", bwrap=off, isolation="none").name == "podman"
    with pytest.raises(ValueError, match="unknown runtime"):
        choose("docker")


def test_start_errors_of_runtimes() -> None:
    podman = "Error: runc: runc create failed: unable to start container process"
    assert job_exit.start_error(f"x\n{podman}\n", 126, runtime="podman") == (
        "podman: runc: runc create failed: unable to start container process"
    )
    # A job's own words, or another runtime's job: its exit is its own.
    assert job_exit.start_error(f"{podman}\n", 1, runtime="podman") is None
    assert job_exit.start_error(f"{podman}\n", 126, runtime="bwrap") is None
    init = "ERROR (catatonit:6): failed to exec pid1: No such file or directory\n"
    error = job_exit.start_error(init, 1, runtime="podman", program="prog")
    assert error == "podman: cannot run prog: No such file or directory"
    fatal = "FATAL:   could not open image x.sqsh\n"
    error = job_exit.start_error(fatal, 255, runtime="apptainer")
    assert error == "apptainer: could not open image x.sqsh"
    bwrap = "bwrap: execvp nope: No such file or directory\n"
    assert job_exit.start_error(bwrap, 1) == bwrap.strip()
