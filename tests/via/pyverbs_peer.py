"""The pyverbs side of the interop test: a passive peer built on Debian's pyverbs only.

It listens with rdma_cm (pyverbs' synchronous CMID API) on --ip:--port, accepts our VI and
runs the steps of interop_common in order (see via_peer.py for the other side). With
--imm-port it also listens there (asynchronous CMID + an external QP, since the CMID API
cannot post an RDMA Write with immediate) and writes with immediate into our memory.
It imports nothing of hsp_rdma: it is the independent reference.

    python tests/via/pyverbs_peer.py --ip 10.77.1.1 --port P [--imm-port Q]
"""

from __future__ import annotations

import argparse
import faulthandler
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyverbs.cm_enums as ce
import pyverbs.enums as e
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
    is_iwarp,
    pattern,
)
from pyverbs.cmid import CMID, AddrInfo, CMEvent, CMEventChannel, ConnParam
from pyverbs.cq import CQ
from pyverbs.mr import MR
from pyverbs.pd import PD
from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
from pyverbs.wr import SGE, RecvWR, SendWR


def check_wc(wc, what: str) -> None:
    if wc is None:
        raise RuntimeError(f"{what}: no completion")
    if wc.status != e.IBV_WC_SUCCESS:
        raise RuntimeError(f"{what}: completion status {wc.status} (vendor_err {wc.vendor_err})")


def fill(mr: MR, data: bytes) -> None:
    mr.write(data, len(data), 0)


class MainPeer:
    """The synchronous-CMID connection: send/recv, RDMA Write and Read both ways."""

    def __init__(self, ip: str, port: int):
        ai = AddrInfo(src=ip, src_service=str(port), port_space=ce.RDMA_PS_TCP,
                      flags=ce.RAI_PASSIVE)
        cap = QPCap(max_send_wr=8, max_recv_wr=8, max_send_sge=1, max_recv_sge=1)
        self.listener = CMID(creator=ai, qp_init_attr=QPInitAttr(qp_type=e.IBV_QPT_RC,
                                                                 cap=cap))
        self.listener.listen()

    def send(self, mr: MR, n: int, what: str) -> None:
        self.cid.post_send(mr, e.IBV_SEND_SIGNALED, n)
        check_wc(self.cid.get_send_comp(), what)

    def recv(self, mr: MR, what: str) -> bytes:
        wc = self.cid.get_recv_comp()
        check_wc(wc, what)
        return mr.read(wc.byte_len, 0) if wc.byte_len else b""

    def run(self, rep: Report) -> bool:
        """The steps; True when the device is iWARP."""
        cid = self.cid = self.listener.get_request()
        rep.rdma = cid.dev_name
        iwarp = is_iwarp(cid.dev_name)
        rx = [cid.reg_msgs(MSG) for _ in range(3)]  # VIADDRS+A, WROTE-E, BYE
        tx = cid.reg_msgs(MSG)
        e_target = cid.reg_write(E[1] + GUARD)
        fill(e_target, bytes([FILL]) * (E[1] + GUARD))
        f_source = cid.reg_read(F[1])
        fill(f_source, pattern(F))
        c_source = cid.reg_msgs(C[1])
        fill(c_source, pattern(C))
        d_sink = cid.reg_msgs(D[1] + GUARD)
        fill(d_sink, bytes([FILL]) * (D[1] + GUARD))
        rtr = cid.reg_msgs(64) if iwarp else None
        # Every receive is posted before the accept: the peer never meets an empty queue.
        if rtr is not None:
            cid.post_recv(rtr)
        for m in rx:
            cid.post_recv(m)
        cid.accept(ConnParam(resources=1, depth=1, rnr_retry=0))
        rep.emit({"event": "accepted", "dev": cid.dev_name, "iwarp": iwarp})
        if rtr is not None:
            # Our iWARP initiator's first message: zero bytes ("ready to receive", MPA
            # without peer-to-peer mode). A plain rdma_cm peer has to absorb it.
            got = self.recv(rtr, "the initiator's ready-to-receive message")
            rep.emit({"event": "iwarp_rtr_message", "length": len(got)})

        fill(tx, ADDRS.pack(TAG_PY_ADDRS, e_target.buf, e_target.rkey, f_source.buf,
                            f_source.rkey))
        self.send(tx, ADDRS.size, "send PYADDRS")

        msg = self.recv(rx[0], "receive VIADDRS + A")
        tag, c_addr, c_rkey, d_addr, d_rkey = ADDRS.unpack_from(msg)
        diff = first_diff(msg[ADDRS.size:], pattern(A))
        rep.step("send_ours_to_pyverbs", tag == TAG_VI_ADDRS and not diff, length=len(msg),
                 tag=tag.decode(errors="replace"), diff=diff)

        fill(tx, pattern(B))
        self.send(tx, B[1], "send B")

        cid.post_write(c_source, C[1], c_addr, c_rkey, e.IBV_SEND_SIGNALED)
        check_wc(cid.get_send_comp(), "RDMA Write C")
        fill(tx, TAG_WROTE_C)
        self.send(tx, len(TAG_WROTE_C), "send WROTE-C")

        cid.post_read(d_sink, D[1], d_addr, d_rkey, e.IBV_SEND_SIGNALED)
        check_wc(cid.get_send_comp(), "RDMA Read D")
        got = d_sink.read(D[1] + GUARD, 0)
        diff = first_diff(got[:D[1]], pattern(D))
        guard_ok = got[D[1]:] == bytes([FILL]) * GUARD
        ok = rep.step("pyverbs_rdma_read", not diff and guard_ok, diff=diff, guard_ok=guard_ok)
        fill(tx, VERDICT.pack(TAG_READ_D, ok))
        self.send(tx, VERDICT.size, "send READ-D")

        msg = self.recv(rx[1], "receive WROTE-E")
        got = e_target.read(E[1] + GUARD, 0)
        diff = first_diff(got[:E[1]], pattern(E))
        guard_ok = got[E[1]:] == bytes([FILL]) * GUARD
        ok = rep.step("ours_rdma_write", msg == TAG_WROTE_E and not diff and guard_ok,
                      diff=diff, guard_ok=guard_ok, tag=msg.decode(errors="replace"))
        fill(tx, VERDICT.pack(TAG_CHECK_E, ok))
        self.send(tx, VERDICT.size, "send CHECK-E")

        # ours RDMA-reads F now; BYE says it is done (ours checks F).
        msg = self.recv(rx[2], "receive BYE")
        if msg != TAG_BYE:
            raise RuntimeError(f"expected BYE, got {msg!r}")
        cid.disconnect()
        rep.emit({"event": "disconnected"})
        return iwarp


class ImmPeer:
    """The second connection: asynchronous CMID, external QP, RDMA Write with immediate."""

    def __init__(self, ip: str, port: int):
        self.ch = CMEventChannel()
        self.lid = CMID(creator=self.ch, port_space=ce.RDMA_PS_TCP)
        self.lid.bind_addr(AddrInfo(src=ip, src_service=str(port), port_space=ce.RDMA_PS_TCP,
                                    flags=ce.RAI_PASSIVE))
        self.lid.listen()

    def event(self, want: int):
        ev = CMEvent(self.ch)
        kind, name = ev.event_type, ev.event_str()
        cid = CMID(creator=ev, listen_id=self.lid) if kind == want == \
            ce.RDMA_CM_EVENT_CONNECT_REQUEST else None
        ev.ack_cm_event()
        if kind != want:
            raise RuntimeError(f"expected rdma_cm event {want}, got {name}")
        return cid

    @staticmethod
    def poll(cq: CQ, what: str, timeout_s: float = 20):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            n, wcs = cq.poll()
            if n:
                check_wc(wcs[0], what)
                return wcs[0]
            time.sleep(0.002)  # one vCPU: leave it to rxe
        raise RuntimeError(f"{what}: no completion in {timeout_s} s")

    def run(self, rep: Report) -> None:
        cid = self.event(ce.RDMA_CM_EVENT_CONNECT_REQUEST)
        pd = cid.pd if cid.pd is not None else PD(cid.context)
        cq = CQ(cid.context, 8, None, None, 0)
        cap = QPCap(max_send_wr=4, max_recv_wr=4, max_send_sge=1, max_recv_sge=1)
        qp = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap), QPAttr())
        src = MR(pd, G[1], e.IBV_ACCESS_LOCAL_WRITE)
        fill(src, pattern(G))
        rx = [MR(pd, MSG, e.IBV_ACCESS_LOCAL_WRITE) for _ in range(2)]  # IMMADDR, BYE
        for state in (e.IBV_QPS_INIT, e.IBV_QPS_RTR, e.IBV_QPS_RTS):
            attr, mask = cid.init_qp_attr(state)
            qp.modify(attr, mask)
        for i, m in enumerate(rx):
            qp.post_recv(RecvWR(wr_id=i, num_sge=1, sg=[SGE(m.buf, MSG, m.lkey)]))
        cid.accept(ConnParam(qp_num=qp.qp_num, rnr_retry=0))
        self.event(ce.RDMA_CM_EVENT_ESTABLISHED)
        rep.emit({"event": "accepted_imm", "qp_num": qp.qp_num})

        wc = self.poll(cq, "receive IMMADDR")
        tag, g_addr, g_rkey, _, _ = ADDRS.unpack_from(rx[0].read(wc.byte_len, 0))
        if tag != TAG_IMM_ADDR:
            raise RuntimeError(f"expected IMMADDR, got {tag!r}")
        wr = SendWR(wr_id=9, opcode=e.IBV_WR_RDMA_WRITE_WITH_IMM, num_sge=1,
                    sg=[SGE(src.buf, G[1], src.lkey)], imm_data=socket.htonl(IMM),
                    send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(g_rkey, g_addr)
        qp.post_send(wr)
        self.poll(cq, "RDMA Write with immediate G")
        rep.emit({"event": "wrote_imm", "length": G[1], "imm": IMM})
        wc = self.poll(cq, "receive BYE")  # ours checked G (its step) and says bye
        msg = rx[1].read(wc.byte_len, 0)
        if msg != TAG_BYE:
            raise RuntimeError(f"expected BYE, got {msg!r}")
        cid.disconnect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--imm-port", type=int, default=0,
                    help="also run the RDMA Write with immediate step there (RoCE only)")
    ap.add_argument("--watchdog", type=float, default=50,
                    help="exit (with tracebacks) after this many seconds")
    args = ap.parse_args()
    # pyverbs' completion calls block in C: only a C-level watchdog can end a hang.
    faulthandler.dump_traceback_later(args.watchdog, exit=True)
    rep = Report("pyverbs")
    try:
        main_peer = MainPeer(args.ip, args.port)
        imm_peer = ImmPeer(args.ip, args.imm_port) if args.imm_port else None
        rep.emit({"event": "listening", "port": args.port, "imm_port": args.imm_port})
        iwarp = main_peer.run(rep)
        if imm_peer is not None and iwarp:
            rep.emit({"event": "no_imm_step", "why": "iWARP carries no immediate data"})
        elif imm_peer is not None:
            imm_peer.run(rep)
    except Exception as exc:  # noqa: BLE001 - reported as a failed run
        fail_exit(rep, exc)
    sys.exit(rep.finish())


if __name__ == "__main__":
    main()
