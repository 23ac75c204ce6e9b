"""A build's phase and n of N, read from its log as mmdebstrap (verbose), the steps and the
formats write it."""

from __future__ import annotations

from concordia.core.build_progress import BuildProgress

LOG = """\
[  0:00] building image 100f of hello with mmdebstrap 1.3.5
[  0:00] $ mmdebstrap --variant=apt --include=python3 --verbose bookworm /x/rootfs
[  0:00] I: running apt-get update...
[  0:02] Get:1 http://deb.example/debian bookworm InRelease [151 kB]
[  0:03] I: downloading packages with apt...
[  0:03] 0 upgraded, 3 newly installed, 0 to remove and 0 not upgraded.
[  0:03] Need to get 5,012 kB of archives.
[  0:03] Get:1 http://deb.example/debian bookworm/main amd64 libc6 amd64 2.36-9 [2,758 kB]
[  0:04] Get:2 http://deb.example/debian bookworm/main amd64 python3 amd64 3.11.2-1 [26 kB]
"""
MORE = """\
[  0:05] I: extracting archives...
[  0:09] I: installing remaining packages inside the chroot...
[  0:09] 0 upgraded, 40 newly installed, 0 to remove and 0 not upgraded.
[  0:20] stage base: cached as 57a3e7e3146a
[  0:20] ### step 1/3: python3 -m pip install --no-cache-dir numpy
[  0:40] ### step 2/3: make -C /src
[  0:50] ### step 3/3: ls
[  0:51] $ mksquashfs /x/rootfs /x/image.sqsh -noappend
[  0:53] $ umoci init --layout /x/.oci
[  0:55] built in 55.0 s: squashfs, oci
"""


def test_the_phases_and_counts_of_a_build_come_from_its_log() -> None:
    progress = BuildProgress()
    assert progress.text == "starting"
    seen = []
    for line in (LOG + MORE).splitlines(keepends=True):
        if progress.advance(line):
            seen.append(progress.text)
    assert seen == [
        "preparing the base system",
        "resolving packages",
        "downloading packages",
        "downloading packages 0/3",
        "downloading packages 1/3",
        "downloading packages 2/3",
        "installing packages",
        "installing Python packages",
        "running the steps 2/3",
        "running the steps 3/3",
        "writing the SquashFS",
        "writing the OCI image",
        "done",
    ]


def test_text_in_any_chunks_gives_the_same_progress() -> None:
    whole, chunked = BuildProgress(), BuildProgress()
    whole.advance(LOG)
    chunked.advance(LOG[:200])
    chunked.advance(LOG[200:])
    assert whole == chunked == BuildProgress(phase="downloading packages", done=2, total=3)


def test_a_cached_stage_and_the_end_of_a_failed_or_cancelled_build_are_named() -> None:
    progress = BuildProgress()
    progress.advance("[  0:01] stage base: cached (57a3e7e3146a), copied out\n")
    assert progress.text == "base stage from the cache"
    progress.advance("[  0:02] \n[  0:02] BUILD FAILED: mmdebstrap failed with exit code 1\n")
    assert progress.text == "failed"
    progress.advance("[  0:03] BUILD CANCELLED by the user\n")
    assert progress.text == "cancelled"
