"""VIA semantics, both ends: run ``server`` in lab node a and ``client`` in node b.

Each scenario is a pair of functions (server_<name>, client_<name>) run in the same order on
both nodes; they meet on a discriminator of their own. Every scenario prints one JSON line
per side: {"scenario", "side", "ok", "detail", "seconds"}; a failed check is ok=false with
the reason, and the run goes on to the next scenario.

    python tests/via/scenarios.py server --dev rxe0 --local 10.77.1.1 --peer 10.77.1.2
    python tests/via/scenarios.py client --dev rxe0 --local 10.77.1.2 --peer 10.77.1.1
    python tests/via/scenarios.py sink|stream …   (the peer-killed drill)
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import mmap
import struct
import sys
import threading
import time
import traceback
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hsp_rdma import via
from hsp_rdma.errors import VerbsError
from hsp_rdma.via.providers.verbs import port_of

MSG = 256  # control-message slot
ADDR = struct.Struct("<QIQI")  # two (address, handle) pairs


def pattern(seed: int, n: int) -> bytes:
    return bytes((seed + i * 7) % 251 for i in range(n))


class Ctx:
    """One NIC, one ptag, one 1 MiB region (remote write + read) cut into areas."""

    def __init__(self, dev: str, local: str, peer: str):
        self.local, self.peer = local, peer
        self.nic = via.VipOpenNic(dev)
        self.errors: list = []
        via.VipErrorCallback(self.nic, "ctx", lambda c, e: self.errors.append((c, e)))
        self.ptag = via.VipCreatePtag(self.nic)
        self.buf = mmap.mmap(-1, 1 << 20)
        self.h = via.VipRegisterMem(self.nic, self.buf, via.MemAttributes(
            ptag=self.ptag, enable_rdma_write=True, enable_rdma_read=True))

    def vi(self, **kw) -> via.Vi:
        kw.setdefault("ptag", self.ptag)
        cqs = {k: kw.pop(k) for k in ("send_cq", "recv_cq") if k in kw}
        return via.VipCreateVi(self.nic, via.ViAttributes(**kw), **cqs)

    def seg(self, off: int, n: int, handle=None) -> via.DataSegment:
        return via.DataSegment(via.address_of(self.buf, off), handle or self.h, n)

    def desc(self, *segs: tuple[int, int], control: int = 0, remote=None,
             imm: int = 0) -> via.VipDescriptor:
        return via.VipDescriptor(control=control, segments=[self.seg(o, n) for o, n in segs],
                                 address=remote, immediate=imm)

    def put(self, off: int, data: bytes) -> None:
        self.buf[off:off + len(data)] = data

    def get(self, off: int, n: int) -> bytes:
        return bytes(self.buf[off:off + n])

    # ---- connection helpers -------------------------------------------------------------
    def accept(self, vi: via.Vi, disc: bytes, timeout_ms: int = 30000) -> via.ConnRequest:
        req = via.VipConnectWait(self.nic, via.NetAddress(self.local, disc), timeout_ms)
        via.VipConnectAccept(req, vi)
        return req

    def connect(self, vi: via.Vi, disc: bytes, timeout_ms: int = 30000) -> None:
        """Connect, retrying while the peer's listener is not up yet (bounded). One attempt
        may take 15 s: on a loaded host a siw connection took more than 5 s to come up, and
        the client's give-up then broke the server's just-accepted VI."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            try:
                via.VipConnectRequest(vi, via.NetAddress(self.local, b""),
                                      via.NetAddress(self.peer, disc), 15000)
                return
            except via.VipNoMatch:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def send(self, vi: via.Vi, off: int, data: bytes, timeout_ms: int = 10000) -> int:
        self.put(off, data)
        via.VipPostSend(vi, self.desc((off, len(data))))
        d = via.VipSendWait(vi, timeout_ms)
        check(not d.status & via.VIP_STATUS_ERROR_MASK, f"send failed 0x{d.status:x}")
        return d.status

    def recv(self, vi: via.Vi, off: int, timeout_ms: int = 10000) -> bytes:
        d = via.VipRecvWait(vi, timeout_ms)
        check(not d.status & via.VIP_STATUS_ERROR_MASK, f"receive failed 0x{d.status:x}")
        return self.get(off, d.length)

    def finish(self, vi: via.Vi, peer_first: bool, timeout_s: float = 15) -> dict:
        """End a scenario: wait for the peer's disconnect (server) or disconnect (client),
        take every descriptor left and destroy the VI."""
        t0 = time.monotonic()
        if peer_first:
            while vi.state is via.ViState.CONNECTED and time.monotonic() - t0 < timeout_s:
                time.sleep(0.02)
        state = vi.state.name
        via.VipDisconnect(vi)
        left = 0
        for done in (via.VipSendDone, via.VipRecvDone):
            while done(vi) is not None:
                left += 1
        via.VipDestroyVi(vi)
        return {"state_before_disconnect": state, "descriptors_left": left}


def check(cond: bool, why: str) -> None:
    if not cond:
        raise AssertionError(why)


def expect(exc_type: type, fn, *args, **kw) -> str:
    try:
        fn(*args, **kw)
    except exc_type as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"{getattr(fn, '__name__', fn)} did not raise {exc_type.__name__}")


def wait_state(vi: via.Vi, state: via.ViState, timeout_s: float) -> bool:
    t0 = time.monotonic()
    while vi.state is not state and time.monotonic() - t0 < timeout_s:
        time.sleep(0.02)
    return vi.state is state


# ---- 1. send / receive: gather, scatter, immediate, reply ---------------------------------
def server_send_recv(c: Ctx) -> dict:
    vi = c.vi()
    for i in range(3):  # scatter over two segments each
        via.VipPostRecv(vi, c.desc((i * 8192, 16), (i * 8192 + 64, 8000)))
    c.accept(vi, b"send_recv")
    check(via.VipQueryVi(vi)[0] is via.ViState.CONNECTED, "VI not CONNECTED after accept")
    want = [pattern(1, 100), pattern(2, 4096), pattern(3, 5)]
    got = []
    for i in range(3):
        d = via.VipRecvWait(vi, 10000)
        check(d.status & via.VIP_STATUS_OP_MASK == via.VIP_STATUS_OP_RECEIVE,
              f"receive op 0x{d.status:x}")
        check(not d.status & via.VIP_STATUS_ERROR_MASK, f"receive error 0x{d.status:x}")
        data = (c.get(i * 8192, 16) + c.get(i * 8192 + 64, 8000))[:d.length]
        got.append(data == want[i])
        if i == 2 and not c.nic.iwarp:
            check(bool(d.status & via.VIP_STATUS_IMMEDIATE), "immediate flag missing")
            check(d.immediate == 0xDEADBEEF, f"immediate {d.immediate:#x}")
    check(all(got), f"scattered data mismatch {got}")
    check(via.VipQueryVi(vi)[3], "receive queue should be empty")
    c.send(vi, 100000, pattern(9, 64))
    return c.finish(vi, peer_first=True)


def client_send_recv(c: Ctx) -> dict:
    vi = c.vi()
    check(via.VipSendDone(vi) is None and via.VipRecvDone(vi) is None, "Done on empty queue")
    via.VipPostRecv(vi, c.desc((200000, MSG)))
    c.connect(vi, b"send_recv")
    c.put(0, pattern(1, 100))
    c.put(4096, pattern(2, 4096))
    c.put(9000, pattern(3, 5))
    sends = [c.desc((0, 50), (50, 50)), c.desc((4096, 1000), (5096, 3096)),
             c.desc((9000, 5), control=via.VIP_CONTROL_IMMEDIATE, imm=0xDEADBEEF)]
    out = {}
    if c.nic.iwarp:  # iWARP carries no immediate data: refused at post time, plain instead
        out["immediate"] = expect(via.VipNotSupported, via.VipPostSend, vi, sends[2])
        sends[2] = c.desc((9000, 5))
    for d in sends:
        via.VipPostSend(vi, d)
    for d in sends:
        got = via.VipSendWait(vi, 10000)
        check(got is d, "send completions out of post order")
        check(got.status == via.VIP_STATUS_DONE | via.VIP_STATUS_OP_SEND,
              f"send status 0x{got.status:x}")
    data = c.recv(vi, 200000)
    check(data == pattern(9, 64), "reply mismatch")
    state, _attrs, sq_empty, rq_empty = via.VipQueryVi(vi)
    check(state is via.ViState.CONNECTED and sq_empty and rq_empty, "VipQueryVi")
    out.update(c.finish(vi, peer_first=False))
    return out


# ---- 2. RDMA Write, gathered, and with immediate data -------------------------------------
def server_rdma_write(c: Ctx) -> dict:
    vi = c.vi(enable_rdma_write=True)
    c.put(0, bytes(65536))
    via.VipPostRecv(vi, c.desc((100000, MSG)))
    c.accept(vi, b"rdma_write")
    c.send(vi, 200000, ADDR.pack(via.address_of(c.buf), c.h, 0, 0))
    d = via.VipRecvWait(vi, 15000)
    op = d.status & via.VIP_STATUS_OP_MASK
    if c.nic.iwarp:  # no RDMA Write with immediate on iWARP: a message says "written"
        check(op == via.VIP_STATUS_OP_RECEIVE and not d.status & via.VIP_STATUS_ERROR_MASK,
              f"status 0x{d.status:x}")
    else:
        check(op == via.VIP_STATUS_OP_REMOTE_RDMA_WRITE, f"op 0x{d.status:x}")
        check(bool(d.status & via.VIP_STATUS_IMMEDIATE) and d.immediate == 0x1234,
              f"immediate {d.immediate:#x} status 0x{d.status:x}")
    check(c.get(0, 32768) == pattern(5, 32768), "gathered RDMA Write data mismatch")
    check(c.get(32768, 4096) == pattern(6, 4096), "RDMA Write with immediate data mismatch")
    return c.finish(vi, peer_first=True)


def client_rdma_write(c: Ctx) -> dict:
    vi = c.vi(enable_rdma_write=True)
    via.VipPostRecv(vi, c.desc((100000, MSG)))
    c.connect(vi, b"rdma_write")
    raddr, rh, _, _ = ADDR.unpack(c.recv(vi, 100000)[:ADDR.size])
    c.put(300000, pattern(5, 32768))
    c.put(400000, pattern(6, 4096))
    w = c.desc((300000, 16384), (316384, 16384), control=via.VIP_CONTROL_OP_RDMAWRITE,
               remote=via.AddressSegment(raddr, rh))
    via.VipPostSend(vi, w)
    d = via.VipSendWait(vi, 10000)
    check(d.status == via.VIP_STATUS_DONE | via.VIP_STATUS_OP_RDMA_WRITE,
          f"write status 0x{d.status:x}")
    w2 = c.desc((400000, 4096), control=via.VIP_CONTROL_OP_RDMAWRITE | via.VIP_CONTROL_IMMEDIATE,
                remote=via.AddressSegment(raddr + 32768, rh), imm=0x1234)
    out = {}
    if c.nic.iwarp:
        out["immediate"] = expect(via.VipNotSupported, via.VipPostSend, vi, w2)
        w2.control = via.VIP_CONTROL_OP_RDMAWRITE
    via.VipPostSend(vi, w2)
    d = via.VipSendWait(vi, 10000)
    check(not d.status & via.VIP_STATUS_ERROR_MASK, f"write-imm status 0x{d.status:x}")
    if c.nic.iwarp:
        c.send(vi, 500000, b"written")
    out.update(c.finish(vi, peer_first=False))
    return out


# ---- 3. RDMA Read, with and without permission ----------------------------------------------
def server_rdma_read(c: Ctx) -> dict:
    vi = c.vi(enable_rdma_read=True)
    c.put(0, pattern(7, 8192))
    noread = mmap.mmap(-1, 65536)
    hn = via.VipRegisterMem(c.nic, noread, via.MemAttributes(ptag=c.ptag,
                                                            enable_rdma_write=True))
    via.VipPostRecv(vi, c.desc((100000, MSG)))
    c.accept(vi, b"rdma_read")
    c.send(vi, 200000, ADDR.pack(via.address_of(c.buf), c.h, via.address_of(noread), hn))
    out = c.finish(vi, peer_first=True, timeout_s=30)
    via.VipDeregisterMem(c.nic, noread, hn)
    return out


def client_rdma_read(c: Ctx) -> dict:
    plain = c.vi()  # no enable_rdma_read: refused at post time
    why = expect(via.VipInvalidRdmaRead, via.VipPostSend, plain, c.desc(
        (0, 64), control=via.VIP_CONTROL_OP_RDMAREAD, remote=via.AddressSegment(0, 1)))
    via.VipDestroyVi(plain)
    vi = c.vi(enable_rdma_read=True)
    via.VipPostRecv(vi, c.desc((100000, MSG)))
    c.connect(vi, b"rdma_read")
    raddr, rh, naddr, nh = ADDR.unpack(c.recv(vi, 100000)[:ADDR.size])
    c.put(300000, bytes(8192))
    out = {"max_sge_rd": c.nic.max_sge_rd}
    r = c.desc((300000, 4096), (304096, 4096), control=via.VIP_CONTROL_OP_RDMAREAD,
               remote=via.AddressSegment(raddr, rh))
    if c.nic.max_sge_rd < 2:  # siw: one sink segment per read
        out["scatter"] = expect(via.VipInvalidParameter, via.VipPostSend, vi, r)
        reads = [c.desc((300000 + o, 4096), control=via.VIP_CONTROL_OP_RDMAREAD,
                        remote=via.AddressSegment(raddr + o, rh)) for o in (0, 4096)]
    else:
        reads = [r]
    for r in reads:
        via.VipPostSend(vi, r)
    for r in reads:
        d = via.VipSendWait(vi, 10000)
        check(d.status == via.VIP_STATUS_DONE | via.VIP_STATUS_OP_RDMA_READ,
              f"read status 0x{d.status:x}")
    check(c.get(300000, 8192) == pattern(7, 8192), "RDMA Read data mismatch")
    n0 = len(c.errors)
    via.VipPostSend(vi, c.desc((300000, 4096), control=via.VIP_CONTROL_OP_RDMAREAD,
                               remote=via.AddressSegment(naddr, nh)))
    d = via.VipSendWait(vi, 20000)
    if c.nic.iwarp and not d.status & via.VIP_STATUS_ERROR_MASK:
        # Known siw (kernel 6.1) gap: the responder checks neither the memory's remote-read
        # right nor the queue pair's (no IB_ACCESS_REMOTE_READ or SIW_RDMA_READ_ENABLED test
        # in siw_qp_rx.c / siw_qp_tx.c), so this read succeeds. Recorded, not hidden; rxe
        # and hardware refuse it.
        out["siw_remote_read_unchecked"] = True
        out.update(c.finish(vi, peer_first=False))
        return out
    check(bool(d.status & via.VIP_STATUS_ERROR_MASK), f"read without permission 0x{d.status:x}")
    check(vi.state is via.ViState.ERROR, f"VI {vi.state.name} after a protection error")
    check(len(c.errors) > n0, "error callback did not fire")
    out.update(c.finish(vi, peer_first=False))
    out.update(refused=why, bad_read_status=hex(d.status), callback=c.errors[-1][1].code)
    return out


# ---- 3b. via.serve_reads: a VI that serves no reads refuses every read ----------------------
def _gate_read(c: Ctx, vi: via.Vi, raddr: int, rh: int, off: int) -> int:
    """One 8 KiB RDMA Read of the peer's pattern (one segment: iWARP); its status."""
    via.VipPostSend(vi, c.desc((off, 8192), control=via.VIP_CONTROL_OP_RDMAREAD,
                               remote=via.AddressSegment(raddr, rh)))
    return via.VipSendWait(vi, 20000).status


def server_read_gate(c: Ctx) -> dict:
    vi = c.vi(enable_rdma_read=True)
    if getattr(c.nic, "iwarp", False):  # siw serves reads whatever the queue pair says
        why = expect(via.VipNotSupported, via.serve_reads, vi, False)
        via.VipDestroyVi(vi)
        return {"iwarp": why}
    c.put(0, pattern(21, 8192))
    out = {}
    # 1. closed before the connection: it holds for the connection
    via.serve_reads(vi, False)
    via.VipPostRecv(vi, c.desc((100000, MSG)))
    c.accept(vi, b"read_gate")
    c.send(vi, 200000, ADDR.pack(via.address_of(c.buf), c.h, 0, 0))
    d = via.VipRecvWait(vi, 30000)  # flushed when the refused read breaks the connection
    out["closed_at_connect"] = hex(d.status)
    check(bool(d.status & via.VIP_STATUS_ERROR_MASK), f"receive 0x{d.status:x} after a read "
          "the VI should have refused")
    check(wait_state(vi, via.ViState.ERROR, 15), f"VI {vi.state.name} after a refused read")
    via.VipDisconnect(vi)
    # 2. opened while IDLE, closed again while connected
    via.serve_reads(vi, True)
    via.VipPostRecv(vi, c.desc((100000, MSG)))
    c.accept(vi, b"read_gate")
    c.send(vi, 200000, ADDR.pack(via.address_of(c.buf), c.h, 0, 0))
    check(c.recv(vi, 100000)[:5] == b"close", "the client's 'close' did not come")
    via.VipPostRecv(vi, c.desc((100000, MSG)))
    via.serve_reads(vi, False)
    c.send(vi, 200000, b"closed")
    d = via.VipRecvWait(vi, 30000)
    out["closed_while_connected"] = hex(d.status)
    check(bool(d.status & via.VIP_STATUS_ERROR_MASK), f"receive 0x{d.status:x} after a read "
          "the VI should have refused")
    out.update(c.finish(vi, peer_first=True))
    return out


def client_read_gate(c: Ctx) -> dict:
    vi = c.vi(enable_rdma_read=True)
    if getattr(c.nic, "iwarp", False):
        why = expect(via.VipNotSupported, via.serve_reads, vi, False)
        via.VipDestroyVi(vi)
        return {"iwarp": why}
    out = {}
    via.VipPostRecv(vi, c.desc((100000, MSG)))
    c.connect(vi, b"read_gate")
    raddr, rh, _a, _h = ADDR.unpack(c.recv(vi, 100000)[:ADDR.size])
    n0 = len(c.errors)
    st = _gate_read(c, vi, raddr, rh, 300000)
    out["refused_at_connect"] = hex(st)
    check(bool(st & via.VIP_STATUS_ERROR_MASK), f"a read from a VI that serves none: 0x{st:x}")
    check(wait_state(vi, via.ViState.ERROR, 15), f"VI {vi.state.name} after a refused read")
    check(len(c.errors) > n0, "error callback did not fire")
    via.VipDisconnect(vi)
    while via.VipRecvDone(vi) is not None:
        pass
    via.VipPostRecv(vi, c.desc((100000, MSG)))
    c.connect(vi, b"read_gate")
    raddr, rh, _a, _h = ADDR.unpack(c.recv(vi, 100000)[:ADDR.size])
    c.put(300000, bytes(8192))
    st = _gate_read(c, vi, raddr, rh, 300000)
    check(st == via.VIP_STATUS_DONE | via.VIP_STATUS_OP_RDMA_READ, f"read status 0x{st:x}")
    check(c.get(300000, 8192) == pattern(21, 8192), "RDMA Read data mismatch")
    st = _gate_read(c, vi, raddr, rh, 310000)  # (over soft's shared memory: the granted path)
    check(st == via.VIP_STATUS_DONE | via.VIP_STATUS_OP_RDMA_READ, f"read status 0x{st:x}")
    via.VipPostRecv(vi, c.desc((100000, MSG)))
    c.send(vi, 200000, b"close")
    check(c.recv(vi, 100000)[:6] == b"closed", "the server's 'closed' did not come")
    c.put(320000, bytes(8192))
    st = _gate_read(c, vi, raddr, rh, 320000)
    out["refused_after_close"] = hex(st)
    check(bool(st & via.VIP_STATUS_ERROR_MASK), f"a read after serve_reads(False): 0x{st:x}")
    check(c.get(320000, 8192) == bytes(8192), "a refused read brought data")
    out.update(c.finish(vi, peer_first=False))
    return out


# ---- 4. a receive too small, 5. an empty receive queue ---------------------------------------
def server_small_recv(c: Ctx) -> dict:
    vi = c.vi()
    via.VipPostRecv(vi, c.desc((0, 16)))
    c.accept(vi, b"small_recv")
    d = via.VipRecvWait(vi, 15000)
    check(bool(d.status & via.VIP_STATUS_LENGTH_ERROR),
          f"status 0x{d.status:x} ({d.reason}), want LENGTH")
    check(vi.state is via.ViState.ERROR, f"VI {vi.state.name}, want ERROR")
    out = c.finish(vi, peer_first=False)
    out["status"] = hex(d.status)
    return out


def client_small_recv(c: Ctx) -> dict:
    vi = c.vi()
    c.connect(vi, b"small_recv")
    c.put(0, pattern(1, 64))
    via.VipPostSend(vi, c.desc((0, 64)))
    d = via.VipSendWait(vi, 20000)  # returns (error status on RoCE), never hangs
    broke = wait_state(vi, via.ViState.ERROR, 15)
    out = c.finish(vi, peer_first=False)
    out.update(send_status=hex(d.status), vi_error=broke)
    check(broke, "the sender's VI did not go to ERROR")
    return out


def server_empty_rq(c: Ctx) -> dict:
    vi = c.vi()
    c.accept(vi, b"empty_rq")
    broke = wait_state(vi, via.ViState.ERROR, 20)
    out = c.finish(vi, peer_first=True)
    out["vi_error"] = broke
    return out


def client_empty_rq(c: Ctx) -> dict:
    vi = c.vi()
    c.connect(vi, b"empty_rq")
    c.put(0, pattern(2, 64))
    t0 = time.monotonic()
    via.VipPostSend(vi, c.desc((0, 64)))
    d = via.VipSendWait(vi, 20000)
    broke = wait_state(vi, via.ViState.ERROR, 15)
    took = round(time.monotonic() - t0, 3)
    out = c.finish(vi, peer_first=False)
    out.update(send_status=hex(d.status), vi_error=broke, seconds_to_error=took)
    check(broke, "the sender's VI did not go to ERROR")
    return out


# ---- 6. local refusals: ptags, states, parameters --------------------------------------------
def server_local(c: Ctx) -> dict:
    return {}


def client_local(c: Ctx) -> dict:
    out = {}
    vi = c.vi()
    other = via.VipCreatePtag(c.nic)
    ob = mmap.mmap(-1, 4096)
    oh = via.VipRegisterMem(c.nic, ob, via.MemAttributes(ptag=other))
    out["other_ptag"] = expect(via.VipInvalidPtag, via.VipPostRecv, vi, via.VipDescriptor(
        segments=[via.DataSegment(via.address_of(ob), oh, 64)]))
    out["vi_other_ptag"] = expect(via.VipInvalidPtag, via.VipCreateVi, c.nic,
                                  via.ViAttributes(ptag=object()))
    out["outside_region"] = expect(via.VipInvalidParameter, via.VipPostRecv, vi,
                                   c.desc(((1 << 20) - 10, 64)))
    out["send_idle"] = expect(via.VipInvalidState, via.VipPostSend, vi, c.desc((0, 64)))
    out["wait_empty"] = expect(via.VipInvalidState, via.VipRecvWait, vi, 100)
    out["readonly_buffer"] = expect(via.VipInvalidParameter, via.VipRegisterMem, c.nic,
                                    b"immutable", via.MemAttributes(ptag=c.ptag))
    out["unreliable"] = expect(via.VipNotSupported, via.VipCreateVi, c.nic, via.ViAttributes(
        ptag=c.ptag, reliability_level=via.Reliability.UNRELIABLE))
    out["long_discriminator"] = expect(via.VipInvalidParameter, via.VipConnectRequest, vi,
                                       via.NetAddress(c.local), via.NetAddress(c.peer,
                                                                               b"x" * 60), 1000)
    out["no_device"] = expect(via.VipErrorResource, via.VipOpenNic, "nosuch0")
    out["cq_zero"] = expect(via.VipInvalidParameter, via.VipCreateCQ, c.nic, 0)
    via.VipPostRecv(vi, c.desc((0, 64)))
    out["destroy_posted"] = expect(via.VipInvalidState, via.VipDestroyVi, vi)
    out["dereg_twice"] = None
    via.VipDeregisterMem(c.nic, ob, oh)
    out["dereg_twice"] = expect(via.VipInvalidParameter, via.VipDeregisterMem, c.nic, ob, oh)
    via.VipDisconnect(vi)  # IDLE VI: the posted receive is flushed
    d = via.VipRecvDone(vi)
    check(d is not None and d.status & via.VIP_STATUS_DESC_FLUSHED_ERROR, "idle flush")
    via.VipDestroyVi(vi)
    via.VipDestroyPtag(c.nic, other)
    attrs = via.VipQueryNic(c.nic)
    check(attrs.max_descriptors_per_queue > 0 and attrs.native_mtu >= 256, "VipQueryNic")
    smi = via.VipQuerySystemManagementInfo(c.nic)
    check("ACTIVE" in smi["state"], f"port state {smi['state']}")
    out["nic"] = {"name": attrs.name, "mtu": attrs.native_mtu, "max_sge":
                  attrs.max_segments_per_desc, "counters": len(smi["counters"])}
    return out


# ---- 7. reject, 8. no matching discriminator, 9. connect timeout, 10. reliability -------------
def server_reject(c: Ctx) -> dict:
    req = via.VipConnectWait(c.nic, via.NetAddress(c.local, b"reject"), 30000)
    via.VipConnectReject(req)
    return {}


def client_reject(c: Ctx) -> dict:
    vi = c.vi()
    via.VipPostRecv(vi, c.desc((0, 64)))
    why = expect(via.VipReject, c.connect, vi, b"reject")
    state, _a, _s, rq_empty = via.VipQueryVi(vi)
    check(state is via.ViState.IDLE, f"VI {state.name} after a reject")
    check(not rq_empty, "the receive posted before connect must stay posted")
    out = c.finish(vi, peer_first=False)
    out["rejected"] = why
    return out


def colliding(disc: bytes) -> bytes:
    """Another discriminator on the same rdma_cm port (the listener must still say no)."""
    for i in range(1_000_000):
        cand = b"other-%d" % i
        if port_of(cand) == port_of(disc):
            return cand
    raise RuntimeError("no colliding discriminator")


def server_no_match(c: Ctx) -> dict:
    vi = c.vi()
    c.accept(vi, b"no_match")  # rejects the colliding discriminator, then takes this one
    return c.finish(vi, peer_first=True)


def client_no_match(c: Ctx) -> dict:
    vi = c.vi()
    t0 = time.monotonic()
    nobody = expect(via.VipNoMatch, via.VipConnectRequest, vi, via.NetAddress(c.local),
                    via.NetAddress(c.peer, b"nobody listens here"), 5000)
    took = time.monotonic() - t0
    # Wait for the listener of b"no_match" to be up, through its own discriminator's port.
    other = colliding(b"no_match")
    deadline = time.monotonic() + 20
    while True:
        try:
            via.VipConnectRequest(vi, via.NetAddress(c.local), via.NetAddress(c.peer, other),
                                  5000)
            raise AssertionError("a wrong discriminator was accepted")
        except via.VipNoMatch as exc:
            if "NO_MATCH" in str(exc) or time.monotonic() > deadline:
                wrong = f"{type(exc).__name__}: {exc}"
                break
            time.sleep(0.2)  # the port is not listened on yet
    check("NO_MATCH" in wrong, f"listener's answer to a wrong discriminator: {wrong}")
    c.connect(vi, b"no_match")
    out = c.finish(vi, peer_first=False)
    out.update(nobody=nobody, nobody_seconds=round(took, 3), wrong=wrong)
    return out


def server_connect_timeout(c: Ctx) -> dict:
    req = via.VipConnectWait(c.nic, via.NetAddress(c.local, b"connect_timeout"), 30000)
    time.sleep(4)  # never answers in the client's time
    try:
        via.VipConnectReject(req)
    except (via.VipError, VerbsError):
        pass
    return {}


def client_connect_timeout(c: Ctx) -> dict:
    vi = c.vi()
    deadline = time.monotonic() + 20
    why, took = "", 0.0
    while True:
        t0 = time.monotonic()
        try:
            via.VipConnectRequest(vi, via.NetAddress(c.local),
                                  via.NetAddress(c.peer, b"connect_timeout"), 1500)
            raise AssertionError("connected to a peer that never accepts")
        except via.VipNoMatch:
            check(time.monotonic() < deadline, "the listener never came up")
            time.sleep(0.2)
        except via.VipTimeout as exc:
            took, why = time.monotonic() - t0, str(exc)
            break
    check(took < 3.0, f"VipTimeout after {took:.2f} s for a 1.5 s timeout")
    check(vi.state is via.ViState.IDLE, f"VI {vi.state.name} after a timeout")
    time.sleep(3)  # let the server's reject pass before the next scenario
    out = c.finish(vi, peer_first=False)
    out.update(timeout=why, seconds=round(took, 3))
    return out


def server_reliability(c: Ctx) -> dict:
    vi = c.vi()
    why = expect(via.VipInvalidReliabilityLevel, c.accept, vi, b"reliability")
    via.VipDestroyVi(vi)
    return {"refused": why}


def client_reliability(c: Ctx) -> dict:
    vi = c.vi(reliability_level=via.Reliability.RELIABLE_RECEPTION)
    why = expect(via.VipInvalidReliabilityLevel, c.connect, vi, b"reliability")
    via.VipDestroyVi(vi)
    return {"refused": why}


# ---- 11. disconnect flushes; reconnect the same VI -------------------------------------------
def server_disconnect_flush(c: Ctx) -> dict:
    vi = c.vi()
    n0 = len(c.errors)
    c.accept(vi, b"disconnect_flush")
    check(wait_state(vi, via.ViState.ERROR, 15), f"VI {vi.state.name}: peer's disconnect unseen")
    check(len(c.errors) > n0 and c.errors[-1][1].code == "CONN_LOST",
          f"error callback: {[e[1].code for e in c.errors[n0:]]}")
    via.VipDisconnect(vi)
    check(vi.state is via.ViState.IDLE, "VI not IDLE after VipDisconnect")
    c.accept(vi, b"disconnect_flush_again")
    c.send(vi, 0, pattern(11, 128))
    return c.finish(vi, peer_first=True)


def client_disconnect_flush(c: Ctx) -> dict:
    vi = c.vi()
    posted = [c.desc((i * 1024, 1024)) for i in range(5)]
    for d in posted[:4]:
        via.VipPostRecv(vi, d)
    c.connect(vi, b"disconnect_flush")
    via.VipPostRecv(vi, posted[4])
    via.VipDisconnect(vi)
    check(vi.state is via.ViState.IDLE, f"VI {vi.state.name} after VipDisconnect")
    got = []
    while (d := via.VipRecvDone(vi)) is not None:
        got.append(d)
    check(got == posted, f"{len(got)} of 5 descriptors back, in post order: {got == posted}")
    check(all(d.status & via.VIP_STATUS_DESC_FLUSHED_ERROR for d in got), "not DESC_FLUSHED")
    via.VipPostRecv(vi, c.desc((8192, 1024)))
    c.connect(vi, b"disconnect_flush_again")
    check(c.recv(vi, 8192) == pattern(11, 128), "data after reconnect")
    out = c.finish(vi, peer_first=False)
    out["flushed"] = len(got)
    return out


# ---- 12. ServernetReset, then reconnect -------------------------------------------------------
def server_reset(c: Ctx) -> dict:
    vi = c.vi()
    c.accept(vi, b"reset")
    check(wait_state(vi, via.ViState.ERROR, 15), "peer's reset unseen")
    via.VipDisconnect(vi)
    c.accept(vi, b"reset")
    c.send(vi, 0, pattern(12, 300))
    return c.finish(vi, peer_first=True)


def client_reset(c: Ctx) -> dict:
    vi = c.vi()
    via.VipPostRecv(vi, c.desc((0, 1024)))
    c.connect(vi, b"reset")
    via.ServernetReset(c.nic)
    check(vi.state is via.ViState.IDLE, f"VI {vi.state.name} after ServernetReset")
    d = via.VipRecvDone(vi)
    check(d is not None and d.status & via.VIP_STATUS_DESC_FLUSHED_ERROR, "receive not flushed")
    via.VipPostRecv(vi, c.desc((4096, 1024)))
    c.connect(vi, b"reset")
    check(c.recv(vi, 4096) == pattern(12, 300), "data after reset and reconnect")
    return c.finish(vi, peer_first=False)


# ---- 13. completion queues and notify ---------------------------------------------------------
def server_cq_notify(c: Ctx) -> dict:
    vi = c.vi()
    via.VipPostRecv(vi, c.desc((0, MSG)))
    via.VipPostRecv(vi, c.desc((MSG, MSG)))
    c.accept(vi, b"cq_notify")
    check(c.recv(vi, 0) == b"one", "first message")
    c.send(vi, 4096, b"two")
    c.send(vi, 8192, b"three")
    check(c.recv(vi, MSG) == b"go", "go message")
    c.send(vi, 12288, b"notified")
    return c.finish(vi, peer_first=True)


def client_cq_notify(c: Ctx) -> dict:
    cq = via.VipCreateCQ(c.nic, 64)
    vi = c.vi(send_cq=cq, recv_cq=cq)
    for i in range(2):
        via.VipPostRecv(vi, c.desc((65536 + i * MSG, MSG)))
    c.connect(vi, b"cq_notify")
    c.put(0, b"one")
    via.VipPostSend(vi, c.desc((0, 3)))
    sends, recvs = [], []  # order is kept per work queue, not across the two
    while len(sends) + len(recvs) < 3:
        who, is_recv = via.VipCQWait(cq, 10000)
        check(who is vi, "CQ names another VI")
        d = (via.VipRecvDone if is_recv else via.VipSendDone)(vi)
        check(d is not None and not d.status & via.VIP_STATUS_ERROR_MASK, "CQ then Done")
        if is_recv:
            recvs.append(c.get(65536 + len(recvs) * MSG, d.length).decode())
        else:
            sends.append(d.length)
    check(sends == [3] and recvs == ["two", "three"], f"CQ gave sends {sends}, recvs {recvs}")
    check(via.VipCQDone(cq) is None, "CQ should be empty")
    try:
        via.VipResizeCQ(cq, 128)
        resized = "yes"
    except via.VipNotSupported as exc:  # siw cannot resize a CQ
        check(c.nic.iwarp, f"resize refused on {c.nic.name}: {exc}")
        resized = str(exc)
    busy = expect(via.VipInvalidState, via.VipDestroyCQ, cq)
    fired = threading.Event()
    hits = []
    via.VipPostRecv(vi, c.desc((70000, MSG)))
    via.VipRecvNotify(vi, "ctx", lambda ctx, nic, v, d: (hits.append((ctx, v is vi, d.status,
                                                                     d.length)), fired.set()))
    c.put(4096, b"go")
    via.VipPostSend(vi, c.desc((4096, 2)))
    check(fired.wait(15), "the receive notify handler never ran")
    check(hits[0][:2] == ("ctx", True) and not hits[0][2] & via.VIP_STATUS_ERROR_MASK,
          f"notify {hits}")
    check(c.get(70000, hits[0][3]) == b"notified", "notified data")
    while via.VipSendDone(vi) is None:
        via.VipCQWait(cq, 5000)
    out = c.finish(vi, peer_first=False)
    via.VipDestroyCQ(cq)
    out.update(busy=busy, resized=resized)
    return out


SCENARIOS = ["send_recv", "rdma_write", "rdma_read", "read_gate", "small_recv", "empty_rq",
             "local", "reject", "no_match", "connect_timeout", "reliability",
             "disconnect_flush", "reset", "cq_notify"]


def run(side: str, args) -> int:
    c = Ctx(args.dev, args.local, args.peer)
    names = args.only.split(",") if args.only else SCENARIOS
    failed = 0
    for name in names:
        t0 = time.monotonic()
        try:
            detail = globals()[f"{side}_{name}"](c)
            ok = True
        except Exception as exc:  # noqa: BLE001 - report, then on to the next scenario
            ok, failed = False, failed + 1
            detail = {"error": f"{type(exc).__name__}: {exc}",
                      "where": traceback.format_exc(limit=-3)}
            for vi in list(c.nic.vis):  # leave nothing behind for the next scenario
                try:
                    via.VipDisconnect(vi)
                    vi.destroy(force=True)
                except Exception:  # noqa: BLE001, S110 - best effort between scenarios
                    pass
        print(json.dumps({"scenario": name, "side": side, "ok": ok, "detail": detail,
                          "seconds": round(time.monotonic() - t0, 3)}, default=str), flush=True)
    via.VipCloseNic(c.nic)
    return 1 if failed else 0


# ---- the peer-killed drill: a sink on one node, a stream on the other --------------------------
def sink(args) -> int:
    c = Ctx(args.dev, args.local, args.peer)
    vi = c.vi()
    for i in range(64):
        via.VipPostRecv(vi, c.desc((i * 4096, 4096)))
    c.accept(vi, b"sink", 60000)
    print(json.dumps({"event": "connected"}), flush=True)
    n = 0
    while True:
        d = via.VipRecvWait(vi, None)
        if d.status & via.VIP_STATUS_ERROR_MASK:
            break
        n += 1
        via.VipPostRecv(vi, d)
    print(json.dumps({"event": "end", "received": n}), flush=True)
    return 0


def sinks(args) -> int:
    """Accept every connection on b"sink" (fuzz peer), each with receives posted, until
    --seconds pass; what arrives is not looked at."""
    c = Ctx(args.dev, args.local, args.peer)
    t_end, n = time.monotonic() + args.seconds, 0
    while time.monotonic() < t_end:
        vi = c.vi(enable_rdma_read=True, enable_rdma_write=True)
        for i in range(16):
            via.VipPostRecv(vi, c.desc(((n % 16) * 65536 + i * 4096, 4096)))
        try:
            c.accept(vi, b"sink", 2000)
            n += 1
        except via.VipError:
            via.VipDisconnect(vi)
            while via.VipRecvDone(vi) is not None:
                pass
            via.VipDestroyVi(vi)
    print(json.dumps({"event": "end", "accepted": n}), flush=True)
    return 0


def stream(args) -> int:
    c = Ctx(args.dev, args.local, args.peer)
    vi = c.vi()
    c.connect(vi, b"sink", 60000)
    c.put(0, zlib.compress(b"x") * 100)
    sent, t_err, status = 0, None, 0
    t_end = time.monotonic() + args.seconds
    while time.monotonic() < t_end:
        via.VipPostSend(vi, c.desc((0, 1024)))
        d = via.VipSendWait(vi, None)  # INFINITE: must still return once the peer is gone
        if d.status & via.VIP_STATUS_ERROR_MASK:
            t_err, status = time.monotonic(), d.status
            break
        sent += 1
        if sent == 20:
            print(json.dumps({"event": "streaming"}), flush=True)
        time.sleep(0.01)
    cb = [e[1].code for e in c.errors]
    print(json.dumps({"event": "end", "sent": sent, "status": hex(status),
                      "error_seen": t_err is not None, "state": vi.state.name,
                      "callbacks": cb}), flush=True)
    via.VipDisconnect(vi)
    via.VipCloseNic(c.nic)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("side", choices=["server", "client", "sink", "sinks", "stream"])
    p.add_argument("--dev", required=True)
    p.add_argument("--local", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--only", default="", help="comma-separated scenario names")
    p.add_argument("--seconds", type=float, default=120, help="stream: how long at most")
    p.add_argument("--dump-after", type=float, default=0,
                   help="print every thread's stack after this many seconds (hang hunting)")
    args = p.parse_args()
    faulthandler.enable()  # a crash in the bindings prints every thread's stack
    if args.dump_after:
        faulthandler.dump_traceback_later(args.dump_after, repeat=True)
    if args.side in ("sink", "sinks", "stream"):
        return {"sink": sink, "sinks": sinks, "stream": stream}[args.side](args)
    return run(args.side, args)


if __name__ == "__main__":
    sys.exit(main())
