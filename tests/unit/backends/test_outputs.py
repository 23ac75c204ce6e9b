"""Collecting a local job's outputs from a work directory its processes made as they liked:
only regular files inside it are moved, whatever names, links or special files it holds."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from concordia.backends.outputs import collect_outputs


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    (tmp_path / "job" / "work").mkdir(parents=True)
    (tmp_path / "job" / "std.out").write_text("the server's log\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("not the job's\n")
    return tmp_path / "job"


def collected(job_dir: Path, patterns: list[str]) -> list[str]:
    outputs = job_dir / "outputs"
    files = collect_outputs(job_dir, patterns).files
    assert all(f.is_relative_to(outputs) and f.is_file() and not f.is_symlink() for f in files)
    return sorted(f.relative_to(outputs).as_posix() for f in files)


def test_links_and_special_files_are_left_where_they_are(job_dir: Path) -> None:
    work = job_dir / "work"
    outside = job_dir.parent / "outside"
    (work / "leak.txt").symlink_to(outside / "secret")
    (work / "dir").symlink_to(outside)
    os.mkfifo(work / "pipe.txt")  # opening it would hang the server
    (work / "real.txt").write_text("42\n")
    found: list[list[str]] = []
    patterns = ["*.txt", "dir/*", "**/secret"]
    worker = threading.Thread(target=lambda: found.append(collected(job_dir, patterns)))
    worker.daemon = True
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "collecting blocked on the fifo"
    assert found == [["real.txt", "std.out"]]
    assert (outside / "secret").read_text() == "not the job's\n"  # moved nowhere
    assert os.path.islink(work / "leak.txt") and (work / "pipe.txt").exists()


def test_globs_leaving_the_work_directory_are_ignored(job_dir: Path) -> None:
    (job_dir / "work" / "in.txt").write_text("in\n")
    patterns = ["../*", "../../outside/secret", "/etc/passwd", "a/../../*", "*.txt"]
    assert collected(job_dir, patterns) == ["in.txt", "std.out"]
    assert (job_dir.parent / "outside" / "secret").exists()
    assert not (job_dir / "outputs" / "secret").exists()


def test_a_job_cannot_replace_the_servers_logs(job_dir: Path) -> None:
    (job_dir / "work" / "std.out").write_text("forged\n")
    (job_dir / "work" / "std.err").write_text("forged\n")
    assert collected(job_dir, ["*"]) == ["std.out"]
    assert (job_dir / "outputs" / "std.out").read_text() == "the server's log\n"


def test_a_directory_nested_deeper_than_allowed_is_not_walked(job_dir: Path) -> None:
    deep = job_dir / "work"
    for _ in range(80):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("x\n")
    (job_dir / "work" / "top.txt").write_text("y\n")
    assert collected(job_dir, ["**/*.txt"]) == ["std.out", "top.txt"]


def test_a_collection_cut_short_is_done_again(job_dir: Path) -> None:
    """A worker killed in the middle of a collection: the one adopting the job collects again
    and gets the same files (the logs already linked, the outputs already moved)."""
    (job_dir / "work" / "result.txt").write_text("42\n")
    (job_dir / "std.err").write_text("warnings\n")
    first = collected(job_dir, ["*.txt"])
    (job_dir / "outputs" / "std.err").unlink()
    (job_dir / "outputs" / "std.err").write_text("half of a cop")  # a copy cut short
    assert first == ["result.txt", "std.err", "std.out"]
    assert collected(job_dir, ["*.txt"]) == ["std.err", "std.out"]  # result.txt: moved before
    assert sorted(p.name for p in (job_dir / "outputs").iterdir()) == first
    assert (job_dir / "outputs" / "std.err").read_text() == "warnings\n"
    assert (job_dir / "outputs" / "result.txt").read_text() == "42\n"
