"""The driver's ack log on the host: what a workload sends is logged as it arrives and is still
there when the writer dies; a torn last line is dropped (and said), a damaged line elsewhere
is an error naming file and line; the blackout comes from the logged times."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading

import pytest

from hsp_rdma.tools.drills import acklog
from hsp_rdma.tools.drills.acklog import (
    FILE_HEADER,
    Ack,
    AckLogError,
    AckWriter,
    ack_line,
    blackout_ms,
    parse_acklog,
    pump,
    read_acklog,
)


def test_written_acks_read_back_in_order(tmp_path) -> None:
    path = tmp_path / "acks.log"
    with AckWriter(path) as w:
        for i in range(1, 6):
            w.append(Ack(i, 1000 * i, "a"))
    with AckWriter(path) as w:  # reopened: appends, no second header
        w.append(Ack(6, 6000, "b"))
    log = read_acklog(path)
    assert log.ids == [1, 2, 3, 4, 5, 6] and log.torn is None
    assert log.acks[-1] == Ack(6, 6000, "b")
    assert path.read_text().count(FILE_HEADER) == 1


def test_a_torn_last_line_is_dropped_and_said(tmp_path) -> None:
    path = tmp_path / "acks.log"
    path.write_text(f"{FILE_HEADER}\n1 10 a\n2 20 a\n3 3")
    log = read_acklog(path)
    assert log.ids == [1, 2] and "torn last line '3 3'" in log.torn
    assert parse_acklog(FILE_HEADER[:7]).acks == ()  # cut inside the header
    assert parse_acklog("").acks == ()


@pytest.mark.parametrize(("text", "where"), [
    (f"{FILE_HEADER}\n1 10 a\n2 x a\n3 30 a\n", "acks.log:3: damaged ack line '2 x a'"),
    (f"{FILE_HEADER}\n1 10 a\n\n3 30 a\n", "acks.log:3: damaged ack line ''"),
    ("something else\n1 10 a\n", "acks.log:1: not an ack log"),
])
def test_a_damaged_line_is_an_error_naming_file_and_line(tmp_path, text, where) -> None:
    path = tmp_path / "acks.log"
    path.write_text(text)
    with pytest.raises(AckLogError, match=where):
        read_acklog(path)


def test_the_log_survives_a_writer_killed_without_closing(tmp_path) -> None:
    """Each line is one write(2): a driver (or workload relay) killed mid-run leaves every
    line it had appended."""
    path = tmp_path / "acks.log"
    code = ("import os, sys\nfrom hsp_rdma.tools.drills.acklog import Ack, AckWriter\n"
            f"w = AckWriter({str(path)!r})\n"
            "for i in range(1, 101):\n    w.append(Ack(i, i, 'a'))\nos._exit(9)\n")
    res = subprocess.run([sys.executable, "-c", code], timeout=60, check=False)
    assert res.returncode == 9
    assert read_acklog(path).ids == list(range(1, 101))


@pytest.mark.parametrize(("policy", "syncs"), [("none", 0), ("always", 4), ("interval", 2)])
def test_fsync_policies(tmp_path, monkeypatch, policy, syncs) -> None:
    calls = []
    monkeypatch.setattr(acklog.os, "fsync", lambda fd: calls.append(fd))
    ticks = iter([0.0, 0.05, 0.2, 0.25, 0.3])  # at open, then one per append
    with AckWriter(tmp_path / "a.log", fsync=policy, interval_s=0.1,
                   clock=lambda: next(ticks)) as w:
        for i in range(1, 4):
            w.append(Ack(i, i, "a"))
    # interval: the append at 0.2 (0.2 s since open) and the close
    assert len(calls) == syncs
    with pytest.raises(AckLogError, match="use one of none, always, interval"):
        AckWriter(tmp_path / "b.log", fsync="sometimes")


def test_bad_input_to_the_writer(tmp_path) -> None:
    with pytest.raises(AckLogError, match="cannot open the ack log"):
        AckWriter(tmp_path / "no" / "such" / "dir.log")
    w = AckWriter(tmp_path / "a.log")
    with pytest.raises(AckLogError, match="node names are"):
        w.append(Ack(1, 1, "a b"))
    w.close()
    w.close()  # a second close does nothing
    with pytest.raises(AckLogError, match="closed"):
        w.append(Ack(1, 1, "a"))


def test_pump_logs_acks_from_a_socket_and_drops_a_cut_last_one(tmp_path) -> None:
    """The workload's node dies mid-send: the cut line is no acknowledgement."""
    driver, workload = socket.socketpair()
    clock = iter(range(100, 10_000, 100))
    with AckWriter(tmp_path / "a.log") as w:
        t = threading.Thread(target=lambda: workload.sendall(
            b"".join(ack_line(i) for i in range(1, 51)) + b"ack 5"))
        t.start()
        t.join(10)
        workload.close()
        with driver.makefile("rb") as stream:
            assert pump(stream, w, "a", clock=lambda: next(clock)) == 50
    driver.close()
    log = read_acklog(tmp_path / "a.log")
    assert log.ids == list(range(1, 51)) and log.acks[0] == Ack(1, 100, "a")


@pytest.mark.parametrize(("sent", "says"), [
    (b"ack 1\nnack 2\n", "the workload sent b'nack 2\\n', not an ack line"),
    (b"ack " + b"9" * 100 + b"\n", "longer than 64 B"),
])
def test_pump_refuses_what_is_not_an_ack(tmp_path, sent, says) -> None:
    driver, workload = socket.socketpair()
    workload.sendall(sent)
    workload.close()
    with (AckWriter(tmp_path / "a.log") as w, driver.makefile("rb") as stream,
          pytest.raises(AckLogError, match=re.escape(says))):
        pump(stream, w, "a")
    driver.close()


def test_blackout_is_last_ack_before_to_first_ack_after() -> None:
    acks = [Ack(1, 1_000_000, "a"), Ack(2, 2_000_000, "a"), Ack(3, 9_500_000, "b"),
            Ack(4, 9_600_000, "b")]
    assert blackout_ms(acks, fault_ns=2_500_000) == 7.5
    assert blackout_ms(acks, fault_ns=10_000_000) is None  # nothing after: never came back
    assert blackout_ms([], fault_ns=0) is None


def test_the_log_file_is_plain_lines(tmp_path) -> None:
    with AckWriter(tmp_path / "a.log") as w:
        w.append(Ack(7, 123, "node-1"))
    assert (tmp_path / "a.log").read_text() == f"{FILE_HEADER}\n7 123 node-1\n"


def test_blackout_of_a_pulled_cable_is_the_stop_that_follows_the_fault() -> None:
    """Acks go on for a moment after a cable is pulled (until the loss is seen): the blackout
    is the longest stop from the last ack before the fault on, not the first gap."""
    ms = 1_000_000
    acks = [Ack(i, t * ms, "a") for i, t in enumerate((1, 2, 3, 4, 1104, 1105, 1106), 1)]
    assert blackout_ms(acks, fault_ns=int(2.5 * ms)) == 1100.0
