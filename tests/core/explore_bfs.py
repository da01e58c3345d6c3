"""The breadth-first search both protocol explorers run (test_gso_explorer, test_failover_explorer).

A world has ``key()``; ``expand(world)`` checks it and returns its moves as (label, next world,
is_progress); a world with no progress move is terminal and goes to ``terminal(world)``. A
failure in either is re-raised as ``violation`` with the trace of moves that led there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable


def search(start, expand: Callable[[object], Iterable[tuple[str, object, bool]]],
           terminal: Callable[[object], None], violation: type[Exception],
           limit: int) -> int:
    """Every world reachable from START, each once; returns how many there were."""
    seen = {start.key()}
    parents: dict = {}
    queue = deque([start])
    states = 0

    def trace(key) -> str:
        steps = []
        while key in parents:
            key, label = parents[key]
            steps.append(label)
        return "\n  ".join(reversed(steps))

    while queue:
        w = queue.popleft()
        states += 1
        assert states <= limit, "state space larger than expected"
        wkey = w.key()
        try:
            successors = expand(w)
        except Exception as exc:
            raise violation(f"{exc}\ntrace:\n  {trace(wkey)}") from exc
        progress = False
        for label, nxt, is_progress in successors:
            progress |= is_progress
            k = nxt.key()
            if k not in seen:
                seen.add(k)
                parents[k] = (wkey, label)
                queue.append(nxt)
        if not progress:
            try:
                terminal(w)
            except violation as exc:
                raise violation(f"{exc}\ntrace:\n  {trace(wkey)}") from exc
    return states
