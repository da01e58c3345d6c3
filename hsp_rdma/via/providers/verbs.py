"""The verbs provider of hsp_rdma.via: Nic, Ptag, Vi over hsp_rdma.cext (rdma_cm RC QPs).

A discriminator selects the listener: it maps to an rdma_cm port (so one IP serves many
logical pipes) and travels in the connect private data, where the listener checks it.
"""

from __future__ import annotations

import socket
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable

from hsp_rdma.cext import verbs as cx
from hsp_rdma.errors import VerbsError
from hsp_rdma.via.constants import Control, Reliability, Status, VipReturn, ViState
from hsp_rdma.via.types import (
    MemHandle,
    NetAddress,
    ViAttributes,
    VipDescriptor,
    VipError,
    VipErrorResource,
    VipInvalidParameter,
    VipInvalidPtag,
    VipInvalidRdmaRead,
    VipInvalidReliabilityLevel,
    VipInvalidState,
    VipNoMatch,
    VipNotReachable,
    VipNotSupported,
    VipReject,
    VipTimeout,
)

PORT_BASE, PORT_SPAN = 20000, 10000
CONN = struct.Struct("<4sBBH")  # magic, version, reliability, discriminator length
CONN_MAGIC = b"VIPL"
MAX_DISCRIMINATOR = 56 - CONN.size  # RC private data holds 56 bytes
REJECT = struct.Struct("<4sB")  # magic, VipReturn code
QUEUE_DEPTH = 256

_WC_STATUS = {
    cx.WC_SUCCESS: 0,
    cx.WC_LOC_LEN_ERR: Status.LENGTH_ERROR,
    cx.WC_LOC_PROT_ERR: Status.PROTECTION_ERROR,
    cx.WC_WR_FLUSH_ERR: Status.DESC_FLUSHED_ERROR,
    cx.WC_REM_ACCESS_ERR: Status.RDMA_PROT_ERROR,
    cx.WC_REM_INV_REQ_ERR: Status.REMOTE_DESC_ERROR,
    cx.WC_REM_OP_ERR: Status.REMOTE_DESC_ERROR,
    cx.WC_RETRY_EXC_ERR: Status.TRANSPORT_ERROR,
    cx.WC_RNR_RETRY_EXC_ERR: Status.TRANSPORT_ERROR,
}


def port_of(discriminator: bytes) -> int:
    return PORT_BASE + zlib.crc32(discriminator) % PORT_SPAN


def _verbs(call: Callable, *args):
    try:
        return call(*args)
    except VerbsError as exc:
        raise VipErrorResource(str(exc), exc.errno) from exc


class Ptag:
    def __init__(self, nic: Nic):
        self.nic = nic
        self.pd = _verbs(cx.PD, nic.dev)


class Nic:
    """An open NIC: device context, rdma_cm event channel, handle table, listeners."""

    def __init__(self, name: str | None):
        self.dev = _verbs(cx.Device, name)
        self.name = self.dev.name
        self.events = _verbs(cx.EventChannel)
        self.handles: dict[int, MemHandle] = {}
        self.listeners: dict[tuple[str, bytes], cx.CMId] = {}
        self.vis: list[Vi] = []
        self.error_callback: Callable | None = None
        self._pending: deque = deque()  # cm events read while waiting for another

    def wait_event(self, want: Callable[[tuple], bool], timeout_s: float) -> tuple | None:
        """The first cm event WANT accepts (others are dispatched), or None at the deadline."""
        for i, ev in enumerate(self._pending):
            if want(ev):
                del self._pending[i]
                return ev
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ev = _verbs(self.events.get, max(1, int(left * 1000)))
            if ev is None:
                return None
            if want(ev):
                return ev
            self._dispatch(ev)

    def _dispatch(self, ev: tuple) -> None:
        kind, _status, cid, _listen, _pdata = ev
        for vi in self.vis:
            if vi.cmid is not None and vi.cmid is cid:
                if kind in (cx.EV_DISCONNECTED, cx.EV_DEVICE_REMOVAL):
                    vi.state = ViState.ERROR if kind == cx.EV_DEVICE_REMOVAL else vi.state
                    vi.peer_gone = True
                    if self.error_callback:
                        self.error_callback(vi, cx.cm_event_str(kind))
                return
        if kind == cx.EV_CONNECT_REQUEST:
            self._pending.append(ev)

    def close(self) -> None:
        for vi in list(self.vis):
            vi.destroy(force=True)
        for cid in self.listeners.values():
            cid.close()
        self.listeners.clear()
        self.events.close()
        self.dev.close()


class Vi:
    """A VI: an RC queue pair once connected; descriptors complete in post order per queue."""

    def __init__(self, nic: Nic, attrs: ViAttributes):
        if attrs.reliability_level is Reliability.UNRELIABLE:
            raise VipNotSupported("unreliable VIs (UC/UD) are not supported by the verbs "
                                  "provider: use RELIABLE_DELIVERY")
        if not isinstance(attrs.ptag, Ptag) or attrs.ptag.nic is not nic:
            raise VipInvalidPtag("the VI's ptag does not belong to this NIC")
        self.nic, self.attrs = nic, attrs
        self.state = ViState.IDLE
        self.cmid = None
        self.peer_gone = False
        self.send_cq = _verbs(cx.CQ, nic.dev, QUEUE_DEPTH)
        self.recv_cq = _verbs(cx.CQ, nic.dev, QUEUE_DEPTH)
        self.sendq: deque[VipDescriptor] = deque()
        self.recvq: deque[VipDescriptor] = deque()
        self._done: dict[int, tuple] = {}
        self._ids = 0
        self._by_id: dict[int, VipDescriptor] = {}
        self._early: list[tuple[int, list]] = []  # receives posted before the QP existed
        nic.vis.append(self)

    # ---- connection -------------------------------------------------------------------
    def _make_qp(self, cid) -> None:
        _verbs(cid.create_qp, self.attrs.ptag.pd, self.send_cq, self.recv_cq, QUEUE_DEPTH,
               QUEUE_DEPTH, 4, 0)
        self.cmid = cid
        early, self._early = self._early, []
        for wid, sges in early:
            _verbs(cid.post_recv, wid, sges)

    def connect(self, local: NetAddress, remote: NetAddress, timeout_ms: int) -> ViAttributes:
        if self.state is not ViState.IDLE:
            raise VipInvalidState(f"VI is {self.state.name}, not IDLE: cannot connect")
        if len(remote.discriminator) > MAX_DISCRIMINATOR:
            raise VipInvalidParameter(f"discriminator longer than {MAX_DISCRIMINATOR} bytes")
        nic, t = self.nic, max(timeout_ms, 1) / 1000
        cid = _verbs(cx.CMId, nic.events)
        self.state = ViState.CONNECT_PENDING
        try:
            _verbs(cid.resolve_addr, local.host, remote.host, port_of(remote.discriminator),
                   max(timeout_ms, 1))
            self._expect(cid, cx.EV_ADDR_RESOLVED, t, f"resolving {remote.host}")
            _verbs(cid.resolve_route, max(timeout_ms, 1))
            self._expect(cid, cx.EV_ROUTE_RESOLVED, t, f"route to {remote.host}")
            if cid.device_name != nic.name:
                raise VipNotReachable(f"{remote.host} is reached through {cid.device_name}, "
                                      f"not {nic.name}: use that NIC or another address")
            self._make_qp(cid)
            pdata = CONN.pack(CONN_MAGIC, 1, int(self.attrs.reliability_level),
                              len(remote.discriminator)) + remote.discriminator
            _verbs(cid.connect, pdata, 7, 0)
            ev = nic.wait_event(lambda e: e[2] is cid, t)
            if ev is None:
                raise VipTimeout(f"no answer from {remote.host} in {timeout_ms} ms")
            kind, status, _c, _l, reply = ev
            if kind == cx.EV_ESTABLISHED:
                self.state = ViState.CONNECTED
                return self.attrs
            if kind == cx.EV_REJECTED:
                if len(reply) >= REJECT.size and reply[:4] == CONN_MAGIC:
                    code = VipReturn(REJECT.unpack_from(reply)[1])
                    exc = {VipReturn.NO_MATCH: VipNoMatch,
                           VipReturn.INVALID_RELIABILITY_LEVEL: VipInvalidReliabilityLevel
                           }.get(code, VipReject)
                    raise exc(f"{remote.host} refused the connection ({code.name})")
                raise VipNoMatch(f"nothing listens at {remote.host} for discriminator "
                                 f"{remote.discriminator!r} (rdma_cm status {status})")
            raise VipNotReachable(f"{remote.host}: {cx.cm_event_str(kind)} (status {status})")
        except BaseException:
            self._reset_qp()
            raise

    def _expect(self, cid, kind: int, t: float, what: str) -> None:
        ev = self.nic.wait_event(lambda e: e[2] is cid, t)
        if ev is None:
            raise VipTimeout(f"{what}: no answer in {t * 1000:.0f} ms")
        if ev[0] != kind:
            raise VipNotReachable(f"{what}: {cx.cm_event_str(ev[0])} (status {ev[1]})")

    def _reset_qp(self) -> None:
        if self.cmid is not None:
            self.cmid.close()
        self.cmid = None
        self.state = ViState.IDLE
        self.sendq.clear()
        self.recvq.clear()
        self._by_id.clear()
        self._done.clear()
        self._early.clear()

    def disconnect(self) -> None:
        if self.cmid is None:
            self.state = ViState.IDLE
            return
        try:
            self.cmid.disconnect()
        except VerbsError:
            pass
        self._flush()
        self._reset_qp()

    def _flush(self) -> None:
        for q in (self.sendq, self.recvq):
            for d in q:
                d.status = Status.DONE | Status.DESC_FLUSHED_ERROR
        self.flushed = list(self.sendq) + list(self.recvq)

    def destroy(self, force: bool = False) -> None:
        if not force and self.state is ViState.CONNECTED:
            raise VipInvalidState("VI is CONNECTED: VipDisconnect it first")
        if not force and (self.sendq or self.recvq):
            raise VipInvalidState("VI still has posted descriptors")
        self._reset_qp()
        self.send_cq.close()
        self.recv_cq.close()
        if self in self.nic.vis:
            self.nic.vis.remove(self)

    # ---- data transfer ------------------------------------------------------------------
    def _sges(self, desc: VipDescriptor) -> list[tuple[int, int, int]]:
        out = []
        for seg in desc.segments:
            # A MemHandle carries its lkey; a plain int is looked up as an rkey (a region
            # registered without remote access may have rkey 0 on soft devices: pass the
            # MemHandle object for those).
            h = seg.handle if isinstance(seg.handle, MemHandle) else \
                self.nic.handles.get(int(seg.handle))
            if h is None or h.mr.closed:
                raise VipInvalidParameter(f"memory handle {int(seg.handle)} is not registered "
                                          "on this NIC")
            if h.mr.pd is not self.attrs.ptag.pd:
                raise VipInvalidPtag("memory and VI have different ptags")
            out.append((seg.address, seg.length, h.lkey))
        return out

    def _track(self, desc: VipDescriptor, q: deque) -> int:
        self._ids += 1
        self._by_id[self._ids] = desc
        q.append(desc)
        desc.status = 0
        desc.wr_id = self._ids
        return self._ids

    def post_send(self, desc: VipDescriptor) -> None:
        if self.state is not ViState.CONNECTED:
            raise VipInvalidState(f"VI is {self.state.name}: connect it before posting sends")
        op = desc.control & Control.OP_MASK
        sges = self._sges(desc)
        imm = bool(desc.control & Control.IMMEDIATE)
        if op == Control.OP_SENDRECV:
            opcode = cx.WR_SEND_WITH_IMM if imm else cx.WR_SEND
        elif op == Control.OP_RDMAWRITE:
            opcode = cx.WR_RDMA_WRITE_WITH_IMM if imm else cx.WR_RDMA_WRITE
        elif op == Control.OP_RDMAREAD:
            if not self.attrs.enable_rdma_read:
                raise VipInvalidRdmaRead("RDMA Read needs enable_rdma_read on the VI")
            opcode = cx.WR_RDMA_READ
        else:
            raise VipInvalidParameter(f"control 0x{desc.control:x} names no operation")
        raddr = rkey = 0
        if op != Control.OP_SENDRECV:
            if desc.address is None:
                raise VipInvalidParameter("an RDMA descriptor needs an AddressSegment")
            raddr, rkey = desc.address.address, int(desc.address.handle)
        wid = self._track(desc, self.sendq)
        try:
            self.cmid.post_send(wid, opcode, sges, raddr, rkey,
                                socket.htonl(desc.immediate & 0xFFFFFFFF),
                                True, bool(desc.control & Control.QFENCE))
        except VerbsError as exc:
            self.sendq.pop()
            raise VipErrorResource(str(exc), exc.errno) from exc

    def post_recv(self, desc: VipDescriptor) -> None:
        sges = self._sges(desc)
        wid = self._track(desc, self.recvq)
        if self.cmid is None:
            # VIPL lets receives be posted before connect; the QP only exists once rdma_cm
            # made it, so keep them and post them before the connection is accepted/made.
            self._early.append((wid, sges))
            return
        try:
            self.cmid.post_recv(wid, sges)
        except VerbsError as exc:
            self.recvq.pop()
            raise VipErrorResource(str(exc), exc.errno) from exc

    def _drain(self, cq) -> None:
        for wid, st, opcode, nbytes, imm, flags in _verbs(cq.poll, 32):
            self._done[wid] = (st, opcode, nbytes, imm, flags)

    def done(self, recv: bool) -> VipDescriptor | None:
        q = self.recvq if recv else self.sendq
        if not q:
            return None
        self._drain(self.recv_cq if recv else self.send_cq)
        head = q[0]
        wid = head.wr_id
        got = self._done.pop(wid, None)
        if got is None:
            return None
        q.popleft()
        del self._by_id[wid]
        st, opcode, nbytes, imm, flags = got
        status = Status.DONE | _WC_STATUS.get(st, Status.TRANSPORT_ERROR)
        if recv:
            status |= Status.OP_RECEIVE
            if opcode == cx.WC_RECV_RDMA_WITH_IMM:
                status |= Status.OP_REMOTE_RDMA_WRITE
            if flags & cx.WC_WITH_IMM:
                status |= Status.IMMEDIATE
                head.immediate = socket.ntohl(imm)
            head.length = nbytes
        else:
            op = head.control & Control.OP_MASK
            status |= {Control.OP_RDMAWRITE: Status.OP_RDMA_WRITE,
                       Control.OP_RDMAREAD: Status.OP_RDMA_READ}.get(op, Status.OP_SEND)
            head.length = sum(s.length for s in head.segments)
        head.status = int(status)
        if st != cx.WC_SUCCESS and self.attrs.reliability_level is not Reliability.UNRELIABLE:
            self.state = ViState.ERROR
        return head

    def wait(self, recv: bool, timeout_ms: int | None) -> VipDescriptor:
        cq = self.recv_cq if recv else self.send_cq
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            d = self.done(recv)
            if d is not None:
                return d
            q = self.recvq if recv else self.sendq
            if not q:
                raise VipInvalidState(f"no descriptor posted on the {'receive' if recv else 'send'}"
                                      " queue: nothing to wait for")
            _verbs(cq.arm)
            d = self.done(recv)
            if d is not None:
                return d
            left = 1000 if deadline is None else (deadline - time.monotonic()) * 1000
            if left <= 0:
                raise VipTimeout(f"no {'receive' if recv else 'send'} completed in "
                                 f"{timeout_ms} ms")
            # Wake at least once a second to notice a peer that vanished (cm events).
            # Wake at least once a second: a vanished peer shows as a cm event or as an
            # error completion (retry exceeded), never as a silent hang.
            _verbs(cq.wait, int(min(left, 1000)) or 1)


def accept_listener(nic: Nic, local: NetAddress):
    key = (local.host, local.discriminator)
    cid = nic.listeners.get(key)
    if cid is None:
        cid = _verbs(cx.CMId, nic.events)
        _verbs(cid.bind, local.host, port_of(local.discriminator))
        _verbs(cid.listen, 8)
        nic.listeners[key] = cid
    return cid


def parse_conn(pdata: bytes) -> tuple[int, bytes] | None:
    if len(pdata) < CONN.size:
        return None
    magic, _version, rel, dlen = CONN.unpack_from(pdata)
    if magic != CONN_MAGIC or len(pdata) < CONN.size + dlen:
        return None
    return rel, pdata[CONN.size:CONN.size + dlen]


def reject_data(code: VipReturn) -> bytes:
    return REJECT.pack(CONN_MAGIC, int(code))


__all__ = ["Nic", "Ptag", "Vi", "VipError", "accept_listener", "parse_conn", "reject_data"]
