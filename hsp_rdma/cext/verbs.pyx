# cython: language_level=3
"""Cython bindings to rdma-core: one class per C object, verbs calls without the GIL.

Device (an rdma_cm-owned ibv_context, so connections and memory share it), PD, MR, CQ (with
its completion channel), EventChannel and CMId (an rdma_cm id with its RC QP). Every class
closes once, children first; errors are VerbsError(call, errno).
"""

cimport cython
from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.errno cimport EAGAIN, EINTR, errno
from posix.fcntl cimport F_GETFL, F_SETFL, O_NONBLOCK, fcntl
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset, strcmp
from posix.unistd cimport usleep

from hsp_rdma.cext.ibdefs cimport *

import os
import weakref

from hsp_rdma.errors import VerbsError


cdef extern from "<poll.h>" nogil:
    cdef struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum: POLLIN


cdef extern from "<netinet/in.h>" nogil:
    cdef struct in_addr:
        uint32_t s_addr
    cdef struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    unsigned short htons(unsigned short)
    enum: AF_INET


cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)


DEF MAX_SGE = 16
DEF MAX_POLL = 64
DEF WC_BYTES = 32

# Access flags and opcodes, for the Python side.
ACCESS_LOCAL_WRITE = IBV_ACCESS_LOCAL_WRITE
ACCESS_REMOTE_WRITE = IBV_ACCESS_REMOTE_WRITE
ACCESS_REMOTE_READ = IBV_ACCESS_REMOTE_READ
WR_SEND = IBV_WR_SEND
WR_SEND_WITH_IMM = IBV_WR_SEND_WITH_IMM
WR_RDMA_WRITE = IBV_WR_RDMA_WRITE
WR_RDMA_WRITE_WITH_IMM = IBV_WR_RDMA_WRITE_WITH_IMM
WR_RDMA_READ = IBV_WR_RDMA_READ
WC_SUCCESS = IBV_WC_SUCCESS
WC_LOC_LEN_ERR = IBV_WC_LOC_LEN_ERR
WC_LOC_QP_OP_ERR = IBV_WC_LOC_QP_OP_ERR
WC_LOC_PROT_ERR = IBV_WC_LOC_PROT_ERR
WC_WR_FLUSH_ERR = IBV_WC_WR_FLUSH_ERR
WC_REM_INV_REQ_ERR = IBV_WC_REM_INV_REQ_ERR
WC_REM_ACCESS_ERR = IBV_WC_REM_ACCESS_ERR
WC_REM_OP_ERR = IBV_WC_REM_OP_ERR
WC_RETRY_EXC_ERR = IBV_WC_RETRY_EXC_ERR
WC_RNR_RETRY_EXC_ERR = IBV_WC_RNR_RETRY_EXC_ERR
WC_RECV = IBV_WC_RECV
WC_RECV_RDMA_WITH_IMM = IBV_WC_RECV_RDMA_WITH_IMM
WC_WITH_IMM = IBV_WC_WITH_IMM

EV_ADDR_RESOLVED = RDMA_CM_EVENT_ADDR_RESOLVED
EV_ADDR_ERROR = RDMA_CM_EVENT_ADDR_ERROR
EV_ROUTE_RESOLVED = RDMA_CM_EVENT_ROUTE_RESOLVED
EV_ROUTE_ERROR = RDMA_CM_EVENT_ROUTE_ERROR
EV_CONNECT_REQUEST = RDMA_CM_EVENT_CONNECT_REQUEST
EV_CONNECT_ERROR = RDMA_CM_EVENT_CONNECT_ERROR
EV_UNREACHABLE = RDMA_CM_EVENT_UNREACHABLE
EV_REJECTED = RDMA_CM_EVENT_REJECTED
EV_ESTABLISHED = RDMA_CM_EVENT_ESTABLISHED
EV_DISCONNECTED = RDMA_CM_EVENT_DISCONNECTED
EV_DEVICE_REMOVAL = RDMA_CM_EVENT_DEVICE_REMOVAL
EV_TIMEWAIT_EXIT = RDMA_CM_EVENT_TIMEWAIT_EXIT


def wc_status_str(int status):
    return ibv_wc_status_str(<ibv_wc_status>status).decode()


def cm_event_str(int event):
    return rdma_event_str(<rdma_cm_event_type>event).decode()


cdef int _poll_in(pollfd *p, int n, int timeout_ms) noexcept nogil:
    """poll(2) N fds for input; how many are ready, 0 on timeout, -1 on error (errno).
    Retries EINTR."""
    cdef int i, rc
    for i in range(n):
        p[i].events = POLLIN
    while True:
        for i in range(n):
            p[i].revents = 0
        rc = poll(p, n, timeout_ms)
        if rc < 0 and errno == EINTR:
            continue
        return rc


cdef bint _fd_ready(int fd, int timeout_ms) except -1:
    """Whether FD has input within TIMEOUT_MS, asleep with the GIL released."""
    cdef pollfd p
    cdef int rc
    p.fd = fd
    with nogil:
        rc = _poll_in(&p, 1, timeout_ms)
    if rc < 0:
        raise VerbsError("poll", errno)
    return rc > 0


GID_TYPES = {IBV_GID_TYPE_IB: "IB", IBV_GID_TYPE_ROCE_V1: "RoCE v1",
             IBV_GID_TYPE_ROCE_V2: "RoCE v2"}
QPS_ERR = IBV_QPS_ERR
QP_STATES = {IBV_QPS_RESET: "RESET", IBV_QPS_INIT: "INIT", IBV_QPS_RTR: "RTR",
             IBV_QPS_RTS: "RTS", IBV_QPS_SQD: "SQD", IBV_QPS_SQE: "SQE", IBV_QPS_ERR: "ERR"}
EVENT_QP_FATAL = IBV_EVENT_QP_FATAL
EVENT_QP_REQ_ERR = IBV_EVENT_QP_REQ_ERR
EVENT_QP_ACCESS_ERR = IBV_EVENT_QP_ACCESS_ERR
EVENT_CQ_ERR = IBV_EVENT_CQ_ERR
EVENT_DEVICE_FATAL = IBV_EVENT_DEVICE_FATAL
EVENT_PORT_ACTIVE = IBV_EVENT_PORT_ACTIVE
EVENT_PORT_ERR = IBV_EVENT_PORT_ERR
# One completion as poll_into() writes it: wr_id, status, opcode, byte_len, imm (as on the
# wire), wc_flags, qp_num; 32 bytes, native byte order (struct format "=QIIIIII").
WC_FORMAT = "=QIIIIII"
WC_SIZE = WC_BYTES


def list_devices():
    """The names of the RDMA devices rdma_cm sees (empty when there are none)."""
    cdef int n = 0, i
    cdef ibv_context **lst = rdma_get_devices(&n)
    if lst == NULL:
        return []
    try:
        return [lst[i].device.name.decode() for i in range(n)]
    finally:
        rdma_free_devices(lst)


def wait_fds(fds, int timeout_ms):
    """poll(2) up to 8 fds for input with the GIL released; the list of those ready."""
    cdef pollfd p[8]
    cdef int n = len(fds), i, rc
    if n == 0 or n > 8:
        raise ValueError("wait_fds takes 1 to 8 file descriptors")
    for i in range(n):
        p[i].fd = fds[i]
    with nogil:
        rc = _poll_in(p, n, timeout_ms)
    if rc < 0:
        raise VerbsError("poll", errno)
    return [p[i].fd for i in range(n) if p[i].revents]


cdef class Device:
    """An RDMA device, opened through rdma_cm so that CM ids and our PDs share its context."""
    cdef object __weakref__
    cdef ibv_context **_list
    cdef ibv_context *ctx
    cdef readonly str name
    cdef object _children
    cdef int _pid

    def __cinit__(self, str name=None):
        cdef int n = 0, i
        self._list = rdma_get_devices(&n)
        self._children = weakref.WeakSet()
        self._pid = os.getpid()
        if self._list == NULL or n == 0:
            if self._list != NULL:
                rdma_free_devices(self._list)
                self._list = NULL
            raise VerbsError("rdma_get_devices", errno or 19,
                             "no RDMA device in this host: load rdma_rxe or siw and "
                             "'rdma link add', or run in the lab (hsp-lab up)")
        names = []
        for i in range(n):
            dn = self._list[i].device.name.decode()
            names.append(dn)
            if name is None or dn == name:
                self.ctx = self._list[i]
                self.name = dn
                break
        if self.ctx == NULL:
            rdma_free_devices(self._list)
            self._list = NULL
            raise VerbsError("ibv_open_device", 19,
                             f"no RDMA device named '{name}'; this host has {', '.join(names)}")

    def add_ref(self, obj):
        self._children.add(obj)

    @property
    def transport(self):
        """"IB" (InfiniBand and RoCE), "iWARP" or "unknown"."""
        self._check()
        t = self.ctx.device.transport_type
        return "iWARP" if t == IBV_TRANSPORT_IWARP else "IB" if t == IBV_TRANSPORT_IB \
            else "unknown"

    def query_device(self):
        cdef ibv_device_attr a
        cdef int rc
        self._check()
        with nogil:
            rc = ibv_query_device(self.ctx, &a)
        if rc:
            raise VerbsError("ibv_query_device", rc)
        return {"fw_ver": a.fw_ver.decode(), "max_mr_size": a.max_mr_size,
                "vendor_id": a.vendor_id, "vendor_part_id": a.vendor_part_id,
                "hw_ver": a.hw_ver, "max_qp": a.max_qp, "max_qp_wr": a.max_qp_wr,
                "max_sge": a.max_sge, "max_cq": a.max_cq, "max_cqe": a.max_cqe,
                "max_mr": a.max_mr, "max_pd": a.max_pd, "max_qp_rd_atom": a.max_qp_rd_atom,
                "max_qp_init_rd_atom": a.max_qp_init_rd_atom, "max_sge_rd": a.max_sge_rd}

    def query_port(self, int port=1):
        cdef ibv_port_attr a
        cdef int rc
        self._check()
        with nogil:
            rc = ibv_query_port(self.ctx, <uint8_t>port, &a)
        if rc:
            raise VerbsError("ibv_query_port", rc)
        return {"state": a.state, "max_mtu": 128 << a.max_mtu, "active_mtu": 128 << a.active_mtu,
                "gid_tbl_len": a.gid_tbl_len, "max_msg_sz": a.max_msg_sz,
                "link_layer": a.link_layer}

    def query_gid(self, int index, int port=1):
        cdef ibv_gid g
        self._check()
        if ibv_query_gid(self.ctx, <uint8_t>port, index, &g):
            raise VerbsError("ibv_query_gid", errno)
        return bytes(g.raw[:16])

    def gid_table(self):
        """Valid GID entries: [{index, port, gid (16 bytes), type, ifindex}] with their types."""
        cdef ibv_gid_entry ents[256]
        cdef ssize_t n, i
        self._check()
        with nogil:
            n = ibv_query_gid_table(self.ctx, ents, 256, 0)
        if n < 0:
            raise VerbsError("ibv_query_gid_table", -n)
        return [{"index": ents[i].gid_index, "port": ents[i].port_num,
                 "gid": bytes(ents[i].gid.raw[:16]),
                 "type": GID_TYPES.get(ents[i].gid_type, str(ents[i].gid_type)),
                 "ifindex": ents[i].ndev_ifindex} for i in range(n)]

    @property
    def async_fd(self):
        self._check()
        return self.ctx.async_fd

    def get_async_event(self, int timeout_ms=0):
        """The next asynchronous event as (type, name, qp_num or port or None), or None.

        Waits up to TIMEOUT_MS (GIL released); the event is acknowledged before returning."""
        cdef ibv_async_event ev
        cdef int rc
        self._check()
        if not _fd_ready(self.ctx.async_fd, timeout_ms):
            return None
        with nogil:
            rc = ibv_get_async_event(self.ctx, &ev)
        if rc:
            raise VerbsError("ibv_get_async_event", errno)
        t = ev.event_type
        if t in (IBV_EVENT_QP_FATAL, IBV_EVENT_QP_REQ_ERR, IBV_EVENT_QP_ACCESS_ERR,
                 IBV_EVENT_COMM_EST, IBV_EVENT_SQ_DRAINED, IBV_EVENT_PATH_MIG,
                 IBV_EVENT_PATH_MIG_ERR, IBV_EVENT_QP_LAST_WQE_REACHED):
            elem = ev.element.qp.qp_num
        elif t in (IBV_EVENT_PORT_ACTIVE, IBV_EVENT_PORT_ERR, IBV_EVENT_GID_CHANGE):
            elem = ev.element.port_num
        else:
            elem = None
        name = ibv_event_type_str(ev.event_type).decode()
        ibv_ack_async_event(&ev)
        return (int(t), name, elem)

    cdef _check(self):
        if self.ctx == NULL:
            raise VerbsError("device", 9, f"device {self.name} is closed")

    def close(self):
        if self._list == NULL:
            return
        for child in list(self._children):
            child.close()
        if self._pid == os.getpid():
            rdma_free_devices(self._list)
        self._list = NULL
        self.ctx = NULL

    def __dealloc__(self):
        if self._list != NULL and self._pid == os.getpid():
            rdma_free_devices(self._list)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


cdef class PD:
    """A protection domain (VIPL: Ptag)."""
    cdef object __weakref__
    cdef ibv_pd *pd
    cdef readonly Device device
    cdef object _children

    def __cinit__(self, Device device not None):
        device._check()
        self.device = device
        self._children = weakref.WeakSet()
        self.pd = ibv_alloc_pd(device.ctx)
        if self.pd == NULL:
            raise VerbsError("ibv_alloc_pd", errno)
        device.add_ref(self)

    def add_ref(self, obj):
        self._children.add(obj)

    cdef _check(self):
        if self.pd == NULL:
            raise VerbsError("pd", 9, "protection domain is closed")

    def close(self):
        if self.pd == NULL:
            return
        for child in list(self._children):
            child.close()
        rc = ibv_dealloc_pd(self.pd)
        self.pd = NULL
        if rc:
            raise VerbsError("ibv_dealloc_pd", rc)

    def __dealloc__(self):
        if self.pd != NULL:
            ibv_dealloc_pd(self.pd)


cdef class MR:
    """Registered memory over a writable buffer-protocol object (pinned until close)."""
    cdef object __weakref__
    cdef ibv_mr *mr
    cdef Py_buffer view
    cdef bint has_view
    cdef readonly PD pd

    def __cinit__(self, PD pd not None, buffer, int access):
        pd._check()
        PyObject_GetBuffer(buffer, &self.view, PyBUF_WRITABLE)
        self.has_view = True
        self.pd = pd
        with nogil:
            self.mr = ibv_reg_mr(pd.pd, self.view.buf, self.view.len, access)
        if self.mr == NULL:
            err = errno
            PyBuffer_Release(&self.view)
            self.has_view = False
            raise VerbsError("ibv_reg_mr", err, f"{self.view.len} bytes")
        pd.add_ref(self)

    @property
    def lkey(self):
        return self.mr.lkey if self.mr != NULL else 0

    @property
    def rkey(self):
        return self.mr.rkey if self.mr != NULL else 0

    @property
    def addr(self):
        return <uint64_t>self.mr.addr if self.mr != NULL else 0

    @property
    def length(self):
        return self.mr.length if self.mr != NULL else 0

    @property
    def closed(self):
        return self.mr == NULL

    def close(self):
        if self.mr != NULL:
            rc = ibv_dereg_mr(self.mr)
            self.mr = NULL
            if rc:
                raise VerbsError("ibv_dereg_mr", rc)
        if self.has_view:
            PyBuffer_Release(&self.view)
            self.has_view = False

    def __dealloc__(self):
        if self.mr != NULL:
            ibv_dereg_mr(self.mr)
        if self.has_view:
            PyBuffer_Release(&self.view)


def buffer_address(buffer, size_t offset=0):
    """The virtual address of BUFFER[offset] (a writable buffer-protocol object)."""
    cdef Py_buffer v
    PyObject_GetBuffer(buffer, &v, PyBUF_WRITABLE)
    try:
        if offset > <size_t>v.len:
            raise ValueError(f"offset {offset} is beyond the buffer's {v.len} bytes")
        return <uint64_t>v.buf + offset
    finally:
        PyBuffer_Release(&v)


cdef class CQ:
    """A completion queue with its own completion channel (sleep instead of spinning)."""
    cdef object __weakref__
    cdef ibv_cq *cq
    cdef ibv_comp_channel *ch
    cdef readonly Device device
    cdef unsigned int _unacked
    cdef object _children
    # As CMId: calls without the GIL hold _busy and close() waits for them; completions are
    # polled into the caller's stack, so threads polling one CQ share no buffer.
    cdef int _busy
    cdef bint _closing

    def __cinit__(self, Device device not None, int cqe):
        device._check()
        self.device = device
        self._children = weakref.WeakSet()
        self.ch = ibv_create_comp_channel(device.ctx)
        if self.ch == NULL:
            raise VerbsError("ibv_create_comp_channel", errno)
        self.cq = ibv_create_cq(device.ctx, cqe, NULL, self.ch, 0)
        if self.cq == NULL:
            err = errno
            ibv_destroy_comp_channel(self.ch)
            self.ch = NULL
            raise VerbsError("ibv_create_cq", err, f"{cqe} entries")
        # Non-blocking channel: two threads woken for one event must not leave one of them
        # asleep in ibv_get_cq_event for good.
        fcntl(self.ch.fd, F_SETFL, fcntl(self.ch.fd, F_GETFL) | O_NONBLOCK)
        device.add_ref(self)

    cdef ibv_cq *_enter(self, str call) except NULL:
        if self.cq == NULL or self._closing:
            raise VerbsError(call, 9, "completion queue is closed")
        self._busy += 1
        return self.cq

    cdef int _poll(self, int max_entries, ibv_wc *out) except -1:
        cdef int n
        cdef ibv_cq *cq = self._enter("ibv_poll_cq")
        try:
            with nogil:
                n = ibv_poll_cq(cq, max_entries, out)
        finally:
            self._busy -= 1
        if n < 0:
            raise VerbsError("ibv_poll_cq", -n)
        return n

    def poll(self, int max_entries=16):
        """Up to MAX_ENTRIES completions: (wr_id, status, opcode, byte_len, imm, wc_flags)."""
        cdef ibv_wc wc[MAX_POLL]
        cdef int n = self._poll(min(max(max_entries, 1), MAX_POLL), wc), i
        return [(wc[i].wr_id, wc[i].status, wc[i].opcode, wc[i].byte_len, wc[i].imm_data,
                 wc[i].wc_flags) for i in range(n)]

    @cython.boundscheck(False)
    def poll_into(self, unsigned char[::1] out not None):
        """The hot-path poll: fill OUT (a writable buffer) with WC_SIZE-byte records
        (WC_FORMAT) and return how many; no Python object is made per completion."""
        cdef int cap = <int>min(out.shape[0] // WC_BYTES, MAX_POLL), n, i
        cdef Py_ssize_t off
        cdef uint64_t *q
        cdef uint32_t *w
        cdef ibv_wc wc[MAX_POLL]
        if cap == 0:
            raise ValueError(f"the buffer holds no completion record ({WC_BYTES} bytes each)")
        n = self._poll(cap, wc)
        for i in range(n):
            off = <Py_ssize_t>i * WC_BYTES
            q = <uint64_t *>&out[off]
            q[0] = wc[i].wr_id
            w = <uint32_t *>&out[off + 8]
            w[0] = wc[i].status
            w[1] = wc[i].opcode
            w[2] = wc[i].byte_len
            w[3] = wc[i].imm_data
            w[4] = wc[i].wc_flags
            w[5] = wc[i].qp_num
        return n

    def resize(self, int cqe):
        """Grow or shrink the CQ to at least CQE entries (ibv_resize_cq)."""
        cdef int rc
        if self.cq == NULL:
            raise VerbsError("ibv_resize_cq", 9, "completion queue is closed")
        rc = ibv_resize_cq(self.cq, cqe)
        if rc:
            raise VerbsError("ibv_resize_cq", rc, f"{cqe} entries")

    @property
    def cqe(self):
        return self.cq.cqe if self.cq != NULL else 0

    @property
    def fd(self):
        """The completion channel's fd (readable once the armed CQ has an event)."""
        return self.ch.fd if self.ch != NULL else -1

    def arm(self):
        cdef int rc
        cdef ibv_cq *cq = self._enter("ibv_req_notify_cq")
        try:
            with nogil:
                rc = ibv_req_notify_cq(cq, 0)
        finally:
            self._busy -= 1
        if rc:
            raise VerbsError("ibv_req_notify_cq", rc)

    def wait(self, int timeout_ms):
        """Sleep (GIL released) until the armed CQ has an event; False on timeout (or when
        another thread took the event first). close() from another thread waits for it."""
        cdef ibv_cq *ev_cq
        cdef void *ctx
        cdef int rc
        cdef ibv_comp_channel *ch
        self._enter("ibv_get_cq_event")
        ch = self.ch
        try:
            if not _fd_ready(ch.fd, timeout_ms):
                return False
            with nogil:
                rc = ibv_get_cq_event(ch, &ev_cq, &ctx)
        finally:
            self._busy -= 1
        if rc:
            if errno == EAGAIN:  # another thread took the event
                return False
            raise VerbsError("ibv_get_cq_event", errno)
        self._unacked += 1
        if self._unacked >= 64:
            ibv_ack_cq_events(self.cq, self._unacked)
            self._unacked = 0
        return True

    def add_ref(self, obj):
        self._children.add(obj)

    @property
    def closed(self):
        return self.cq == NULL or self._closing

    def close(self):
        if self.cq == NULL or self._closing:
            return
        self._closing = True
        for child in list(self._children):  # the queue pairs that report here go first
            child.close()
        while self._busy > 0:  # a poll or a wait (at most its timeout) still running
            with nogil:
                usleep(1000)
        if self.cq != NULL:
            if self._unacked:
                ibv_ack_cq_events(self.cq, self._unacked)
                self._unacked = 0
            rc = ibv_destroy_cq(self.cq)
            self.cq = NULL
            if rc:
                raise VerbsError("ibv_destroy_cq", rc)
        if self.ch != NULL:
            ibv_destroy_comp_channel(self.ch)
            self.ch = NULL

    def __dealloc__(self):
        if self.cq != NULL:
            if self._unacked:
                ibv_ack_cq_events(self.cq, self._unacked)
            ibv_destroy_cq(self.cq)
        if self.ch != NULL:
            ibv_destroy_comp_channel(self.ch)


cdef class EventChannel:
    """An rdma_cm event channel; get() waits with a timeout, GIL released."""
    cdef object __weakref__
    cdef rdma_event_channel *ch
    cdef object _ids

    def __cinit__(self):
        self.ch = rdma_create_event_channel()
        if self.ch == NULL:
            raise VerbsError("rdma_create_event_channel", errno,
                             "is rdma_ucm loaded (modprobe rdma_ucm)?")
        self._ids = weakref.WeakValueDictionary()

    @property
    def fd(self):
        return self.ch.fd if self.ch != NULL else -1

    def register(self, CMId cid):
        self._ids[<uint64_t>cid.cid] = cid

    def get(self, int timeout_ms):
        """(event, status, CMId, listen CMId or None, private data) or None on timeout."""
        cdef rdma_cm_event *ev
        cdef int rc
        cdef CMId new
        if self.ch == NULL:
            raise VerbsError("rdma_get_cm_event", 9, "event channel is closed")
        if not _fd_ready(self.ch.fd, timeout_ms):
            return None
        with nogil:
            rc = rdma_get_cm_event(self.ch, &ev)
        if rc:
            raise VerbsError("rdma_get_cm_event", errno)
        try:
            pdata = b""
            if ev.param.conn.private_data != NULL and ev.param.conn.private_data_len:
                pdata = (<const char *>ev.param.conn.private_data)[:ev.param.conn.private_data_len]
            listen = self._ids.get(<uint64_t>ev.listen_id) if ev.listen_id != NULL else None
            if ev.event == RDMA_CM_EVENT_CONNECT_REQUEST:
                new = CMId.__new__(CMId, self, None, False)
                new.cid = ev.id
                # what the connecting side asked for, which accept() answers within
                new.req_initiator_depth = ev.param.conn.initiator_depth
                new.req_responder_resources = ev.param.conn.responder_resources
                self.register(new)
                cid = new
            else:
                cid = self._ids.get(<uint64_t>ev.id)
            return (ev.event, ev.status, cid, listen, pdata)
        finally:
            rdma_ack_cm_event(ev)

    def close(self):
        if self.ch != NULL:
            for cid in list(self._ids.values()):
                cid.close()
            rdma_destroy_event_channel(self.ch)
            self.ch = NULL

    def __dealloc__(self):
        if self.ch != NULL:
            rdma_destroy_event_channel(self.ch)


cdef int _sockaddr(str ip, int port, sockaddr_in *sa) except -1:
    memset(sa, 0, sizeof(sockaddr_in))
    sa.sin_family = AF_INET
    sa.sin_port = htons(<unsigned short>port)
    b = ip.encode()
    if inet_pton(AF_INET, b, &sa.sin_addr) != 1:
        raise ValueError(f"'{ip}' is not an IPv4 address")
    return 0


# RDMA Reads (and atomics) in flight per QP, each way, at most: a pull posts its queue
# depth of reads (profiles.MAX_QUEUE_DEPTH is larger, but a responder keeps per-read state
# for each, and 16 already covers the lab's bandwidth-delay product many times over).
MAX_RD_ATOM = 16


cdef int _rd_atom(rdma_cm_id *cid, str call, int *responder, int *initiator) except -1:
    """The device's RDMA Read limits (max_qp_rd_atom as the target, max_qp_init_rd_atom
    as the initiator), capped at MAX_RD_ATOM."""
    cdef ibv_device_attr a
    cdef int rc
    if cid.verbs == NULL:
        raise VerbsError(call, 22, "the address is not resolved yet")
    with nogil:
        rc = ibv_query_device(cid.verbs, &a)
    if rc:
        raise VerbsError("ibv_query_device", rc, f"before {call}")
    responder[0] = max(0, min(MAX_RD_ATOM, a.max_qp_rd_atom))
    initiator[0] = max(0, min(MAX_RD_ATOM, a.max_qp_init_rd_atom))
    return 0


cdef int _conn_param(rdma_conn_param *p, bytes private_data, int limit, str call,
                     int retry_count, int rnr_retry_count) except -1:
    """Fill P for rdma_connect / rdma_accept; P borrows PRIVATE_DATA's buffer. The RDMA
    Read depths are the caller's to set (one each way until it does)."""
    if len(private_data) > limit:
        raise VerbsError(call, 22, f"private data holds at most {limit} bytes")
    if not (0 <= retry_count <= 7 and 0 <= rnr_retry_count <= 7):
        raise VerbsError(call, 22, "retry counts are 0..7")
    memset(p, 0, sizeof(p[0]))
    p.private_data = <const char *>private_data
    p.private_data_len = len(private_data)
    p.responder_resources = 1
    p.initiator_depth = 1
    p.retry_count = retry_count
    p.rnr_retry_count = rnr_retry_count
    return 0


cdef inline void _fill(ibv_send_wr *wr, uint64_t wr_id, int opcode, ibv_sge *sge, int n,
                       uint64_t remote_addr, uint32_t rkey, uint32_t imm, bint signaled,
                       bint fence, bint inline) noexcept:
    memset(wr, 0, sizeof(ibv_send_wr))
    wr.wr_id = wr_id
    wr.opcode = <ibv_wr_opcode>opcode
    wr.sg_list = sge
    wr.num_sge = n
    wr.send_flags = ((IBV_SEND_SIGNALED if signaled else 0) | (IBV_SEND_FENCE if fence else 0)
                     | (IBV_SEND_INLINE if inline else 0))
    wr.imm_data = imm
    wr.wr.rdma.remote_addr = remote_addr
    wr.wr.rdma.rkey = rkey


cdef class CMId:
    """An rdma_cm id and, once created on it, its RC queue pair."""
    cdef object __weakref__
    cdef rdma_cm_id *cid
    cdef readonly EventChannel channel
    cdef readonly object pd
    cdef readonly object send_cq
    cdef readonly object recv_cq
    cdef readonly int max_inline  # what the device granted at create_qp
    # RDMA Reads in flight this side asked for at connect/accept (as initiator, as target)
    cdef readonly int initiator_depth
    cdef readonly int responder_resources
    # on an id made by a connect request: what the requester asked for (-1: none)
    cdef readonly int req_initiator_depth
    cdef readonly int req_responder_resources
    cdef bint has_qp
    # Calls that run without the GIL take the id with _enter() and give it back: close()
    # (from any thread) waits for them, so no C call ever runs on a destroyed id or QP.
    # Work requests are built on the caller's stack: threads posting on one id at once
    # (a sender and a receiver) never share a buffer.
    cdef int _busy
    cdef bint _closing
    cdef bint _gone

    def __cinit__(self, EventChannel channel not None, context=None, bint create=True):
        self.channel = channel
        self.req_initiator_depth = self.req_responder_resources = -1
        if channel.ch == NULL:
            raise VerbsError("rdma_create_id", 9, "the event channel is closed")
        if create:
            if rdma_create_id(channel.ch, &self.cid, NULL, RDMA_PS_TCP):
                raise VerbsError("rdma_create_id", errno)
            channel.register(self)

    @property
    def device_name(self):
        if self.cid == NULL or self._closing or self.cid.verbs == NULL:
            return None
        return self.cid.verbs.device.name.decode()

    cdef _check(self, str call):
        if self.cid == NULL or self._closing:
            raise VerbsError(call, 9, "the connection id is closed")

    cdef rdma_cm_id *_enter(self, str call) except NULL:
        self._check(call)
        self._busy += 1
        return self.cid

    cdef ibv_qp *_enter_qp(self, str call) except NULL:
        self._check(call)
        if not self.has_qp:
            raise VerbsError(call, 22, "no queue pair: connect first")
        self._busy += 1
        return self.cid.qp

    @property
    def closed(self):
        return self.cid == NULL or self._closing

    def bind(self, str ip, int port):
        cdef sockaddr_in sa
        self._check("rdma_bind_addr")
        _sockaddr(ip, port, &sa)
        if rdma_bind_addr(self.cid, <void *>&sa):
            raise VerbsError("rdma_bind_addr", errno, f"{ip}:{port}")

    def set_ack_timeout(self, int exponent):
        """RC ACK timeout 4.096 us * 2**EXPONENT (rdma_set_option): with the retry count it
        bounds how long a send to a vanished peer takes to fail (0 = wait forever)."""
        cdef uint8_t t = <uint8_t>exponent
        self._check("rdma_set_option")
        if rdma_set_option(self.cid, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &t, 1):
            raise VerbsError("rdma_set_option", errno, "ACK timeout")

    def listen(self, int backlog=8):
        self._check("rdma_listen")
        if rdma_listen(self.cid, backlog):
            raise VerbsError("rdma_listen", errno)

    def resolve_addr(self, str src_ip, str dst_ip, int port, int timeout_ms):
        cdef sockaddr_in src, dst
        cdef int rc
        cdef rdma_cm_id *cid
        _sockaddr(src_ip, 0, &src)
        _sockaddr(dst_ip, port, &dst)
        cid = self._enter("rdma_resolve_addr")
        try:
            with nogil:
                rc = rdma_resolve_addr(cid, <void *>&src, <void *>&dst, timeout_ms)
        finally:
            self._busy -= 1
        if rc:
            raise VerbsError("rdma_resolve_addr", errno, f"{src_ip} -> {dst_ip}")

    def resolve_route(self, int timeout_ms):
        cdef int rc
        cdef rdma_cm_id *cid = self._enter("rdma_resolve_route")
        try:
            with nogil:
                rc = rdma_resolve_route(cid, timeout_ms)
        finally:
            self._busy -= 1
        if rc:
            raise VerbsError("rdma_resolve_route", errno)

    def create_qp(self, PD pd not None, CQ send_cq not None, CQ recv_cq not None,
                  int max_send_wr, int max_recv_wr, int max_sge=4, int max_inline=0):
        cdef ibv_qp_init_attr a
        self._check("rdma_create_qp")
        pd._check()
        if send_cq.cq == NULL or recv_cq.cq == NULL:
            raise VerbsError("rdma_create_qp", 9, "a completion queue is closed")
        if self.has_qp:
            raise VerbsError("rdma_create_qp", 17, "this connection already has a queue pair")
        if self.cid.verbs == NULL:
            raise VerbsError("rdma_create_qp", 22, "the address is not resolved yet")
        if self.cid.verbs != pd.device.ctx:
            raise VerbsError("rdma_create_qp", 22, "the protection domain is on another "
                             "device than the connection")
        memset(&a, 0, sizeof(a))
        a.send_cq = send_cq.cq
        a.recv_cq = recv_cq.cq
        a.qp_type = IBV_QPT_RC
        a.sq_sig_all = 0
        a.cap.max_send_wr = max_send_wr
        a.cap.max_recv_wr = max_recv_wr
        a.cap.max_send_sge = max_sge
        a.cap.max_recv_sge = max_sge
        a.cap.max_inline_data = max_inline
        if rdma_create_qp(self.cid, pd.pd, &a):
            raise VerbsError("rdma_create_qp", errno,
                             f"{max_send_wr} send / {max_recv_wr} receive descriptors")
        self.has_qp = True
        self.max_inline = a.cap.max_inline_data
        self.pd, self.send_cq, self.recv_cq = pd, send_cq, recv_cq
        pd.add_ref(self)
        send_cq.add_ref(self)
        recv_cq.add_ref(self)

    @property
    def qp_num(self):
        return self.cid.qp.qp_num if self.has_qp and self.cid != NULL and not self._closing else None

    def connect(self, bytes private_data=b"", int retry_count=6, int rnr_retry_count=0):
        """rdma_connect. RETRY_COUNT bounds the transport retries after an ACK timeout; 7
        is legal but rxe reads it as "retry forever" (rxe_comp.c), so a send to a vanished
        peer would never fail: the default is 6. RDMA Reads in flight, each way: what the
        device allows (max_qp_init_rd_atom as initiator, max_qp_rd_atom as responder),
        capped at MAX_RD_ATOM; the accepting side may lower them."""
        cdef rdma_conn_param p
        cdef int rc, responder, initiator
        cdef rdma_cm_id *cid
        _conn_param(&p, private_data, 56, "rdma_connect", retry_count, rnr_retry_count)
        self._check("rdma_connect")
        _rd_atom(self.cid, "rdma_connect", &responder, &initiator)
        p.responder_resources = <uint8_t>responder
        p.initiator_depth = <uint8_t>initiator
        self.responder_resources, self.initiator_depth = responder, initiator
        cid = self._enter("rdma_connect")
        try:
            with nogil:
                rc = rdma_connect(cid, &p)
        finally:
            self._busy -= 1
        if rc:
            raise VerbsError("rdma_connect", errno)

    def accept(self, bytes private_data=b"", int rnr_retry_count=0):
        """rdma_accept. RDMA Read depths: the least of what this device allows (capped at
        MAX_RD_ATOM) and what the request asked for: we serve at most the reads it will
        issue, and issue at most the reads it will serve."""
        cdef rdma_conn_param p
        cdef int rc, responder, initiator
        cdef rdma_cm_id *cid
        _conn_param(&p, private_data, 196, "rdma_accept", 0, rnr_retry_count)
        self._check("rdma_accept")
        _rd_atom(self.cid, "rdma_accept", &responder, &initiator)
        if self.req_initiator_depth >= 0:  # an id made by a connect request
            responder = min(responder, self.req_initiator_depth)
            initiator = min(initiator, self.req_responder_resources)
        p.responder_resources = <uint8_t>responder
        p.initiator_depth = <uint8_t>initiator
        self.responder_resources, self.initiator_depth = responder, initiator
        cid = self._enter("rdma_accept")
        try:
            with nogil:
                rc = rdma_accept(cid, &p)
        finally:
            self._busy -= 1
        if rc:
            raise VerbsError("rdma_accept", errno)

    def reject(self, bytes private_data=b""):
        self._check("rdma_reject")
        if len(private_data) > 148:
            raise VerbsError("rdma_reject", 22, "private data holds at most 148 bytes")
        if rdma_reject(self.cid, <const char *>private_data, len(private_data)):
            raise VerbsError("rdma_reject", errno)

    def disconnect(self):
        """rdma_disconnect; nothing when the id is already closed (or closing)."""
        cdef int rc = 0
        cdef rdma_cm_id *cid
        if self.cid == NULL or self._closing:
            return
        cid = self._enter("rdma_disconnect")
        try:
            with nogil:
                rc = rdma_disconnect(cid)
        finally:
            self._busy -= 1
        if rc:
            raise VerbsError("rdma_disconnect", errno)

    cdef int _post(self, ibv_send_wr *wr, str what) except -1:
        """ibv_post_send of the work request WR (built on the caller's stack), GIL released."""
        cdef ibv_send_wr *bad
        cdef int rc
        cdef ibv_qp *qp = self._enter_qp("ibv_post_send")
        try:
            with nogil:
                rc = ibv_post_send(qp, wr, &bad)
        finally:
            self._busy -= 1
        if rc:
            raise VerbsError("ibv_post_send", abs(rc), what)
        return 0

    cdef int _post_r(self, uint64_t wr_id, ibv_sge *sge, int n) except -1:
        """ibv_post_recv of one work request over SGE[0:N] (the caller's stack)."""
        cdef ibv_recv_wr wr
        cdef ibv_recv_wr *bad
        cdef int rc
        cdef ibv_qp *qp = self._enter_qp("ibv_post_recv")
        wr.wr_id = wr_id
        wr.next = NULL
        wr.sg_list = sge
        wr.num_sge = n
        try:
            with nogil:
                rc = ibv_post_recv(qp, &wr, &bad)
        finally:
            self._busy -= 1
        if rc:
            raise VerbsError("ibv_post_recv", abs(rc))
        return 0

    def post_send(self, uint64_t wr_id, int opcode, list sges, uint64_t remote_addr=0,
                  uint32_t rkey=0, uint32_t imm=0, bint signaled=True, bint fence=False,
                  bint inline=False):
        """One work request (send, RDMA Write with or without immediate, RDMA Read) over a
        gather list SGES = [(addr, length, lkey), ...]; IMM as it goes on the wire. INLINE
        copies the data into the work request (up to the QP's max_inline; no lkey needed)."""
        cdef ibv_sge sge[MAX_SGE]
        cdef ibv_send_wr wr
        cdef int i, n = len(sges)
        if n > MAX_SGE:
            raise VerbsError("ibv_post_send", 22, f"{n} segments, at most {MAX_SGE}")
        for i in range(n):
            sge[i].addr, sge[i].length, sge[i].lkey = sges[i]
        _fill(&wr, wr_id, opcode, sge, n, remote_addr, rkey, imm, signaled, fence, inline)
        self._post(&wr, "")

    def post1(self, uint64_t wr_id, int opcode, uint64_t laddr, uint32_t length,
              uint32_t lkey, uint64_t remote_addr=0, uint32_t rkey=0, uint32_t imm=0,
              bint signaled=True, bint inline=False):
        """The hot-path post: one work request over one local segment, scalars only (no
        Python object is built), GIL released around the doorbell. INLINE as post_send."""
        cdef ibv_sge sge
        cdef ibv_send_wr wr
        sge.addr, sge.length, sge.lkey = laddr, length, lkey
        _fill(&wr, wr_id, opcode, &sge, 1, remote_addr, rkey, imm, signaled, False, inline)
        self._post(&wr, "")

    def post_recv1(self, uint64_t wr_id, uint64_t laddr, uint32_t length, uint32_t lkey):
        """The hot-path receive: one segment, scalars only, GIL released."""
        cdef ibv_sge sge
        sge.addr, sge.length, sge.lkey = laddr, length, lkey
        self._post_r(wr_id, &sge, 1)

    def qp_state(self):
        """The queue pair's state name (RESET, INIT, RTR, RTS, SQD, SQE, ERR) or None."""
        cdef ibv_qp_attr a
        cdef ibv_qp_init_attr ia
        cdef int rc
        if not self.has_qp:
            return None
        rc = ibv_query_qp(self.cid.qp, &a, IBV_QP_STATE, &ia)
        if rc:
            raise VerbsError("ibv_query_qp", rc)
        return QP_STATES.get(a.qp_state, str(a.qp_state))

    def serve_reads(self, bint allowed):
        """Whether the queue pair serves the peer's RDMA Reads: IBV_ACCESS_REMOTE_READ in its
        access flags, changed in place (RTS to RTS allows it). Returns the access flags
        before the change. On RoCE/IB a read that comes while it is off is refused by the
        responder (an invalid-request NAK): the reader's completion fails and the connection
        breaks, as for a read outside any registration. siw (Linux 6.1) stores the flag and
        never tests it: the VIA layer does not offer this on iWARP."""
        cdef ibv_qp_attr a
        cdef ibv_qp_init_attr ia
        cdef int rc
        cdef unsigned int before
        if not self.has_qp:
            raise VerbsError("ibv_modify_qp", 22, "no queue pair")
        memset(&a, 0, sizeof(a))
        rc = ibv_query_qp(self.cid.qp, &a, IBV_QP_ACCESS_FLAGS, &ia)
        if rc:
            raise VerbsError("ibv_query_qp", rc, "access flags")
        before = a.qp_access_flags
        if allowed:
            a.qp_access_flags = before | IBV_ACCESS_REMOTE_READ
        else:
            a.qp_access_flags = before & ~(<unsigned int>IBV_ACCESS_REMOTE_READ)
        if a.qp_access_flags != before:
            rc = ibv_modify_qp(self.cid.qp, &a, IBV_QP_ACCESS_FLAGS)
            if rc:
                raise VerbsError("ibv_modify_qp", rc, "access flags")
        return before

    def to_error(self):
        """Move the queue pair to ERR: every posted work request completes flushed."""
        cdef ibv_qp_attr a
        cdef int rc
        if not self.has_qp:
            return
        memset(&a, 0, sizeof(a))
        a.qp_state = IBV_QPS_ERR
        rc = ibv_modify_qp(self.cid.qp, &a, IBV_QP_STATE)
        if rc:
            raise VerbsError("ibv_modify_qp", rc, "to ERR")

    def post_recv(self, uint64_t wr_id, list sges):
        cdef ibv_sge sge[MAX_SGE]
        cdef int i, n = len(sges)
        if n > MAX_SGE:
            raise VerbsError("ibv_post_recv", 22, f"{n} segments, at most {MAX_SGE}")
        for i in range(n):
            sge[i].addr, sge[i].length, sge[i].lkey = sges[i]
        self._post_r(wr_id, sge, n)

    def close(self):
        """Destroy the QP and the id, once the calls still running on it (in other threads)
        have returned; a close() racing another waits for it. The GIL is released: on iWARP
        the kernel may wait for the peer (a connect in flight, a closing TCP stream)."""
        cdef rdma_cm_id *cid
        cdef bint qp
        if self.cid == NULL and not self._closing:
            return
        if self._closing:
            while not self._gone:
                with nogil:
                    usleep(1000)
            return
        self._closing = True  # no new call takes the id from here on
        while self._busy > 0:
            with nogil:
                usleep(1000)
        cid, qp = self.cid, self.has_qp
        self.has_qp = False
        with nogil:
            if qp:
                rdma_destroy_qp(cid)
            rdma_destroy_id(cid)
        self.cid = NULL
        self._gone = True

    def __dealloc__(self):
        if self.cid != NULL:
            if self.has_qp:
                rdma_destroy_qp(self.cid)
            rdma_destroy_id(self.cid)
