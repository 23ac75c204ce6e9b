"""The relay's reading of the status history: ids that commit late are still relayed."""

from __future__ import annotations

from typing import Any, cast

from concordia.logic.relay import Relay


def test_ids_skipped_are_looked_for_again_until_they_come() -> None:
    relay = Relay(cast(Any, None))
    relay._last = 10
    relay._note([11, 14])  # 12 and 13: transactions that have not committed yet
    assert relay._last == 14
    assert set(relay._gaps) == {12, 13}
    relay._note([13, 15])  # 13 committed meanwhile
    assert relay._last == 15
    assert set(relay._gaps) == {12}


def test_ids_never_seen_are_given_up_after_a_while(monkeypatch: Any) -> None:
    relay = Relay(cast(Any, None))
    relay._last = 0
    clock = [1000.0]
    monkeypatch.setattr("concordia.logic.relay.time.monotonic", lambda: clock[0])
    relay._note([3])
    assert set(relay._gaps) == {1, 2}
    clock[0] += 31  # a rolled-back transaction's ids never come
    relay._note([4])
    assert relay._gaps == {}
