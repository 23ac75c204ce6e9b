"""Slot cgroups on cgroup v2, against a fake hierarchy of plain files (this machine's kernel
has v1 only: what the kernel does with these files is not tested here)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from concordia.backends.cgroup import slot_cgroup, v2
from concordia.backends.cgroup.v2 import SlotCgroupV2
from concordia.core.limits import JobLimits

SERVICE = "/system.slice/concordia.service"


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    """A cgroup2 mount with the server's (delegated) service cgroup holding two processes."""
    root = tmp_path / "cgroup"
    service = root / SERVICE.lstrip("/")
    service.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (service / "cgroup.controllers").write_text("cpu memory pids\n")
    (service / "cgroup.type").write_text("domain\n")
    (service / "cgroup.procs").write_text("4101\n4102\n")
    (service / "cgroup.subtree_control").write_text("")
    return root


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Each write to a cgroup file, as (path, value), still written."""
    done: list[tuple[str, str]] = []

    def record(path: Path, value: str) -> None:
        done.append((str(path), value))
        path.write_text(value)

    monkeypatch.setattr(v2, "write", record)
    return done


def test_the_servers_processes_move_to_a_leaf_then_controllers_are_enabled(
    mount: Path, writes: list[tuple[str, str]]
) -> None:
    service = mount / SERVICE.lstrip("/")
    cgroup = SlotCgroupV2(mount, SERVICE)
    leaf = service / "concordia-server"
    assert writes == [
        (str(leaf / "cgroup.procs"), "4101"),
        (str(leaf / "cgroup.procs"), "4102"),
        (str(service / "cgroup.subtree_control"), "+memory +pids +cpu"),
    ]
    slot = cgroup.dirs["memory"]
    assert slot.parent == service and slot.is_dir()  # beside the leaf, not in it
    assert cgroup.bounds == ["memory", "pids", "cpu"]
    assert cgroup.version == 2
    second = SlotCgroupV2(mount, SERVICE)
    assert len(writes) == 3  # the server's cgroup is made ready once
    assert second.dirs["memory"].parent == service and second.dirs["memory"] != slot
    assert cgroup.remove() and second.remove()
    assert not slot.exists() and cgroup.bounds == []


def test_a_process_already_in_the_leaf_makes_its_slots_beside_it(
    mount: Path, writes: list[tuple[str, str]]
) -> None:
    """Another process of the service (a web worker) moved it first."""
    service = mount / SERVICE.lstrip("/")
    (service / "concordia-server").mkdir()
    (service / "cgroup.procs").write_text("")
    cgroup = SlotCgroupV2(mount, f"{SERVICE}/concordia-server")
    assert writes == [(str(service / "cgroup.subtree_control"), "+memory +pids +cpu")]
    assert cgroup.dirs["memory"].parent == service


def test_only_the_controllers_offered_are_enabled(
    mount: Path, writes: list[tuple[str, str]]
) -> None:
    service = mount / SERVICE.lstrip("/")
    (service / "cgroup.controllers").write_text("memory io\n")
    cgroup = SlotCgroupV2(mount, SERVICE)
    assert writes[-1] == (str(service / "cgroup.subtree_control"), "+memory")
    assert cgroup.bounds == ["memory", "cpu"]  # cpu.stat counts CPU time without its controller


def test_the_root_cgroup_keeps_its_processes(mount: Path, writes: list[tuple[str, str]]) -> None:
    (mount / "cgroup.controllers").write_text("memory pids\n")
    (mount / "cgroup.procs").write_text("1\n2\n")  # the root has no cgroup.type
    cgroup = SlotCgroupV2(mount, "/")
    assert writes == [(str(mount / "cgroup.subtree_control"), "+memory +pids")]
    assert cgroup.dirs["memory"].parent == mount


def test_configure_writes_memory_swap_and_process_bounds(
    mount: Path, writes: list[tuple[str, str]]
) -> None:
    cgroup = SlotCgroupV2(mount, SERVICE)
    slot = cgroup.dirs["memory"]
    (slot / "memory.swap.max").write_text("max\n")  # the kernel's, with swap accounting
    del writes[:]
    cgroup.configure(JobLimits(memory_mb=64, processes=100))
    assert (slot / "memory.max").read_text() == str(64 * 1024 * 1024)
    assert (slot / "memory.swap.max").read_text() == "0"  # RAM + swap within the bound
    assert (slot / "pids.max").read_text() == "101"  # and the fork server
    assert cgroup.memory_limited
    cgroup.configure(JobLimits(memory_mb=64, processes=100))
    written = [file for file, _ in writes]
    assert written.count(str(slot / "memory.max")) == written.count(str(slot / "pids.max")) == 1
    cgroup.configure(JobLimits())
    assert (slot / "memory.max").read_text() == "max"
    assert (slot / "memory.swap.max").read_text() == "max"
    assert (slot / "pids.max").read_text() == "max"
    assert not cgroup.memory_limited


def test_without_swap_accounting_only_memory_max_is_written(mount: Path) -> None:
    cgroup = SlotCgroupV2(mount, SERVICE)
    cgroup.configure(JobLimits(memory_mb=8))
    assert (cgroup.dirs["memory"] / "memory.max").read_text() == str(8 * 1024 * 1024)
    assert not (cgroup.dirs["memory"] / "memory.swap.max").exists()


def test_counters_come_from_cpu_stat_memory_events_and_pids_events(mount: Path) -> None:
    cgroup = SlotCgroupV2(mount, SERVICE)
    assert cgroup.counters() == (None, 0, 0)  # nothing to read yet
    slot = cgroup.dirs["cpu"]
    (slot / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    (slot / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\n")
    (slot / "pids.events").write_text("max 7\n")
    assert cgroup.counters() == (2.5, 1, 7)
    (slot / "cpu.stat").write_text("usage_usec 4000000\n")  # the next look reads them again
    (slot / "pids.events").write_text("max 9\n")
    assert cgroup.counters() == (4.0, 1, 9)


def test_a_removed_slot_keeps_no_descriptor_of_its_counters(mount: Path) -> None:
    cgroup = SlotCgroupV2(mount, SERVICE)
    (cgroup.dirs["cpu"] / "cpu.stat").write_text("usage_usec 1\n")
    before = set(os.listdir("/proc/self/fd"))
    cgroup.counters()
    assert len(set(os.listdir("/proc/self/fd")) - before) == 1  # kept for the next look
    for path in cgroup.dirs["cpu"].iterdir():  # a fake tree: the kernel would drop its files
        path.unlink()
    cgroup.remove()
    assert set(os.listdir("/proc/self/fd")) <= before


def test_the_fork_server_joins_once_for_every_controller_and_is_not_the_jobs(
    mount: Path, writes: list[tuple[str, str]]
) -> None:
    cgroup = SlotCgroupV2(mount, SERVICE)
    slot = cgroup.dirs["memory"]
    del writes[:]
    cgroup.adopt(4321)
    assert writes == [(str(slot / "cgroup.procs"), "4321")]  # one directory for all
    (slot / "cgroup.procs").write_text("4321\n4400\n4401\n")
    assert cgroup.pids() == {4400, 4401}  # what a plain job left: killed, its fork server not
    cgroup.configure(JobLimits(processes=10))
    assert (slot / "pids.max").read_text() == "11"  # the job's 10, and the fork server


def test_a_slot_the_fork_server_cannot_join_drops_its_bounds(
    mount: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cgroup = SlotCgroupV2(mount, SERVICE)

    def write(path: Path, value: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(v2, "write", write)
    with caplog.at_level(logging.WARNING):
        cgroup.adopt(4321)
    assert cgroup.bounds == [] and "Permission denied" in caplog.text


@pytest.mark.parametrize("refused", ["cgroup.subtree_control", "cgroup.procs"])
def test_a_cgroup_not_delegated_gives_no_controller(
    mount: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    refused: str,
) -> None:
    def write(path: Path, value: str) -> None:
        if path.name == refused:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        path.write_text(value)

    monkeypatch.setattr(v2, "write", write)
    monkeypatch.setattr(v2, "own_cgroup", lambda: SERVICE)
    with caplog.at_level(logging.WARNING):
        cgroup = slot_cgroup(mount)
    assert isinstance(cgroup, SlotCgroupV2)
    assert cgroup.bounds == []
    assert cgroup.counters() == (None, 0, 0)
    assert "no cgroup v2 for local jobs" in caplog.text and "Permission denied" in caplog.text
    made = {path.name for path in (mount / SERVICE[1:]).iterdir() if path.is_dir()}
    assert made <= {"concordia-server"}  # no slot


def test_a_bound_that_cannot_be_written_is_dropped(
    mount: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cgroup = SlotCgroupV2(mount, SERVICE)

    def write(path: Path, value: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(v2, "write", write)
    cgroup.configure(JobLimits(memory_mb=64, processes=10))
    assert not cgroup.memory_limited


def test_a_v1_or_hybrid_host_gets_v1(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()  # a tmpfs of v1 hierarchies: no cgroup.controllers
    cgroup = slot_cgroup(tmp_path)
    try:
        assert cgroup.version == 1
    finally:
        cgroup.remove()
