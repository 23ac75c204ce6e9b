"""The relay's reading of the status history: ids that commit late are still relayed."""

from __future__ import annotations

from typing import Any

from concordia.logic.relay import HistoryCursor


def test_ids_skipped_are_looked_for_again_until_they_come() -> None:
    cursor = HistoryCursor(last=10)
    cursor.note([11, 14])  # 12 and 13: transactions that have not committed yet
    assert cursor.last == 14
    assert set(cursor.gaps) == {12, 13}
    cursor.note([13, 15])  # 13 committed meanwhile
    assert cursor.last == 15
    assert set(cursor.gaps) == {12}


def test_ids_never_seen_are_given_up_after_a_while(monkeypatch: Any) -> None:
    cursor = HistoryCursor(last=0)
    clock = [1000.0]
    monkeypatch.setattr("concordia.logic.relay.time.monotonic", lambda: clock[0])
    cursor.note([3])
    assert set(cursor.gaps) == {1, 2}
    clock[0] += 31  # a rolled-back transaction's ids never come
    cursor.note([4])
    assert cursor.gaps == {}
