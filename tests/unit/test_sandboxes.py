"""DIRAC sandboxes: input archives that are the same bytes for the same files, and output
archives unpacked only when every member is a plain file inside, within the size limit."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from concordia.backends.sandboxes import UnsafeArchive, extract_outputs, input_sandbox


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
