"""The soft provider's one-sided same-host RDMA Write and Read (host, no lab): a region
registered over ``via.shared_buffer`` is granted to the proven same-host peer after its first
(checked) write or read, with the region's remote rights, and later writes or reads are one
copy into or out of it, with no frame; everything else still goes as a frame and is refused by
the owner as before.

Also: the same-host stream moves from TCP to a Unix socket that takes only the proven peer.

Two NICs in this process (the same-host proof reads our own pid's memory): "own" registers
the target, "peer" writes into it.
"""

from __future__ import annotations

import mmap
import os
import threading
import time

import pytest

from hsp_rdma import via
from hsp_rdma.via import shm
from hsp_rdma.via.providers import soft

PAGE = mmap.PAGESIZE
DISC = b"shm-test"
FILL = 0xAA


class Pair:
    """OWN: a shared_buffer of 4 pages, pages 1-2 registered with remote write (H), page 3
    registered without remote rights (H_NONE), page 0 not registered. PEER: a source buffer,
    its VI connected to OWN's."""

    def __init__(self, target=None, read: bool = False):
        self.own = via.VipOpenNic("soft:own")
        self.peer = via.VipOpenNic("soft:peer")
        self.errors: list = []
        via.VipErrorCallback(self.own, lambda _c, e: self.errors.append(e))
        self.optag, self.pptag = via.VipCreatePtag(self.own), via.VipCreatePtag(self.peer)
        self.mem = target if target is not None else via.shared_buffer(4 * PAGE)
        self.mem[:] = bytes([FILL]) * len(self.mem)
        view = memoryview(self.mem)
        self.h = via.VipRegisterMem(self.own, view[PAGE:3 * PAGE], via.MemAttributes(
            ptag=self.optag, enable_rdma_write=True))
        self.h_none = via.VipRegisterMem(self.own, view[3 * PAGE:4 * PAGE],
                                         via.MemAttributes(ptag=self.optag))
        self.base = via.address_of(self.mem)
        self.src = bytearray(os.urandom(4 * PAGE))
        self.hs = via.VipRegisterMem(self.peer, self.src, via.MemAttributes(ptag=self.pptag))
        self.rbuf = bytearray(64)
        self.hr = via.VipRegisterMem(self.own, self.rbuf, via.MemAttributes(ptag=self.optag))
        if read:  # READ: pages 1-2 registered again, remote read only (H_READ)
            self.h_read = via.VipRegisterMem(self.own, view[PAGE:3 * PAGE], via.MemAttributes(
                ptag=self.optag, enable_rdma_read=True))
            self.dst = bytearray(2 * PAGE)
            self.hd = via.VipRegisterMem(self.peer, self.dst, via.MemAttributes(ptag=self.pptag))
        self.ovi = via.VipCreateVi(self.own, via.ViAttributes(
            ptag=self.optag, enable_rdma_write=True, enable_rdma_read=read))
        self.pvi = via.VipCreateVi(self.peer, via.ViAttributes(
            ptag=self.pptag, enable_rdma_write=True, enable_rdma_read=read))
        via.VipPostRecv(self.ovi, via.VipDescriptor(segments=[
            via.DataSegment(via.address_of(self.rbuf), self.hr, 64)]))

        def accept() -> None:
            req = via.VipConnectWait(self.own, via.NetAddress("127.0.0.1", DISC), 5000)
            via.VipConnectAccept(req, self.ovi)

        t = threading.Thread(target=accept)
        t.start()
        deadline = time.monotonic() + 5
        while True:  # (until the accepting thread listens)
            try:
                via.VipConnectRequest(self.pvi, via.NetAddress("127.0.0.2", b""),
                                      via.NetAddress("127.0.0.1", DISC), 5000)
                break
            except via.VipNoMatch:
                assert time.monotonic() < deadline, "the accepting side never listened"
                time.sleep(0.01)
        t.join()

    def _rdma(self, control, local, local_handle, off: int, n: int, handle) -> via.VipDescriptor:
        via.VipPostSend(self.pvi, via.VipDescriptor(
            control=control, segments=[via.DataSegment(local, local_handle, n)],
            address=via.AddressSegment(self.base + off, handle)))
        return via.VipSendWait(self.pvi, 5000)

    def write(self, off: int, n: int, handle=None, src_off: int = 0) -> via.VipDescriptor:
        """RDMA Write N bytes of src[SRC_OFF:] at OFF of the target buffer; its completion."""
        return self._rdma(via.Control.OP_RDMAWRITE, via.address_of(self.src, src_off), self.hs,
                          off, n, self.h if handle is None else handle)

    def read(self, off: int, n: int, handle=None, dst_off: int = 0) -> via.VipDescriptor:
        """RDMA Read N bytes at OFF of the target buffer into dst[DST_OFF:]; its completion."""
        return self._rdma(via.Control.OP_RDMAREAD, via.address_of(self.dst, dst_off), self.hd,
                          off, n, self.h_read if handle is None else handle)

    def counters(self, nic) -> dict:
        return via.VipQuerySystemManagementInfo(nic)["counters"]

    def granted(self, timeout_s: float = 3) -> None:
        t0 = time.monotonic()
        while not self.pvi.conn.grants and time.monotonic() - t0 < timeout_s:
            time.sleep(0.005)
        while self.pvi.conn.pending and time.monotonic() - t0 < timeout_s:
            time.sleep(0.005)  # (the first write's ACK)
        assert self.pvi.conn.grants, self.counters(self.peer)

    def close(self) -> None:
        via.VipCloseNic(self.peer)
        via.VipCloseNic(self.own)


@pytest.fixture
def pair(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    p = Pair()
    yield p
    p.close()


def ok(d: via.VipDescriptor) -> bool:
    return not d.status & via.Status.ERROR_MASK


def expect(p: Pair, changed: dict[int, bytes]) -> None:
    """The target buffer is as filled but for CHANGED (offset: bytes)."""
    want = bytearray([FILL]) * (4 * PAGE)
    for off, data in changed.items():
        want[off:off + len(data)] = data
    got = bytes(p.mem)
    if got != want:
        first = next(i for i in range(len(got)) if got[i] != want[i])
        pytest.fail(f"target memory differs at offset {first} (page {first // PAGE})")


def test_writes_after_the_grant_land_without_a_frame(pair: Pair) -> None:
    assert ok(pair.write(PAGE, 100))  # a frame, asking for the grant
    pair.granted()
    rx = pair.counters(pair.own).get("frames_rx", 0)
    g = next(iter(pair.pvi.conn.grants.values()))
    assert len(g.mm) <= 2 * PAGE + PAGE, "more than the region's pages were mapped"
    for i in range(20):
        assert ok(pair.write(PAGE + 64 * i, 64, src_off=64 * i))
    assert pair.counters(pair.peer)["shm_writes_tx"] == 20
    assert pair.counters(pair.own).get("frames_rx", 0) == rx, "a direct write sent a frame"
    expect(pair, {PAGE: bytes(pair.src[:64 * 20])})
    # a standby polling a marker sees it with no message
    marker_at = 3 * PAGE - 8
    assert ok(pair.write(marker_at, 8, src_off=PAGE))
    assert pair.mem[marker_at:marker_at + 8] == pair.src[PAGE:PAGE + 8]


def test_a_write_after_an_unacknowledged_send_keeps_its_order(pair: Pair) -> None:
    assert ok(pair.write(PAGE, 16))
    pair.granted()
    hsend = pair.hs
    via.VipPostSend(pair.pvi, via.VipDescriptor(segments=[
        via.DataSegment(via.address_of(pair.src), hsend, 32)]))
    before = pair.counters(pair.peer).get("shm_writes_tx", 0)
    # posted at once after the send: the send is not acknowledged yet, so the write goes as
    # a frame behind it (or, if the ACK already came, directly: both keep the order)
    via.VipPostSend(pair.pvi, via.VipDescriptor(
        control=via.Control.OP_RDMAWRITE,
        segments=[via.DataSegment(via.address_of(pair.src, 64), hsend, 64)],
        address=via.AddressSegment(pair.base + 2 * PAGE, pair.h)))
    r = via.VipRecvWait(pair.ovi, 5000)
    assert ok(r) and pair.rbuf[:32] == pair.src[:32]
    for _ in range(2):
        assert ok(via.VipSendWait(pair.pvi, 5000))
    assert pair.mem[2 * PAGE:2 * PAGE + 64] == pair.src[64:128]
    assert pair.counters(pair.peer).get("shm_writes_tx", 0) - before <= 1


@pytest.mark.parametrize("what", ["past_the_end", "before_the_start", "no_write_right",
                                  "deregistered"])
def test_direct_writes_outside_the_grant_are_refused_by_the_owner(pair: Pair,
                                                                   what: str) -> None:
    assert ok(pair.write(PAGE, 16))
    pair.granted()
    changed = {PAGE: bytes(pair.src[:16])}
    if what == "past_the_end":
        d = pair.write(3 * PAGE - 8, 64)
        counter = "refused_range"
    elif what == "before_the_start":
        d = pair.write(PAGE - 8, 64)
        counter = "refused_range"
    elif what == "no_write_right":
        d = pair.write(3 * PAGE, 64, handle=pair.h_none)
        counter = "refused_permission"
    else:
        via.VipDeregisterMem(pair.own, None, pair.h)
        d = pair.write(PAGE + 64, 64)
        counter = "refused_handle"
    assert d.status & via.VIP_STATUS_RDMA_PROT_ERROR, hex(d.status)
    assert pair.counters(pair.own).get(counter) == 1, pair.counters(pair.own)
    assert pair.counters(pair.peer).get("shm_writes_tx", 0) == 0
    t0 = time.monotonic()
    while not pair.errors and time.monotonic() - t0 < 3:
        time.sleep(0.01)
    assert [e.code for e in pair.errors] == ["PROTECTION"]
    expect(pair, changed)


@pytest.fixture
def rpair(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    p = Pair(read=True)
    p.mem[PAGE:3 * PAGE] = os.urandom(2 * PAGE)  # what the reads must bring back
    yield p
    p.close()


def test_reads_after_the_grant_come_without_a_frame(rpair: Pair) -> None:
    p = rpair
    assert ok(p.read(PAGE, 100))  # a frame, asking for the grant
    p.granted()
    g = p.pvi.conn.grants[int(p.h_read)]
    assert g.rights == soft.EN_READ and g.mm.closed is False
    rx = p.counters(p.own).get("frames_rx", 0)
    for i in range(20):
        assert ok(p.read(PAGE + 200 * i, 200, dst_off=200 * i))
    assert p.counters(p.peer)["shm_reads"] == 20
    assert p.counters(p.own).get("frames_rx", 0) == rx, "a direct read sent a frame"
    assert p.dst[:4000] == p.mem[PAGE:PAGE + 4000]
    # a write the owner's application makes is seen by the next read, with no message
    p.mem[2 * PAGE:2 * PAGE + 8] = b"newvalue"
    assert ok(p.read(2 * PAGE, 8, dst_off=PAGE))
    assert p.dst[PAGE:PAGE + 8] == b"newvalue"


def test_a_read_only_grant_is_never_written_through(rpair: Pair) -> None:
    p = rpair
    before = bytes(p.mem)
    assert ok(p.read(PAGE, 16))
    p.granted()
    d = p.write(PAGE, 64, handle=p.h_read)  # the region allows no remote write
    assert d.status & via.VIP_STATUS_RDMA_PROT_ERROR, hex(d.status)
    assert p.counters(p.own).get("refused_permission") == 1, p.counters(p.own)
    assert p.counters(p.peer).get("shm_writes_tx", 0) == 0
    assert bytes(p.mem) == before


@pytest.mark.parametrize("what", ["past_the_end", "no_read_right", "deregistered"])
def test_direct_reads_outside_the_grant_are_refused_by_the_owner(rpair: Pair,
                                                                 what: str) -> None:
    p = rpair
    assert ok(p.read(PAGE, 16))
    p.granted()
    if what == "past_the_end":
        d, counter = p.read(3 * PAGE - 8, 64), "refused_range"
    elif what == "no_read_right":
        d, counter = p.read(PAGE, 64, handle=p.h), "refused_permission"  # write-only region
    else:
        via.VipDeregisterMem(p.own, None, p.h_read)
        d, counter = p.read(PAGE + 64, 64), "refused_handle"
    assert d.status & via.VIP_STATUS_RDMA_PROT_ERROR, hex(d.status)
    assert p.counters(p.own).get(counter) == 1, p.counters(p.own)
    assert p.counters(p.peer).get("shm_reads", 0) == 0


def _reregister_and_read(p: Pair, lo: int = PAGE, hi: int = 3 * PAGE) -> None:
    """As a pull's active does at each switch-over: a new remote-read registration (of pages
    LO..HI) replaces the last; the next read asks for its grant, which then arrives."""
    via.VipDeregisterMem(p.own, None, p.h_read)
    p.h_read = via.VipRegisterMem(p.own, memoryview(p.mem)[lo:hi], via.MemAttributes(
        ptag=p.optag, enable_rdma_read=True))
    assert ok(p.read(lo, 16))  # a frame, asking for the new registration's grant
    t0 = time.monotonic()
    while int(p.h_read) not in p.pvi.conn.grants and time.monotonic() - t0 < 3:
        time.sleep(0.005)


def test_a_grant_of_a_deregistered_region_ends_at_the_next_grant_which_reuses_its_mapping(
        rpair: Pair) -> None:
    """A pull registers the image for remote read for one switch-over: the grant of the
    registration that ended is dropped, and the next registration of the same pages is
    granted through the same mapping (not mapped and populated again)."""
    p = rpair
    assert ok(p.read(PAGE, 16))
    p.granted()
    old = p.pvi.conn.grants[int(p.h_read)]
    _reregister_and_read(p)
    assert sorted(p.pvi.conn.grants) == [int(p.h_read)]
    new = p.pvi.conn.grants[int(p.h_read)]
    assert old.closed and not new.closed
    assert new.map is old.map and not new.mm.closed and new.map.users == 1
    assert p.counters(p.peer)["shm_maps_reused"] == 1
    assert ok(p.read(PAGE + 16, 16, dst_off=16))
    assert p.counters(p.peer)["shm_reads"] == 1
    assert p.dst[:32] == p.mem[PAGE:PAGE + 32]
    p.mem[PAGE + 16:PAGE + 24] = b"newbytes"  # the reused mapping shows the owner's writes
    assert ok(p.read(PAGE + 16, 8, dst_off=100))
    assert p.dst[100:108] == b"newbytes"


def test_mappings_no_grant_uses_are_unmapped_beyond_the_spares(rpair: Pair) -> None:
    """Registrations of other pages each time: every new grant maps anew, and the mappings
    no grant uses are kept only up to SPARE_MAPS (then unmapped, oldest first); closing
    the connection unmaps everything."""
    p = rpair
    assert ok(p.read(PAGE, 16))
    p.granted()
    first = p.pvi.conn.grants[int(p.h_read)].map
    spans = [(PAGE, 2 * PAGE), (2 * PAGE, 3 * PAGE), (PAGE, 3 * PAGE - 8), (PAGE + 8, 3 * PAGE)]
    for lo, hi in spans:
        _reregister_and_read(p, lo, hi)
        assert sorted(p.pvi.conn.grants) == [int(p.h_read)]
        maps = list(p.pvi.conn.maps.values())
        assert sum(mp.users for mp in maps) == 1
        assert len(maps) <= 1 + soft.SPARE_MAPS, [mp.key for mp in maps]
    assert first.mm.closed, "the oldest mapping no grant uses was kept"
    assert "shm_maps_reused" not in p.counters(p.peer)
    kept = list(p.pvi.conn.maps.values())
    via.VipDisconnect(p.pvi)
    assert not p.pvi.conn or not p.pvi.conn.maps
    assert all(mp.mm.closed and mp.table.closed for mp in kept)


def test_ordinary_buffers_and_write_protected_regions_are_never_granted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    p = Pair(target=mmap.mmap(-1, 4 * PAGE))  # not a shared_buffer: the frame path
    try:
        for i in range(3):
            assert ok(p.write(PAGE + 64 * i, 64, src_off=64 * i))
        assert not p.pvi.conn.grants
        assert "shm_grants_tx" not in p.counters(p.own)
        expect(p, {PAGE: bytes(p.src[:192])})
    finally:
        p.close()
    # a shared_buffer region registered without remote write has no slot to grant
    nic = via.VipOpenNic("soft:x")
    try:
        buf = via.shared_buffer(PAGE)
        h = via.VipRegisterMem(nic, buf, via.MemAttributes(ptag=via.VipCreatePtag(nic)))
        assert h.mr.shm is None and h.mr.grant() is None
    finally:
        via.VipCloseNic(nic)


def test_without_the_same_host_proof_nothing_is_granted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    monkeypatch.setenv("HSP_VIA_SOFT_LOCAL", "0")
    p = Pair()
    try:
        for i in range(3):
            assert ok(p.write(PAGE + 64 * i, 64, src_off=64 * i))
        time.sleep(0.05)
        assert not p.pvi.conn.grants and "shm_grants_tx" not in p.counters(p.own)
        expect(p, {PAGE: bytes(p.src[:192])})
    finally:
        p.close()


def test_an_unasked_grant_is_garbage(pair: Pair) -> None:
    """A peer that grants what was never asked for breaks the protocol: the VI goes to ERROR
    and nothing is mapped."""
    errors: list = []
    via.VipErrorCallback(pair.peer, lambda _c, e: errors.append(e))
    own_conn = pair.ovi.conn
    own_conn.send([soft.frame(soft.GRANT, addr=pair.base, rkey=0x1234, value=0,
                              flags=soft.EN_WRITE, length=soft.GRANT_BODY.size),
                   soft.GRANT_BODY.pack(3, PAGE, PAGE)])
    t0 = time.monotonic()
    while not errors and time.monotonic() - t0 < 3:
        time.sleep(0.01)
    assert [e.code for e in errors] == ["PROTOCOL"], errors
    assert "never asked" in errors[0].message
    assert pair.counters(pair.peer).get("garbage") == 1
    assert not pair.pvi.conn.grants


def test_a_grant_of_something_else_than_a_shared_buffer_is_not_used(pair: Pair) -> None:
    """A grant naming an fd that is not a shared buffer (here: a socket of the owner) maps
    nothing; the writes stay frames and still land."""
    pair.pvi.conn.asked.add(0x4321)
    fd = pair.ovi.conn.sock.fileno()
    pair.ovi.conn.send([soft.frame(soft.GRANT, addr=pair.base, rkey=0x4321, value=0,
                                   flags=soft.EN_WRITE, length=soft.GRANT_BODY.size),
                        soft.GRANT_BODY.pack(fd, PAGE, PAGE)])
    t0 = time.monotonic()
    while not pair.counters(pair.peer).get("shm_grants_unusable") and time.monotonic() - t0 < 3:
        time.sleep(0.01)
    assert pair.counters(pair.peer).get("shm_grants_unusable") == 1
    assert 0x4321 not in pair.pvi.conn.grants
    assert ok(pair.write(PAGE, 32))
    expect(pair, {PAGE: bytes(pair.src[:32])})


def test_shared_buffer_is_forgotten_with_its_buffer() -> None:
    buf = via.shared_buffer(3 * PAGE)
    addr = via.address_of(buf)
    assert shm.lookup(addr + PAGE, PAGE) is not None
    assert shm.lookup(addr + PAGE, 3 * PAGE) is None  # past its end
    buf.close()
    assert shm.lookup(addr, PAGE) is None  # closed: no longer a shared buffer
    with pytest.raises(ValueError, match="positive size"):
        via.shared_buffer(0)


def test_same_host_stream_moves_to_a_unix_socket(pair: Pair) -> None:
    import socket
    assert pair.pvi.conn.sock.family == socket.AF_UNIX
    assert pair.ovi.conn.sock.family == socket.AF_UNIX
    assert pair.pvi.conn.cma_out and pair.ovi.conn.cma_out  # (CMA_OK came in the handshake)
    assert ok(pair.write(PAGE, 64))
    expect(pair, {PAGE: bytes(pair.src[:64])})


def test_unix_stream_off_stays_on_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    monkeypatch.setenv("HSP_VIA_SOFT_UNIX", "0")
    p = Pair()
    try:
        assert p.pvi.conn.sock.family == socket.AF_INET
        assert ok(p.write(PAGE, 64))
        t0 = time.monotonic()
        while not p.pvi.conn.cma_out and time.monotonic() - t0 < 3:
            time.sleep(0.01)
        assert p.pvi.conn.cma_out  # (CMA_OK came on the stream)
    finally:
        p.close()


@pytest.mark.parametrize("who", ["another_pid", "another_name"])
def test_the_unix_socket_takes_only_the_proven_peer_naming_it(who: str) -> None:
    import socket
    ls, name = soft._unix_listener()
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        c.connect(b"\0hsp-via-soft-" + name)
        c.sendall(name if who == "another_pid" else b"x" * len(name))
        pid = os.getpid() + (1 if who == "another_pid" else 0)
        with pytest.raises(ConnectionRefusedError, match="not from the proven peer"):
            soft._unix_accept(ls, name, pid, 2)
    finally:
        c.close()
        ls.close()
