"""A rare stall of the soft provider, forced: a thread waiting in VipRecvWait reads its VI's
stream itself; when what it reads ends the stream (a SEND too big for the posted receive, or
the peer's end of stream), it marks the stream ended and then reports it (the receive's
completion, the VI to ERROR, the callback). The progress thread, seeing the stream ended, stops
and marks the connection failed; had it done that between the two (a busy host, CI stop 20:
server small_recv over inline TCP), the report found the connection "already failed" and was
dropped: the VI stayed CONNECTED, the receive never completed, the wait timed out.

The interleaving is forced (no timing luck): the waiter's report is held until the progress
thread has had every chance to end (joined, up to HOLD_S).
"""

from __future__ import annotations

import threading
import time

import pytest
from test_via_soft_link import _connect, _End

from hsp_rdma import via
from hsp_rdma.via.providers import soft

SERVER_IP, CLIENT_IP = "127.0.0.1", "127.0.0.2"
HOLD_S = 0.5


@pytest.fixture
def pair(monkeypatch):
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    monkeypatch.setenv("HSP_VIA_SOFT_LOCAL", "0")  # every byte inline on TCP, as CI's case
    # The waiter's one poll of the stream spans the whole wait (a loaded host cannot hand
    # the frame to the progress thread in a gap between two of the waiter's polls)
    monkeypatch.setattr(soft, "ACK_TICK_S", 5.0)
    tag = str(time.monotonic_ns())[-8:]
    server, client = _End(f"ss{tag}", SERVER_IP), _End(f"sc{tag}", CLIENT_IP)
    yield server, client
    via.VipCloseNic(client.nic)
    via.VipCloseNic(server.nic)


def _hold_reports(monkeypatch, vi) -> list:
    """VI's stream-failure reports made by a thread other than its progress thread wait
    until the progress thread ended (or HOLD_S passed); the threads that reported, listed."""
    real = soft.Vi._broken
    held: list = []

    def broken(self, conn, *args, **kw):
        if self is vi and threading.current_thread() is not conn.reader:
            held.append(threading.current_thread().name)
            conn.reader.join(HOLD_S)  # the progress thread's turn, as a busy host gives it
        return real(self, conn, *args, **kw)

    monkeypatch.setattr(soft.Vi, "_broken", broken)
    return held


def _connect_pair(server: _End, client: _End) -> None:
    """CLIENT's VI connects to SERVER's (test_via_soft_link's _connect); both CONNECTED."""
    _connect(client, server, 5000)
    assert via.VipQueryVi(server.vi)[0] is via.ViState.CONNECTED


def _wait_in_thread(vi) -> tuple[threading.Thread, list]:
    out: list = []

    def run() -> None:
        try:
            out.append(via.VipRecvWait(vi, 4000))
        except via.VipError as exc:
            out.append(exc)

    t = threading.Thread(target=run, name="stall-test-waiter", daemon=True)
    t.start()
    return t, out


def _until_waiter_reads(conn) -> None:
    deadline = time.monotonic() + 5
    while not conn.waiting:  # (the waiter holds the stream: what comes next, it reads)
        assert time.monotonic() < deadline, "the waiting thread never read the stream"
        time.sleep(0.001)


@pytest.mark.parametrize("end", ["length_error", "peer_closed"])
def test_a_waiter_that_ends_the_stream_reports_it(pair, monkeypatch, end):
    server, client = pair
    via.VipPostRecv(server.vi, server.desc(n=16))
    _connect_pair(server, client)
    conn = server.vi.conn
    held = _hold_reports(monkeypatch, server.vi)
    t, out = _wait_in_thread(server.vi)
    _until_waiter_reads(conn)
    if end == "length_error":
        client.buf[:64] = bytes(range(64))
        via.VipPostSend(client.vi, client.desc(n=64))
    else:
        via.VipDisconnect(client.vi)
    t.join(8)
    assert held == ["stall-test-waiter"], held  # the interleaving of CI's stall was forced
    assert out and not isinstance(out[0], Exception), f"{out} (reports held: {held})"
    d = out[0]
    if end == "length_error":
        assert d.status & via.VIP_STATUS_LENGTH_ERROR, f"0x{d.status:x} {d.reason}"
        assert [e.code for e in server.errors] == ["LENGTH_ERROR"], server.errors
        # the NAK went out: the sender learns why (not only that the stream ended)
        sd = via.VipSendWait(client.vi, 5000)
        assert sd.status & via.VIP_STATUS_ERROR_MASK, hex(sd.status)
        assert "64-byte message" in sd.reason, sd.reason
    else:
        assert d.status & via.VIP_STATUS_DESC_FLUSHED_ERROR, f"0x{d.status:x} {d.reason}"
        assert [e.code for e in server.errors] == ["CONN_LOST"], server.errors
    assert via.VipQueryVi(server.vi)[0] is via.ViState.ERROR
