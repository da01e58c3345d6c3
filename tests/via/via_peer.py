"""Our side of the pyverbs interop test: hsp_rdma.via, active, against pyverbs_peer.py.

One VI connects to the pyverbs listener (discriminator --disc) and runs the steps of
interop_common in order; on RoCE a second VI (discriminator --disc + "/imm") takes an RDMA
Write with immediate. Every receive is posted before the peer can send (rnr_retry=0).

    python tests/via/via_peer.py --dev rxe0 --local 10.77.1.2 --peer 10.77.1.1 --disc D
"""

from __future__ import annotations

import argparse
import faulthandler
import mmap
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from interop_common import (
    ADDRS,
    FILL,
    GUARD,
    IMM,
    MSG,
    TAG_BYE,
    TAG_CHECK_E,
    TAG_IMM_ADDR,
    TAG_PY_ADDRS,
    TAG_READ_D,
    TAG_VI_ADDRS,
    TAG_WROTE_C,
    TAG_WROTE_E,
    VERDICT,
    A,
    B,
    C,
    D,
    E,
    F,
    G,
    Report,
    fail_exit,
    first_diff,
    imm_discriminator,
    is_iwarp,
    pattern,
)

from hsp_rdma import via

# Our one registered region: 4 KiB message slots, then the RDMA areas (each + GUARD).
SLOT_SEND = 0
SLOT_RECV = (1, 2, 3, 4, 5)  # PYADDRS, B, WROTE-C, READ-D, CHECK-E
SLOT_IMM_RECV, SLOT_IMM_SEND = 6, 7
OFF_C = 8 * MSG  # pyverbs writes C here
OFF_D = OFF_C + 3 * MSG  # pyverbs reads D here
OFF_E = OFF_D + 2 * MSG  # the source of our RDMA Write E
OFF_F = OFF_E + 2 * MSG  # our RDMA Read F lands here
OFF_G = OFF_F + 2 * MSG  # pyverbs writes G (with immediate) here
SIZE = OFF_G + 2 * MSG
WAIT_MS = 15000


def check(cond: bool, why: str) -> None:
    if not cond:
        raise AssertionError(why)


class Side:
    def __init__(self, dev: str, local: str, peer: str):
        self.local, self.peer = local, peer
        self.nic = via.VipOpenNic(dev)
        self.errors: list = []
        via.VipErrorCallback(self.nic, None, lambda _c, err: self.errors.append(
            f"{err.code}: {err.message}"))
        self.ptag = via.VipCreatePtag(self.nic)
        self.buf = mmap.mmap(-1, SIZE)
        self.buf[:] = bytes([FILL]) * SIZE
        self.h = via.VipRegisterMem(self.nic, self.buf, via.MemAttributes(
            ptag=self.ptag, enable_rdma_write=True, enable_rdma_read=True))

    def vi(self) -> via.Vi:
        return via.VipCreateVi(self.nic, via.ViAttributes(
            ptag=self.ptag, enable_rdma_write=True, enable_rdma_read=True))

    def addr(self, off: int) -> int:
        return via.address_of(self.buf, off)

    def desc(self, off: int, n: int, control: int = 0, remote=None) -> via.VipDescriptor:
        return via.VipDescriptor(control=control, segments=[
            via.DataSegment(self.addr(off), self.h, n)], address=remote)

    def get(self, off: int, n: int) -> bytes:
        return bytes(self.buf[off:off + n])

    def guard_ok(self, off: int) -> bool:
        return self.get(off, GUARD) == bytes([FILL]) * GUARD

    def connect(self, vi: via.Vi, disc: bytes, budget_s: float = 20) -> int:
        """Connect, retrying while the pyverbs listener is not up yet (bounded)."""
        deadline = time.monotonic() + budget_s
        tries = 0
        while True:
            tries += 1
            try:
                via.VipConnectRequest(vi, via.NetAddress(self.local, b""),
                                      via.NetAddress(self.peer, disc), 5000)
                return tries
            except via.VipNoMatch:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def send(self, vi: via.Vi, data: bytes, slot: int = SLOT_SEND) -> None:
        self.buf[slot * MSG:slot * MSG + len(data)] = data
        via.VipPostSend(vi, self.desc(slot * MSG, len(data)))
        d = via.VipSendWait(vi, WAIT_MS)
        check(not d.status & via.VIP_STATUS_ERROR_MASK,
              f"send failed: status 0x{d.status:x} {d.reason}")

    def recv(self, vi: via.Vi, slot: int) -> bytes:
        d = via.VipRecvWait(vi, WAIT_MS)
        check(not d.status & via.VIP_STATUS_ERROR_MASK,
              f"receive failed: status 0x{d.status:x} {d.reason}")
        check(d.segments[0].address == self.addr(slot * MSG),
              "receives completed out of post order")
        return self.get(slot * MSG, d.length)

    def rdma(self, vi: via.Vi, op: int, off: int, n: int, raddr: int, rkey: int) -> int:
        via.VipPostSend(vi, self.desc(off, n, op, via.AddressSegment(raddr, rkey)))
        d = via.VipSendWait(vi, WAIT_MS)
        check(not d.status & via.VIP_STATUS_ERROR_MASK,
              f"RDMA op {op} failed: status 0x{d.status:x} {d.reason}")
        return d.status

    def close_vi(self, vi: via.Vi) -> None:
        via.VipDisconnect(vi)
        for done in (via.VipSendDone, via.VipRecvDone):
            while done(vi) is not None:
                pass
        via.VipDestroyVi(vi)


def main_steps(side: Side, rep: Report, disc: bytes) -> None:
    vi = side.vi()
    side.buf[OFF_D:OFF_D + D[1]] = pattern(D)
    for slot in SLOT_RECV:
        via.VipPostRecv(vi, side.desc(slot * MSG, MSG))
    tries = side.connect(vi, disc)
    rep.emit({"event": "connected", "tries": tries})

    msg = side.recv(vi, SLOT_RECV[0])
    tag, e_addr, e_rkey, f_addr, f_rkey = ADDRS.unpack_from(msg)
    check(tag == TAG_PY_ADDRS, f"expected PYADDRS, got {msg[:8]!r}")

    side.send(vi, ADDRS.pack(TAG_VI_ADDRS, side.addr(OFF_C), int(side.h), side.addr(OFF_D),
                             int(side.h)) + pattern(A))

    got = side.recv(vi, SLOT_RECV[1])
    diff = first_diff(got, pattern(B))
    rep.step("send_pyverbs_to_ours", not diff, length=len(got), diff=diff)

    msg = side.recv(vi, SLOT_RECV[2])
    check(msg == TAG_WROTE_C, f"expected WROTE-C, got {msg!r}")
    diff = first_diff(side.get(OFF_C, C[1]), pattern(C))
    guard = side.guard_ok(OFF_C + C[1])
    rep.step("pyverbs_rdma_write", not diff and guard, diff=diff, guard_ok=guard)

    msg = side.recv(vi, SLOT_RECV[3])
    tag, verdict = VERDICT.unpack_from(msg)
    check(tag == TAG_READ_D, f"expected READ-D, got {msg!r}")
    rep.emit({"event": "peer_verdict", "step": "pyverbs_rdma_read", "ok": bool(verdict)})

    side.buf[OFF_E:OFF_E + E[1]] = pattern(E)
    st = side.rdma(vi, via.VIP_CONTROL_OP_RDMAWRITE, OFF_E, E[1], e_addr, e_rkey)
    check(st & via.VIP_STATUS_OP_MASK == via.VIP_STATUS_OP_RDMA_WRITE,
          f"RDMA Write completed with status 0x{st:x}")
    side.send(vi, TAG_WROTE_E)
    msg = side.recv(vi, SLOT_RECV[4])
    tag, verdict = VERDICT.unpack_from(msg)
    check(tag == TAG_CHECK_E, f"expected CHECK-E, got {msg!r}")
    rep.emit({"event": "peer_verdict", "step": "ours_rdma_write", "ok": bool(verdict)})

    st = side.rdma(vi, via.VIP_CONTROL_OP_RDMAREAD, OFF_F, F[1], f_addr, f_rkey)
    diff = first_diff(side.get(OFF_F, F[1]), pattern(F))
    guard = side.guard_ok(OFF_F + F[1])
    op_ok = st & via.VIP_STATUS_OP_MASK == via.VIP_STATUS_OP_RDMA_READ
    rep.step("ours_rdma_read", not diff and guard and op_ok, diff=diff, guard_ok=guard,
             status=f"0x{st:x}")

    side.send(vi, TAG_BYE)
    side.close_vi(vi)


def imm_step(side: Side, rep: Report, disc: bytes) -> None:
    vi = side.vi()
    via.VipPostRecv(vi, side.desc(SLOT_IMM_RECV * MSG, MSG))
    tries = side.connect(vi, imm_discriminator(disc))
    rep.emit({"event": "connected_imm", "tries": tries})
    side.send(vi, ADDRS.pack(TAG_IMM_ADDR, side.addr(OFF_G), int(side.h), 0, 0), SLOT_IMM_SEND)
    d = via.VipRecvWait(vi, WAIT_MS)
    st = d.status
    want = via.VIP_STATUS_OP_REMOTE_RDMA_WRITE | via.VIP_STATUS_IMMEDIATE
    status_ok = (not st & via.VIP_STATUS_ERROR_MASK and st & via.VIP_STATUS_OP_MASK
                 == via.VIP_STATUS_OP_REMOTE_RDMA_WRITE and bool(st & via.VIP_STATUS_IMMEDIATE))
    diff = first_diff(side.get(OFF_G, G[1]), pattern(G))
    guard = side.guard_ok(OFF_G + G[1])
    slot_untouched = side.get(SLOT_IMM_RECV * MSG, 16) == bytes([FILL]) * 16
    rep.step("pyverbs_rdma_write_imm",
             status_ok and d.immediate == IMM and d.length == G[1] and not diff and guard
             and slot_untouched,
             status=f"0x{st:x}", want_status_bits=f"0x{want:x}", immediate=f"0x{d.immediate:x}",
             want_immediate=f"0x{IMM:x}", length=d.length, diff=diff, guard_ok=guard,
             recv_slot_untouched=slot_untouched, reason=d.reason)
    side.send(vi, TAG_BYE, SLOT_IMM_SEND)
    side.close_vi(vi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", required=True)
    ap.add_argument("--local", required=True)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--disc", required=True)
    ap.add_argument("--watchdog", type=float, default=50)
    args = ap.parse_args()
    faulthandler.dump_traceback_later(args.watchdog, exit=True)
    rep = Report("via", args.dev)
    disc = args.disc.encode()
    try:
        side = Side(args.dev, args.local, args.peer)
        main_steps(side, rep, disc)
        if is_iwarp(args.dev):
            rep.emit({"event": "no_imm_step", "why": "iWARP carries no immediate data"})
        else:
            imm_step(side, rep, disc)
        if side.errors:
            rep.emit({"event": "error_callbacks", "errors": side.errors})
        via.VipCloseNic(side.nic)
    except Exception as exc:  # noqa: BLE001 - reported as a failed run
        fail_exit(rep, exc)
    sys.exit(rep.finish())


if __name__ == "__main__":
    main()
