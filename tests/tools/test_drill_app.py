"""The drill application end to end on the host, with in-memory P.mem and disk: it runs at the
scenario's rate, every ack reaches the driver's log through a socket, the survivor's copy is
verified against that log, and a node that takes over continues where the ledger stopped."""

from __future__ import annotations

import random
import socket
import threading
from itertools import count, pairwise

import pytest

from hsp_rdma.tools.drills import app
from hsp_rdma.tools.drills.acklog import AckWriter, pump, read_acklog
from hsp_rdma.tools.drills.ledger import (
    LedgerError,
    MemoryDisk,
    MemoryPmem,
    check_ledger,
    check_replay,
    read_journal,
    verify_acked,
)
from hsp_rdma.tools.drills.scenario import Workload, load_scenario, shipped

SPEC = Workload(rate=200, transaction_size=256, targets=("pmem", "disk"), commit="applied",
                accounts=50)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.slept += s


def stop_after(n: int):
    calls = count()
    return lambda: next(calls) >= n


def test_a_drill_run_from_app_to_ack_log_to_verification(tmp_path) -> None:
    pmem, disk = MemoryPmem(1 << 16), MemoryDisk(1 << 20)
    work = app.open_workload(SPEC, pmem, disk, disk.buf)
    driver, node = socket.socketpair()
    log = tmp_path / "acks.log"
    with AckWriter(log) as writer, driver.makefile("rb") as stream:
        pumped: list[int] = []
        t = threading.Thread(target=lambda: pumped.append(pump(stream, writer, "a")))
        t.start()
        fake = FakeTime()
        n = app.run(work, SPEC.rate, app.socket_ack(node), stop_after(300), random.Random(2),
                    fake.clock, fake.sleep)
        node.close()
        t.join(30)
    driver.close()
    assert n == pumped[0] == 300
    assert fake.now == pytest.approx(300 / SPEC.rate)  # paced at the rate
    acked = read_acklog(log).ids
    assert acked == list(range(1, 301))
    assert verify_acked(acked, pmem.buf, disk.buf) == []
    assert check_ledger(pmem.buf) == (True, []) and check_replay(pmem.buf, disk.buf) == []
    # every journal record is transaction_size bytes, as the scenario asked
    assert read_journal(disk.buf)[-1].id == 300 and not any(disk.buf[300 * 256:])

    # the standby's copy lacks the last transfer's P.mem transaction (same transfers, one
    # fewer): that one is reported lost; a node taking over on that copy replays it from the
    # journal and carries on
    standby_pmem = MemoryPmem(len(pmem.buf))
    same = app.open_workload(SPEC, standby_pmem, MemoryDisk(1 << 20))
    app.run(same, SPEC.rate, lambda i: None, stop_after(299), random.Random(2))
    standby_disk = MemoryDisk(len(disk.buf))
    standby_disk.buf[:] = disk.buf
    assert verify_acked(acked, standby_pmem.buf, standby_disk.buf) == [300]
    taken = app.open_workload(SPEC, standby_pmem, standby_disk, standby_disk.buf)
    assert taken.last_id == 300 and bytes(standby_pmem.buf) == bytes(pmem.buf)
    assert verify_acked(acked, standby_pmem.buf, standby_disk.buf) == []
    app.run(taken, SPEC.rate, lambda i: None, stop_after(10), random.Random(3))
    assert taken.last_id == 310 and check_replay(standby_pmem.buf, standby_disk.buf) == []


def test_a_late_transfer_is_not_made_up_for_by_a_burst() -> None:
    fake = FakeTime()
    work = app.open_workload(SPEC, MemoryPmem(1 << 16), MemoryDisk(1 << 20))
    times = []

    def ack(i: int) -> None:
        times.append(fake.now)
        if i == 5:
            fake.now += 1.0  # a one-second blackout inside transfer 5

    app.run(work, 100, ack, stop_after(10), clock=fake.clock, sleep=fake.sleep)
    gaps = [round(b - a, 3) for a, b in pairwise(times)]
    assert gaps[4] == 1.0 and all(g == 0.01 for g in gaps[5:])


def test_every_shipped_workload_fits_a_16_mib_region() -> None:
    for path in shipped():
        spec = load_scenario(path).workload
        work = app.open_workload(spec, MemoryPmem(16 << 20), MemoryDisk(64 << 20))
        app.run(work, spec.rate, lambda i: None, stop_after(3), random.Random(1))
        assert work.last_id == 3


def test_what_the_node_must_give() -> None:
    with pytest.raises(LedgerError, match="targets name pmem, but the node gave no P.mem"):
        app.open_workload(SPEC, None, MemoryDisk(100))
    with pytest.raises(LedgerError, match="targets name disk, but the node gave no disk"):
        app.open_workload(SPEC, MemoryPmem(1 << 16), None)
    with pytest.raises(LedgerError, match="holds no ledger of 50 accounts"):
        app.open_workload(SPEC, MemoryPmem(1000), MemoryDisk(100))
    pmem = MemoryPmem(1 << 16)
    app.open_workload(SPEC, pmem, MemoryDisk(1 << 16))
    other = Workload(100, 256, ("pmem",), "applied", accounts=10)
    with pytest.raises(LedgerError, match="a ledger of 50 accounts, the scenario asks for 10"):
        app.open_workload(other, pmem, None)
