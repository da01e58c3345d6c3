"""Link emulation of the soft provider (HSP_VIA_SOFT_LINKS_DIR): while DIR/NAME.down exists the
port of soft:NAME is down, as a pulled cable. A connected pair breaks on both sides (descriptors
flushed, CONN_LOST to the error callback), connects from or to the NIC fail, and after the
file is removed a new connection works. Without the variable nothing is watched.

Both NICs live in this process (the pulled one and its peer, which has no file of its own:
its VI breaks because the pulled NIC ends the stream), over the Unix socket the provider moves
a same-host stream to, and over plain TCP (HSP_VIA_SOFT_LOCAL=0).
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from hsp_rdma import via
from hsp_rdma.via.providers import soft

A_IP, B_IP = "127.0.0.1", "127.0.0.2"
DISC = b"link-test"
BREAK_S = 0.5  # a pull breaks the pair within this


@pytest.fixture
def links(tmp_path, monkeypatch):
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    monkeypatch.setenv(soft.LINKS_DIR_ENV, str(tmp_path))
    return tmp_path


class _End:
    """One NIC with one VI, its buffer and the errors its callback saw."""

    def __init__(self, label: str, ip: str):
        self.ip = ip
        self.nic = via.VipOpenNic(f"soft:{label}")
        self.errors: list = []
        via.VipErrorCallback(self.nic, None, lambda _c, e: self.errors.append(e))
        self.ptag = via.VipCreatePtag(self.nic)
        self.buf = bytearray(256)
        self.mh = via.VipRegisterMem(self.nic, self.buf, via.MemAttributes(ptag=self.ptag))
        self.vi = self.new_vi()

    def new_vi(self):
        return via.VipCreateVi(self.nic, via.ViAttributes(ptag=self.ptag))

    def renew_vi(self) -> None:
        """A fresh IDLE VI in place of the old one (disconnected and destroyed)."""
        via.VipDisconnect(self.vi)
        via.VipDestroyVi(self.vi)
        self.vi = self.new_vi()

    def desc(self, off: int = 0, n: int = 64) -> via.VipDescriptor:
        return via.VipDescriptor(segments=[via.DataSegment(via.address_of(self.buf, off),
                                                           self.mh, n)])

    def close(self) -> None:
        via.VipCloseNic(self.nic)


def _labels() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"la{tag}", f"lb{tag}"


def _connect(a: _End, b: _End, timeout_ms: int = 3000) -> None:
    """A's VI connects to B's (B accepts in a thread); raises what the connect raised."""
    got: list = []

    def accept() -> None:
        try:
            req = via.VipConnectWait(b.nic, via.NetAddress(b.ip, DISC), timeout_ms)
            via.VipConnectAccept(req, b.vi)
            got.append(None)
        except via.VipError as exc:
            got.append(exc)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            try:
                via.VipConnectRequest(a.vi, via.NetAddress(a.ip, b""),
                                      via.NetAddress(b.ip, DISC), timeout_ms)
                break
            except via.VipNoMatch:  # B not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    finally:
        t.join(timeout_ms / 1000 + 2)
    if got and got[0] is not None:
        raise got[0]


def _round_trip(a: _End, b: _End) -> None:
    via.VipPostRecv(b.vi, b.desc(128))
    via.VipPostSend(a.vi, a.desc())
    assert not via.VipSendWait(a.vi, 5000).status & via.VIP_STATUS_ERROR_MASK
    assert not via.VipRecvWait(b.vi, 5000).status & via.VIP_STATUS_ERROR_MASK


def _broken(end: _End, timeout_s: float) -> float:
    """Seconds until END's VI is in ERROR (fails after TIMEOUT_S)."""
    t0 = time.monotonic()
    while via.VipQueryVi(end.vi)[0] is not via.ViState.ERROR:
        assert time.monotonic() - t0 < timeout_s, f"{end.nic.name}'s VI is still " \
            f"{via.VipQueryVi(end.vi)[0].name} after {timeout_s} s"
        time.sleep(0.005)
    return time.monotonic() - t0


@pytest.mark.parametrize("path", ["unix", "tcp"])
def test_pull_breaks_both_sides_connects_fail_plug_reconnects(links, monkeypatch, path):
    if path == "tcp":
        monkeypatch.setenv("HSP_VIA_SOFT_LOCAL", "0")
    la, lb = _labels()
    a, b = _End(la, A_IP), _End(lb, B_IP)
    try:
        _connect(a, b)
        _round_trip(a, b)
        via.VipPostRecv(a.vi, a.desc(128))  # posted on both sides: each must complete
        via.VipPostRecv(b.vi, b.desc(128))  # in error when the link goes
        assert soft.system_management_info(a.nic)["phys_state"] == "5: LinkUp"

        (links / f"{la}.down").touch()  # pull a's cable
        took_a = _broken(a, 5)
        took_b = _broken(b, 5)
        assert took_a < BREAK_S and took_a + took_b < BREAK_S, (took_a, took_b)
        print(f"broke: a {took_a * 1000:.0f} ms, b {(took_a + took_b) * 1000:.0f} ms")
        for end in (a, b):
            d = via.VipRecvDone(end.vi)
            assert d is not None and d.status & via.VIP_STATUS_DESC_FLUSHED_ERROR, end.nic.name
            lost = [e for e in end.errors if e.vi is end.vi]
            assert lost and lost[0].code == "CONN_LOST", [(e.code, e.message)
                                                         for e in end.errors]
        assert any(e.code == "PORT_DOWN" and e.vi is None for e in a.errors)
        assert "link pulled" in next(e for e in a.errors if e.vi is a.vi).message
        assert not [e for e in b.errors if e.vi is None]  # b's port is up: only its VI broke
        info = soft.system_management_info(a.nic)
        assert info["phys_state"] == "3: Disabled" and info["counters"]["link_down"] == 1
        with pytest.raises(via.VipInvalidState):
            via.VipPostSend(a.vi, a.desc())

        # while down: connects fail, from it and to it
        for end in (a, b):
            end.renew_vi()
        t0 = time.monotonic()
        with pytest.raises(via.VipNotReachable, match="port is down"):
            via.VipConnectRequest(a.vi, via.NetAddress(A_IP, b""),
                                  via.NetAddress(B_IP, DISC), 2000)
        assert time.monotonic() - t0 < 0.5
        with pytest.raises(via.VipError):  # b to a: a's NIC never takes the request
            _connect(b, a, 1000)
        assert soft.system_management_info(a.nic)["counters"]["link_down_refused"] >= 1
        with pytest.raises(via.VipTimeout):  # nothing arrived on a's side
            via.VipConnectWait(a.nic, via.NetAddress(A_IP, DISC), 100)

        # plugged again: a new pair connects and carries data (both directions)
        (links / f"{la}.down").unlink()
        time.sleep(4 * soft.LINK_POLL_S)
        for end in (a, b):
            end.renew_vi()
        _connect(a, b)
        _round_trip(a, b)
        _round_trip(b, a)
        assert soft.system_management_info(a.nic)["phys_state"] == "5: LinkUp"
        assert soft.system_management_info(a.nic)["counters"]["link_up"] == 1
    finally:
        a.close()
        b.close()


def test_a_nic_opened_while_pulled_starts_down(links):
    la, lb = _labels()
    (links / f"{la}.down").touch()
    a, b = _End(la, A_IP), _End(lb, B_IP)
    try:
        with pytest.raises(via.VipNotReachable, match="port is down"):
            via.VipConnectRequest(a.vi, via.NetAddress(A_IP, b""),
                                  via.NetAddress(B_IP, DISC), 1000)
        (links / f"{la}.down").unlink()
        time.sleep(4 * soft.LINK_POLL_S)
        a.renew_vi()
        _connect(a, b)
        _round_trip(a, b)
    finally:
        a.close()
        b.close()


def test_without_the_variable_nothing_is_watched(tmp_path, monkeypatch):
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    monkeypatch.delenv(soft.LINKS_DIR_ENV, raising=False)
    la, lb = _labels()
    before = {t.name for t in threading.enumerate()}
    a, b = _End(la, A_IP), _End(lb, B_IP)
    try:
        assert a.nic.link_file is None
        assert not [t for t in threading.enumerate()
                    if t.name.startswith("via-soft-link-") and t.name not in before]
        _connect(a, b)
        (tmp_path / f"{la}.down").touch()  # a file nobody looks at
        time.sleep(4 * soft.LINK_POLL_S)
        assert via.VipQueryVi(a.vi)[0] is via.ViState.CONNECTED
        _round_trip(a, b)
        assert not a.errors and not b.errors
    finally:
        a.close()
        b.close()


def test_a_wait_that_times_out_says_where_the_stream_stood(links) -> None:
    """CI once saw a soft receive never complete (server small_recv, inline): a timed-out
    wait now names the VI's state and its stream's, the evidence a repeat would leave."""
    la, lb = _labels()
    a, b = _End(la, A_IP), _End(lb, B_IP)
    try:
        via.VipPostRecv(b.vi, b.desc())
        _connect(a, b)
        with pytest.raises(via.VipTimeout) as err:
            via.VipRecvWait(b.vi, 100)
        msg = str(err.value)
        assert "no receive completed in 100 ms (VI CONNECTED, 1 receive(s) untaken" in msg
        assert "ended=False failed=False closed=False" in msg and "progress thread alive" in msg
    finally:
        a.close()
        b.close()
