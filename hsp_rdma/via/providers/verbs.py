"""The verbs provider of hsp_rdma.via: Nic, Ptag, CompletionQueue, Vi over hsp_rdma.cext.

A discriminator selects the listener: it maps to an rdma_cm port (so one IP serves many
logical pipes) and travels in the connect private data, where the listener checks it.

Each Nic runs one event thread (asleep in poll(2), GIL released) that reads the rdma_cm event
channel and the device's asynchronous events: a peer's disconnect, a fatal QP error or a port
going down puts the VI in ERROR and reaches the error callback as it happens, not at the next
call. Events a call waits for (address resolved, established, connect request…) are queued
for it.

Work request ids carry the VI and the queue: ``serial << 40 | is_recv << 39 | sequence``, so a
completion queue shared by several VIs (VipCreateCQ) routes each completion to its VI.
"""

from __future__ import annotations

import itertools
import socket
import struct
import sys
import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

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
# RC ACK timeout 4.096 us * 2**17 = 0.54 s; with 6 retries a peer that vanished fails the
# send after about 4 s (rdma_cm leaves the timeout 0 = forever on rdma_rxe, and rxe reads a
# retry count of 7 as "forever" too). iWARP rides on TCP, whose own retransmission limit
# (net.ipv4.tcp_retries2) decides there.
ACK_TIMEOUT_EXP = 17
RC_RETRY_COUNT = 6
IWARP_TEARDOWN_WAIT_S = 3.0  # at most, for earlier queue pairs, before a new one is made
RESOLVE_TRY_MS = 2000  # one address-resolution try; connect() makes more within its timeout
SEQ_BITS = 39
_ETIMEDOUT = 110
_ENODATA = 61
_ECONNREFUSED = 111

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
# A completion as _REC unpacks a WC_FORMAT record (wr_id, status, opcode, byte_len, imm,
# wc_flags, qp_num); VI._done keeps these tuples as they come.
_REC = struct.Struct(cx.WC_FORMAT)
assert _REC.size == cx.WC_SIZE
_POLL_BATCH = 32  # completions per poll_into
_FLUSHED = (0, cx.WC_WR_FLUSH_ERR, 0, 0, 0, 0, 0)

# The hot path works on plain ints: an operation on a flag enum is a Python call (~8 us in a
# TCG guest). Descriptor status values are those of the Status members, as ints.
_OP_MASK = int(Control.OP_MASK)
_C_SENDRECV, _C_RDMAWRITE, _C_RDMAREAD = (int(Control.OP_SENDRECV), int(Control.OP_RDMAWRITE),
                                          int(Control.OP_RDMAREAD))
_C_IMMEDIATE, _C_QFENCE = int(Control.IMMEDIATE), int(Control.QFENCE)
_S_DONE, _S_IMMEDIATE = int(Status.DONE), int(Status.IMMEDIATE)
_S_RECV_OK = _S_DONE | int(Status.OP_RECEIVE)
_S_RECV_RDMA_OK = _S_RECV_OK | int(Status.OP_REMOTE_RDMA_WRITE)
_S_SEND_OK = {_C_SENDRECV: _S_DONE | int(Status.OP_SEND),  # by control & OP_MASK
              _C_RDMAWRITE: _S_DONE | int(Status.OP_RDMA_WRITE),
              _C_RDMAREAD: _S_DONE | int(Status.OP_RDMA_READ)}
_WC_OK = cx.WC_SUCCESS
_WC_RECV_RDMA_WITH_IMM, _WC_WITH_IMM = cx.WC_RECV_RDMA_WITH_IMM, cx.WC_WITH_IMM
_WR_SEND, _WR_RDMA_WRITE = cx.WR_SEND, cx.WR_RDMA_WRITE
_CONNECTED = ViState.CONNECTED
_ntohl = socket.ntohl


def port_of(discriminator: bytes) -> int:
    return PORT_BASE + zlib.crc32(discriminator) % PORT_SPAN


def _verbs(call: Callable, *args):
    try:
        return call(*args)
    except VerbsError as exc:
        raise VipErrorResource(str(exc), exc.errno) from exc


@dataclass
class ErrorDescriptor:
    """What VIPL's error handler receives (VIP_ERROR_DESCRIPTOR)."""

    nic: Nic
    vi: Vi | None
    resource: str  # "VI", "NIC", "CQ", "PORT"
    code: str  # CONN_LOST, TRANSPORT, PROTECTION, QP_FATAL, PORT_DOWN, …
    message: str
    descriptor: VipDescriptor | None = None


class Ptag:
    def __init__(self, nic: Nic):
        self.nic = nic
        self.pd = _verbs(cx.PD, nic.dev)


class CompletionQueue:
    """A verbs CQ. VIPL CQs (``vipl=True``) also keep which work queue completed, in order."""

    def __init__(self, nic: Nic, entries: int, vipl: bool = False):
        if entries < 1:
            raise VipInvalidParameter(f"a completion queue needs at least 1 entry, not {entries}")
        self.nic, self.vipl = nic, vipl
        self.cq = _verbs(cx.CQ, nic.dev, entries)
        self.fifo: deque[tuple[Vi, bool]] = deque()
        self.users = 0  # work queues attached (VipDestroyCQ refuses while > 0)
        # poll_into buffers, reused: a drain takes one from the list (and gives it back), so
        # threads draining the same CQ at once each fill a buffer of their own.
        self._bufs = [bytearray(_POLL_BATCH * _REC.size)]

    def drain(self) -> None:
        """Route every completion on the CQ to the VI (and work queue) it belongs to."""
        bufs = self._bufs
        try:
            buf = bufs.pop()
        except IndexError:
            buf = bytearray(_POLL_BATCH * _REC.size)
        try:
            poll_into = self.cq.poll_into
            by_serial = self.nic.vi_by_serial
            unpack_from, size = _REC.unpack_from, _REC.size
            while True:
                try:
                    n = poll_into(buf)
                except VerbsError as exc:
                    raise VipErrorResource(str(exc), exc.errno) from exc
                if not n:
                    return
                for off in range(0, n * size, size):
                    rec = unpack_from(buf, off)
                    wid = rec[0]
                    vi = by_serial.get(wid >> (SEQ_BITS + 1))
                    if vi is None:
                        continue
                    vi._done[wid] = rec
                    if self.vipl:
                        self.fifo.append((vi, bool((wid >> SEQ_BITS) & 1)))
                if n < _POLL_BATCH:
                    return
        finally:
            bufs.append(buf)

    def wait(self, timeout_ms: int) -> None:
        """Arm and sleep on the completion channel (GIL released) up to TIMEOUT_MS."""
        _verbs(self.cq.arm)
        self.drain()
        _verbs(self.cq.wait, max(1, int(timeout_ms)))

    def close(self) -> None:
        self.cq.close()

    def fileno(self) -> int:
        """The completion channel's fd, for a selector: readable once the armed CQ has an
        event (arm it with ``arm()``, take the event with ``take_event()``)."""
        return self.cq.fd

    def arm(self) -> None:
        _verbs(self.cq.arm)

    def take_event(self) -> bool:
        """Consume one completion event without blocking and re-arm; True if one was there.
        Then take the completions (``Vi.done``): any that came before the re-arm are there."""
        cq = self.cq
        try:
            got = cq.wait(0)
            cq.arm()
        except VerbsError as exc:
            raise VipErrorResource(str(exc), exc.errno) from exc
        return bool(got)


class Nic:
    """An open NIC: device context, rdma_cm event channel and its thread, handle table."""

    def __init__(self, name: str | None):
        self.dev = _verbs(cx.Device, name)
        self.name = self.dev.name
        self.iwarp = self.dev.transport == "iWARP"
        self.max_sge_rd = max(1, self.dev.query_device()["max_sge_rd"])
        try:
            self.events = _verbs(cx.EventChannel)
        except BaseException:
            self.dev.close()
            raise
        self.handles: dict[int, MemHandle] = {}
        self.listeners: dict[tuple[str, bytes], cx.CMId] = {}
        self.vis: list[Vi] = []
        self.vi_by_serial: dict[int, Vi] = {}
        self._serials = itertools.count(1)
        self.error_handler: Callable | None = None
        self.error_context: object = None
        self.errors: list[ErrorDescriptor] = []  # every error reported, newest last
        self._cv = threading.Condition()
        self._queue: deque[tuple] = deque(maxlen=4096)  # cm events for waiting calls
        self._closing = False
        self._thread_error: BaseException | None = None
        self._thread = threading.Thread(
            target=_event_loop, args=(weakref.ref(self), self.events, self.dev),
            name=f"via-events-{self.name}", daemon=True)
        self._thread.start()

    # ---- events ----------------------------------------------------------------------
    def wait_event(self, want: Callable[[tuple], bool], timeout_s: float) -> tuple | None:
        """The first queued cm event WANT accepts, or None at the deadline."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while True:
                for i, ev in enumerate(self._queue):
                    if want(ev):
                        del self._queue[i]
                        return ev
                if self._thread_error is not None:
                    raise VipErrorResource(f"{self.name}: the event thread failed: "
                                           f"{self._thread_error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)

    def _on_cm(self, ev: tuple) -> None:
        kind, _status, cid, _listen, _pdata = ev
        if kind in (cx.EV_DISCONNECTED, cx.EV_DEVICE_REMOVAL, cx.EV_TIMEWAIT_EXIT):
            for vi in self.vis:
                if vi.cmid is not None and vi.cmid is cid:
                    if kind != cx.EV_TIMEWAIT_EXIT:
                        vi._lost(cx.cm_event_str(kind))
                    return
            if kind != cx.EV_DISCONNECTED or cid is None:
                return
        with self._cv:
            self._queue.append(ev)
            self._cv.notify_all()

    def _on_async(self, ev: tuple) -> None:
        kind, name, elem = ev
        if kind in (cx.EVENT_QP_FATAL, cx.EVENT_QP_REQ_ERR, cx.EVENT_QP_ACCESS_ERR):
            for vi in self.vis:
                if vi.cmid is not None and vi.cmid.qp_num == elem:
                    vi._fail("QP_FATAL" if kind == cx.EVENT_QP_FATAL else "PROTECTION",
                             f"asynchronous event {name}")
        elif kind in (cx.EVENT_PORT_ERR, cx.EVENT_DEVICE_FATAL):
            self.report(ErrorDescriptor(self, None, "PORT" if kind == cx.EVENT_PORT_ERR
                                        else "NIC", "PORT_DOWN" if kind == cx.EVENT_PORT_ERR
                                        else "NIC_FATAL", f"{self.name}: {name}"))

    def report(self, err: ErrorDescriptor) -> None:
        self.errors.append(err)
        del self.errors[:-64]
        if self.error_handler is not None:
            try:
                self.error_handler(self.error_context, err)
            except Exception as exc:  # noqa: BLE001 - a handler's bug must not kill the thread
                print(f"hsp_rdma.via: error handler raised {exc!r}", file=sys.stderr)

    # ---- life -------------------------------------------------------------------------
    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._thread.join(2)
        for vi in list(self.vis):
            vi.destroy(force=True)
        for cid in self.listeners.values():
            cid.close()
        self.listeners.clear()
        self.events.close()
        self.dev.close()

    @property
    def closed(self) -> bool:
        return self._closing


def _event_loop(ref: Callable[[], Nic | None], events, dev) -> None:
    """The NIC's event thread: cm events and async events, until the NIC closes or is gone."""
    fds = [events.fd, dev.async_fd]
    while True:
        nic = ref()
        if nic is None or nic._closing:
            return
        try:
            del nic
            ready = cx.wait_fds(fds, 200)
            nic = ref()
            if nic is None or nic._closing:
                return
            if fds[0] in ready:
                ev = events.get(0)
                if ev is not None:
                    nic._on_cm(ev)
            if fds[1] in ready:
                aev = dev.get_async_event(0)
                if aev is not None:
                    nic._on_async(aev)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            nic = ref()
            if nic is not None and not nic._closing:
                with nic._cv:
                    nic._thread_error = exc
                    nic._cv.notify_all()
            return


class Vi:
    """A VI: an RC queue pair once connected; descriptors complete in post order per queue."""

    def __init__(self, nic: Nic, attrs: ViAttributes, send_cq: CompletionQueue | None = None,
                 recv_cq: CompletionQueue | None = None):
        if attrs.reliability_level is Reliability.UNRELIABLE:
            raise VipNotSupported("unreliable VIs (UC/UD) are not supported by the verbs "
                                  "provider: use RELIABLE_DELIVERY")
        if not isinstance(attrs.ptag, Ptag) or attrs.ptag.nic is not nic:
            raise VipInvalidPtag("the VI's ptag does not belong to this NIC")
        for cq in (send_cq, recv_cq):
            if cq is not None and (not isinstance(cq, CompletionQueue) or cq.nic is not nic):
                raise VipInvalidParameter("the completion queue does not belong to this NIC")
        self.nic, self.attrs = nic, attrs
        self.state = ViState.IDLE
        self.cmid = None
        self.peer_gone = False
        self.serves_reads = True  # (via.serve_reads: the queue pair's IBV_ACCESS_REMOTE_READ)
        self.why_error = "no reason recorded"  # what put the VI in ERROR, for messages
        self.serial = next(nic._serials)
        self._send_base = self.serial << (SEQ_BITS + 1)  # | sequence: a send's work id
        self._recv_base = self._send_base | (1 << SEQ_BITS)
        self._own = [CompletionQueue(nic, QUEUE_DEPTH) for cq in (send_cq, recv_cq)
                     if cq is None]
        own = iter(self._own)
        self.send_cq = send_cq or next(own)
        self.recv_cq = recv_cq or next(own)
        self.shared = (send_cq, recv_cq)
        for cq in self.shared:
            if cq is not None:
                cq.users += 1
        self.sendq: deque[VipDescriptor] = deque()
        self.recvq: deque[VipDescriptor] = deque()
        self._done: dict[int, tuple] = {}
        self._seq = itertools.count(1)
        self._recv_sges: dict[int, list] = {}  # to post again on a new queue pair
        self._reposted: list[int] = []
        self._rtr_mr = None  # iWARP: the region of the ready-to-receive message
        self._reaping: list[threading.Thread] = []  # queue pairs being destroyed
        self._notify: list[threading.Thread] = []
        nic.vis.append(self)
        nic.vi_by_serial[self.serial] = self

    # ---- errors ------------------------------------------------------------------------
    def _fail(self, code: str, message: str, desc: VipDescriptor | None = None) -> None:
        """A connected VI broke: ERROR, and the error handler hears of it (once)."""
        if self.state is not ViState.CONNECTED:
            return
        self.state = ViState.ERROR
        self.why_error = f"{code}: {message}"
        self.nic.report(ErrorDescriptor(self.nic, self, "VI", code, message, desc))

    def _lost(self, why: str) -> None:
        """The peer disconnected or vanished: ERROR; the QP flushes what is still posted."""
        self.peer_gone = True
        if self.cmid is not None:
            try:
                self.cmid.disconnect()  # answers the peer and moves the QP to ERR (flush)
            except VerbsError:
                pass
        self._fail("CONN_LOST", f"connection lost: {why}")

    # ---- connection -------------------------------------------------------------------
    def _await_teardown(self, limit_s: float) -> None:
        """Wait (at most LIMIT_S in all) for the queue pairs this VI is still destroying."""
        deadline = time.monotonic() + limit_s
        for t in self._reaping:
            t.join(max(0.0, deadline - time.monotonic()))
        self._reaping = [t for t in self._reaping if t.is_alive()]

    def _make_qp(self, cid, passive: bool = False,
                 teardown_s: float = IWARP_TEARDOWN_WAIT_S) -> None:
        if self.nic.iwarp:
            # The previous connection's teardown (rdma_destroy_id in a reaper thread) ends
            # before the new one carries data: a reconnect racing it on siw could leave the
            # new connection's first send unsent (the siw `reset` scenario, ~1 run in 20).
            self._await_teardown(teardown_s)
        else:
            _verbs(cid.set_ack_timeout, ACK_TIMEOUT_EXP)
        _verbs(cid.create_qp, self.attrs.ptag.pd, self.send_cq.cq, self.recv_cq.cq,
               QUEUE_DEPTH + 1, QUEUE_DEPTH + 1, 4, 0)
        self.cmid = cid
        if passive and self.nic.iwarp:
            # MPA (RFC 5044) without peer-to-peer mode: the initiator sends first. The passive
            # side holds one receive of its own ahead of the user's for the initiator's
            # zero-length "ready" message, and lets no user send go before it came.
            _verbs(cid.post_recv, self._rtr_id(), [self._rtr_sge()])
        # Receives posted while IDLE (VIPL allows it) go onto the new queue pair, under new
        # ids so that nothing left from an earlier queue pair can be taken for them; those
        # already complete (flushed by an earlier disconnect, not yet taken) stay as they are.
        self._reposted = []
        for desc in self.recvq:
            if desc.wr_id in self._done:
                continue
            sges = self._recv_sges.pop(desc.wr_id, None)
            if sges is None:  # posted onto an earlier queue pair (post_recv keeps no list)
                sges = self._sges(desc)
            desc.wr_id = self._next_id(True)
            self._recv_sges[desc.wr_id] = sges
            self._reposted.append(desc.wr_id)
            _verbs(cid.post_recv, desc.wr_id, sges)

    def connect(self, local: NetAddress, remote: NetAddress, timeout_ms: int) -> ViAttributes:
        if self.state is not ViState.IDLE:
            raise VipInvalidState(f"VI is {self.state.name}, not IDLE: cannot connect")
        if len(remote.discriminator) > MAX_DISCRIMINATOR:
            raise VipInvalidParameter(f"discriminator longer than {MAX_DISCRIMINATOR} bytes")
        nic = self.nic
        deadline = time.monotonic() + max(timeout_ms, 1) / 1000
        self.state = ViState.CONNECT_PENDING
        try:
            cid = self._resolve(local, remote, deadline, timeout_ms)
        except BaseException:
            self.state = ViState.IDLE
            raise
        try:
            _verbs(cid.resolve_route, max(1, int((deadline - time.monotonic()) * 1000)))
            self._expect(cid, cx.EV_ROUTE_RESOLVED, deadline, f"route to {remote.host}")
            if cid.device_name != nic.name:
                raise VipNotReachable(f"{remote.host} is reached through {cid.device_name}, "
                                      f"not {nic.name}: use that NIC or another address")
            self.peer_gone = False
            self._make_qp(cid, teardown_s=min(IWARP_TEARDOWN_WAIT_S,
                                              max(0.0, deadline - time.monotonic())))
            pdata = CONN.pack(CONN_MAGIC, 1, int(self.attrs.reliability_level),
                              len(remote.discriminator)) + remote.discriminator
            try:
                cid.connect(pdata, RC_RETRY_COUNT, 0)
            except VerbsError as exc:
                if exc.errno == _ECONNREFUSED:  # iWARP connects at once, over TCP
                    raise VipNoMatch(f"nothing listens at {remote.host} for discriminator "
                                     f"{remote.discriminator!r}") from exc
                raise VipErrorResource(str(exc), exc.errno) from exc
            ev = nic.wait_event(lambda e: e[2] is cid, deadline - time.monotonic())
            if ev is None:
                raise VipTimeout(f"no answer from {remote.host} in {timeout_ms} ms")
            kind, status, _c, _l, reply = ev
            if kind == cx.EV_ESTABLISHED:
                if nic.iwarp:  # the initiator's first message: "ready to receive"
                    _verbs(cid.post_send, self._rtr_id(), cx.WR_SEND, [self._rtr_sge()], 0,
                           0, 0, False)
                self._established()
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
            raise _unreachable(f"{remote.host}", kind, status)
        except BaseException:
            self._abandon_qp()
            raise

    def _resolve(self, local: NetAddress, remote: NetAddress, deadline: float,
                 timeout_ms: int):
        """A cm id with REMOTE's address resolved. Each try asks at most RESOLVE_TRY_MS and
        hears the kernel's own verdict; a try that timed out (an ARP request or answer lost,
        a peer that was rebooting) is made again with a fresh id while time is left."""
        nic, last = self.nic, None
        while (left := deadline - time.monotonic()) > 0:
            try_ms = max(1, min(int(left * 1000), RESOLVE_TRY_MS))
            cid = _verbs(cx.CMId, nic.events)
            try:
                _verbs(cid.resolve_addr, local.host, remote.host,
                       port_of(remote.discriminator), try_ms)
                ev = nic.wait_event(lambda e, c=cid: e[2] is c, try_ms / 1000 + 0.5)
            except BaseException:
                cid.close()
                raise
            if ev is not None and ev[0] == cx.EV_ADDR_RESOLVED:
                return cid
            cid.close()
            if ev is not None and not (ev[0] == cx.EV_ADDR_ERROR
                                       and ev[1] in (-_ETIMEDOUT, -_ENODATA)):
                raise _unreachable(f"resolving {remote.host}", ev[0], ev[1])
            last = ev
        why = "timed out" if last is None else cx.cm_event_str(last[0])
        raise VipTimeout(f"resolving {remote.host}: no answer in {timeout_ms} ms ({why}; "
                         f"{_arp_state(remote.host)})")

    def _abandon_qp(self) -> None:
        """A connection that never came up: its queue pair goes, the receives stay posted."""
        self._drop_qp()
        for wid in self._reposted:
            self._done.pop(wid, None)
        self._reposted = []
        self.state = ViState.IDLE

    def accept(self, cid) -> None:
        """Make the queue pair on the request's id and accept (VipConnectAccept)."""
        self.state = ViState.CONNECT_PENDING
        self.peer_gone = False
        try:
            self._make_qp(cid, passive=True)
            _verbs(cid.accept, b"", 0)
            ev = self.nic.wait_event(lambda e: e[2] is cid, 30)
            if ev is None or ev[0] != cx.EV_ESTABLISHED:
                raise VipNotReachable("the connection did not establish "
                                      f"({cx.cm_event_str(ev[0]) if ev else 'timeout'})")
            if self.nic.iwarp:
                self._await_rtr(30)
        except BaseException:
            self._abandon_qp()
            raise
        self._established()

    def _rtr_sge(self) -> tuple[int, int, int]:
        """A zero-length segment in a small region of the VI's own (siw wants one)."""
        if self._rtr_mr is None or self._rtr_mr.closed:
            self._rtr_buf = bytearray(64)
            self._rtr_mr = _verbs(cx.MR, self.attrs.ptag.pd, self._rtr_buf,
                                  cx.ACCESS_LOCAL_WRITE)
        return (self._rtr_mr.addr, 0, self._rtr_mr.lkey)

    def _rtr_id(self) -> int:
        """The id of the iWARP ready-to-receive message (sequence 0: never a user's)."""
        return (self.serial << (SEQ_BITS + 1)) | (1 << SEQ_BITS)

    def _await_rtr(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.recv_cq.drain()
            if self._done.pop(self._rtr_id(), None) is not None:
                return
            if self.peer_gone:
                raise VipNotReachable("the peer left before its first message")
            left = deadline - time.monotonic()
            if left <= 0:
                raise VipTimeout(f"the initiator sent nothing in {timeout_s:.0f} s after "
                                 "the iWARP connection came up")
            self.recv_cq.wait(min(left * 1000, 200))

    def serve_reads(self, allowed: bool) -> None:
        """via.serve_reads: kept for every queue pair of this VI, applied now if connected.
        Not on iWARP: siw (Linux 6.1) records the queue pair's remote-read flag but serves
        a read request whatever it says (siw_qp_rx.c and siw_qp_tx.c never test it), so the
        flag would promise what the device does not do. The GIL is held throughout: close()
        clears has_qp under the GIL before it destroys the queue pair."""
        if self.nic.iwarp:
            raise VipNotSupported(f"{self.nic.name} is iWARP: its queue pairs serve the "
                                  "peer's RDMA Reads whatever their remote-read flag says "
                                  "(siw never tests it); register a region for remote read "
                                  "only while its reads may be served")
        self.serves_reads = allowed
        if self.cmid is not None and self.state is ViState.CONNECTED:
            try:
                self.cmid.serve_reads(allowed)
            except VerbsError as exc:
                if allowed:
                    raise VipErrorResource(f"cannot open the VI for the peer's RDMA Reads: "
                                           f"{exc}", exc.errno) from exc
                # Fail closed: a queue pair that may still serve reads is ended.
                self._lost(f"cannot close the VI for the peer's RDMA Reads: {exc}")

    def _established(self) -> None:
        self.state = ViState.CONNECTED
        if not self.serves_reads:  # the connection manager's queue pair serves reads
            self.serve_reads(False)
        if self.peer_gone:  # the peer left before we saw the connection come up
            self._fail("CONN_LOST", "the peer disconnected as the connection came up")

    def _expect(self, cid, kind: int, deadline: float, what: str) -> None:
        ev = self.nic.wait_event(lambda e: e[2] is cid, deadline - time.monotonic())
        if ev is None:
            raise VipTimeout(f"{what}: no answer in time")
        if ev[0] != kind:
            raise _unreachable(what, ev[0], ev[1])

    def _drop_qp(self) -> None:
        """Destroy the queue pair (and its cm id). Completions already in for descriptors
        still queued are kept (Done returns them); everything else of that QP is dropped."""
        cid, self.cmid = self.cmid, None
        if cid is not None:
            # Destroyed by a thread of its own: on iWARP rdma_destroy_id waits for the peer
            # (a connect still in flight, a TCP stream closing), and no VIPL call may hang
            # on that. destroy() and Nic.close() wait for these threads.
            t = threading.Thread(target=cid.close, name=f"via-reap-{self.serial}", daemon=True)
            t.start()
            self._reaping = [r for r in self._reaping if r.is_alive()] + [t]
        for cq in {self.send_cq, self.recv_cq}:
            if cq.cq.cqe:
                cq.drain()
        live = {d.wr_id for q in (self.sendq, self.recvq) for d in q}
        for wid in [w for w in self._done if w not in live]:
            del self._done[wid]

    def disconnect(self) -> None:
        """VipDisconnect: every posted descriptor completes DESC_FLUSHED; the VI is IDLE."""
        if self.cmid is not None:
            try:
                self.cmid.disconnect()
            except VerbsError:
                pass
            self._collect()
        self._drop_qp()
        for q in (self.sendq, self.recvq):
            for d in q:
                self._done.setdefault(d.wr_id, _FLUSHED)
        self.state = ViState.IDLE

    def _collect(self, wait_s: float = 0.2) -> None:
        """Gather the completions the queue pair still produces (flushes) for a short while."""
        deadline = time.monotonic() + wait_s
        while True:
            self.send_cq.drain()
            self.recv_cq.drain()
            pending = [d for q in (self.sendq, self.recvq) for d in q
                       if d.wr_id not in self._done]
            if not pending or time.monotonic() >= deadline:
                return
            time.sleep(0.005)

    def destroy(self, force: bool = False) -> None:
        if not force and self.state is ViState.CONNECTED:
            raise VipInvalidState("VI is CONNECTED: VipDisconnect it first")
        if not force and (self.sendq or self.recvq):
            raise VipInvalidState(f"VI still has {len(self.sendq)} send and {len(self.recvq)} "
                                  "receive descriptors: take them with VipSendDone/RecvDone")
        self._drop_qp()
        self.state = ViState.IDLE
        self.sendq.clear()
        self.recvq.clear()
        self._await_teardown(60)  # the CQs go only once no queue pair uses them
        if self._rtr_mr is not None:
            self._rtr_mr.close()
        for cq in self._own:
            cq.close()
        for cq in self.shared:
            if cq is not None:
                cq.users -= 1
        self._own = []
        self.shared = (None, None)
        if self in self.nic.vis:
            self.nic.vis.remove(self)
        self.nic.vi_by_serial.pop(self.serial, None)

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
                raise VipInvalidPtag("the memory and the VI have different ptags")
            if not (h.mr.addr <= seg.address and seg.address + seg.length
                    <= h.mr.addr + h.mr.length):
                raise VipInvalidParameter(
                    f"segment 0x{seg.address:x}+{seg.length} lies outside its registered "
                    f"region 0x{h.mr.addr:x}+{h.mr.length}")
            out.append((seg.address, seg.length, h.lkey))
        return out

    def _next_id(self, recv: bool) -> int:
        return (self._recv_base if recv else self._send_base) | next(self._seq)

    def _track(self, desc: VipDescriptor, recv: bool) -> int:
        wid = self._next_id(recv)
        (self.recvq if recv else self.sendq).append(desc)
        desc.status = 0
        desc.wr_id = wid
        return wid

    def post_send(self, desc: VipDescriptor) -> None:
        # The hot path: a send or RDMA Write without immediate data or fence, one valid
        # segment, on a connected VI with room; everything else (and every error) is
        # _post_send's.
        ctl = desc.control
        sendq = self.sendq
        if not ((ctl == _C_SENDRECV or ctl == _C_RDMAWRITE) and self.state is _CONNECTED
                and len(sendq) < QUEUE_DEPTH
                and (ctl == _C_SENDRECV or desc.address is not None)):
            return self._post_send(desc)
        # (one segment checked as _sges does, written out in post_send and post_recv: a
        # call costs in a TCG guest)
        segs = desc.segments
        if len(segs) == 1:
            seg = segs[0]
            h = seg.handle
            if h.__class__ is MemHandle:
                mr = h.mr
                addr, length, lo = seg.address, seg.length, mr.addr
                if (not mr.closed and mr.pd is self.attrs.ptag.pd and lo <= addr
                        and addr + length <= lo + mr.length):
                    if ctl == _C_SENDRECV:
                        opcode, raddr, rkey = _WR_SEND, 0, 0
                    else:
                        opcode, raddr, rkey = (_WR_RDMA_WRITE, desc.address.address,
                                               int(desc.address.handle))
                    wid = self._send_base | next(self._seq)
                    sendq.append(desc)
                    desc.status = 0
                    desc.wr_id = wid
                    try:
                        self.cmid.post1(wid, opcode, addr, length, h.lkey, raddr, rkey)
                    except VerbsError as exc:
                        sendq.pop()
                        raise VipErrorResource(str(exc), exc.errno) from exc
                    return None
        return self._post_send(desc)

    def _post_send(self, desc: VipDescriptor) -> None:
        ctl = int(desc.control)
        op = ctl & _OP_MASK
        sges = self._sges(desc)
        imm = bool(ctl & _C_IMMEDIATE)
        if imm and self.nic.iwarp:
            raise VipNotSupported(f"{self.nic.name} is iWARP, which carries no immediate data "
                                  "(RFC 5040): put the value in the message instead")
        if op == _C_SENDRECV:
            opcode = cx.WR_SEND_WITH_IMM if imm else cx.WR_SEND
        elif op == _C_RDMAWRITE:
            opcode = cx.WR_RDMA_WRITE_WITH_IMM if imm else cx.WR_RDMA_WRITE
        elif op == _C_RDMAREAD:
            if not self.attrs.enable_rdma_read:
                raise VipInvalidRdmaRead("RDMA Read needs enable_rdma_read on the VI")
            if imm:
                raise VipInvalidParameter("an RDMA Read carries no immediate data")
            if len(sges) > self.nic.max_sge_rd:
                raise VipInvalidParameter(
                    f"{self.nic.name} scatters an RDMA Read into at most {self.nic.max_sge_rd} "
                    f"segment(s), not {len(sges)}: post one read per segment")
            opcode = cx.WR_RDMA_READ
        else:
            raise VipInvalidParameter(f"control 0x{ctl:x} names no operation")
        raddr = rkey = 0
        if op != _C_SENDRECV:
            if desc.address is None:
                raise VipInvalidParameter("an RDMA descriptor needs an AddressSegment")
            raddr, rkey = desc.address.address, int(desc.address.handle)
        if self.state is ViState.ERROR:
            raise VipInvalidState(f"VI is in ERROR ({self.why_error}): VipDisconnect it, "
                                  "then reconnect")
        if self.state is not ViState.CONNECTED:
            raise VipInvalidState(f"VI is {self.state.name}: connect it before posting sends")
        if len(self.sendq) >= QUEUE_DEPTH:
            raise VipErrorResource(f"the send queue is full ({QUEUE_DEPTH} descriptors): take "
                                   "completions with VipSendDone/VipSendWait")
        wid = self._track(desc, False)
        fence = bool(ctl & _C_QFENCE)
        imm_wire = socket.htonl(desc.immediate & 0xFFFFFFFF) if imm else 0
        try:
            if len(sges) == 1 and not fence:
                a, n, k = sges[0]
                self.cmid.post1(wid, opcode, a, n, k, raddr, rkey, imm_wire)
            else:
                self.cmid.post_send(wid, opcode, sges, raddr, rkey, imm_wire, True, fence)
        except VerbsError as exc:
            self.sendq.pop()
            raise VipErrorResource(str(exc), exc.errno) from exc

    def post_recv(self, desc: VipDescriptor) -> None:
        # The hot path: one valid segment onto the connected queue pair, no list kept (a
        # descriptor posted onto a queue pair is never posted again by _make_qp: it
        # completes, flushed at the latest).
        cmid, recvq = self.cmid, self.recvq
        if not (cmid is not None and self.state is _CONNECTED and len(recvq) < QUEUE_DEPTH):
            return self._post_recv(desc)
        # (one segment checked as _sges does, written out in post_send and post_recv: a
        # call costs in a TCG guest)
        segs = desc.segments
        if len(segs) == 1:
            seg = segs[0]
            h = seg.handle
            if h.__class__ is MemHandle:
                mr = h.mr
                addr, length, lo = seg.address, seg.length, mr.addr
                if (not mr.closed and mr.pd is self.attrs.ptag.pd and lo <= addr
                        and addr + length <= lo + mr.length):
                    wid = self._recv_base | next(self._seq)
                    recvq.append(desc)
                    desc.status = 0
                    desc.wr_id = wid
                    try:
                        cmid.post_recv1(wid, addr, length, h.lkey)
                    except VerbsError as exc:
                        recvq.pop()
                        raise VipErrorResource(str(exc), exc.errno) from exc
                    return None
        return self._post_recv(desc)

    def _post_recv(self, desc: VipDescriptor) -> None:
        if self.state is ViState.ERROR:
            raise VipInvalidState(f"VI is in ERROR ({self.why_error}): VipDisconnect it, "
                                  "then reconnect")
        if len(self.recvq) >= QUEUE_DEPTH:
            raise VipErrorResource(f"the receive queue is full ({QUEUE_DEPTH} descriptors)")
        sges = self._sges(desc)
        wid = self._track(desc, True)
        self._recv_sges[wid] = sges
        if self.cmid is None:
            # VIPL lets receives be posted before connect; the QP only exists once rdma_cm
            # made it, so they are posted onto it when it is made (_make_qp).
            return
        try:
            self.cmid.post_recv(wid, sges)
        except VerbsError as exc:
            self.recvq.pop()
            del self._recv_sges[wid]
            raise VipErrorResource(str(exc), exc.errno) from exc

    def done(self, recv: bool) -> VipDescriptor | None:
        q = self.recvq if recv else self.sendq
        if not q:
            return None
        head = q[0]
        wid = head.wr_id
        got = self._done.pop(wid, None)
        if got is None:
            (self.recv_cq if recv else self.send_cq).drain()
            got = self._done.pop(wid, None)
            if got is None:
                return None
        q.popleft()
        if self._recv_sges:
            self._recv_sges.pop(wid, None)
        _wid, st, opcode, nbytes, imm, flags, _qp = got
        if st != _WC_OK:
            return self._done_error(head, recv, st, opcode, nbytes, imm, flags)
        if recv:
            status = _S_RECV_RDMA_OK if opcode == _WC_RECV_RDMA_WITH_IMM else _S_RECV_OK
            if flags & _WC_WITH_IMM:
                status |= _S_IMMEDIATE
                head.immediate = _ntohl(imm)
            head.length = nbytes
        else:
            segs = head.segments
            status = _S_SEND_OK.get(head.control & _OP_MASK, _S_DONE)
            head.length = segs[0].length if len(segs) == 1 else sum(s.length for s in segs)
        head.status = status
        head.reason = ""
        return head

    def _done_error(self, head: VipDescriptor, recv: bool, st: int, opcode: int, nbytes: int,
                    imm: int, flags: int) -> VipDescriptor:
        """done() of a completion in error (flushed included)."""
        status = Status.DONE | _WC_STATUS.get(st, Status.TRANSPORT_ERROR)
        if recv and st == cx.WC_LOC_QP_OP_ERR:
            # rdma_rxe completes a receive too small for the message with "local QP operation
            # error" (mlx5 says LOC_LEN_ERR): VIPL calls it a LENGTH error.
            status = Status.DONE | Status.LENGTH_ERROR
        if recv:
            status |= Status.OP_RECEIVE
            if opcode == cx.WC_RECV_RDMA_WITH_IMM:
                status |= Status.OP_REMOTE_RDMA_WRITE
            if flags & cx.WC_WITH_IMM:
                status |= Status.IMMEDIATE
                head.immediate = socket.ntohl(imm)
            head.length = nbytes
        else:
            op = int(head.control) & _OP_MASK
            status |= {_C_RDMAWRITE: Status.OP_RDMA_WRITE,
                       _C_RDMAREAD: Status.OP_RDMA_READ}.get(op, Status.OP_SEND)
            head.length = sum(s.length for s in head.segments)
        head.status = int(status)
        head.reason = cx.wc_status_str(st)
        if st != cx.WC_WR_FLUSH_ERR:
            self._fail(Status(_WC_STATUS.get(st, Status.TRANSPORT_ERROR)).name or "TRANSPORT",
                       f"{'receive' if recv else 'send'} completed with "
                       f"{cx.wc_status_str(st)}", head)
        elif self.state is ViState.CONNECTED:
            self._fail("CONN_LOST", "descriptors flushed: the queue pair is in error", head)
        return head

    def wait(self, recv: bool, timeout_ms: int | None) -> VipDescriptor:
        cq = self.recv_cq if recv else self.send_cq
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        what = "receive" if recv else "send"
        while True:
            d = self.done(recv)
            if d is not None:
                return d
            if not (self.recvq if recv else self.sendq):
                raise VipInvalidState(f"no descriptor posted on the {what} queue: nothing to "
                                      "wait for")
            if self.cmid is None and recv:
                raise VipInvalidState(f"VI is {self.state.name} without a connection: no "
                                      "receive can complete")
            left = 1000 if deadline is None else (deadline - time.monotonic()) * 1000
            if left <= 0:
                raise VipTimeout(f"no {what} completed in {timeout_ms} ms")
            # At most a second asleep: a vanished peer shows up as a flushed or failed
            # completion (the event thread moves the QP to ERR), never as a silent hang.
            cq.wait(min(left, 1000))


def _arp_state(ip: str) -> str:
    """What this host's ARP table says of IP, for an error message."""
    flags = {"0x0": "incomplete (no ARP answer)", "0x2": "resolved", "0x6": "permanent"}
    try:
        with open("/proc/net/arp") as f:
            for line in f.read().splitlines()[1:]:
                cols = line.split()
                if cols and cols[0] == ip:
                    return f"ARP entry {cols[3]} on {cols[5]}: {flags.get(cols[2], cols[2])}"
    except OSError:
        return "ARP table unreadable"
    return "no ARP entry: is the peer up, and on this subnet?"


def _unreachable(what: str, kind: int, status: int) -> VipError:
    if status == -_ETIMEDOUT:
        return VipTimeout(f"{what}: {cx.cm_event_str(kind)} (timed out)")
    return VipNotReachable(f"{what}: {cx.cm_event_str(kind)} (status {status})")


def accept_listener(nic: Nic, local: NetAddress):
    key = (local.host, local.discriminator)
    cid = nic.listeners.get(key)
    if cid is None:
        cid = _verbs(cx.CMId, nic.events)
        try:
            _verbs(cid.bind, local.host, port_of(local.discriminator))
            _verbs(cid.listen, 8)
        except BaseException:
            cid.close()
            raise
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


__all__ = ["CompletionQueue", "ErrorDescriptor", "Nic", "Ptag", "Vi", "VipError",
           "accept_listener", "parse_conn", "reject_data"]
