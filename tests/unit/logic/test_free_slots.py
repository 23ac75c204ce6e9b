"""When a worker adopts a free slot's jobs: only once the slot has been free for a while."""

from __future__ import annotations

from concordia.logic.adoption import FreeSlots


def test_a_slot_is_settled_once_free_long_enough_and_anew_after_it_was_taken() -> None:
    free = FreeSlots(after=3.0)
    assert free.settled({1, 2}, set(), now=10.0) == (set(), 3.0)  # first seen free
    assert free.settled({1}, set(), now=12.0) == (set(), 1.0)
    assert free.settled({1, 2}, set(), now=13.0) == ({1, 2}, None)
    assert free.settled(set(), {2}, now=14.0) == (set(), None)  # slot 2 taken by a new worker
    assert free.settled({2}, set(), now=15.0) == (set(), 3.0)  # and free again: seen anew
    assert free.settled({2}, set(), now=18.0) == ({2}, None)


def test_a_slot_not_settled_always_has_a_wait() -> None:
    """Reckoned as of the same moment: a slot whose time is not quite up is waited for, however
    little is left (the look after may come a moment early, or take a while)."""
    free = FreeSlots(after=3.0)
    free.settled({1}, set(), now=10.0)
    settled, wait = free.settled({1}, set(), now=12.9999999)
    assert settled == set() and wait is not None and 0 < wait < 1e-6


def test_with_no_wait_a_free_slot_is_settled_at_once() -> None:
    """One worker at a time (SQLite): a lock that goes only with its process."""
    free = FreeSlots(after=0.0)
    assert free.settled({1}, set(), now=5.0) == ({1}, None)
