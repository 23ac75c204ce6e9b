"""Fair share of a backend's slots between users: whose waiting jobs go next, who must wait."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class Choice:
    """The jobs to hand over, in that order, and those held back by their owner's limit."""

    chosen: list[int] = field(default_factory=list)
    held_back: list[int] = field(default_factory=list)


def user_limit_minor(limit: int) -> str:
    """The minor status of a job whose owner has as many jobs running as they may."""
    return f"Waiting: user limit of {limit} running jobs"


class FairShare:
    """Round-robin between owners, per backend: the next slot goes to the owner holding the
    fewest of its slots, among equals to the one served longest ago (never served: first),
    each owner's oldest job first. Oldest-first over the whole queue let one user's thousands
    of jobs keep another's single job waiting for hours.

    Who was served when is kept in memory: a restart only restarts the rotation, and the
    slots each owner holds, the main key, come from the database."""

    def __init__(self) -> None:
        self._served: dict[int, int] = {}
        self._turn = 0

    def choose(
        self,
        waiting: Iterable[tuple[int, int]],
        room: int,
        held: Mapping[int, int],
        limit: int,
    ) -> Choice:
        """Up to ``room`` of the ``waiting`` (job id, owner id) pairs. ``held``: the jobs each
        owner has in the backend now; ``limit``: the most one owner may have (0: no limit).
        The waiting jobs of an owner at their limit are held back."""
        queues: dict[int, deque[int]] = {}
        for job_id, owner in sorted(waiting):
            queues.setdefault(owner, deque()).append(job_id)
        holding = {owner: held.get(owner, 0) for owner in queues}
        choice = Choice()
        while len(choice.chosen) < room:
            open_ = [o for o, q in queues.items() if q and not 0 < limit <= holding[o]]
            if not open_:
                break
            owner = min(open_, key=lambda o: (holding[o], self._served.get(o, -1), queues[o][0]))
            choice.chosen.append(queues[owner].popleft())
            holding[owner] += 1
            self._turn += 1
            self._served[owner] = self._turn
        if limit:
            choice.held_back = [j for o, q in queues.items() if holding[o] >= limit for j in q]
        return choice
