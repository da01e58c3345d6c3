"""A hostile peer on the soft provider's TCP transport (host): garbage, a stream closed in the
middle of a frame, memory handles and ranges it was never given, rights it does not have.

Every attack is refused and counted by kind (VipQuerySystemManagementInfo counters), nothing
outside a registered, permitted region is written (the victim's memory is compared byte for
byte), nothing outside a readable region is sent, and the victim's VI goes to ERROR with the
error callback, as on verbs. The attacker speaks the wire by hand (soft.frame, soft.HDR).
"""

from __future__ import annotations

import mmap
import os
import random
import socket
import threading
import time

import pytest

from hsp_rdma import via
from hsp_rdma.via.providers import soft

LOCAL = "127.0.0.1"
PAGE = 4096
FILL = 0xAA
DISC = b"victim"


class Victim:
    """A soft NIC with one ptag-protected 4-page mmap: page 1 registered with remote write and
    read, page 2 without remote rights, page 3 under another ptag (write+read); page 0 is not
    registered. One VI (RDMA write/read enabled, two 64-byte receives posted) accepts."""

    def __init__(self):
        self.nic = via.VipOpenNic("soft:victim")
        self.errors: list = []
        via.VipErrorCallback(self.nic, lambda _c, e: self.errors.append(e))
        self.ptag = via.VipCreatePtag(self.nic)
        self.other = via.VipCreatePtag(self.nic)
        self.mem = mmap.mmap(-1, 4 * PAGE)
        self.mem[:] = bytes([FILL]) * (4 * PAGE)
        self.view = memoryview(self.mem)
        rw = via.MemAttributes(ptag=self.ptag, enable_rdma_write=True, enable_rdma_read=True)
        self.h_rw = via.VipRegisterMem(self.nic, self.view[PAGE:2 * PAGE], rw)
        self.h_none = via.VipRegisterMem(self.nic, self.view[2 * PAGE:3 * PAGE],
                                         via.MemAttributes(ptag=self.ptag))
        self.h_other = via.VipRegisterMem(self.nic, self.view[3 * PAGE:], via.MemAttributes(
            ptag=self.other, enable_rdma_write=True, enable_rdma_read=True))
        self.base = via.address_of(self.mem)
        self.rbuf = bytearray([FILL]) * 256
        self.h_r = via.VipRegisterMem(self.nic, self.rbuf, via.MemAttributes(ptag=self.ptag))
        self.vi = via.VipCreateVi(self.nic, via.ViAttributes(
            ptag=self.ptag, enable_rdma_write=True, enable_rdma_read=True))
        for i in range(2):
            via.VipPostRecv(self.vi, via.VipDescriptor(segments=[via.DataSegment(
                via.address_of(self.rbuf, i * 64), self.h_r, 64)]))
        self.accept_error: Exception | None = None
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        try:
            req = via.VipConnectWait(self.nic, via.NetAddress(LOCAL, DISC), 5000)
            via.VipConnectAccept(req, self.vi)
        except via.VipError as exc:
            self.accept_error = exc

    def addr(self, page: int, off: int = 0) -> int:
        return self.base + page * PAGE + off

    def counters(self) -> dict:
        return via.VipQuerySystemManagementInfo(self.nic)["counters"]

    def wait_error(self, timeout_s: float = 3) -> None:
        t0 = time.monotonic()
        while (self.vi.state is not via.ViState.ERROR or not self.errors) \
                and time.monotonic() - t0 < timeout_s:
            time.sleep(0.01)

    def close(self) -> None:
        via.VipCloseNic(self.nic)


@pytest.fixture
def victim(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    monkeypatch.setattr(soft, "HANDSHAKE_S", 0.5)
    v = Victim()
    yield v
    v.close()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        got = s.recv(n - len(out))
        if not got:
            raise EOFError(f"stream ended after {len(out)} of {n} bytes")
        out += got
    return out


def raw_connect(disc: bytes = DISC) -> socket.socket:
    """A TCP connection to the victim's listener (retried until it is up)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return socket.create_connection((LOCAL, soft.port_of(disc)), timeout=5)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the victim never listened"
            time.sleep(0.02)


def attacker(disc: bytes = DISC) -> socket.socket:
    """A raw TCP peer that completes the handshake like a VI would."""
    s = raw_connect(disc)
    s.sendall(soft.frame(soft.HELLO, seq=soft.VERSION, rkey=int(via.Reliability.RELIABLE_DELIVERY),
                         value=soft.EN_WRITE | soft.EN_READ, length=len(disc)) + disc)
    h = soft.HDR.unpack(_recv_exact(s, soft.HDR.size))
    assert h[1] == soft.ACCEPT, h
    s.sendall(soft.frame(soft.READY))
    return s


def answers(s: socket.socket, timeout_s: float = 3) -> list[tuple]:
    """Every frame the victim sends until it closes: (type, seq, value, payload)."""
    s.settimeout(timeout_s)
    out = []
    try:
        while True:
            h = soft.HDR.unpack(_recv_exact(s, soft.HDR.size))
            out.append((h[1], h[3], h[6], _recv_exact(s, h[7])))
    except (EOFError, ConnectionResetError):
        pass
    s.close()
    return out


def naks(frames: list[tuple]) -> list[tuple]:
    return [f for f in frames if f[0] == soft.NAK]


def expect_refused(v: Victim, frames: list[tuple], counter: str, code: str) -> None:
    v.wait_error()
    assert v.counters().get(counter) == 1, v.counters()
    assert v.vi.state is via.ViState.ERROR, v.vi.state
    assert [e.code for e in v.errors] == [code], [(e.code, e.message) for e in v.errors]
    nak = naks(frames)
    assert len(nak) == 1 and nak[0][2] == via.VIP_STATUS_RDMA_PROT_ERROR, frames
    assert not [f for f in frames if f[0] == soft.READ_RESP], "data left the victim"
    assert v.errors[0].message.encode()[:100] in nak[0][3], (v.errors[0].message, nak)


def untouched(v: Victim, allowed: tuple[int, bytes] | None = None) -> None:
    """The victim's memory is as filled, but for ALLOWED = (offset, bytes)."""
    want = bytearray([FILL]) * (4 * PAGE)
    if allowed is not None:
        want[allowed[0]:allowed[0] + len(allowed[1])] = allowed[1]
    got = bytes(v.mem)
    if got != want:
        first = next(i for i in range(len(got)) if got[i] != want[i])
        pytest.fail(f"victim memory changed at offset {first} (page {first // PAGE})")
    assert v.rbuf == bytearray([FILL]) * 256, "a receive buffer was written"


WRITES = {
    # name: (handle, page, offset, length) -> counter
    "unknown_handle": (lambda v: 0x5EED_0001 if 0x5EED_0001 not in v.nic.regions
                       else 0x5EED_0002, 1, 0, 64, "refused_handle"),
    "past_the_end": (lambda v: v.h_rw, 1, PAGE - 8, 64, "refused_range"),
    "before_the_start": (lambda v: v.h_rw, 0, PAGE - 8, 16, "refused_range"),
    "whole_address_space": (lambda v: v.h_rw, 1, 0, 0xFFFF_FFFF, "refused_range"),
    "no_write_right": (lambda v: v.h_none, 2, 0, 64, "refused_permission"),
    "other_ptag": (lambda v: v.h_other, 3, 0, 64, "refused_ptag"),
}


@pytest.mark.parametrize("name", sorted(WRITES))
def test_rdma_write_outside_what_was_given(victim: Victim, name: str) -> None:
    handle, page, off, n, counter = WRITES[name]
    s = attacker()
    s.sendall(soft.frame(soft.WRITE, seq=1, addr=victim.addr(page, off), rkey=int(handle(victim)),
                         length=n) + bytes([0x55]) * min(n, 2 * PAGE))
    frames = answers(s)
    expect_refused(victim, frames, counter, "PROTECTION")
    untouched(victim)


def test_rdma_write_to_a_deregistered_handle(victim: Victim) -> None:
    h = int(victim.h_rw)
    via.VipDeregisterMem(victim.nic, None, victim.h_rw)
    s = attacker()
    s.sendall(soft.frame(soft.WRITE, seq=1, addr=victim.addr(1), rkey=h, length=64)
              + bytes(64))
    expect_refused(victim, answers(s), "refused_handle", "PROTECTION")
    untouched(victim)


READS = {
    "no_read_right": (lambda v: v.h_none, 2, 0, 64, "refused_permission"),
    "read_past_the_end": (lambda v: v.h_rw, 1, 64, PAGE, "refused_range"),
    "read_other_ptag": (lambda v: v.h_other, 3, 0, 64, "refused_ptag"),
    "read_unknown_handle": (lambda v: 7, 1, 0, 64, "refused_handle"),
}


@pytest.mark.parametrize("name", sorted(READS))
def test_rdma_read_outside_what_was_given(victim: Victim, name: str) -> None:
    handle, page, off, n, counter = READS[name]
    s = attacker()
    s.sendall(soft.frame(soft.READ_REQ, seq=1, addr=victim.addr(page, off),
                         rkey=int(handle(victim)), value=n))
    expect_refused(victim, answers(s), counter, "PROTECTION")
    untouched(victim)


def test_permitted_rdma_then_closed_mid_write(victim: Victim) -> None:
    """A permitted write lands and is acknowledged, a permitted read answers exactly its
    range; then a write announcing 4096 bytes sends 100 and the stream closes: counted as
    truncated, the VI goes to ERROR (CONN_LOST), and only the permitted page was written."""
    s = attacker()
    data = bytes(range(64))
    s.sendall(soft.frame(soft.WRITE, seq=1, addr=victim.addr(1, 128), rkey=int(victim.h_rw),
                         length=64) + data)
    s.sendall(soft.frame(soft.READ_REQ, seq=2, addr=victim.addr(1, 128), rkey=int(victim.h_rw),
                         value=64))
    h = soft.HDR.unpack(_recv_exact(s, soft.HDR.size))
    assert (h[1], h[3], h[7]) == (soft.READ_RESP, 2, 64), h
    assert _recv_exact(s, 64) == data
    s.sendall(soft.frame(soft.WRITE, seq=3, addr=victim.addr(1), rkey=int(victim.h_rw),
                         length=4096) + bytes([0x77]) * 100)
    time.sleep(0.1)
    s.close()
    victim.wait_error()
    assert victim.counters().get("truncated") == 1, victim.counters()
    assert victim.vi.state is via.ViState.ERROR
    assert [e.code for e in victim.errors] == ["CONN_LOST"]
    assert "middle of a frame" in victim.errors[0].message
    want = bytearray([FILL]) * PAGE
    want[:100] = bytes([0x77]) * 100  # (the cut write's first bytes: inside its permitted range)
    want[128:192] = data
    untouched(victim, (PAGE, bytes(want)))
    # The posted receives were flushed, in order.
    got = [via.VipRecvDone(victim.vi) for _ in range(2)]
    assert all(d.status & via.VIP_STATUS_DESC_FLUSHED_ERROR for d in got), got


PROTOCOL = {
    "garbage_after_handshake": lambda: random.Random(5).randbytes(200),
    "ack_for_nothing": lambda: soft.frame(soft.ACK, seq=5),
    "ack_with_payload": lambda: soft.frame(soft.ACK, seq=0, length=8) + bytes(8),
    "send_acking_nothing": lambda: soft.frame(soft.SEND, seq=1, addr=9, flags=soft.F_ACKED,
                                              length=4) + b"abcd",
    "sequence_skips": lambda: soft.frame(soft.SEND, seq=7, length=4) + b"abcd",
    "send_longer_than_any": lambda: soft.frame(soft.SEND, seq=1, length=soft.MAX_TRANSFER + 1),
    "read_response_unasked": lambda: soft.frame(soft.READ_RESP, seq=1, length=4) + b"abcd",
    "nak_for_nothing": lambda: soft.frame(soft.NAK, seq=3, value=4),
    "handshake_frame_again": lambda: soft.frame(soft.HELLO, seq=1),
    "unknown_frame_type": lambda: soft.frame(99, seq=1),
    "names_its_memory_unasked": lambda: soft.frame(soft.SEND, seq=1, length=soft.IOV.size,
                                                   flags=soft.F_CMA) + soft.IOV.pack(8, 4),
    "cma_ok_to_the_acceptor": lambda: soft.frame(soft.CMA_OK),
}


@pytest.mark.parametrize("name", sorted(PROTOCOL))
def test_garbage_on_a_connected_vi(victim: Victim, name: str) -> None:
    s = attacker()
    s.sendall(PROTOCOL[name]())
    frames = answers(s)
    victim.wait_error()
    assert victim.counters().get("garbage") == 1, victim.counters()
    assert victim.vi.state is via.ViState.ERROR
    assert [e.code for e in victim.errors] == ["PROTOCOL"], victim.errors
    assert "broke the protocol" in victim.errors[0].message
    assert not [f for f in frames if f[0] not in (soft.ACK,)], frames
    untouched(victim)


def test_send_larger_than_the_receive_and_to_an_empty_queue(victim: Victim) -> None:
    """VIPL's own errors from a raw peer: a LENGTH error on the receive (NAK to the sender)."""
    s = attacker()
    s.sendall(soft.frame(soft.SEND, seq=1, length=65) + bytes(65))
    frames = answers(s)
    victim.wait_error()
    assert victim.counters().get("length_errors") == 1
    assert [e.code for e in victim.errors] == ["LENGTH_ERROR"]
    assert naks(frames) and naks(frames)[0][2] == via.VIP_STATUS_REMOTE_DESC_ERROR
    d = via.VipRecvDone(victim.vi)
    assert d.status & via.VIP_STATUS_LENGTH_ERROR, hex(d.status)
    untouched(victim)


@pytest.mark.parametrize("what", ["garbage", "silence", "long_discriminator", "other_version"])
def test_bad_handshakes_are_refused_and_the_listener_serves_on(victim: Victim,
                                                               what: str) -> None:
    s = raw_connect()
    deadline = time.monotonic() + 5
    if what == "garbage":
        s.sendall(random.Random(1).randbytes(64))
    elif what == "long_discriminator":
        s.sendall(soft.frame(soft.HELLO, seq=soft.VERSION, rkey=2, length=4000) + bytes(4000))
    elif what == "other_version":
        s.sendall(soft.frame(soft.HELLO, seq=soft.VERSION + 1, rkey=2, length=len(DISC)) + DISC)
    s.settimeout(5)
    try:
        assert s.recv(64) == b"", "the victim answered a bad handshake"
    except ConnectionResetError:
        pass
    assert time.monotonic() < deadline
    s.close()
    assert victim.counters().get("refused_hello") == 1, victim.counters()
    assert victim.vi.state is via.ViState.IDLE and not victim.errors
    # A well-behaved peer still gets in, and its send lands in the posted receive.
    s = attacker()
    s.sendall(soft.frame(soft.SEND, seq=1, length=5) + b"hello")
    t0 = time.monotonic()
    while victim.vi.state is not via.ViState.CONNECTED and time.monotonic() - t0 < 3:
        time.sleep(0.01)
    d = via.VipRecvWait(victim.vi, 3000)
    assert not d.status & via.VIP_STATUS_ERROR_MASK and bytes(victim.rbuf[:5]) == b"hello"
    h = soft.HDR.unpack(_recv_exact(s, soft.HDR.size))
    assert (h[1], h[3]) == (soft.ACK, 1), h
    s.close()


def test_a_discriminator_nobody_listens_for_is_refused(victim: Victim) -> None:
    """Another discriminator on the victim's port (same crc32 bucket): NO_MATCH, counted."""
    other = next(b"other-%d" % i for i in range(1_000_000)
                 if soft.port_of(b"other-%d" % i) == soft.port_of(DISC))
    attacker()  # the victim's VI takes this one; its listener is up
    s = socket.create_connection((LOCAL, soft.port_of(DISC)), timeout=5)
    s.sendall(soft.frame(soft.HELLO, seq=soft.VERSION, rkey=2, length=len(other)) + other)
    h = soft.HDR.unpack(_recv_exact(s, soft.HDR.size))
    assert (h[1], h[6]) == (soft.REJECT, via.VIP_NO_MATCH), h
    s.close()
    assert victim.counters().get("no_match") == 1


def local_attacker(answer_the_challenge: bool) -> tuple[socket.socket, bytearray]:
    """A raw peer on this host that asks for the same-host path (its pid is this process's),
    and copies the victim's nonce into its cookie, or not."""
    s = raw_connect()
    cookie = bytearray(16)
    offer = soft.LOCAL.pack(soft._BOOT, os.getpid(), via.address_of(cookie), os.urandom(16))
    s.sendall(soft.frame(soft.HELLO, seq=soft.VERSION, rkey=2, value=3, flags=soft.F_LOCAL,
                         length=len(DISC) + soft.LOCAL.size) + DISC + offer)
    h = soft.HDR.unpack(_recv_exact(s, soft.HDR.size))
    assert h[1] == soft.ACCEPT and h[2] & soft.F_LOCAL and h[7] == soft.LOCAL.size, h
    _boot, _pid, _addr, nonce = soft.LOCAL.unpack(_recv_exact(s, soft.LOCAL.size))
    if answer_the_challenge:
        cookie[:] = nonce
    s.sendall(soft.frame(soft.READY))
    return s, cookie


def cma_write(seq: int, addr: int, rkey: int, spans: list[tuple[int, int]]) -> bytes:
    iov = b"".join(soft.IOV.pack(a, n) for a, n in spans)
    return soft.frame(soft.WRITE, seq=seq, addr=addr, rkey=rkey, length=len(iov),
                      flags=soft.F_CMA) + iov


@pytest.mark.skipif(not soft.local_enabled(), reason="no process_vm_readv / boot id here")
def test_same_host_path_needs_the_proof(victim: Victim) -> None:
    """A peer that claims a pid without copying the victim's nonce into its cookie gets no
    CMA_OK, and a WRITE naming its memory instead of carrying the data is refused."""
    s, _cookie = local_attacker(answer_the_challenge=False)
    src = bytearray([0x33]) * 64
    s.sendall(cma_write(1, victim.addr(1), int(victim.h_rw), [(via.address_of(src), 64)]))
    frames = answers(s)
    assert not [f for f in frames if f[0] == soft.CMA_OK], frames
    victim.wait_error()
    assert victim.counters().get("garbage") == 1, victim.counters()
    assert [e.code for e in victim.errors] == ["PROTOCOL"]
    untouched(victim)


@pytest.mark.skipif(not soft.local_enabled(), reason="no process_vm_readv / boot id here")
@pytest.mark.parametrize("what", ["lands", "unmapped_source", "past_the_end", "other_ptag"])
def test_same_host_writes_are_checked_the_same(victim: Victim, what: str) -> None:
    """With the proof given (CMA_OK comes), a WRITE copied from the peer's memory lands in
    the permitted range; one whose source the victim cannot read, or whose target lies
    outside what was given, is refused, counted and NAKed, and nothing else is written."""
    s, _cookie = local_attacker(answer_the_challenge=True)
    h = soft.HDR.unpack(_recv_exact(s, soft.HDR.size))
    assert h[1] == soft.CMA_OK, h
    src = bytearray(range(64))
    good = cma_write(1, victim.addr(1, 256), int(victim.h_rw),
                     [(via.address_of(src, 32), 32), (via.address_of(src), 32)])
    if what == "lands":
        s.sendall(good)
        h = soft.HDR.unpack(_recv_exact(s, soft.HDR.size))
        assert (h[1], h[3]) == (soft.ACK, 1), h
        want = bytearray([FILL]) * PAGE
        want[256:320] = src[32:] + src[:32]
        untouched(victim, (PAGE, bytes(want)))
        assert victim.counters().get("cma_bytes_rx") == 64
        s.close()
        return
    bad = {"unmapped_source": cma_write(1, victim.addr(1), int(victim.h_rw), [(8, 64)]),
           "past_the_end": cma_write(1, victim.addr(1, PAGE - 16), int(victim.h_rw),
                                     [(via.address_of(src), 64)]),
           "other_ptag": cma_write(1, victim.addr(3), int(victim.h_other),
                                   [(via.address_of(src), 64)])}[what]
    s.sendall(bad)
    frames = answers(s)
    victim.wait_error()
    counter, status, code = {
        "unmapped_source": ("cma_faults", via.VIP_STATUS_PROTECTION_ERROR, "TRANSPORT_ERROR"),
        "past_the_end": ("refused_range", via.VIP_STATUS_RDMA_PROT_ERROR, "PROTECTION"),
        "other_ptag": ("refused_ptag", via.VIP_STATUS_RDMA_PROT_ERROR, "PROTECTION")}[what]
    assert victim.counters().get(counter) == 1, victim.counters()
    assert [f[2] for f in naks(frames)] == [status], frames
    assert [e.code for e in victim.errors] == [code], victim.errors
    untouched(victim)


def test_a_peer_that_talks_on_after_the_refusal_is_cut_off(victim: Victim,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """After a NAK the victim reads what still comes only until DRAIN_S has passed: a peer
    that never stops sending is cut off (its stream closed), not served forever."""
    monkeypatch.setattr(soft, "DRAIN_S", 0.3)
    s = attacker()
    s.sendall(soft.frame(soft.WRITE, seq=1, addr=victim.addr(2), rkey=int(victim.h_none),
                         length=64) + bytes(64))
    t0, cut = time.monotonic(), None
    s.settimeout(0.5)
    chunk = bytes(65536)
    while time.monotonic() - t0 < 5:
        try:
            s.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            cut = time.monotonic() - t0
            break
        except TimeoutError:
            continue
    s.close()
    assert cut is not None and cut < 3, f"still fed after {time.monotonic() - t0:.1f} s"
    victim.wait_error()
    assert victim.counters().get("refused_permission") == 1
    untouched(victim)
