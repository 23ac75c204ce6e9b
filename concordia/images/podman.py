"""The podman image builder: a Containerfile from the recipe, built on the operator's base."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from concordia.backends import sandbox
from concordia.backends.runtimes import Podman
from concordia.images.builders import HOST_CA, BuildError, run_logged
from concordia.images.containerfile import podman_containerfile
from concordia.images.plan import BuildPlan
from concordia.images.sources import fetch_sources
from concordia.images.stages import BuildStages

#: Mount points a podman build's RUN instructions leave in the image (removed when empty).
_RUN_LEFTOVER_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf")
_RUN_LEFTOVER_DIRS = ("etc/ssl/certs", "etc/ssl")


class PodmanBuilder:
    """``podman build`` of a Containerfile made from the recipe, on the Debian base image the
    operator names for its suite (Settings.image_podman_bases; already in podman's storage:
    never pulled), the result exported into the rootfs. Nothing stays in podman's storage:
    every name a build gives (a tag of its base, its image, its export container) starts with
    ``prefix``, removed after the build, or at the next start if the server was killed."""

    name = "podman"

    def __init__(self, podman: Podman, version: str, bases: Mapping[str, str]) -> None:
        self.podman = podman
        self.version = version
        self.bases = dict(bases)
        # One server's data dir: its start never removes another server's builds.
        scope = hashlib.sha256(str(podman.config_file).encode()).hexdigest()[:8]
        self.prefix = f"concordia-build-{scope}"

    @classmethod
    def probe(
        cls, executable: str, config_dir: Path, bases: Mapping[str, str]
    ) -> PodmanBuilder | str:
        """The builder if a real build works here (and every base image is present), else why
        not."""
        if not bases:
            return (
                "no base image is configured: name one per Debian suite in image_podman_bases "
                "(e.g. bookworm = a debian:bookworm image pulled or imported into podman's "
                "storage)"
            )
        podman = Podman(executable, config_dir, config_dir)
        try:
            _replace_config(podman)
        except OSError as exc:
            return f"cannot write its configuration: {exc}"
        builder = cls(podman, "", bases)
        found = []
        for suite, reference in sorted(bases.items()):
            done = builder._quiet(["image", "inspect", "--format", "{{.Id}}", reference])
            if done is None or done.returncode != 0:
                return (
                    f"the base image {reference} (debian:{suite}) is not in podman's storage: "
                    f"podman pull {reference} (or podman import a root filesystem tar)"
                )
            image = done.stdout.strip().removeprefix("sha256:")
            found.append(f"{suite}: {reference} {image[:12]}")
        problem = builder._probe_build(config_dir)
        if problem:
            return problem
        version = builder._quiet(["--version"])
        name = version.stdout.strip() if version and version.returncode == 0 else "podman"
        # The bases' image ids are part of every image id: a newer base, another image.
        builder.version = f"{name or 'podman'} ({', '.join(found)})"
        return builder

    def build(
        self, plan: BuildPlan, context: Path, rootfs: Path, log: IO[str],
        stages: BuildStages | None = None,
    ) -> None:  # fmt: skip
        deadline = time.monotonic() + plan.timeout
        recipe = plan.recipe
        base = self.bases.get(recipe.suite)
        if base is None:
            configured = ", ".join(sorted(self.bases))
            raise BuildError(
                f"podman has no base image for debian:{recipe.suite} "
                f"(image_podman_bases names: {configured})"
            )
        fetched = fetch_sources(plan, context, log)
        copies = {}
        for index, (dest, src) in enumerate(sorted({**plan.files, **fetched}.items())):
            copy = context / f"copy-{index}"  # COPY takes files from the build context only
            shutil.copyfile(src, copy)
            copy.chmod(0o755 if os.access(src, os.X_OK) else 0o644)
            copies[dest] = copy.name
        lend_ca = bool(plan.steps()) and os.path.isfile(HOST_CA)
        if lend_ca:
            shutil.copyfile(HOST_CA, context / "host-ca.crt")
        name = f"{self.prefix}-{plan.image_id[:12]}-{uuid.uuid4().hex[:6]}"
        base_tag, scratch = f"localhost/{name}-base", f"localhost/{name}-scratch"
        try:
            self._run(["tag", base, base_tag], log, deadline)
            if recipe.variant == "extract":
                self._import_empty(context, scratch, log, deadline)
            text = podman_containerfile(
                plan, base_tag, copies, scratch=scratch if recipe.variant == "extract" else None,
                lend_ca=lend_ca,
            )  # fmt: skip
            (context / "Containerfile").write_text(text)
            log.write(f"Containerfile (FROM {base_tag} = {base}):\n{text}")
            self._build_and_export(name, context, rootfs, log, deadline)
        finally:
            self._discard(name, log)

    def _build_and_export(
        self, name: str, context: Path, rootfs: Path, log: IO[str], deadline: float,
        volumes: Sequence[str] = (),
    ) -> None:  # fmt: skip
        """``podman build`` of context/Containerfile as NAME-image, its root filesystem
        unpacked into ``rootfs``."""
        image = f"localhost/{name}-image"
        build = [self.podman.executable, "build", "--pull=never", "--layers=false", "--rm"]
        build += ["--force-rm", "--no-hosts", "--tag", image]
        for volume in volumes:
            build += ["--volume", volume]
        build += ["--file", str(context / "Containerfile"), str(context)]
        if os.geteuid() == 0 and shutil.which("unshare"):
            # pid 1 of its own pid namespace: whatever a RUN started dies with it (a killed
            # server, a timeout) instead of living on. Its /proc to match, in a private mount
            # namespace: the build's mounts go with it too.
            build = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--", *build]
        self._run(build, log, deadline, raw=True, name="podman build")
        self._run(["create", "--pull=never", "--name", name, image, "true"], log, deadline)
        archive = context / "rootfs.tar"
        self._run(["export", "--output", str(archive), name], log, deadline)
        rootfs.mkdir()
        rootfs.chmod(0o755)  # whatever the server's umask (077): jobs read it as another uid
        unpack = ["tar", "-x", "--numeric-owner", "-p", "-f", str(archive), "-C", str(rootfs)]
        if os.geteuid() == 0:
            unpack[2:2] = ["--xattrs", "--xattrs-include=*"]
        run_logged(unpack, log, timeout=_left(deadline))
        archive.unlink()
        for leftover in _RUN_LEFTOVER_FILES:
            path = rootfs / leftover
            if path.is_file() and not path.is_symlink() and path.stat().st_size == 0:
                path.unlink()
        for leftover in _RUN_LEFTOVER_DIRS:
            with contextlib.suppress(OSError):
                (rootfs / leftover).rmdir()

    def _import_empty(self, context: Path, tag: str, log: IO[str], deadline: float) -> None:
        """An empty image: the extract variant's start, named (FROM scratch would give its
        build container a name no cleanup could tell from anybody else's)."""
        empty = context / "empty.tar"
        tarfile.open(empty, "w").close()
        self._run(["import", "--quiet", str(empty), tag], log, deadline)

    def _probe_build(self, config_dir: Path) -> str | None:
        """A real build, as small as can be: an empty image, a file copied in, a RUN of the
        host's cat (its /usr lent), the result exported. None if it worked, else why not."""
        top = Path(tempfile.mkdtemp(prefix="probe-", dir=config_dir))
        name = f"{self.prefix}-probe-{uuid.uuid4().hex[:6]}"
        context, scratch = top / "context", f"localhost/{name}-scratch"
        try:
            (context / "root").mkdir(parents=True)
            (context / "root" / "probe.txt").write_text("probe\n")
            volumes = ["/usr:/usr:ro"]
            for path in sandbox.MERGED_DIRS:
                if os.path.islink(path):  # a merged /usr: the same link in the image
                    (context / "root" / path.lstrip("/")).symlink_to(os.readlink(path))
                elif os.path.isdir(path):
                    volumes.append(f"{path}:{path}:ro")
            lines = [f"FROM {scratch}", "COPY root/ /", 'RUN ["/usr/bin/cat", "/probe.txt"]']
            (context / "Containerfile").write_text("\n".join(lines) + "\n")
            with open(top / "probe.log", "w+") as log:
                try:
                    deadline = time.monotonic() + 120
                    self._import_empty(context, scratch, log, deadline)
                    self._build_and_export(name, context, top / "rootfs", log, deadline, volumes)
                    if not (top / "rootfs" / "probe.txt").is_file():
                        raise BuildError("the exported root filesystem lacks the copied file")
                except (BuildError, OSError) as exc:
                    log.seek(0)
                    said = [line for line in log.read().splitlines() if line.strip()]
                    detail = said[-1] if said and said[-1].startswith("Error") else ""
                    return f"a probe build failed: {exc}" + (f" ({detail})" if detail else "")
                finally:
                    self._discard(name, log)
            return None
        finally:
            shutil.rmtree(top, ignore_errors=True)

    def remove_leftovers(self) -> list[str]:
        """Remove the containers and images builds of this data dir left (a killed server)."""
        return self._remove_named(self.prefix)

    def _discard(self, name: str, log: IO[str]) -> None:
        """Remove what the build NAME made in podman's storage: its export container, the
        build container podman build leaves when it is killed, its images, its tag of the base."""
        for removed in self._remove_named(name):
            log.write(f"removed from podman's storage: {removed}\n")

    def _remove_named(self, prefix: str) -> list[str]:
        """Remove the containers (buildah's too) and images whose names start with ``prefix``;
        a tag of a base image (NAME-base) is only untagged. What was removed."""
        removed: list[str] = []
        listed = self._quiet(["ps", "--all", "--external", "--format", "{{.ID}} {{.Names}}"])
        if listed is not None and listed.returncode == 0:
            found = [line.split() for line in listed.stdout.splitlines()]
            ids = {w[0]: w[1] for w in found if len(w) == 2 and w[1].startswith(prefix)}
            if ids:
                self._quiet(["rm", "--force", "--ignore", *ids])
                removed += ids.values()
        listed = self._quiet(["images", "--format", "{{.Repository}}:{{.Tag}}"])
        if listed is not None and listed.returncode == 0:
            for ref in sorted(set(listed.stdout.split())):
                if not ref.startswith(f"localhost/{prefix}"):
                    continue
                if ref.removesuffix(":latest").endswith("-base"):  # the operator's base image
                    self._quiet(["untag", ref, ref])
                    removed.append(f"{ref} (a tag: the base image stays)")
                else:
                    self._quiet(["rmi", "--ignore", ref])
                    removed.append(ref)
        return removed

    def _run(
        self, args: list[str], log: IO[str], deadline: float, *, raw: bool = False,
        name: str | None = None,
    ) -> None:  # fmt: skip
        cmd = args if raw else [self.podman.executable, *args]
        run_logged(
            cmd, log, timeout=_left(deadline), env=self.podman.env,
            name=name or f"podman {args[0]}",
        )  # fmt: skip

    def _quiet(self, args: list[str]) -> subprocess.CompletedProcess[str] | None:
        """A short podman command, its output kept; None if it could not run in time."""
        try:
            return subprocess.run(
                [self.podman.executable, *args], capture_output=True, text=True,
                env=self.podman.env, timeout=120, check=False, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None


def _replace_config(podman: Podman) -> None:
    """Write Concordia's containers.conf for podman as the runtime of jobs does, but by
    rename: jobs already running in podman may be reading it (never a half-written file)."""
    config_dir = podman.config_file.parent
    config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=config_dir))
    try:
        staged = Podman(podman.executable, staging, staging)
        staged.write_config()
        os.replace(staged.config_file, podman.config_file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _left(deadline: float) -> float:
    """Seconds left before a build's deadline (BuildError once it has passed)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise BuildError("the build took longer than its time limit")
    return left
