"""What the host tests of two nodes or engines over the soft provider share: start both side by
side (each start waits for the other), run a call in a thread and keep its outcome."""

from __future__ import annotations

import threading
from collections.abc import Iterable


def start_nodes(nodes: Iterable, timeout_s: float = 40.0) -> list[BaseException]:
    """``start()`` each of NODES in its own thread; what they raised (and a start still
    running after TIMEOUT_S, as an error)."""
    errors: list[BaseException] = []

    def start(n) -> None:
        try:
            n.start()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    if any(t.is_alive() for t in threads):
        errors.append(TimeoutError(f"a node did not start in {timeout_s:g} s"))
    return errors


def in_thread(fn, *args):
    """FN(*ARGS) in a daemon thread: the thread and a box that gets ``result`` or ``error``."""
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box
