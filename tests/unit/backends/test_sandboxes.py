"""DIRAC sandboxes: input archives that are the same bytes for the same files, and output
archives unpacked only when every member is a plain file inside, within the size limit."""

from __future__ import annotations

import gzip
import io
import tarfile
import time
from pathlib import Path

import pytest

from concordia.backends.sandboxes import (
    MAX_MEMBERS,
    UnsafeArchive,
    extract_outputs,
    input_sandbox,
)


def test_the_same_files_make_the_same_sandbox() -> None:
    files = {"b.txt": b"two", "a.sh": b"#!/bin/sh\n"}
    first = input_sandbox(files, frozenset({"a.sh"}))
    again = input_sandbox(dict(reversed(files.items())), frozenset({"a.sh"}))
    assert first == again and len(first.sha256) == 64
    assert input_sandbox({**files, "b.txt": b"2"}).sha256 != first.sha256
    with tarfile.open(fileobj=io.BytesIO(first.data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == ["a.sh", "b.txt"]
    assert members["a.sh"].mode == 0o755 and members["b.txt"].mode == 0o644
    assert {m.mtime for m in members.values()} == {0}


def archive(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    path = tmp_path / "out.tar.bz2"
    with tarfile.open(path, "w:bz2") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def test_outputs_are_unpacked(tmp_path: Path) -> None:
    path = archive(
        tmp_path, (member("data", tarfile.DIRTYPE, mode=0o755), b""),
        (member("data/result.txt"), b"42\n"), (member("std.out"), b"hello\n"),
    )  # fmt: skip
    files = extract_outputs(path, tmp_path / "outputs", 1000)
    assert [f.relative_to(tmp_path / "outputs").as_posix() for f in files] == [
        "data/result.txt",
        "std.out",
    ]
    assert (tmp_path / "outputs" / "data" / "result.txt").read_text() == "42\n"


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (member("../escape.txt"), "outside"),
        (member("/etc/evil"), "outside"),
        (member("link", tarfile.SYMTYPE, linkname="/etc/passwd"), "link"),
        (member("hard", tarfile.LNKTYPE, linkname="std.out"), "link"),
        (member("dev", tarfile.CHRTYPE, devmajor=1, devminor=3), "special file"),
        (member("fifo", tarfile.FIFOTYPE), "special file"),
        (member("suid", mode=0o4755), "setuid"),
    ],
)
def test_hostile_outputs_are_refused_and_nothing_is_written(
    tmp_path: Path, bad: tarfile.TarInfo, words: str
) -> None:
    path = archive(tmp_path, (member("std.out"), b"hello\n"), (bad, b"x"))
    with pytest.raises(UnsafeArchive, match=words):
        extract_outputs(path, tmp_path / "outputs", 1000)
    assert not (tmp_path / "outputs").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_a_sandbox_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = archive(tmp_path, (member("big"), b"0" * 5000))  # compresses to almost nothing
    with pytest.raises(UnsafeArchive, match="larger than 1000 bytes"):
        extract_outputs(path, tmp_path / "outputs", 1000)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UnsafeArchive, match="cannot be read"):
        extract_outputs(garbage, tmp_path / "outputs", 1000)


@pytest.mark.parametrize(
    "bad",
    [
        member("."),
        member("a/../../escape.txt"),
        member("data/../../escape.txt"),
        member("sgid", tarfile.DIRTYPE, mode=0o2755),
        member("block", tarfile.BLKTYPE, devmajor=8, devminor=0),
        member("hard-out", tarfile.LNKTYPE, linkname="../../etc/passwd"),
    ],
)
def test_more_hostile_members_are_refused_wherever_they_come(
    tmp_path: Path, bad: tarfile.TarInfo
) -> None:
    # Last, after good members: nothing of those is written either.
    path = archive(
        tmp_path, (member("a", tarfile.DIRTYPE), b""), (member("a/ok"), b"1"), (bad, b"x")
    )
    with pytest.raises(UnsafeArchive):
        extract_outputs(path, tmp_path / "run" / "outputs", 1000)
    assert list((tmp_path / "run").iterdir()) == []  # no outputs, no staging left
    assert not (tmp_path / "escape.txt").exists()


def test_a_member_declaring_gigabytes_is_refused_before_its_data_is_read(tmp_path: Path) -> None:
    # 8 GiB of zeros in 8 MB of gzip: only scanning past them to the next header takes
    # seconds of CPU, unpacking them fills the disk.
    header = member("bomb")
    header.size = 8 * 2**30
    chunk = gzip.compress(bytes(2**20), compresslevel=9)
    path = tmp_path / "bomb.tar.gz"
    with path.open("wb") as fh:
        fh.write(gzip.compress(header.tobuf(format=tarfile.GNU_FORMAT)))
        for _ in range(header.size // 2**20):
            fh.write(chunk)
    started = time.monotonic()
    with pytest.raises(UnsafeArchive, match="larger than"):
        extract_outputs(path, tmp_path / "outputs", 2**30)
    assert time.monotonic() - started < 1
    assert not (tmp_path / "outputs").exists()


def test_a_sandbox_of_too_many_members_is_refused(tmp_path: Path) -> None:
    path = archive(tmp_path, *[(member(f"f{i}"), b"") for i in range(MAX_MEMBERS + 1)])
    with pytest.raises(UnsafeArchive, match=f"over {MAX_MEMBERS} entries"):
        extract_outputs(path, tmp_path / "outputs", 1000)
    assert not (tmp_path / "outputs").exists()


def test_a_sandbox_failing_midway_leaves_the_outputs_as_they_were(tmp_path: Path) -> None:
    outputs = tmp_path / "run" / "outputs"
    outputs.mkdir(parents=True)
    (outputs / "keep.txt").write_text("earlier sandbox\n")
    # Both members pass the checks; the second cannot be made under a file.
    path = archive(tmp_path, (member("a"), b"file"), (member("a/b"), b"under a file"))
    with pytest.raises(UnsafeArchive, match="cannot be read"):
        extract_outputs(path, outputs, 1000)
    assert sorted(p.name for p in outputs.iterdir()) == ["keep.txt"]
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["outputs"]


def test_a_link_already_in_the_outputs_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    outputs = tmp_path / "run" / "outputs"
    outputs.mkdir(parents=True)
    (outputs / "data").symlink_to(outside)
    path = archive(tmp_path, (member("data", tarfile.DIRTYPE), b""), (member("data/x"), b"x"))
    with pytest.raises(UnsafeArchive, match="clashes"):
        extract_outputs(path, outputs, 1000)
    assert list(outside.iterdir()) == []
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["outputs"]


def test_a_second_sandbox_of_the_job_joins_the_first(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    first = archive(tmp_path, (member("data", tarfile.DIRTYPE), b""), (member("data/1"), b"1"))
    extract_outputs(first, outputs, 1000)
    second = archive(tmp_path, (member("data", tarfile.DIRTYPE), b""), (member("data/2"), b"2"))
    files = extract_outputs(second, outputs, 1000)
    assert files == [outputs / "data" / "2"]
    assert sorted(p.name for p in (outputs / "data").iterdir()) == ["1", "2"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
