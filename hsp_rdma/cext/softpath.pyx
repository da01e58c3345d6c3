# cython: boundscheck=False, wraparound=False, cdivision=True
"""The soft VIA provider's per-message path, compiled: posting, sending a frame, waiting (the
waiting thread reads the stream), applying the SEND and ACK frames already read, recording and
taking completions. The provider
(hsp_rdma/via/providers/soft.py) owns the protocol and its objects; these functions act on
those same objects (a connection, a VI, their queues and locks) by the same rules, without the
interpreter's cost per step. What they do not take on (an RDMA operation, a frame not wholly
read yet, data copied from the sender's memory, anything the peer got wrong) they leave,
untouched, to the provider's Python path, which refuses and reports as before.

The wire and status constants are the provider's: ``configure`` takes them once, at its
import (this module imports nothing of hsp_rdma's)."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport EAGAIN, errno
from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy
from cpython.pythread cimport PyThread_get_thread_ident

import os
import time

cdef extern from "<sys/socket.h>" nogil:
    cdef struct iovec:
        void *iov_base
        size_t iov_len
    cdef struct msghdr:
        void *msg_name
        unsigned int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

cdef extern from "<endian.h>" nogil:
    uint32_t htobe32(uint32_t)
    uint64_t htobe64(uint64_t)
    uint32_t be32toh(uint32_t)
    uint64_t be64toh(uint64_t)

DEF HDR_SIZE = 28  # "!2sBBIQIII": magic, kind, flags, seq, addr, rkey, value, length
DEF MAX_IOV = 8  # buffers one frame (+ an ACK before it) may have here; more: Python's path
DEF SMALL = 65536  # sent with the GIL held (a non-blocking send of this much is quick)

cdef uint8_t MAGIC0, MAGIC1
cdef int K_SEND, K_ACK, K_WRITE, K_READ_REQ, F_ACKED, F_IMM, F_CMA, F_GRANT
cdef int OP_MASK, OP_SEND, OP_WRITE, OP_READ, CTL_IMM, EN_WRITE, EN_READ
cdef int ST_DONE, ST_RECEIVED, ST_IMM, ST_OP_SEND, ST_FLUSHED
cdef Py_ssize_t QUEUE_DEPTH, MAX_SEGMENTS, CMA_MIN
cdef dict ST_OP_OF
cdef double ACK_DELAY_S
cdef object _rest, IOV_PACK, ERROR, CONNECTED, MemHandle
cdef object InvalidParameter, InvalidPtag, InvalidRdmaRead, InvalidState, ErrorResource
cdef object Timeout, Closed, Eof, Garbage
cdef object P  # the provider's module: its tunables are read there at each use (tests set them)
cdef uint32_t MASK = 0xFFFFFFFF
cdef uint64_t MASK64 = 0xFFFFFFFFFFFFFFFF
cdef object _monotonic = time.monotonic
cdef object _eventfd_write = os.eventfd_write


# ---- the provider's objects: their hot fields as C struct fields ---------------------------
# The provider's classes derive from these (_Conn, Vi, _Stream, CompletionQueue, Region): its
# Python code reads and writes these fields as attributes, as before; the functions here reach
# them without a dictionary lookup.
cdef class ConnBase:
    cdef public object vi, sock, stream, _wl, wlock, backlog, pending, plock, _wpoll, reader
    cdef public object seq, applied, ack_sent, acked, last_seq, ack_due, ack_wait_t, last_wait
    cdef public object writing, closed, failed, ended, started, parked, in_frame, waiting, wake
    cdef public object cma_pid, cma_out, grants, asked


cdef class ViBase:
    cdef public object nic, attrs, state, conn, send_cq, recv_cq, sendq, recvq, _rq, _segs_of
    cdef public object _done, _ids, _lock, why_error


cdef class StreamBase:
    cdef public object sock, buf, mv, lo, hi, rx_t


cdef class CQBase:
    cdef public object _lock, _cv, _gen, vipl, fifo, _sleepers, _efd


cdef class RegionBase:
    cdef public object addr, length, view, ptag, closed


def configure(bytes magic, int hdr_size, **k):
    """The provider's constants, classes and helpers, by their names there (its frame
    header must be the layout packed here)."""
    global MAGIC0, MAGIC1, K_SEND, K_ACK, K_WRITE, K_READ_REQ, F_ACKED, F_IMM, F_CMA, F_GRANT
    global OP_MASK, OP_SEND, OP_WRITE, OP_READ, CTL_IMM, EN_WRITE, EN_READ
    global ST_DONE, ST_RECEIVED, ST_IMM, ST_OP_SEND, ST_FLUSHED, QUEUE_DEPTH, MAX_SEGMENTS
    global CMA_MIN, ST_OP_OF, ACK_DELAY_S, _rest, IOV_PACK, ERROR, CONNECTED
    global MemHandle
    global InvalidParameter, InvalidPtag, InvalidRdmaRead, InvalidState, ErrorResource
    global Timeout, Closed, Eof, Garbage, P
    if hdr_size != HDR_SIZE or len(magic) != 2:
        raise ValueError(f"softpath packs {HDR_SIZE}-byte headers; the provider's are "
                         f"{hdr_size}")
    MAGIC0, MAGIC1 = magic[0], magic[1]
    K_SEND, K_ACK, K_WRITE, K_READ_REQ = k["SEND"], k["ACK"], k["WRITE"], k["READ_REQ"]
    F_ACKED, F_IMM, F_CMA, F_GRANT = k["F_ACKED"], k["F_IMM"], k["F_CMA"], k["F_GRANT"]
    OP_MASK, OP_SEND, OP_WRITE, OP_READ = (k["_OP_MASK"], k["_OP_SENDRECV"], k["_OP_RDMAWRITE"],
                                           k["_OP_RDMAREAD"])
    CTL_IMM, EN_WRITE, EN_READ = k["_CTL_IMM"], k["EN_WRITE"], k["EN_READ"]
    ST_DONE, ST_RECEIVED, ST_IMM = k["_ST_DONE"], k["_ST_RECEIVED"], k["_ST_IMM"]
    ST_OP_SEND, ST_FLUSHED, ST_OP_OF = k["_ST_OP_SEND"], k["_ST_FLUSHED"], k["_ST_OP_OF"]
    QUEUE_DEPTH, MAX_SEGMENTS, CMA_MIN = k["QUEUE_DEPTH"], k["MAX_SEGMENTS"], k["CMA_MIN"]
    ACK_DELAY_S, _rest, IOV_PACK = k["ACK_DELAY_S"], k["_rest"], k["IOV"].pack
    ERROR, CONNECTED, MemHandle = k["ViState"].ERROR, k["ViState"].CONNECTED, k["MemHandle"]
    InvalidParameter, InvalidPtag = k["VipInvalidParameter"], k["VipInvalidPtag"]
    InvalidRdmaRead, InvalidState = k["VipInvalidRdmaRead"], k["VipInvalidState"]
    ErrorResource, Timeout = k["VipErrorResource"], k["VipTimeout"]
    Closed, Eof, Garbage, P = k["_Closed"], k["_Eof"], k["_Garbage"], k["module"]


cdef inline void _put32(uint8_t *p, uint32_t v) noexcept nogil:
    v = htobe32(v)
    memcpy(p, &v, 4)


cdef inline uint32_t _get32(const uint8_t *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return be32toh(v)


cdef bytes _header(int kind, int flags, uint32_t seq, uint64_t addr, uint32_t rkey,
                   uint32_t value, uint32_t length):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, HDR_SIZE)
    cdef uint8_t *h = <uint8_t *>PyBytes_AS_STRING(out)
    cdef uint64_t a = htobe64(addr)
    h[0] = MAGIC0
    h[1] = MAGIC1
    h[2] = <uint8_t>kind
    h[3] = <uint8_t>flags
    _put32(h + 4, seq)
    memcpy(h + 8, &a, 8)
    _put32(h + 16, rkey)
    _put32(h + 20, value)
    _put32(h + 24, length)
    return out


# ---- sending ------------------------------------------------------------------------------
cdef Py_ssize_t _sendmsg_small(int fd, list parts, Py_ssize_t *total) except -2:
    """One non-blocking sendmsg of PARTS with the GIL held: the bytes sent (TOTAL: all of
    PARTS'), -1 for EAGAIN, -2 (an OSError raised) for a failure; -3 when PARTS are too many
    or too large for it."""
    cdef Py_buffer bufs[MAX_IOV]
    cdef iovec iov[MAX_IOV]
    cdef msghdr msg
    cdef Py_ssize_t n = len(parts), i, got = 0
    cdef ssize_t sent
    total[0] = 0
    if n > MAX_IOV:
        return -3
    for i in range(n):
        PyObject_GetBuffer(parts[i], &bufs[i], PyBUF_SIMPLE)
        got = i + 1
        iov[i].iov_base = bufs[i].buf
        iov[i].iov_len = <size_t>bufs[i].len
        total[0] += bufs[i].len
    try:
        if total[0] >= SMALL:
            return -3
        msg.msg_name = NULL
        msg.msg_namelen = 0
        msg.msg_iov = iov
        msg.msg_iovlen = <size_t>n
        msg.msg_control = NULL
        msg.msg_controllen = 0
        msg.msg_flags = 0
        sent = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
        if sent < 0:
            if errno == EAGAIN:  # (EWOULDBLOCK on Linux)
                return -1
            raise OSError(errno, os.strerror(errno))
        return sent
    finally:
        for i in range(got):
            PyBuffer_Release(&bufs[i])


def send(conn, list parts, op=None):
    """The provider's _Conn.send: queue a frame (its header + payload buffers) in stream
    order; with OP = (desc, segs) the frame is one of ours that the peer acknowledges: its
    seq is returned, and its header, PARTS[0], is given as the fields (kind, flags, addr,
    rkey, value, length), packed here once its seq is known. Sent at once if the socket takes
    it and nothing waits before it, else left to the writer thread."""
    cdef ConnBase c = conn
    cdef uint32_t seq = 0, applied, ack_sent
    cdef int kind, flags, owed
    cdef Py_ssize_t sent, total = -1
    lock = c._wl
    lock.acquire()
    try:
        if op is not None:
            seq = (next(c.seq) & MASK)
            c.last_seq = seq
            kind, flags, addr, rkey, value, length = parts[0]
            # An ACK still owed goes out before (a SEND: on) any operation of ours, so the
            # peer never sees a later operation of ours before the ACK of its own.
            applied, ack_sent = c.applied, c.ack_sent
            owed = applied != ack_sent
            if owed:
                c.ack_sent = ack_sent = applied
                # (an ACK delay still set would start the next one in the past: that
                # receive's ACK then went as a frame of its own at once)
                c.ack_due = 0.0
                if kind == K_SEND:  # (a SEND's address field is free: the ACK rides)
                    flags |= F_ACKED
                    addr = ack_sent
            parts[0] = _header(kind, flags, seq, addr, rkey, <uint32_t>(value & MASK), length)
            if owed and kind != K_SEND:
                parts.insert(0, _header(K_ACK, 0, ack_sent, 0, 0, 0, 0))
            pending = c.pending
            if not pending:
                c.ack_wait_t = _monotonic()
            pending.append((seq, op[0], op[1]))
        if c.closed or c.failed:
            return seq
        if not c.backlog and not c.writing:
            sock = c.sock
            try:
                sent = _sendmsg_small(sock.fileno(), parts, &total)
                if sent == -3:  # (large, or many buffers: the socket module's sendmsg)
                    total = -1
                    sent = sock.sendmsg(parts, [], MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                conn._break_stream()
                return seq
            if sent == total:
                return seq
            if sent == -1:
                sent = 0
            parts = _rest(parts, sent)
            if not parts:
                return seq
        c.backlog.extend(parts)
        c.wlock.notify_all()
        return seq
    finally:
        lock.release()


# ---- completions ----------------------------------------------------------------------------
cdef _push(cq, vi, bint recv):
    """push, for the functions here."""
    cdef CQBase q = cq
    lock = q._lock
    lock.acquire()
    try:
        q._gen += 1
        if q.vipl:
            q.fifo.append((vi, recv))
        if q._sleepers:
            q._cv.notify_all()
        if q._efd >= 0:
            _eventfd_write(q._efd, 1)
    finally:
        lock.release()


def push(cq, vi, bint recv):
    """The provider's CompletionQueue.push: a completion of VI's receive (RECV) or send
    queue is there to take (sleepers woken, the eventfd written)."""
    _push(cq, vi, recv)


cdef _complete(vi, desc, bint recv, int status, length, immediate, str reason):
    """The provider's Vi._complete."""
    cdef ViBase v = vi
    cdef dict done = v._done
    lock = v._lock
    lock.acquire()
    try:
        wr = desc.wr_id
        if wr in done:
            return
        done[wr] = (status, length, immediate, reason)
    finally:
        lock.release()
    _push(v.recv_cq if recv else v.send_cq, vi, recv)


def complete(vi, desc, bint recv, status, length, immediate=None, str reason=""):
    """The provider's Vi._complete: DESC completed with STATUS (taken by done)."""
    _complete(vi, desc, recv, int(status), length, immediate, reason)


cdef _complete_send(vi, desc, int status, str reason):
    """complete_send, for the functions here."""
    status |= ST_OP_OF.get(int(desc.control) & OP_MASK, ST_OP_SEND)
    length = 0
    for seg in desc.segments:
        length += seg.length
    _complete(vi, desc, False, status, length, None, reason)


def complete_send(vi, desc, status, str reason=""):
    """The provider's Vi._complete_send: the send DESC completed with STATUS (its operation's
    bits added) and its whole length."""
    _complete_send(vi, desc, int(status), reason)


def take(vi, bint recv):
    """The provider's Vi.done: the head of the work queue if it completed (its status,
    length, immediate data and reason filled in), else None."""
    cdef ViBase v = vi
    q = v.recvq if recv else v.sendq
    cdef dict done = v._done
    lock = v._lock
    lock.acquire()
    try:
        if not q:
            return None
        head = q[0]
        got = done.pop(head.wr_id, None)
        if got is None:
            return None
        q.popleft()
        v._segs_of.pop(head.wr_id, None)
    finally:
        lock.release()
    status, length, immediate, reason = got
    head.status = status
    head.length = length
    head.reason = reason
    if immediate is not None:
        head.immediate = immediate
    return head


# ---- receiving ------------------------------------------------------------------------------
cdef str _ack_refusal(conn, uint32_t seq):
    """Why an ACK of SEQ is a protocol error, or None: _complete_upto may take it."""
    cdef ConnBase c = conn
    cdef uint32_t acked = c.acked
    if seq == acked:
        return None
    if ((seq - acked) & MASK) > ((<uint32_t>c.last_seq - acked) & MASK):
        return f"ACK {seq} for an operation never sent (last sent {c.last_seq})"
    for s, desc, _segs in c.pending:
        if ((seq - <uint32_t>s) & MASK) >= (1u << 31):
            break
        if (int(desc.control) & OP_MASK) == OP_READ:
            return f"ACK {seq} before the response to RDMA Read {s}"
    return None


def complete_upto(conn, uint32_t seq):
    """The provider's _Conn._complete_upto: every operation of ours up to and including SEQ
    was applied by the peer; they complete. A protocol error (raised) changes nothing."""
    why = _ack_refusal(conn, seq)
    if why is not None:
        raise Garbage(why)
    _complete_upto(conn, (<ConnBase>conn).vi, seq)


cdef _complete_upto(conn, vi, uint32_t seq):
    """complete_upto, once _ack_refusal found nothing wrong."""
    cdef ConnBase c = conn
    if seq == <uint32_t>c.acked:
        return
    c.acked = seq
    c.ack_wait_t = _monotonic()
    pending = c.pending
    while pending and ((seq - <uint32_t>pending[0][0]) & MASK) < (1u << 31):
        _s, desc, _segs = pending.popleft()
        _complete_send(vi, desc, ST_DONE, "")


def apply_buffered(conn) -> int:
    """Apply the ACK frames and the SEND frames of inline data, each wholly in the stream's
    buffer, that come first in it, as the provider's _apply would; stop before any other
    frame, and before one that _apply would refuse (so that it does). The frames applied."""
    cdef ConnBase c = conn
    cdef StreamBase st = c.stream
    cdef ViBase v = c.vi
    vi = c.vi
    cdef Py_buffer view
    cdef Py_ssize_t lo = st.lo, hi = st.hi, left, k, cap, at
    cdef int applied = 0, kind, flags, status
    cdef uint32_t seq, rkey, value, length, ack
    cdef uint64_t addr
    cdef const uint8_t *h
    cdef uintptr_t dst
    counters = v.nic.counters
    PyObject_GetBuffer(st.buf, &view, PyBUF_SIMPLE)
    try:
        while hi - lo >= HDR_SIZE and not c.closed:
            h = <const uint8_t *>view.buf + lo
            if h[0] != MAGIC0 or h[1] != MAGIC1:
                break
            kind, flags = h[2], h[3]
            seq = _get32(h + 4)
            memcpy(&addr, h + 8, 8)
            addr = be64toh(addr)
            rkey, value, length = _get32(h + 16), _get32(h + 20), _get32(h + 24)
            if kind == K_ACK:
                if length or _ack_refusal(conn, seq) is not None:
                    break
                counters["frames_rx"] += 1
                lo += HDR_SIZE
                st.lo = lo
                _complete_upto(conn, vi, seq)
                applied += 1
                continue
            if kind != K_SEND or flags & ~(F_ACKED | F_IMM) \
                    or hi - lo < HDR_SIZE + <Py_ssize_t>length:
                break
            ack = <uint32_t>(addr & MASK)
            if flags & F_ACKED and _ack_refusal(conn, ack) is not None:
                break
            if seq != ((<uint32_t>c.applied + 1) & MASK):
                break
            rq = v._rq
            if not rq:
                break
            desc = rq[0]
            segs = v._segs_of.get(desc.wr_id, [])
            cap = 0
            for r, off, n in segs:
                if (<RegionBase>r).closed:
                    cap = -1
                    break
                cap += n
            if cap < length:
                break  # (a LENGTH error, or a region deregistered: _receive says which)
            # Every check passed: applied here, as _apply and _receive would.
            counters["frames_rx"] += 1
            if flags & F_ACKED:
                _complete_upto(conn, vi, ack)
            lock = v._lock
            lock.acquire()
            try:
                if not rq or rq[0] is not desc:
                    raise RuntimeError("a posted receive was taken meanwhile")
                rq.popleft()
            finally:
                lock.release()
            at, left = lo + HDR_SIZE, length
            for r, off, n in segs:
                if not left:
                    break
                k = min(<Py_ssize_t>n, left)
                dst = <uintptr_t>(<RegionBase>r).addr + <uintptr_t>off
                memcpy(<void *>dst, <const uint8_t *>view.buf + at, k)
                at += k
                left -= k
            lo += HDR_SIZE + length
            st.lo = lo
            status = ST_RECEIVED | (ST_IMM if flags & F_IMM else 0)
            # Applied before the receiver can see it (as _receive: a VipDisconnect right
            # after the completion still acknowledges it).
            c.applied = seq
            if not c.ack_due:
                c.ack_due = _monotonic() + ACK_DELAY_S
            _complete(vi, desc, True, status, length, value if flags & F_IMM else None, "")
            applied += 1
    finally:
        PyBuffer_Release(&view)
    return applied


# ---- posting ----------------------------------------------------------------------------------
def segs(vi, desc) -> list:
    """The provider's Vi._segs: DESC's data segments as (region, offset, length), each
    checked (registered on this NIC, the VI's ptag, inside its region)."""
    cdef ViBase v = vi
    segments = desc.segments
    if len(segments) > MAX_SEGMENTS:
        raise InvalidParameter(f"{len(segments)} data segments: the soft provider takes at "
                               f"most {MAX_SEGMENTS} per descriptor")
    cdef list out = []
    cdef dict regions = v.nic.regions
    ptag = v.attrs.ptag
    cdef RegionBase r
    for seg in segments:
        handle = seg.handle
        r = regions.get(int(handle))
        if r is None or r.closed or (isinstance(handle, MemHandle) and handle.mr is not r):
            raise InvalidParameter(f"memory handle {int(handle)} is not registered on this NIC")
        if r.ptag is not ptag:
            raise InvalidPtag("the memory and the VI have different ptags")
        address, length, base = seg.address, seg.length, r.addr
        if length < 0 or not (base <= address and address + length <= base + r.length):
            raise InvalidParameter(f"segment 0x{address:x}+{length} lies outside its registered "
                                   f"region 0x{base:x}+{r.length}")
        out.append((r, address - base, length))
    return out


def post_recv(vi, desc):
    """The provider's Vi.post_recv."""
    cdef ViBase v = vi
    if v.state is ERROR:
        raise InvalidState(f"VI is in ERROR ({v.why_error}): VipDisconnect it, then reconnect")
    if len(v.recvq) >= QUEUE_DEPTH:
        raise ErrorResource(f"the receive queue is full ({QUEUE_DEPTH} descriptors)")
    sg = segs(vi, desc)
    lock = v._lock
    lock.acquire()
    try:
        desc.status = 0
        wr = desc.wr_id = next(v._ids)
        v._segs_of[wr] = sg
        v.recvq.append(desc)
        v._rq.append(desc)
    finally:
        lock.release()


def post_send(vi, desc):
    """The provider's Vi.post_send: checks, then the frame (or, same host, one copy straight
    into or out of the peer's granted memory)."""
    cdef ViBase v = vi
    cdef int control = int(desc.control)
    cdef int op = control & OP_MASK
    cdef bint imm = (control & CTL_IMM) != 0, write
    cdef Py_ssize_t total = 0
    cdef int flags, kind
    sg = segs(vi, desc)
    if op == OP_READ:
        if not v.attrs.enable_rdma_read:
            raise InvalidRdmaRead("RDMA Read needs enable_rdma_read on the VI")
        if imm:
            raise InvalidParameter("an RDMA Read carries no immediate data")
    elif op != OP_SEND and op != OP_WRITE:
        raise InvalidParameter(f"control 0x{desc.control:x} names no operation")
    if op != OP_SEND and desc.address is None:
        raise InvalidParameter("an RDMA descriptor needs an AddressSegment")
    for _r, _o, n in sg:
        total += <Py_ssize_t>n
    limit = vi.max_transfer
    if total > limit:
        raise InvalidParameter(f"{total} bytes exceed the VI's max transfer size {limit}")
    state = v.state
    if state is ERROR:
        raise InvalidState(f"VI is in ERROR ({v.why_error}): VipDisconnect it, then reconnect")
    conn = v.conn
    if state is not CONNECTED or conn is None:
        raise InvalidState(f"VI is {state.name}: connect it before posting sends")
    sendq = v.sendq
    if len(sendq) >= QUEUE_DEPTH:
        raise ErrorResource(f"the send queue is full ({QUEUE_DEPTH} descriptors): take "
                            "completions with VipSendDone/VipSendWait")
    lock = v._lock
    lock.acquire()
    try:
        desc.status = 0
        desc.wr_id = next(v._ids)
        sendq.append(desc)
    finally:
        lock.release()
    flags = F_IMM if imm else 0
    raddr = rkey = 0
    if op != OP_SEND:
        raddr = desc.address.address & MASK64
        rkey = int(desc.address.handle) & MASK
        if not imm and conn.cma_pid:
            g = conn.grants.get(rkey)
            write = op == OP_WRITE
            if g is not None and g.rights & (EN_WRITE if write else EN_READ) \
                    and conn.shm_copy(g, raddr, sg, total, write):
                _complete(vi, desc, False, ST_DONE | ST_OP_OF[op], total, None, "")  # straight
                return  # in or out of the peer's memory
            if g is None and rkey not in conn.asked:
                conn.wlock.acquire()
                try:
                    conn.asked.add(rkey)
                finally:
                    conn.wlock.release()
                flags |= F_GRANT
    counters = v.nic.counters
    if op == OP_READ:
        parts = [(K_READ_REQ, flags & F_GRANT, raddr, rkey, total, 0)]
    else:
        kind = K_SEND if op == OP_SEND else K_WRITE
        if conn.cma_out and total >= CMA_MIN:  # same host: the peer copies from us
            iov = b"".join([IOV_PACK(r.addr + o, n) for r, o, n in sg if n])
            parts = [(kind, flags | F_CMA, raddr, rkey, desc.immediate, len(iov)), iov]
            counters["cma_bytes_tx"] += total
        else:
            parts = [(kind, flags, raddr, rkey, desc.immediate, total)]
            for r, o, n in sg:
                if n:
                    parts.append(r.view[o:o + n])
            counters["bytes_tx"] += total
    counters["frames_tx"] += 1
    send(conn, parts, (desc, sg))
    if conn.failed or conn.closed:
        # The stream ended while this was posted (after the flush): flushed too.
        lock.acquire()
        try:
            if desc.wr_id not in v._done and desc in sendq:
                v._done[desc.wr_id] = (ST_FLUSHED, 0, None, "flushed")
        finally:
            lock.release()
        _push(v.send_cq, vi, False)


# ---- waiting: whoever waits reads (see the provider's _Conn.drive) --------------------------
cdef Py_ssize_t _fill(StreamBase st, int flags) except -1:
    """Read into the empty stream buffer (FLAGS: MSG_DONTWAIT, or 0 to wait up to the socket's
    receive timeout): the bytes read, 0 if none came; the peer's end of stream raises."""
    cdef Py_ssize_t got
    st.lo = st.hi = 0
    try:
        got = st.sock.recv_into(st.mv, 0, flags)
    except BlockingIOError:
        return 0
    if got == 0:
        raise Eof(mid=False)
    st.hi = got
    return got


def pump(conn, double limit, poller):
    """The provider's _Conn._pump: under plock, wait at most LIMIT s for a frame at a frame
    boundary, then apply every frame that the read brought. Owed ACKs and the ACK timeout
    are looked after on the way."""
    cdef ConnBase c = conn
    cdef StreamBase st = c.stream
    cdef double wait, now, tick
    cdef Py_ssize_t got
    while True:
        if st.hi == st.lo:
            tick = P.ACK_TICK_S
            wait = min(limit, tick)
            if c.applied != c.ack_sent:
                now = _monotonic()
                if c.ack_due > now:
                    wait = min(wait, c.ack_due - now)
                else:
                    c.ack_due = 0.0
                    conn.flush_ack()
            # A waiter with a whole tick to wait reads at once (the socket's receive timeout
            # is the tick): one system call a message instead of poll + read.
            if wait >= tick and poller is c._wpoll:
                got = _fill(st, 0)
            else:
                got = len(poller.poll(max(0.0, wait) * 1000))
                if got:  # read what is there now: the frames it brings are applied below,
                    got = _fill(st, MSG_DONTWAIT)  # compiled (not one header at a time)
            if not got:
                now = _monotonic()
                if c.applied != c.ack_sent and c.ack_due <= now:
                    c.ack_due = 0.0
                    conn.flush_ack()
                if c.pending and (now - max(<double>c.ack_wait_t, <double>st.rx_t)) \
                        * 1000 >= P.ACK_TIMEOUT_MS:
                    conn._idle()
                return
            st.rx_t = _monotonic()
        # (the SEND and ACK frames already read, here; then any other one by _apply)
        if not (P.COMPILED_APPLY and apply_buffered(conn)) or st.hi != st.lo:
            h = st.header()
            c.in_frame = True
            conn._apply(h)
            c.in_frame = False
        if c.closed:
            raise Closed()
        if st.hi == st.lo:  # what had arrived is applied: no poll for more (a
            # system call a message: the caller comes back if it still waits)
            if c.applied != c.ack_sent and c.ack_due <= _monotonic():
                c.ack_due = 0.0
                conn.flush_ack()
            return
        limit = 0  # (and on with what is there already)


def drive(conn, limit, q) -> bool:
    """The provider's _Conn.drive: as a waiting thread, read and apply what the stream
    brings, waiting at most LIMIT s (None: one tick) for it. False if this thread cannot
    (another thread reads now, the stream ended, or this is the progress thread): then wait
    for a completion instead. Q: the work queue waited on; if its head completed meanwhile
    (the progress thread read it before this thread took the stream), nothing is read."""
    cdef ConnBase c = conn
    cdef double plock_wait = P.PLOCK_WAIT_S
    cdef bint owed
    if (not P.WAITER_READS or c.ended or c.closed or not c.started
            or c.reader.ident == PyThread_get_thread_ident()):
        return False
    plock = c.plock
    if not plock.acquire(True, plock_wait if limit is None
                         else max(0.0, min(<double>limit, plock_wait))):
        return False
    c.waiting += 1
    try:
        if not (c.ended or c.closed or (q and q[0].wr_id in c.vi._done)):
            pump(conn, P.ACK_TICK_S if limit is None else limit, c._wpoll)
    except BaseException as exc:  # noqa: BLE001 - handled as the progress thread would
        conn._fail(exc)
    finally:
        c.waiting -= 1
        c.last_wait = _monotonic()
        owed = c.applied != c.ack_sent
        plock.release()
    if owed and c.parked:  # the progress thread sends it if the application does
        _eventfd_write(c.wake, 1)  # not answer in time: wake it if it sleeps on a
    return True  # wait taken before (else it sees the ACK owed when it next looks)


def wait(vi, bint recv, timeout_ms):
    """The provider's Vi.wait: the head of the work queue once it completed; this thread
    reads the VI's stream meanwhile when it may (drive), else sleeps on the CQ."""
    cdef ViBase v = vi
    cq = v.recv_cq if recv else v.send_cq
    cdef double deadline = 0.0, plock_wait
    cdef bint forever = timeout_ms is None
    if not forever:
        deadline = _monotonic() + timeout_ms / 1000
    what = "receive" if recv else "send"
    while True:
        gen = cq._gen  # (one attribute read: no lock needed under the GIL)
        d = take(vi, recv)
        if d is not None:
            return d
        q = v.recvq if recv else v.sendq
        if not q:
            raise InvalidState(f"no descriptor posted on the {what} queue: nothing to wait "
                               "for")
        if recv and v.state is not CONNECTED:
            raise InvalidState(f"VI is {v.state.name} without a connection: no receive can "
                               "complete")
        left = None if forever else deadline - _monotonic()
        if left is not None and left <= 0:
            raise Timeout(f"no {what} completed in {timeout_ms} ms" + vi._stream_detail())
        conn = v.conn
        if conn is not None and drive(conn, left, q):
            continue  # (this thread read the stream: look again)
        plock_wait = P.PLOCK_WAIT_S
        cq.sleep(gen, left if conn is None or not P.WAITER_READS
                 else min(left or plock_wait, plock_wait))
