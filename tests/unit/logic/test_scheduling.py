"""The fair-share rule alone: who gets a backend's slots when users wait."""

from __future__ import annotations

from concordia.logic.scheduling import FairShare

ALICE, BOB = 1, 2


def test_one_users_thousands_do_not_keep_anothers_job_waiting() -> None:
    """One slot, each job ending before the next round: Bob's one job, queued behind 200 of
    Alice's, goes at the first or second round, not after her 200."""
    waiting = [(job_id, ALICE) for job_id in range(1, 201)] + [(201, BOB)]
    share = FairShare()
    order: list[int] = []
    while waiting:
        [chosen] = share.choose(waiting, room=1, held={}, limit=0).chosen
        order.append(chosen)
        waiting = [pair for pair in waiting if pair[0] != chosen]
    assert order.index(201) <= 1
    assert [job for job in order if job != 201] == list(range(1, 201))  # hers oldest first


def test_slots_go_to_whoever_holds_fewest() -> None:
    """Alice holds three slots already: the next three go to Bob, each user's oldest first."""
    waiting = [(1, ALICE), (2, ALICE), (10, BOB), (11, BOB), (12, BOB)]
    choice = FairShare().choose(waiting, room=3, held={ALICE: 3}, limit=0)
    assert choice.chosen == [10, 11, 12]
    assert choice.held_back == []


def test_running_limit_holds_a_users_extra_jobs_back() -> None:
    waiting = [(1, ALICE), (2, ALICE), (3, ALICE), (4, BOB)]
    choice = FairShare().choose(waiting, room=4, held={ALICE: 1}, limit=2)
    assert sorted(choice.chosen) == [1, 4]
    assert choice.held_back == [2, 3]
