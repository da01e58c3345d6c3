"""The drills' HA application on the active: the ledger workload built from a scenario's
[workload] on the node's P.mem and disk (formatted when empty, recovered when the node took
over), run at the scenario's rate, each transfer acknowledged to the driver once applied."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable

from hsp_rdma.tools.drills.acklog import ack_line
from hsp_rdma.tools.drills.ledger import (
    HEADER_SIZE,
    Buffer,
    DiskSink,
    Ledger,
    LedgerError,
    LedgerWorkload,
    TransactionSink,
    ledger_size,
    memo_size_for,
)
from hsp_rdma.tools.drills.scenario import Workload

MEMO_SLOTS = 64  # enough that successive transfers write different memo pages
INITIAL_BALANCE = 1_000_000


def open_workload(spec: Workload, pmem: TransactionSink | None, disk: DiskSink | None,
                  disk_content: Buffer | None = None) -> LedgerWorkload:
    """The workload on this node: a ledger in P.mem (formatted when the region is empty,
    else opened and checked) and the journal continued after ``disk_content`` (the disk's
    bytes as this node has them), made to agree after an interrupted transfer."""
    ledger = None
    if "pmem" in spec.targets:
        if pmem is None:
            raise LedgerError("the workload's targets name pmem, but the node gave no P.mem")
        ledger = _ledger(spec, pmem)
    if "disk" in spec.targets and disk is None:
        raise LedgerError("the workload's targets name disk, but the node gave no disk")
    return LedgerWorkload.recover(ledger, disk if "disk" in spec.targets else None,
                                  disk_content, record_size=spec.transaction_size,
                                  accounts=spec.accounts)


def _ledger(spec: Workload, pmem: TransactionSink) -> Ledger:
    view = pmem.view()
    if any(view[:HEADER_SIZE]):
        ledger = Ledger.open(pmem, spec.commit)
        if ledger.header.accounts != spec.accounts:
            raise LedgerError(f"P.mem holds a ledger of {ledger.header.accounts} accounts, the "
                              f"scenario asks for {spec.accounts}: start from an empty region")
        return ledger
    memo = memo_size_for(spec.transaction_size)
    room = len(view) - ledger_size(spec.accounts)
    slots = min(MEMO_SLOTS, room // memo) if memo else 0
    if memo and slots < 1:
        raise LedgerError(f"P.mem of {len(view)} B holds no ledger of {spec.accounts} accounts "
                          f"with {spec.transaction_size} B transactions: fewer accounts, "
                          "smaller transactions or a larger region")
    return Ledger.format(pmem, spec.accounts, INITIAL_BALANCE, memo, slots, spec.commit)


class Gate:
    """Where a Graceful Switch Over freezes the workload: ``run`` passes it before each
    transfer. ``freeze()`` closes it and returns once no transfer is in progress (one in
    flight finishes first, committed and acknowledged), so the state behind it holds still
    until ``thaw()``; a workload not running is frozen at once."""

    POLL_S = 0.05  # a parked workload looks at its stop condition this often

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._frozen = False
        self._busy = False  # a transfer is between its start and its ack
        self.freezes = 0

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        with self._cv:
            self._frozen = True
            self.freezes += 1
            while self._busy:
                self._cv.wait()

    def thaw(self) -> None:
        with self._cv:
            self._frozen = False
            self._cv.notify_all()

    def enter(self, stop: Callable[[], bool]) -> bool:
        """Wait while frozen; then mark a transfer in progress. False when STOP() came
        first (nothing marked)."""
        with self._cv:
            while self._frozen:
                if stop():
                    return False
                self._cv.wait(self.POLL_S)
            if stop():
                return False
            self._busy = True
            return True

    def leave(self) -> None:
        with self._cv:
            self._busy = False
            self._cv.notify_all()


def run(workload: LedgerWorkload, rate: int, ack: Callable[[int], None],
        stop: Callable[[], bool], rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep, gate: Gate | None = None) -> int:
    """Transfers at up to ``rate`` per second until ``stop()``; ``ack(id)`` after each one
    is applied. A transfer that took long (a blackout, a freeze at GATE) is not made up for
    by a burst: the rate is the offered load. Returns how many were acknowledged."""
    rng = rng or random.Random()
    period = 1.0 / rate
    due = clock()
    count = 0
    while not stop():
        if gate is not None and not gate.enter(stop):
            break
        try:
            t = workload.random_transfer(rng)
            workload.apply(t)
            ack(t.id)
        finally:
            if gate is not None:
                gate.leave()
        count += 1
        due += period
        late = due - clock()
        if late > 0:
            sleep(late)
        else:
            due = clock()
    return count


def socket_ack(sock: socket.socket) -> Callable[[int], None]:
    """``ack`` for ``run`` that sends each id to the driver's ack log (acklog.pump)."""
    return lambda transfer_id: sock.sendall(ack_line(transfer_id))
