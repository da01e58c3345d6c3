"""A SIGSTOPped peer over the soft provider: its kernel still takes our bytes, its provider
acknowledges nothing; our send must not hang: after ACK_TIMEOUT_MS without acknowledgement
progress it completes with TRANSPORT_ERROR, the VI goes to ERROR and the error callback is
told (as RC retry exhaustion does on verbs). A silent peer with nothing in flight is no error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from hsp_rdma import via
from hsp_rdma.tools.soft_bench import ECHO_DISC, ECHO_IP, PING_IP
from hsp_rdma.via.providers import soft

TIMEOUT_MS = 1000


@pytest.fixture
def echo(monkeypatch):
    base = soft.random_port_base()
    monkeypatch.setattr(soft, "PORT_BASE", base)
    monkeypatch.setattr(soft, "ACK_TIMEOUT_MS", TIMEOUT_MS)
    monkeypatch.setattr(soft, "ACK_TICK_S", 0.1)
    env = dict(os.environ, HSP_VIA_SOFT_PORT_BASE=str(base))
    p = subprocess.Popen([sys.executable, "-m", "hsp_rdma.tools.soft_bench", "echo-soft",
                          ECHO_IP, "64", "1000"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    yield p
    p.send_signal(signal.SIGCONT)
    p.kill()
    p.wait()


def _connected(nic):
    ptag = via.VipCreatePtag(nic)
    buf = bytearray(128)
    mh = via.VipRegisterMem(nic, buf, via.MemAttributes(ptag=ptag))
    vi = via.VipCreateVi(nic, via.ViAttributes(ptag=ptag))
    deadline = time.monotonic() + 15
    while True:
        try:
            via.VipConnectRequest(vi, via.NetAddress(PING_IP, b""),
                                  via.NetAddress(ECHO_IP, ECHO_DISC), 2000)
            break
        except (via.VipNoMatch, via.VipNotReachable):
            assert time.monotonic() < deadline, "the echo process never listened"
            time.sleep(0.05)
    send = via.VipDescriptor(segments=[via.DataSegment(via.address_of(buf), mh, 64)])
    recv = via.VipDescriptor(segments=[via.DataSegment(via.address_of(buf, 64), mh, 64)])
    return vi, send, recv


def test_send_to_a_stopped_peer_fails_after_the_ack_timeout(echo):
    assert soft.USER_TIMEOUT_MS == 4000  # the documented default of ACK_TIMEOUT_MS
    nic = via.VipOpenNic("soft:stopped-test")
    errors = []
    via.VipErrorCallback(nic, None, lambda _ctx, err: errors.append(err))
    try:
        vi, send, recv = _connected(nic)
        via.VipPostRecv(vi, recv)  # one round trip: the peer is alive
        via.VipPostSend(vi, send)
        assert via.VipRecvWait(vi, 5000).status & via.VIP_STATUS_DONE
        assert not via.VipSendWait(vi, 5000).status & via.VIP_STATUS_ERROR_MASK
        time.sleep(2.5 * TIMEOUT_MS / 1000)  # silent, nothing in flight: no error
        assert via.VipQueryVi(vi)[0] is via.ViState.CONNECTED, [e.message for e in errors]
        assert not errors, [e.message for e in errors]
        via.VipPostRecv(vi, recv)  # flushed when the VI breaks
        echo.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        via.VipPostSend(vi, send)
        done = via.VipSendWait(vi, 10 * TIMEOUT_MS)
        took = time.monotonic() - t0
        assert done.status & via.VIP_STATUS_TRANSPORT_ERROR, hex(done.status)
        assert TIMEOUT_MS / 1000 <= took < TIMEOUT_MS / 1000 + 3.0, took
        assert via.VipQueryVi(vi)[0] is via.ViState.ERROR
        assert [e.code for e in errors] == ["TRANSPORT_ERROR"], [e.message for e in errors]
        assert "sent and acknowledged nothing" in errors[0].message
        assert nic.counters["ack_timeouts"] == 1
        with pytest.raises(via.VipInvalidState, match="ERROR"):
            via.VipPostSend(vi, send)
        assert via.VipRecvDone(vi).status & via.VIP_STATUS_DESC_FLUSHED_ERROR
        via.VipDisconnect(vi)
        assert via.VipQueryVi(vi)[0] is via.ViState.IDLE
    finally:
        via.VipCloseNic(nic)
