"""Connection set-up that survives a loaded host: attempts retried until a deadline.

On siw under load a connect may be refused, find nothing listening yet, come up and then bring
nothing, or break before the peer's first message; each of those is worth another attempt
while time is left. What cannot get better by trying again (a bad parameter, a peer that
speaks another protocol) ends the attempts at once. The final error names how many attempts
were made and the last failure, so a connect that gave up says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from hsp_rdma import via

T = TypeVar("T")
HELLO_WAIT_S = 20.0  # a new connection whose peer says nothing in this time is made again
ATTEMPT_S = 30.0  # one connect attempt (resolve, route, handshake) at most; then another
RETRY_PAUSE_S = 0.3
# VIA failures that another attempt cannot mend: the caller's input is wrong.
PERMANENT = (via.VipInvalidParameter, via.VipInvalidReliabilityLevel, via.VipNotSupported)


class Attempts:
    """Failed attempts at one connection: how many, and the last failure."""

    def __init__(self) -> None:
        self.count = 0
        self.last: BaseException | None = None

    def failed(self, exc: BaseException) -> None:
        self.count += 1
        self.last = exc

    def __str__(self) -> str:
        if self.last is None:
            return "no attempt failed"
        return f"{self.count} failed attempt(s), the last: {self.last}"


def retry_until(attempt: Callable[[float], T], deadline: float, *, clock: Callable[[], float],
                retry_on: tuple[type[BaseException], ...], reset: Callable[[], None],
                give_up: Callable[[Attempts], BaseException],
                failed: Callable[[BaseException], None] = lambda exc: None,
                pause_s: float = RETRY_PAUSE_S) -> T:
    """ATTEMPT(seconds left) until it returns; on a RETRY_ON failure (a PERMANENT VIA one
    excepted) FAILED(exc), RESET() and try again after PAUSE_S while DEADLINE (on CLOCK)
    allows, else raise GIVE_UP(attempts), chained to the last failure."""
    attempts = Attempts()
    while True:
        left = deadline - clock()
        if left > 0:
            try:
                return attempt(left)
            except PERMANENT:
                reset()
                raise
            except retry_on as exc:
                attempts.failed(exc)
                failed(exc)
                reset()
        if clock() + pause_s >= deadline:
            raise give_up(attempts) from attempts.last
        time.sleep(pause_s)

