"""The software provider of hsp_rdma.via, ``VipOpenNic("soft:NAME")``: VIPL over TCP, no RDMA.

M-VIA style: a connected VI is one TCP stream of frames (connect handshake, sends, RDMA Write
and Read requests, acknowledgements). What arrives is applied into the registered regions
after checking the memory handle, the range, the protection tag and the region's RDMA enable
bits, by the thread waiting for a completion on that VI or else by the connection's progress
thread; anything else is refused and counted (``Nic.counters``), the peer is told (NAK), and
the VI goes to ERROR with the error callback, as a remote access error does on verbs. Works on
127.0.0.1 and between any two Linux hosts.

Same host (both ends proven to each other, see F_LOCAL): the stream moves to a Unix socket
(F_UNIX), send data is copied from the sender's memory (F_CMA), and an RDMA Write into or an
RDMA Read from a region registered over a ``via.shared_buffer`` is, once the owner granted it
(F_GRANT), one copy into or out of the peer's memory with no frame at all.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import ipaddress
import itertools
import mmap
import os
import random
import secrets
import select
import socket
import struct
import sys
import threading
import time
import weakref
import zlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from hsp_rdma.cext import softpath as _compiled
from hsp_rdma.cext.memcopy import copy as _copy
from hsp_rdma.via import shm
from hsp_rdma.via.constants import Control, Reliability, Status, VipReturn, ViState
from hsp_rdma.via.types import (
    MemAttributes,
    MemHandle,
    NetAddress,
    NicAttributes,
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

# ---- limits (what VipQueryNic reports, and what is enforced) -----------------------------
QUEUE_DEPTH = 256  # descriptors one work queue of a VI holds (as the verbs provider)
MAX_SEGMENTS = 4  # data segments per descriptor (the verbs provider's queue pairs take 4)
MAX_TRANSFER = 1 << 30  # bytes one descriptor moves
MAX_DISCRIMINATOR = 48  # as on verbs (56 bytes of RC private data less the header)
MAX_VI = 1024
MAX_CQ_ENTRIES = 1 << 16
NATIVE_MTU = 4096
# Listeners: a discriminator maps to a TCP port on the listener's address, PORT_BASE +
# crc32 % PORT_SPAN (the verbs provider's map, on another base: below Linux's ephemeral range
# and clear of the verbs ports, which siw really listens on). HSP_VIA_SOFT_PORT_BASE moves it
# (parallel test runs); several discriminators may share a port, the listener tells them apart.
PORT_BASE = int(os.environ.get("HSP_VIA_SOFT_PORT_BASE", "10000"))
PORT_SPAN = 10000
# Test runs and benches of several engineers on one host: each picks a base of its own among
# every base whose ports stay in 10000..32767 (below Linux's ephemeral range, 32768-60999).
PORT_BASE_MIN, PORT_BASE_MAX = 10000, 32768 - PORT_SPAN


def random_port_base() -> int:
    """A port base for one test run or bench (12768 to choose from: runs rarely meet)."""
    return random.randrange(PORT_BASE_MIN, PORT_BASE_MAX)
# A peer that stops acknowledging (host gone, cable pulled) fails the connection after about
# this long, like the verbs provider's RC retry budget (~4 s on RoCE).
USER_TIMEOUT_MS = 4000
# A peer whose kernel still takes our bytes but whose provider acknowledges nothing (the
# process SIGSTOPped or hung) would leave sends posted forever: like RC retry exhaustion, an
# operation of ours that sees no acknowledgement progress, while not a byte arrives from the
# peer, for this long completes with TRANSPORT_ERROR and the VI goes to ERROR with the callback. Checked once per ACK_TICK_S by
# the progress thread (a receive timeout on the socket), so it fires within about
# ACK_TIMEOUT_MS + ACK_TICK_S. HSP_VIA_SOFT_ACK_TIMEOUT_MS changes it (tests, slow peers).
ACK_TIMEOUT_MS = int(os.environ.get("HSP_VIA_SOFT_ACK_TIMEOUT_MS", str(USER_TIMEOUT_MS)))
ACK_TICK_S = max(0.05, min(1.0, ACK_TIMEOUT_MS / 4000))
# A thread waiting for a completion reads its VI's stream itself (HSP_VIA_SOFT_WAITER_READS=0:
# the progress thread reads everything, the waiter sleeps on the completion queue); the
# progress thread keeps off the stream while waiters read and for LINGER_S after the last.
WAITER_READS = os.environ.get("HSP_VIA_SOFT_WAITER_READS", "1") != "0"
# SEND and ACK frames wholly read are applied by compiled code (hsp_rdma/cext/softpath.pyx),
# every other frame by _apply; HSP_VIA_SOFT_COMPILED_APPLY=0: every frame by _apply (the
# conformance suite runs both ways: tests/via/test_via_soft.py).
COMPILED_APPLY = os.environ.get("HSP_VIA_SOFT_COMPILED_APPLY", "1") != "0"
LINGER_S = 0.002
PLOCK_WAIT_S = 0.002
# Link emulation (drills): with HSP_VIA_SOFT_LINKS_DIR=DIR set when a NIC soft:NAME opens, a
# watcher thread of that NIC looks for DIR/NAME.down every LINK_POLL_S; while it exists the
# NIC's port is down, as a pulled cable: every connected VI goes to ERROR (CONN_LOST, posted
# descriptors flushed, the error callback told, after a PORT_DOWN report for the NIC) and its
# stream is shut, so the peer's VI breaks too; connects from or to the NIC fail until the file
# is gone. Without the variable nothing is watched and nothing costs anything.
LINKS_DIR_ENV = "HSP_VIA_SOFT_LINKS_DIR"
LINK_POLL_S = 0.025
HANDSHAKE_S = 10.0  # a connecting peer must say who it wants within this
DRAIN_S = 2.0  # after refusing a peer: how long its stream is read (so our NAK reaches it)

# ---- the wire: one header for every frame, network byte order, then LENGTH payload bytes ---
HDR = struct.Struct("!2sBBIQIII")  # magic, type, flags, seq, addr, rkey, value, length
MAGIC = b"SV"
VERSION = 2  # 2: ACKs ride on SENDs (F_ACKED); a version-1 peer would never see them
HELLO = 1  # seq=VERSION, rkey=reliability, value=enable bits, addr=max transfer; payload=disc
ACCEPT = 2  # the same fields, for the acceptor's VI
REJECT = 3  # value=VipReturn
READY = 4  # the initiator's last handshake word; data may follow at once
SEND = 5  # seq, value=immediate (flags & F_IMM); payload=message
WRITE = 6  # seq, addr, rkey, value=immediate (flags & F_IMM); payload=data
READ_REQ = 7  # seq, addr, rkey, value=length
READ_RESP = 8  # seq=the request's; payload=data
ACK = 9  # seq=every operation up to and including it was applied
NAK = 10  # seq=the operation refused (all before it were applied), value=Status bits;
#           payload=the reason in words. The sender of a NAK closes the stream after it.
CMA_OK = 11  # the acceptor read the initiator's handshake cookie: F_CMA frames may come
GRANT = 12  # rkey, value=slot, addr=region address, flags=rights; payload=GRANT_BODY
UNIX = 13  # the acceptor's answer to READY with F_UNIX: payload=its socket name, or empty
F_IMM = 1
# Same host (both ends on one kernel): a HELLO/ACCEPT with F_LOCAL carries LOCAL after the
# discriminator (boot id, pid, the address of a 16-byte cookie, a nonce for the peer). Each
# side copies the peer's nonce into its own cookie; the other reads it there with
# process_vm_readv, which proves that pid is the peer, and from then on a SEND or WRITE of
# ours may carry, instead of its data, F_CMA and the list of our source segments (IOV each):
# the receiver copies them straight from our memory into its region, after the same checks.
# A READY with F_LOCAL says "I read your cookie"; the acceptor answers with CMA_OK.
F_LOCAL = 2
F_CMA = 4
# A SEND with F_ACKED carries an ACK in its (otherwise unused) address field: every operation
# of the receiver's up to and including that seq was applied. The side that completed a
# receive waits up to ACK_DELAY_S for its application to answer (the ACK then rides on the
# answer, one frame and one wake-up fewer for the peer) before it sends a plain ACK.
F_ACKED = 8
# Same host, one-sided writes and reads (hsp_rdma.via.shm): a WRITE or READ_REQ with F_GRANT
# asks, once per region and connection, for the region itself. When the receiver applied it
# (every check passed) and the region lies in a shared_buffer of its own, it answers GRANT
# before the write's ACK or the read's READ_RESP: its memfd (as /proc/PID/fd/FD of the proven
# peer pid), where the region starts in it, its length, the grant-table slot the region holds,
# and the region's remote rights (flags: EN_WRITE, EN_READ). The peer maps exactly those pages
# (writable only with EN_WRITE) and from then on an RDMA Write into that region (EN_WRITE) or
# an RDMA Read from it (EN_READ), posted while nothing of ours is unacknowledged (so it comes
# after everything posted before it), is one copy into or out of the peer's memory: no frame,
# complete when copied. Before each such operation the peer checks the range against the grant
# and the slot against the owner's table (cleared on deregistration); anything else goes as a
# frame, refused by the owner. A grant whose slot was cleared is unmapped at the next grant.
F_GRANT = 16
# Same host, the stream itself: a READY with F_LOCAL|F_UNIX (the initiator proved the
# acceptor's pid) asks to move the VI's stream to a Unix socket (TCP loopback costs tens of
# microseconds a frame, a Unix socket a few). If the acceptor proved the initiator's pid too,
# it answers, after CMA_OK and before anything else, UNIX with the name of an abstract Unix
# socket it listens on for this one connection (random); the initiator connects and sends
# the name back on it; the acceptor takes only a connection whose peer credentials
# (SO_PEERCRED) are the proven pid and that names it. From then on the VI's frames travel
# on the Unix socket, exactly as they did on TCP; the TCP connection is closed. An empty
# UNIX: stay on TCP. HSP_VIA_SOFT_UNIX=0 never asks nor accepts.
F_UNIX = 32
UNIX_NAME = 16
GRANT_BODY = struct.Struct("!IQQ")  # fd, region offset in the memfd, region length
ACK_DELAY_S = 0.0005
# Mappings of a peer's shared buffer that no grant uses any more, kept per connection for the
# next grant of the same pages (a pull's next read registration of the same image).
SPARE_MAPS = 2
LOCAL = struct.Struct("!16sIQ16s")  # boot id, pid, cookie address, nonce
IOV = struct.Struct("!QI")  # address, length
CMA_MIN = 4096  # smaller messages travel inline (one syscall either way)
EN_WRITE, EN_READ = 1, 2
MAX_REASON = 512
IOV_BATCH = 512
_MASK = 0xFFFFFFFF
_NAMES = {HELLO: "HELLO", ACCEPT: "ACCEPT", REJECT: "REJECT", READY: "READY", SEND: "SEND",
          CMA_OK: "CMA_OK", GRANT: "GRANT", UNIX: "UNIX",
          WRITE: "WRITE", READ_REQ: "READ_REQ", READ_RESP: "READ_RESP", ACK: "ACK", NAK: "NAK"}


# The per-operation paths use plain ints (an IntFlag operator costs a Python call).
_OP_MASK, _CTL_IMM = int(Control.OP_MASK), int(Control.IMMEDIATE)
_OP_SENDRECV, _OP_RDMAWRITE, _OP_RDMAREAD = (int(Control.OP_SENDRECV), int(Control.OP_RDMAWRITE),
                                             int(Control.OP_RDMAREAD))
_ST_DONE, _ST_IMM = int(Status.DONE), int(Status.IMMEDIATE)
_ST_OP_OF = {_OP_RDMAWRITE: int(Status.OP_RDMA_WRITE), _OP_RDMAREAD: int(Status.OP_RDMA_READ)}
_ST_OP_SEND = int(Status.OP_SEND)
_ST_RECEIVED = int(Status.DONE | Status.OP_RECEIVE)
_ST_REMOTE_WRITTEN = int(Status.DONE | Status.OP_REMOTE_RDMA_WRITE)


def frame(kind: int, seq: int = 0, addr: int = 0, rkey: int = 0, value: int = 0,
          length: int = 0, flags: int = 0) -> bytes:
    """A frame header (the payload, LENGTH bytes, follows it on the stream)."""
    return HDR.pack(MAGIC, kind, flags, seq & 0xFFFFFFFF, addr, rkey, value & 0xFFFFFFFF,
                    length)


def port_of(discriminator: bytes) -> int:
    if not 1 <= PORT_BASE <= 65536 - PORT_SPAN:
        raise VipInvalidParameter(
            f"the soft provider's port base {PORT_BASE} (HSP_VIA_SOFT_PORT_BASE) leaves no room "
            f"for its {PORT_SPAN} ports: pick one in 1..{65536 - PORT_SPAN} (best "
            f"{PORT_BASE_MIN}..{PORT_BASE_MAX - 1}, below the ephemeral range)")
    return PORT_BASE + zlib.crc32(discriminator) % PORT_SPAN


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_pvr = getattr(_libc, "process_vm_readv", None)
if _pvr is not None:
    _pvr.restype = ctypes.c_ssize_t
    _pvr.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                     ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]


def cma_read(pid: int, local: list[tuple[int, int]], remote: list[tuple[int, int]]) -> int:
    """process_vm_readv: copy REMOTE (address, length) spans of process PID into LOCAL spans
    of ours (GIL released); the bytes copied, or -errno."""
    if _pvr is None:
        return -_errno.ENOSYS
    loc = (_Iovec * len(local))(*[_Iovec(a, n) for a, n in local])
    rem = (_Iovec * len(remote))(*[_Iovec(a, n) for a, n in remote])
    got = _pvr(pid, loc, len(local), rem, len(remote), 0)
    return got if got >= 0 else -ctypes.get_errno()


def _boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return bytes.fromhex(f.read().strip().replace("-", ""))[:16].ljust(16, b"\0")
    except (OSError, ValueError):
        return b""


_BOOT = _boot_id()


def local_enabled() -> bool:
    """The same-host path is offered unless HSP_VIA_SOFT_LOCAL=0 (then all data is inline)."""
    return _pvr is not None and os.environ.get("HSP_VIA_SOFT_LOCAL", "1") != "0" \
        and bool(_BOOT)


class _Cookie:
    """16 bytes of ours that the peer reads to prove it reaches this process's memory."""

    def __init__(self):
        self.buf = bytearray(16)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        self.nonce = secrets.token_bytes(16)  # what the peer must copy into its cookie

    def offer(self) -> bytes:
        return LOCAL.pack(_BOOT, os.getpid(), self.addr, self.nonce)


def unix_enabled() -> bool:
    return os.environ.get("HSP_VIA_SOFT_UNIX", "1") != "0"


def _unix_listener() -> tuple[socket.socket, bytes]:
    """An abstract Unix socket listening under a random name, for one connection."""
    name = secrets.token_hex(UNIX_NAME // 2).encode()
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ls.bind(b"\0hsp-via-soft-" + name)
        ls.listen(1)
    except OSError:
        ls.close()
        raise
    return ls, name


def _unix_accept(ls: socket.socket, name: bytes, pid: int, timeout_s: float) -> socket.socket:
    """The one connection that comes from PID and names NAME; OSError otherwise."""
    ls.settimeout(timeout_s)
    u, _ = ls.accept()
    try:
        u.settimeout(timeout_s)
        cred = u.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        peer_pid = struct.unpack("3i", cred)[0]
        got = b""
        while len(got) < len(name):
            more = u.recv(len(name) - len(got))
            if not more:
                break
            got += more
        if peer_pid != pid or got != name:
            raise ConnectionRefusedError(
                f"the Unix connection came from pid {peer_pid} naming {got!r}, not from the "
                f"proven peer {pid}")
    except BaseException:
        u.close()
        raise
    return u


def _verify(offer: tuple, want: bytes) -> int:
    """The peer's pid if its cookie (OFFER: boot id, pid, address, nonce) holds WANT."""
    boot, pid, addr, _nonce = offer
    if boot != _BOOT or not pid:
        return 0
    probe = bytearray(16)
    got = cma_read(pid, [(ctypes.addressof(ctypes.c_char.from_buffer(probe)), 16)],
                   [(addr, 16)])
    return pid if got == 16 and bytes(probe) == want else 0


def _enable_bits(attrs: ViAttributes | MemAttributes) -> int:
    return (EN_WRITE if attrs.enable_rdma_write else 0) | (EN_READ if attrs.enable_rdma_read
                                                           else 0)


def _attrs_of(rel: int, bits: int, max_transfer: int) -> ViAttributes:
    try:
        reliability = Reliability(rel)
    except ValueError:
        reliability = Reliability.RELIABLE_DELIVERY
    return ViAttributes(reliability_level=reliability, max_transfer_size=max_transfer,
                        enable_rdma_write=bool(bits & EN_WRITE),
                        enable_rdma_read=bool(bits & EN_READ))


@dataclass
class ErrorDescriptor:
    """What VIPL's error handler receives (VIP_ERROR_DESCRIPTOR); same fields as verbs'."""

    nic: Nic
    vi: Vi | None
    resource: str  # "VI", "NIC"
    code: str  # CONN_LOST, PROTECTION, PROTOCOL, LENGTH_ERROR, TRANSPORT_ERROR, …
    message: str
    descriptor: VipDescriptor | None = None


class _Eof(Exception):
    def __init__(self, mid: bool):
        super().__init__("end of stream" + (" inside a frame" if mid else ""))
        self.mid = mid


class _Garbage(Exception):
    """The peer broke the protocol; the message names how."""


class _Refused(Exception):
    """We refuse the peer's operation SEQ: NAK with STATUS, VI to ERROR (CODE), counted."""

    def __init__(self, seq: int, status: Status, code: str, counter: str, message: str,
                 desc: VipDescriptor | None = None, completion: tuple | None = None):
        super().__init__(message)
        self.seq, self.status, self.code, self.counter = seq, status, code, counter
        self.desc, self.completion = desc, completion  # our receive that failed with it


# ---- memory ---------------------------------------------------------------------------------
class Ptag:
    def __init__(self, nic: Nic):
        self.nic = nic
        self.closed = False

    def close(self) -> None:
        users = sum(1 for r in self.nic.regions.values() if r.ptag is self) + \
            sum(1 for v in self.nic.vis if v.attrs.ptag is self)
        if users:
            raise VipErrorResource(f"the ptag still protects {users} region(s)/VI(s): "
                                   "deregister and destroy those first")
        self.closed = True


class Region(_compiled.RegionBase):
    """A registered buffer: its address range, ptag, RDMA enable bits and a byte view."""

    def __init__(self, nic: Nic, buffer, attrs: MemAttributes, key: int):
        try:
            view = memoryview(buffer)
        except TypeError as exc:
            raise VipInvalidParameter(f"cannot register {type(buffer).__name__}: it must be a "
                                      "writable buffer (bytearray, mmap, numpy array…)") from exc
        if view.readonly or not view.c_contiguous:
            view.release()
            raise VipInvalidParameter(f"cannot register {type(buffer).__name__}: it must be a "
                                      "writable, contiguous buffer (bytearray, mmap, …)")
        view = view.cast("B")
        if len(view) == 0:
            raise VipInvalidParameter("cannot register an empty buffer")
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(view))
        self.length = len(view)
        self.view = view
        self.nic, self.ptag, self.key = nic, attrs.ptag, key
        self.remote_write, self.remote_read = attrs.enable_rdma_write, attrs.enable_rdma_read
        self.rights = _enable_bits(attrs)
        self.closed = False
        # Same host: the shared_buffer this region lies in (peers may be granted a mapping)
        self.shm = shm.lookup(self.addr, self.length) if self.rights else None
        self.slot = -1  # its grant-table slot, once granted

    def grant(self) -> tuple[int, int, int] | None:
        """(memfd, offset in it, slot) for a peer to map this region, or None: then nothing
        is granted and the peer's writes stay frames (never an error of the connection)."""
        if self.shm is None or self.closed:
            return None
        alloc, off = self.shm
        # The allocation can be closed under a live buffer: shm's finalizer of an older,
        # closed shared_buffer that lay at the same address closes the newer one's memfd and
        # grant table when the cyclic GC collects the old buffer (any time, in any thread).
        # Its fd number may then name another file: never grant it.
        if not alloc.live() or alloc.table.closed:
            return None
        if self.slot < 0:
            try:
                self.slot = alloc.claim(self.key, self.rights)
            except (ValueError, TypeError):  # (the table closed meanwhile, as above)
                return None
            if self.slot < 0:
                return None
        if alloc.table.closed:
            return None
        return alloc.fd, shm.PAGE + off, self.slot

    @property
    def pd(self) -> Ptag:  # the verbs provider's name for it
        return self.ptag

    def pin(self, off: int, n: int) -> memoryview | None:
        """A view of [OFF, OFF+N) that keeps the buffer mapped, or None once deregistered."""
        v = self.view[off:off + n]
        return v if len(v) == n else None

    def withdraw(self) -> None:
        """Clear its grant-table slot: grantees see it before their next write or read."""
        if self.slot >= 0:
            self.shm[0].release(self.slot)
            self.slot = -1

    def close(self) -> None:
        """Deregistered: the buffer is the caller's again (an mmap can be closed)."""
        self.closed = True
        self.withdraw()
        view, self.view = self.view, memoryview(b"")
        try:
            view.release()
        except BufferError:
            pass  # a frame in flight still holds a slice: the buffer is let go with it


def register(nic: Nic, buffer, attrs: MemAttributes) -> MemHandle:
    if not isinstance(attrs.ptag, Ptag) or attrs.ptag.nic is not nic or attrs.ptag.closed:
        raise VipInvalidPtag("the ptag does not belong to this NIC")
    while True:
        key = secrets.randbits(32)  # unguessable: a peer cannot name a region by counting
        if key and key not in nic.regions:
            break
    region = Region(nic, buffer, attrs, key)
    nic.regions[key] = region
    return MemHandle(key, key, region)


def deregister(nic: Nic, handle) -> None:
    region = nic.regions.get(int(handle))
    if region is None or (isinstance(handle, MemHandle) and handle.mr is not region):
        raise VipInvalidParameter(f"memory handle {int(handle)} is not registered on this NIC")
    del nic.regions[int(handle)]
    region.close()


# ---- completion queues ------------------------------------------------------------------------
class CompletionQueue(_compiled.CQBase):
    """Completions of the work queues attached to it. VIPL CQs (``vipl=True``) keep which
    work queue completed, in order; ``fileno()`` is an eventfd that is readable while a
    completion is there to take (cleared when VipCQDone finds none), for event loops."""

    def __init__(self, nic: Nic, entries: int, vipl: bool = False):
        if entries < 1:
            raise VipInvalidParameter(f"a completion queue needs at least 1 entry, not {entries}")
        if entries > MAX_CQ_ENTRIES:
            raise VipErrorResource(f"a completion queue holds at most {MAX_CQ_ENTRIES} entries")
        self.nic, self.vipl, self.entries = nic, vipl, entries
        self.fifo: deque[tuple[Vi, bool]] = deque()
        self.users = 0
        # The per-completion paths take the condition's lock itself (a Condition's `with`
        # is two Python calls more) and notify only when a thread sleeps on it.
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._gen = 0
        self._sleepers = 0  # threads in _cv.wait (changed under the lock)
        self._efd = -1

    # push(vi, recv): a completion of VI's receive (RECV) or send queue is there to take
    # (sleepers woken, the eventfd written). Compiled.
    push = _compiled.push

    def sleep(self, gen: int, timeout_s: float | None) -> None:
        """Sleep until a completion is pushed after generation GEN was read (at once if one
        was already), or TIMEOUT_S passes."""
        with self._lock:
            if self._gen != gen:
                return
            self._sleepers += 1
            try:
                self._cv.wait(timeout_s)
            finally:
                self._sleepers -= 1

    def fileno(self) -> int:
        with self._cv:
            if self._efd < 0:
                self._efd = os.eventfd(len(self.fifo), os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            return self._efd

    def arm(self) -> None:
        """As the verbs provider's: ask for an event on the next completion. The eventfd
        is always armed (every completion writes it), so there is nothing to do."""

    def take_event(self) -> bool:
        """As the verbs provider's: consume the pending event without blocking (the
        eventfd drained); True if there was one. Then take the completions (``Vi.done``):
        one that lands after this writes the eventfd again, so none is missed."""
        fd = self._efd  # (made by fileno(), which an event loop called to get here)
        if fd < 0:
            fd = self.fileno()
        try:
            os.eventfd_read(fd)
            return True
        except BlockingIOError:
            return False

    def done(self) -> tuple[Vi, bool] | None:
        """(vi, is_recv_queue) of the oldest completion whose descriptor is at its queue's
        head, or None (entries for descriptors already taken are dropped)."""
        with self._lock:
            while self.fifo:
                vi, recv = self.fifo.popleft()
                q = vi.recvq if recv else vi.sendq
                if q and q[0].wr_id in vi._done:
                    return vi, recv
            if self._efd >= 0:
                try:
                    os.eventfd_read(self._efd)
                except BlockingIOError:
                    pass
            return None

    def wait(self, timeout_ms: float) -> None:
        """Sleep until a completion is queued (VIPL CQs) or TIMEOUT_MS passes."""
        with self._lock:
            if self.fifo:
                return
            gen = self._gen
        self.sleep(gen, max(timeout_ms, 0) / 1000)

    def close(self) -> None:
        with self._cv:
            if self._efd >= 0:
                os.close(self._efd)
                self._efd = -1


# ---- the NIC ------------------------------------------------------------------------------------
class ConnRequest:
    """An incoming connection: the peer's discriminator and attributes, to accept or reject."""

    def __init__(self, nic: Nic, sock: socket.socket, stream: _Stream, local: NetAddress,
                 remote: NetAddress, attrs: ViAttributes):
        self.nic, self.sock, self.stream, self.local = nic, sock, stream, local
        self.remote, self.remote_attrs = remote, attrs
        self.reliability = attrs.reliability_level
        self.cmid = None  # (the verbs provider's field; nothing of rdma_cm here)
        self.offer: tuple | None = None  # the peer's LOCAL (same-host path), if it offered

    def _reject(self, code: VipReturn) -> None:
        try:
            self.sock.sendall(frame(REJECT, value=int(code)))
        except OSError:
            pass  # the peer gave up already
        _close(self.sock)


class _Listener:
    """A listening socket on (host, port); the discriminators this NIC listens for there."""

    def __init__(self, nic: Nic, host: str, port: int, disc: bytes):
        self.nic, self.host, self.port = nic, host, port
        self.discs: set[bytes] = {disc}  # before it listens: a request never finds it empty
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(16)
        except OSError as exc:
            s.close()
            if exc.errno == _errno.EADDRINUSE:
                raise VipErrorResource(
                    f"{host}:{port} (the soft provider's port for this discriminator) is taken "
                    "by another listener: listen on another address (127.0.0.x), use another "
                    "discriminator, or move the port base (HSP_VIA_SOFT_PORT_BASE)") from exc
            if exc.errno == _errno.EADDRNOTAVAIL:
                raise VipNotReachable(f"{host} is not an address of this host") from exc
            raise VipErrorResource(f"cannot listen on {host}:{port}: {exc}", exc.errno) from exc
        self.sock = s
        self.thread = threading.Thread(target=self._accept_loop,
                                       name=f"via-soft-listen-{port}", daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                s, peer = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._greet, args=(s, peer), daemon=True,
                             name=f"via-soft-greet-{self.port}").start()

    def _greet(self, s: socket.socket, peer: tuple) -> None:
        """Read the peer's HELLO (bounded in time); queue it for VipConnectWait, or refuse."""
        nic = self.nic
        stream = _Stream(s)
        try:
            s.settimeout(HANDSHAKE_S)
            h = stream.header()
            extra = LOCAL.size if h[2] & F_LOCAL else 0
            if h[1] != HELLO or h[3] != VERSION or not extra <= h[7] <= MAX_DISCRIMINATOR + extra:
                raise _Garbage(f"expected HELLO version {VERSION}, got "
                               f"{_NAMES.get(h[1], h[1])} version {h[3]} ({h[7]} bytes)")
            body = stream.take(h[7])
            disc, offer = body[:h[7] - extra], LOCAL.unpack(body[h[7] - extra:]) if extra \
                else None
        except (_Garbage, _Eof, OSError) as exc:
            nic.count("refused_hello")
            nic.note(f"connection from {peer[0]}:{peer[1]} refused before HELLO: {exc}")
            _close(s)
            return
        if nic.link_down:  # a pulled cable: the request never arrives (the peer sees EOF)
            nic.count("link_down_refused")
            _close(s)
            return
        req = ConnRequest(nic, s, stream, NetAddress(self.host, disc),
                          NetAddress(peer[0], disc), _attrs_of(h[5], h[6], h[4]))
        req.offer = offer
        if disc not in self.discs:
            nic.count("no_match")
            req._reject(VipReturn.NO_MATCH)
            return
        with nic._cv:
            nic._incoming.setdefault((self.host, disc), deque()).append(req)
            nic._cv.notify_all()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Nic:
    """An open soft NIC: registered regions, listeners, VIs, counters, the error handler."""

    iwarp = False  # immediate data is carried (scenarios ask)
    max_sge_rd = MAX_SEGMENTS

    def __init__(self, label: str):
        if not label or any(c.isspace() for c in label):
            raise VipInvalidParameter(f"'soft:{label}': name the soft NIC with a label after "
                                      "'soft:' (e.g. soft:a), without spaces")
        self.name = f"soft:{label}"
        self.regions: dict[int, Region] = {}
        self.listeners: dict[tuple[str, int], _Listener] = {}
        self.vis: list[Vi] = []
        self.vi_by_serial: dict[int, Vi] = {}
        self._serials = itertools.count(1)
        self.error_handler: Callable | None = None
        self.error_context: object = None
        self.errors: list[ErrorDescriptor] = []  # every error reported, newest last
        self.notes: deque[str] = deque(maxlen=64)  # refusals that had no VI to report to
        self.counters: Counter = Counter()
        self._cv = threading.Condition()
        self._incoming: dict[tuple[str, bytes], deque[ConnRequest]] = {}
        self._closing = False
        self.link_down = False  # the port is down (link emulation, LINKS_DIR_ENV)
        self.link_file: str | None = None
        self._link_stop: threading.Event | None = None
        links = os.environ.get(LINKS_DIR_ENV)
        if links:
            self.link_file = os.path.join(links, f"{label}.down")
            self._link_stop = threading.Event()
            if os.path.exists(self.link_file):
                self.link_down = True
                self.count("link_down")
            threading.Thread(target=self._watch_link, daemon=True,
                             name=f"via-soft-link-{label}").start()

    @property
    def handles(self) -> dict[int, Region]:
        return self.regions

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] += n

    def note(self, text: str) -> None:
        self.notes.append(text)

    def report(self, err: ErrorDescriptor) -> None:
        self.errors.append(err)
        del self.errors[:-64]
        if self.error_handler is not None:
            try:
                self.error_handler(self.error_context, err)
            except Exception as exc:  # noqa: BLE001 - a handler's bug must not kill the thread
                print(f"hsp_rdma.via: error handler raised {exc!r}", file=sys.stderr)

    def _watch_link(self) -> None:
        """The link watcher (LINKS_DIR_ENV): the port goes down while the file exists."""
        stop, path = self._link_stop, self.link_file
        while not stop.wait(LINK_POLL_S):
            down = os.path.exists(path)
            if down == self.link_down:
                continue
            self.link_down = down  # first: connects from here on fail
            if down:
                self.count("link_down")
                self._port_down()
            else:
                self.count("link_up")
                self.note(f"{self.name}: port up again ({path} removed)")

    def _port_down(self) -> None:
        """The port went down: the NIC is told (PORT_DOWN), every connection breaks as on a
        port error, and requests not yet accepted are dropped."""
        why = f"the port of {self.name} is down (link pulled: {self.link_file} exists)"
        self.note(why)
        self.report(ErrorDescriptor(self, None, "PORT", "PORT_DOWN", why))
        with self._cv:
            for q in self._incoming.values():
                for req in q:
                    _close(req.sock)
            self._incoming.clear()
        for vi in list(self.vis):
            conn = vi.conn
            if conn is None or vi.state is not ViState.CONNECTED:
                continue
            vi._broken(conn, "CONN_LOST", f"connection lost: {why}")
            conn._break_stream()  # the peer's side breaks as well (its stream ends)

    def _link_refusal(self) -> str:
        return (f"{self.name}: the port is down (link pulled: {self.link_file} exists); "
                "connects fail until it is removed")

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._link_stop is not None:
            self._link_stop.set()
        for vi in list(self.vis):
            vi.destroy(force=True)
        for lst in self.listeners.values():
            lst.close()
        self.listeners.clear()
        for region in self.regions.values():  # as verbs closes a device's MRs with it
            region.close()
        self.regions.clear()
        with self._cv:
            for q in self._incoming.values():
                for req in q:
                    _close(req.sock)
            self._incoming.clear()
            self._cv.notify_all()

    @property
    def closed(self) -> bool:
        return self._closing


def query_nic(nic: Nic) -> NicAttributes:
    return NicAttributes(
        name=nic.name, hardware_version=0, provider_version=f"hsp_rdma soft {VERSION} (TCP)",
        nic_address=nic.name, thread_safe=True, max_discriminator_len=MAX_DISCRIMINATOR,
        max_register_bytes=1 << 40, max_register_regions=1 << 20,
        max_register_block_bytes=1 << 40, max_vi=MAX_VI, max_descriptors_per_queue=QUEUE_DEPTH,
        max_segments_per_desc=MAX_SEGMENTS, max_cq=MAX_VI * 2, max_cq_entries=MAX_CQ_ENTRIES,
        max_transfer_size=MAX_TRANSFER, native_mtu=NATIVE_MTU, max_ptags=1 << 16,
        reliability_level_support=int(Reliability.RELIABLE_DELIVERY),
        rdma_read_support=int(Reliability.RELIABLE_DELIVERY),
        extra={"transport": "tcp", "port_base": PORT_BASE, "port_span": PORT_SPAN})


def system_management_info(nic: Nic, info_type: int = 0) -> dict:
    """The NIC's state and counters: frames and bytes each way, and every refusal by kind
    (refused_handle, refused_range, refused_ptag, refused_permission, refused_hello,
    garbage, truncated, length_errors, empty_queue, no_match)."""
    return {"nic": nic.name, "info_type": info_type,
            "state": "1: DOWN" if nic.closed or nic.link_down else "4: ACTIVE",
            "phys_state": "3: Disabled" if nic.link_down else "5: LinkUp",
            "link_layer": "TCP", "rate": "software", "counters": dict(nic.counters),
            "hw_counters": {}, "notes": list(nic.notes)}


# ---- connections ----------------------------------------------------------------------------------
def _check_host(addr: NetAddress, what: str) -> None:
    try:
        ipaddress.IPv4Address(addr.host)
    except ValueError as exc:
        raise VipInvalidParameter(f"{what} address {addr.host!r} is not an IPv4 address") \
            from exc
    if len(addr.discriminator) > MAX_DISCRIMINATOR:
        raise VipInvalidParameter(f"discriminator longer than {MAX_DISCRIMINATOR} bytes")


def connect_wait(nic: Nic, local: NetAddress, timeout_ms: int | None) -> ConnRequest:
    _check_host(local, "local")
    if nic.closed:
        raise VipInvalidState(f"{nic.name} is closed")
    key = (local.host, port_of(local.discriminator))
    lst = nic.listeners.get(key)
    if lst is None:
        lst = nic.listeners[key] = _Listener(nic, *key, local.discriminator)
    lst.discs.add(local.discriminator)
    deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
    with nic._cv:
        while True:
            q = nic._incoming.get((local.host, local.discriminator))
            if q:
                return q.popleft()
            if nic.closed:
                raise VipInvalidState(f"{nic.name} was closed while waiting")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise VipTimeout(f"no connection request at {local.host} for discriminator "
                                 f"{local.discriminator!r} in {timeout_ms} ms")
            nic._cv.wait(left)


def connect_accept(conn: ConnRequest, vi: Vi) -> None:
    if not isinstance(vi, Vi) or vi.nic is not conn.nic:
        raise VipInvalidParameter("the VI does not belong to the NIC that took the request")
    if vi.state is not ViState.IDLE:
        raise VipInvalidState(f"VI is {vi.state.name}: only an IDLE VI accepts")
    if conn.nic.link_down:
        _close(conn.sock)
        raise VipNotReachable(conn.nic._link_refusal())
    if conn.reliability != vi.attrs.reliability_level:
        conn._reject(VipReturn.INVALID_RELIABILITY_LEVEL)
        raise VipInvalidReliabilityLevel(
            f"peer asks {conn.reliability.name}, this VI is {vi.attrs.reliability_level.name}")
    s = conn.sock
    cookie, flags, offer = None, 0, b""
    if conn.offer is not None and conn.offer[0] == _BOOT and local_enabled():
        cookie = _Cookie()
        cookie.buf[:] = conn.offer[3]  # the initiator's nonce, where it will look for it
        flags, offer = F_LOCAL, cookie.offer()
    vi.state = ViState.CONNECT_PENDING
    try:
        s.settimeout(HANDSHAKE_S)
        s.sendall(frame(ACCEPT, seq=VERSION, rkey=int(vi.attrs.reliability_level),
                        value=_enable_bits(vi.attrs), addr=vi.max_transfer, flags=flags,
                        length=len(offer)) + offer)
        h = conn.stream.header()
        if h[1] != READY or h[7]:
            raise _Garbage(f"expected READY, got {_NAMES.get(h[1], h[1])}")
    except (OSError, _Eof, _Garbage) as exc:
        vi.state = ViState.IDLE
        _close(s)
        raise VipNotReachable(f"the connection from {conn.remote.host} did not establish "
                              f"({exc}): the peer gave up or went away") from exc
    stream, pid = conn.stream, 0
    if cookie is not None:
        pid = _verify(conn.offer, cookie.nonce)  # (its cookie holds our nonce)
        if h[2] & F_LOCAL and h[2] & F_UNIX:  # it asks for a Unix socket: answer first
            try:
                s, stream = _accept_unix(s, stream, pid)
            except (OSError, _Eof) as exc:
                vi.state = ViState.IDLE
                _close(s)
                raise VipNotReachable(f"the connection from {conn.remote.host} did not "
                                      f"establish ({exc}): the peer gave up or went "
                                      "away") from exc
    c = _Conn(vi, s, stream)
    if cookie is not None:
        c.cookie = cookie
        c.cma_out = bool(h[2] & F_LOCAL)  # it read our cookie: it can copy from us
        c.cma_pid = pid
        if c.cma_pid and not h[2] & F_UNIX:  # (else _accept_unix said it)
            c.send([frame(CMA_OK)])
    vi._establish(c, conn.remote_attrs)


def _accept_unix(s: socket.socket, stream: _Stream,
                 pid: int) -> tuple[socket.socket, _Stream]:
    """The acceptor's side of the move to a Unix socket (READY asked for it): CMA_OK if
    PID (the initiator) was proven, then UNIX(name) if we may, and the Unix connection from
    PID; else an empty UNIX and the TCP stream goes on."""
    ok = frame(CMA_OK) if pid else b""
    if not (pid and unix_enabled()):
        s.sendall(ok + frame(UNIX))
        return s, stream
    ls, name = _unix_listener()
    try:
        s.sendall(ok + frame(UNIX, length=len(name)) + name)
        u = _unix_accept(ls, name, pid, HANDSHAKE_S)
    finally:
        ls.close()
    _close(s)
    return u, _Stream(u)


def connect_reject(conn: ConnRequest) -> None:
    conn._reject(VipReturn.REJECT)


_REJECTS = {VipReturn.NO_MATCH: VipNoMatch,
            VipReturn.INVALID_RELIABILITY_LEVEL: VipInvalidReliabilityLevel}


def connect_request(vi: Vi, local: NetAddress, remote: NetAddress,
                    timeout_ms: int | None) -> ViAttributes:
    if vi.state is not ViState.IDLE:
        raise VipInvalidState(f"VI is {vi.state.name}, not IDLE: cannot connect")
    _check_host(remote, "remote")
    if vi.nic.link_down:
        raise VipNotReachable(vi.nic._link_refusal())
    timeout_ms = 60000 if timeout_ms is None else max(int(timeout_ms), 1)
    deadline = time.monotonic() + timeout_ms / 1000
    port = port_of(remote.discriminator)
    src = (local.host, 0) if local.host not in ("", "0.0.0.0") else None
    vi.state = ViState.CONNECT_PENDING
    s = None
    try:
        try:
            s = socket.create_connection((remote.host, port), timeout_ms / 1000, src)
        except ConnectionRefusedError as exc:
            raise VipNoMatch(f"nothing listens at {remote.host} for discriminator "
                             f"{remote.discriminator!r} (port {port} refused)") from exc
        except TimeoutError as exc:
            raise VipTimeout(f"no answer from {remote.host}:{port} in {timeout_ms} ms") from exc
        except OSError as exc:
            raise VipNotReachable(f"cannot reach {remote.host}:{port}: {exc}") from exc
        stream = _Stream(s)
        cookie = _Cookie() if local_enabled() else None
        hello = remote.discriminator + (cookie.offer() if cookie else b"")
        try:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            s.sendall(frame(HELLO, seq=VERSION, rkey=int(vi.attrs.reliability_level),
                            value=_enable_bits(vi.attrs), addr=vi.max_transfer,
                            flags=F_LOCAL if cookie else 0, length=len(hello)) + hello)
            h = stream.header()
            body = stream.take(h[7]) if h[1] == ACCEPT and h[7] <= LOCAL.size else b""
        except TimeoutError as exc:
            raise VipTimeout(f"{remote.host} did not answer the connection request in "
                             f"{timeout_ms} ms") from exc
        except (OSError, _Eof, _Garbage) as exc:
            raise VipNotReachable(f"{remote.host} broke the connection request: {exc}") from exc
        if h[1] == REJECT:
            try:
                code = VipReturn(h[6])
            except ValueError:
                code = VipReturn.REJECT
            raise _REJECTS.get(code, VipReject)(f"{remote.host} refused the connection "
                                                f"({code.name})")
        if h[1] != ACCEPT or h[3] != VERSION:
            raise VipNotReachable(f"{remote.host}:{port} does not speak this protocol (got "
                                  f"{_NAMES.get(h[1], h[1])} version {h[3]})")
        pid = 0
        if cookie is not None and h[2] & F_LOCAL and len(body) == LOCAL.size:
            offer = LOCAL.unpack(body)
            pid = _verify(offer, cookie.nonce)  # (its cookie holds our nonce)
            cookie.buf[:] = offer[3]  # its nonce, where it will look for it
        ask_unix = bool(pid) and unix_enabled()
        try:
            s.sendall(frame(READY, flags=(F_LOCAL | (F_UNIX if ask_unix else 0)) if pid
                            else 0))
            cma_ok = False
            if ask_unix:
                s.settimeout(max(0.001, deadline - time.monotonic()))
                s, stream, cma_ok = _connect_unix(s, stream)
        except TimeoutError as exc:
            raise VipTimeout(f"{remote.host} did not finish the connection in {timeout_ms} "
                             "ms") from exc
        except (OSError, _Eof, _Garbage) as exc:
            raise VipNotReachable(f"{remote.host} went away while connecting: {exc}") from exc
    except BaseException:
        vi.state = ViState.IDLE
        if s is not None:
            _close(s)
        raise
    peer = _attrs_of(h[5], h[6], h[4])
    c = _Conn(vi, s, stream)
    c.cookie, c.cma_pid = cookie, pid
    c.cma_out = cma_ok
    c.expect_cma_ok = cookie is not None and not ask_unix
    vi._establish(c, peer)
    return peer


def _connect_unix(s: socket.socket, stream: _Stream) -> tuple[socket.socket, _Stream, bool]:
    """The initiator's side of the move to a Unix socket: (socket, stream, CMA_OK seen)."""
    h = stream.header()
    cma_ok = h[1] == CMA_OK and not h[7]
    if cma_ok:
        h = stream.header()
    if h[1] != UNIX or h[7] not in (0, UNIX_NAME):
        raise _Garbage(f"expected UNIX, got {_NAMES.get(h[1], h[1])} ({h[7]} bytes)")
    if not h[7]:
        return s, stream, cma_ok  # (it stays on TCP)
    name = stream.take(h[7])
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        u.settimeout(s.gettimeout())
        u.connect(b"\0hsp-via-soft-" + name)
        u.sendall(name)
    except BaseException:
        u.close()
        raise
    _close(s)
    return u, _Stream(u), cma_ok


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


# ---- one connection's stream --------------------------------------------------------------------
class _Stream(_compiled.StreamBase):
    """Buffered reads from a socket: headers out of a buffer, payloads straight into their
    destination (a registered region) once the buffered bytes are used up."""

    def __init__(self, sock: socket.socket, size: int = 1 << 16):
        self.sock = sock
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self.lo = self.hi = 0
        # Called when a read waited the socket's receive timeout (SO_RCVTIMEO) for nothing;
        # it raises to give up, else the read goes on where it was.
        self.on_idle: Callable[[], None] | None = None
        self.rx_t = 0.0  # when bytes last arrived (read after an idle wake-up only)

    def _recv(self, view: memoryview) -> int:
        while True:
            try:
                got = self.sock.recv_into(view)
                if self.on_idle is not None:
                    self.rx_t = time.monotonic()
                return got
            except BlockingIOError:
                if self.on_idle is None:
                    raise
                self.on_idle()

    def pending(self) -> int:
        return self.hi - self.lo

    def _need(self, n: int) -> None:
        while self.hi - self.lo < n:
            if self.lo and len(self.buf) - self.lo < n:
                k = self.hi - self.lo
                self.mv[:k] = self.mv[self.lo:self.hi]
                self.lo, self.hi = 0, k
            got = self._recv(self.mv[self.hi:])
            if got == 0:
                raise _Eof(mid=self.hi > self.lo)
            self.hi += got

    def header(self) -> tuple:
        self._need(HDR.size)
        h = HDR.unpack_from(self.mv, self.lo)
        if h[0] != MAGIC:
            raise _Garbage(f"bad frame magic {bytes(self.mv[self.lo:self.lo + 4]).hex()}")
        self.lo += HDR.size
        return h

    def take(self, n: int) -> bytes:
        self._need(n)
        out = bytes(self.mv[self.lo:self.lo + n])
        self.lo += n
        return out

    def into(self, dest: memoryview) -> None:
        k = min(len(dest), self.hi - self.lo)
        if k:
            dest[:k] = self.mv[self.lo:self.lo + k]
            self.lo += k
        n = len(dest)
        while k < n:
            got = self._recv(dest[k:])
            if got == 0:
                raise _Eof(mid=True)
            k += got


class _Conn(_compiled.ConnBase):
    """One connected VI's TCP stream: a writer side (non-blocking first, then a writer thread
    for what the socket would not take) and the progress thread that reads and applies."""

    def __init__(self, vi: Vi, sock: socket.socket, stream: _Stream):
        self.vi, self.sock, self.stream = vi, sock, stream
        sock.settimeout(None)
        if sock.family != socket.AF_UNIX:  # (a Unix peer that dies closes its end at once)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for opt, val in (("TCP_USER_TIMEOUT", USER_TIMEOUT_MS), ("TCP_KEEPIDLE", 2),
                             ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, opt):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)
        # The progress thread's reads wake once per ACK_TICK_S to look for an overdue ACK.
        sec = int(ACK_TICK_S)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", sec, int((ACK_TICK_S - sec) * 1e6)))
        stream.on_idle = self._idle
        self.ack_wait_t = 0.0  # since when the oldest operation in flight waits for progress
        self.ack_due = 0.0  # a receive completed: its ACK waits for an answer until then
        self.plock = threading.Lock()  # held by the one thread reading the stream
        self._wpoll = select.poll()  # (waiting threads', under plock)
        self._wpoll.register(sock, select.POLLIN)
        self._bpoll = select.poll()  # (the progress thread's, under plock)
        self._bpoll.register(sock, select.POLLIN)
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        weakref.finalize(self, os.close, self.wake)  # (any thread may still write it)
        self.waiting = 0  # threads reading as waiters now
        # The progress thread is (about to be) asleep on the stream for up to ACK_TICK_S: it set
        # this before it looked whether an ACK is owed, so a waiter that leaves one owed and
        # sees it False knows the progress thread will see the ACK (no wake-up needed).
        self.parked = False
        self.last_wait = 0.0  # when a waiting thread last read
        self.ended = False  # the stream failed or ended: nothing more is read
        self.drain = False  # (after our NAK: read until the peer closes)
        self.closed = False  # VipDisconnect / destroy: nothing more is reported or applied
        self.failed = False  # the stream broke or was refused: the VI is in ERROR
        self._wl = threading.RLock()  # (the per-operation paths take it itself: a Condition's
        self.wlock = threading.Condition(self._wl)  # `with` is two Python calls more)
        self.backlog: deque = deque()
        self.writing = False
        self.seq = itertools.count(1)
        self.pending: deque[tuple[int, VipDescriptor, list]] = deque()  # awaiting ACK/RESP
        self.acked = 0  # highest seq of ours the peer acknowledged
        self.last_seq = 0  # highest seq of ours sent
        self.applied = 0  # highest seq of the peer's we applied
        self.ack_sent = 0
        self.in_frame = False  # a header was read, its payload not yet
        self.started = False
        self.cookie: _Cookie | None = None  # same host: what the peer read (kept alive)
        self.cma_pid = 0  # same host: the peer's pid, proven; its F_CMA frames are read
        self.cma_out = False  # same host: the peer reads ours; our SEND/WRITE data may stay
        self.expect_cma_ok = False  # (the initiator, having offered)
        self.asked: set[int] = set()  # rkeys of the peer's we asked a grant for (once each)
        self.grants: dict[int, _Grant] = {}  # the peer's regions we may write into directly
        self.read_grants: set[Region] = set()  # ours granted through the peer's reads
        self.maps: dict[tuple, _Map] = {}  # their mappings, and spares (oldest used first)
        self.reader = threading.Thread(target=self._read_loop, daemon=True,
                                       name=f"via-soft-vi{vi.serial}")
        self.writer = threading.Thread(target=self._write_loop, daemon=True,
                                       name=f"via-soft-vi{vi.serial}-tx")

    def start(self) -> None:
        with self.wlock:
            if self.closed:
                return
            self.started = True
            self.writer.start()
            self.reader.start()

    # ---- writing ------------------------------------------------------------------------
    # Queue a frame (header + payload views) in stream order; with OP = (desc, segs) the
    # frame is one of ours that the peer acknowledges: its seq is returned, and its header,
    # PARTS[0], is given as the fields (kind, flags, addr, rkey, value, length), packed once
    # its seq is known. An ACK still owed goes before (a SEND: on) it. Compiled (softpath).
    send = _compiled.send

    def _write_loop(self) -> None:
        while True:
            with self.wlock:
                while not self.backlog and not (self.closed or self.failed):
                    self.wlock.wait()
                if self.closed or (self.failed and not self.backlog):
                    return
                parts = list(self.backlog)
                self.backlog.clear()
                self.writing = True
            try:
                while parts:  # (at most IOV_BATCH buffers a call: the kernel takes 1024)
                    parts = _rest(parts, self.sock.sendmsg(parts[:IOV_BATCH]))
            except OSError:
                self._break_stream()
            with self.wlock:
                self.writing = False
                if self.failed and not self.backlog:
                    self.wlock.notify_all()

    def _break_stream(self) -> None:
        """A write failed: wake the reader (it reports the loss)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def flush_ack(self) -> None:
        with self.wlock:  # (an RLock: send() takes it again) one decision with close()'s
            if self.applied != self.ack_sent:
                self.ack_sent = self.applied
                self.ack_due = 0.0
                self.send([frame(ACK, seq=self.applied)])

    def close(self) -> None:
        """VipDisconnect: the stream ends; nothing more is applied or reported."""
        with self.wlock:
            if (self.started and not self.failed and not self.backlog and not self.writing
                    and self.applied != self.ack_sent):
                try:  # what was applied is acknowledged: the peer's sends complete, not flush
                    self.sock.send(frame(ACK, seq=self.applied), socket.MSG_DONTWAIT)
                except OSError:
                    pass
            self.closed = True
            self.backlog.clear()
            self.wlock.notify_all()
            started = self.started
        self.drop_grants()
        self._break_stream()
        if not started:
            self.sock.close()
        elif threading.current_thread() is not self.reader:
            self.reader.join(5)

    # ---- reading: whoever waits reads ---------------------------------------------------
    # A thread waiting in VipSendWait/VipRecvWait reads the stream itself and applies what it
    # reads (no hand-off through the progress thread: one wake-up per message, as a socket
    # ping-pong). The progress thread reads only when nobody waits and nobody waited for
    # LINGER_S (frames nobody waits for: writes, ACKs, a failure to report); it stays off the
    # socket otherwise, so a waiting thread's message wakes no one else. `plock` is held by
    # the one thread reading; the stream is read only under it.
    # drive(limit, q): as a waiting thread, read and apply what the stream brings, waiting at
    # most LIMIT s (None: one tick) for it. False if this thread cannot (another thread reads
    # now, the stream ended, or this is the progress thread): then wait for a completion
    # instead. Q: the work queue waited on; if its head completed meanwhile (the progress
    # thread read it before this thread took the stream), nothing is read. Compiled.
    drive = _compiled.drive
    # _pump(limit, poller): under plock, wait at most LIMIT s for a frame at a frame boundary,
    # then apply every frame that the read brought (SEND and ACK frames wholly read: compiled;
    # any other, _apply). Owed ACKs and the ACK timeout are looked after on the way. Compiled.
    _pump = _compiled.pump

    def _fail(self, exc: BaseException) -> None:
        """The stream failed (or was refused, or ended on purpose) in whichever thread read
        it: report as the progress thread always did; the progress thread ends it.
        `ended` is set only once the report is made: the progress thread, seeing it, stops
        and marks the stream failed, and a report made after that was dropped (`_broken`
        takes a failed stream as reported), which left the VI CONNECTED and its receive
        pending forever (CI stop 20; tests/via/test_via_soft_stall.py)."""
        vi, nic = self.vi, self.vi.nic
        try:
            raise exc
        except _Refused as r:
            nic.count(r.counter)
            reason = str(r).encode()[:MAX_REASON]
            self.send([frame(NAK, seq=r.seq, value=int(r.status), length=len(reason)), reason])
            vi._broken(self, r.code, str(r), r.desc, r.completion)
            self.drain = True
        except _Closed:
            pass
        except _Garbage as g:
            nic.count("garbage")
            vi._broken(self, "PROTOCOL", f"the peer broke the protocol: {g}")
        except (_Eof, OSError) as exc2:
            mid = self.in_frame or self.stream.pending() > 0
            if mid and not self.closed:
                nic.count("truncated")
            why = "the peer closed the stream" if isinstance(exc2, _Eof) else \
                (exc2.strerror or str(exc2))
            vi._broken(self, "CONN_LOST", f"connection lost: {why}"
                       + (" in the middle of a frame" if mid else ""))
        except Exception as exc2:  # noqa: BLE001 - a provider bug still ends in ERROR
            vi._broken(self, "PROTOCOL", f"the soft provider failed on a frame: {exc2!r}")
        finally:
            self.ended = True  # (after the report and `drain`: the progress thread ends it)
            with self.wlock:
                self.failed = True
                self.wlock.notify_all()
            os.eventfd_write(self.wake, 1)  # the progress thread ends the stream

    def _read_loop(self) -> None:
        """The progress thread: reads when no thread waits; ends the stream once it failed."""
        poller = select.poll()  # (the stream, and the wake-up when another thread failed it)
        poller.register(self.sock, select.POLLIN)
        poller.register(self.wake, select.POLLIN)
        try:
            while not (self.ended or self.closed):
                quiet = LINGER_S - (time.monotonic() - self.last_wait)
                if WAITER_READS and (self.waiting or quiet > 0):
                    time.sleep(max(quiet, LINGER_S / 4))
                    continue
                self.parked = True  # (before the look at the ACK owed: see __init__)
                wait = ACK_TICK_S
                if self.applied != self.ack_sent:
                    wait = max(0.0, min(wait, self.ack_due - time.monotonic()))
                ready = self.stream.pending() > 0
                try:
                    events = [] if ready else poller.poll(wait * 1000)
                finally:
                    self.parked = False
                for fd, _ev in events:
                    if fd == self.wake:
                        try:
                            os.eventfd_read(self.wake)
                        except BlockingIOError:
                            pass
                    else:
                        ready = True
                if WAITER_READS and (self.waiting or
                                     time.monotonic() - self.last_wait < LINGER_S):
                    continue  # a waiting thread came: it reads
                if not self.plock.acquire(timeout=LINGER_S):
                    continue
                try:
                    if not (self.ended or self.closed):
                        self._pump(0, self._bpoll if ready else _NEVER)
                except BaseException as exc:  # noqa: BLE001 - reported there
                    self._fail(exc)
                finally:
                    self.plock.release()
        finally:
            if self.drain:
                self._drain()
            with self.wlock:
                self.failed = True
                self.wlock.notify_all()
            self.drop_grants()
            self.writer.join(DRAIN_S)
            _close(self.sock)

    def _drain(self) -> None:
        """After a NAK: let it go out, then read (and drop) until the peer closes."""
        with self.wlock:
            self.failed = True
            self.wlock.notify_all()
        deadline = time.monotonic() + DRAIN_S
        self.writer.join(DRAIN_S)
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:  # a peer that keeps on talking
                self.sock.settimeout(left)  # is cut off at the deadline all the same
                if not self.sock.recv(1 << 16):
                    break
        except OSError:
            pass

    def _apply(self, h: tuple) -> None:
        _m, kind, flags, seq, addr, rkey, value, length = h
        nic = self.vi.nic
        nic.count("frames_rx")
        if kind in (ACK, READ_REQ, CMA_OK) and length:
            raise _Garbage(f"{_NAMES[kind]} frame with a {length}-byte payload")
        if kind == ACK:
            self._complete_upto(seq)
        elif kind == SEND:
            if flags & F_ACKED:
                self._complete_upto(addr & _MASK)
            self._expect_seq(seq)
            iovs, length = self._payload(kind, flags, length)
            self._receive(seq, length, flags & F_IMM, value, remote_write=False, iovs=iovs)
            self.applied = seq
        elif kind == WRITE:
            self._expect_seq(seq)
            iovs, length = self._payload(kind, flags, length)
            region = self._region(seq, rkey, addr, length, write=True)
            if flags & F_IMM:
                self._receive(seq, length, True, value, remote_write=True, region=region,
                              addr=addr, iovs=iovs)
            elif not self._into(seq, [(region, addr - region.addr, length)], length, iovs):
                raise _Refused(seq, Status.RDMA_PROT_ERROR, "PROTECTION", "refused_handle",
                               f"RDMA Write into handle {rkey:#x}, deregistered meanwhile")
            nic.count("rdma_write_bytes_rx", length)
            self.applied = seq
            if flags & F_GRANT and self.cma_pid:
                self._grant(region)
        elif kind == GRANT:
            self._take_grant(rkey, addr, value, flags, length)
        elif kind == CMA_OK:
            if not self.expect_cma_ok or self.cma_out:
                raise _Garbage("CMA_OK from a peer that was not offered the same-host path")
            self.cma_out = True
        elif kind == READ_REQ:
            self._expect_seq(seq)
            region = self._region(seq, rkey, addr, value, write=False)
            off = addr - region.addr
            if flags & F_GRANT and self.cma_pid:
                self._grant(region)  # (first: the reader holds it when the read completes)
                self.read_grants.add(region)
                if not self.vi.serves_reads:  # closed meanwhile: its withdrawal may miss it
                    self.withdraw_read_grants()
            self.send([frame(READ_RESP, seq=seq, length=value), region.view[off:off + value]])
            nic.count("rdma_read_bytes_tx", value)
            self.applied = seq
        elif kind == READ_RESP:
            self._read_response(seq, length)
        elif kind == NAK:
            if length > MAX_REASON:
                raise _Garbage(f"NAK with a {length}-byte reason")
            reason = self.stream.take(length).decode(errors="replace")
            self._nak(seq, value, reason)
        else:
            raise _Garbage(f"unexpected frame {_NAMES.get(kind, kind)} on a connected VI")

    def _grant(self, region: Region) -> None:
        """The proven same-host peer wrote into or read from REGION (every check passed) and
        asked for it: grant it, if it lies in a shared_buffer of ours (sent before the write's
        ACK or the read's response), with the region's remote rights."""
        g = region.grant()
        if g is None:
            return
        fd, off, slot = g
        self.vi.nic.count("shm_grants_tx")
        self.send([frame(GRANT, addr=region.addr, rkey=region.key, value=slot,
                         flags=region.rights, length=GRANT_BODY.size),
                   GRANT_BODY.pack(fd, off, region.length)])

    def withdraw_read_grants(self) -> None:
        """The regions granted to the peer through its reads on this connection lose their
        grant-table slots (the peer checks the slot before each one-sided copy, so its next
        read or write of them goes as a frame); the regions stay registered."""
        for region in list(self.read_grants):
            region.withdraw()
        self.read_grants.clear()

    def _take_grant(self, rkey: int, addr: int, slot: int, rights: int, length: int) -> None:
        """The peer grants region RKEY: map exactly its pages of the peer's memfd, writable
        only if RIGHTS say remote write. Grants whose region the peer deregistered since (a
        pull's read registration lives one switch-over) are unmapped here."""
        if length != GRANT_BODY.size:
            raise _Garbage(f"GRANT with a {length}-byte body")
        fd, off, size = GRANT_BODY.unpack(self.stream.take(length))
        if rkey not in self.asked or not self.cma_pid:
            raise _Garbage(f"GRANT of handle {rkey:#x}, which was never asked for")
        self.asked.discard(rkey)
        try:
            if not (rights and not rights & ~(EN_WRITE | EN_READ) and 0 <= slot < shm.SLOTS
                    and size and off >= shm.PAGE and size <= MAX_TRANSFER):
                raise ValueError(f"slot {slot}, offset {off}, {size} bytes, rights {rights}")
            g = _Grant.map(self.cma_pid, fd, off, size, addr, rkey, slot, rights, self._mapping)
        except (OSError, ValueError) as exc:  # (no direct path: the writes stay frames)
            self.vi.nic.count("shm_grants_unusable")
            self.vi.nic.note(f"grant of handle {rkey:#x} not usable: {exc}")
            return
        with self.wlock:
            if self.closed or self.failed:
                g.close()
                self._drop_spares(0)
                return
            old = self.grants.pop(rkey, None)
            if old is not None:
                old.close()
            for k, stale in list(self.grants.items()):
                if not stale.valid():
                    del self.grants[k]
                    stale.close()
            self.grants[rkey] = g
            self._drop_spares(SPARE_MAPS)
        self.vi.nic.count("shm_grants_rx")

    def _mapping(self, key: tuple, make: Callable[[], _Map]) -> _Map:
        """The mapping KEY names (a spare, or one a grant uses), else MAKE's (made without
        the lock: mapping populates every page); counted as used by the grant it is for."""
        with self.wlock:
            mp = self.maps.pop(key, None)
            if mp is not None:
                self.maps[key] = mp  # (last: the spares are dropped oldest first)
                mp.users += 1
                self.vi.nic.count("shm_maps_reused")
                return mp
        mp = make()
        mp.users += 1
        with self.wlock:
            self.maps[key] = mp
        return mp

    def shm_copy(self, g: _Grant, raddr: int, segs: list, total: int, write: bool) -> bool:
        """An RDMA Write (WRITE) as one copy into the peer's granted region, or an RDMA Read
        as one copy out of it into our segments, if it may go that way now (nothing of ours
        unacknowledged, so it comes after everything posted before it; the range in the
        grant; the owner's slot still the region's); False: it goes as a frame."""
        with self._wl:
            if (self.pending or self.closed or self.failed or g.closed
                    or not g.addr <= raddr or raddr + total > g.addr + g.length
                    or not g.valid()):
                return False
            at = g.start + raddr - g.addr
            for r, o, n in segs:
                if n:
                    mine = r.pin(o, n)
                    if mine is None:
                        return False  # deregistered meanwhile: the frame path says so
                    # (without the GIL from 64 KiB on: the digest worker of a GSO runs
                    # beside a copy; the view over the peer's map keeps it mapped meanwhile.
                    # Into the peer: streaming stores; into ours: cached, our reader is next)
                    if write:
                        _copy(g.view[at:at + n], mine, True)
                    else:
                        _copy(mine, g.view[at:at + n])
                    at += n
        counters = self.vi.nic.counters
        if write:
            counters["shm_bytes_tx"] += total
            counters["shm_writes_tx"] += 1
        else:
            counters["shm_read_bytes"] += total
            counters["shm_reads"] += 1
        return True

    def drop_grants(self) -> None:
        with self.wlock:  # (no copy is under way: they hold the lock)
            for g in self.grants.values():
                g.close()
            self.grants.clear()
            self._drop_spares(0)

    def _drop_spares(self, keep: int) -> None:
        """Under wlock: unmap the mappings no grant uses but the KEEP last used."""
        spare = [mp for mp in self.maps.values() if not mp.users]
        for mp in spare[:max(0, len(spare) - keep)]:
            del self.maps[mp.key]
            mp.close()

    def _idle(self) -> None:
        """The socket was silent for ACK_TICK_S: fail the VI if the oldest operation in
        flight saw no acknowledgement progress for ACK_TIMEOUT_MS (RC retry exhaustion)."""
        if self.closed:
            raise _Closed()
        waited = time.monotonic() - max(self.ack_wait_t, self.stream.rx_t)
        try:
            _s, desc, _segs = self.pending[0]
        except IndexError:
            return  # nothing in flight: a silent peer is no error (as on RC)
        if waited * 1000 < ACK_TIMEOUT_MS:
            return
        vi = self.vi
        vi.nic.count("ack_timeouts")
        why = (f"the peer sent and acknowledged nothing for {waited:.1f} s (at most {ACK_TIMEOUT_MS} ms "
               "allowed): its process is stopped or hung, or the path is cut")
        op = desc.control & Control.OP_MASK
        status = Status.DONE | Status.TRANSPORT_ERROR | {
            Control.OP_RDMAWRITE: Status.OP_RDMA_WRITE,
            Control.OP_RDMAREAD: Status.OP_RDMA_READ}.get(op, Status.OP_SEND)
        with vi._lock:
            current = vi.conn is self and not self.failed
            if current and desc.wr_id not in vi._done:
                vi._done[desc.wr_id] = (int(status), 0, None, why)
        if current:
            vi.send_cq.push(vi, False)
        vi._broken(self, "TRANSPORT_ERROR", why, desc)
        raise _Closed()

    def _expect_seq(self, seq: int) -> None:
        if seq != ((self.applied + 1) & _MASK):
            raise _Garbage(f"operation {seq} out of order (expected {self.applied + 1})")

    def _region(self, seq: int, rkey: int, addr: int, length: int, write: bool) -> Region:
        """The region a remote operation names, after every check; else _Refused."""
        vi = self.vi
        what = "RDMA Write" if write else "RDMA Read"
        region = vi.nic.regions.get(rkey)
        if region is None or region.closed:
            raise _Refused(seq, Status.RDMA_PROT_ERROR, "PROTECTION", "refused_handle",
                           f"{what} names memory handle {rkey:#x}, which is not registered")
        if region.ptag is not vi.attrs.ptag:
            raise _Refused(seq, Status.RDMA_PROT_ERROR, "PROTECTION", "refused_ptag",
                           f"{what} into handle {rkey:#x}: the region's ptag is not the VI's")
        if not write and not vi.serves_reads:
            raise _Refused(seq, Status.RDMA_PROT_ERROR, "PROTECTION", "refused_permission",
                           f"RDMA Read from handle {rkey:#x}: this VI serves no RDMA Reads "
                           "now (via.serve_reads)")
        if not (region.remote_write if write else region.remote_read):
            raise _Refused(seq, Status.RDMA_PROT_ERROR, "PROTECTION", "refused_permission",
                           f"{what} into handle {rkey:#x}: the region was registered without "
                           f"enable_rdma_{'write' if write else 'read'}")
        if length > MAX_TRANSFER or not (region.addr <= addr and addr + length
                                         <= region.addr + region.length):
            raise _Refused(seq, Status.RDMA_PROT_ERROR, "PROTECTION", "refused_range",
                           f"{what} of {length} bytes at {addr:#x} lies outside handle "
                           f"{rkey:#x} ({region.addr:#x}+{region.length})")
        return region

    def _payload(self, kind: int, flags: int, length: int) -> tuple[list | None, int]:
        """(None, LENGTH) for data that follows inline; (source spans, their total) for an
        F_CMA frame, whose payload lists the sender's segments (checked here)."""
        if not flags & F_CMA:
            if kind == SEND and length > MAX_TRANSFER:  # (a WRITE's: refused as a range)
                raise _Garbage(f"{_NAMES[kind]} of {length} bytes (at most {MAX_TRANSFER})")
            return None, length
        if not self.cma_pid:
            raise _Garbage(f"{_NAMES[kind]} names the sender's memory, which this side was "
                           "never shown it can read (no same-host handshake)")
        n, rest = divmod(length, IOV.size)
        if rest or not 1 <= n <= MAX_SEGMENTS:
            raise _Garbage(f"{_NAMES[kind]} with a {length}-byte segment list")
        body = self.stream.take(length)
        iovs = [IOV.unpack_from(body, i * IOV.size) for i in range(n)]
        total = sum(k for _a, k in iovs)
        if total > MAX_TRANSFER:
            raise _Garbage(f"{_NAMES[kind]} of {total} bytes (at most {MAX_TRANSFER})")
        return iovs, total

    def _into(self, seq: int, spans: list[tuple[Region, int, int]], total: int,
              iovs: list | None) -> bool:
        """Fill SPANS (region, offset, length; TOTAL bytes) from the stream, or with IOVS
        from the sender's memory. False if a region was deregistered meanwhile."""
        pins = [r.pin(off, n) for r, off, n in spans]  # (held: the buffer stays mapped)
        for v in pins:  # (a loop, not any() over a generator: this runs once a message)
            if v is None:
                return False
        if iovs is None:
            for v in pins:
                self.stream.into(v)
            return True
        got = cma_read(self.cma_pid, [(r.addr + off, n) for r, off, n in spans], iovs) \
            if total else 0
        if got == -_errno.ESRCH:
            raise ConnectionResetError(_errno.ESRCH, "the peer process is gone")
        if got != total:
            raise _Refused(seq, Status.PROTECTION_ERROR, "TRANSPORT_ERROR", "cma_faults",
                           f"could not copy the sender's {total} bytes from its memory ("
                           + (os.strerror(-got) if got < 0 else f"{got} copied") + ")")
        self.vi.nic.count("cma_bytes_rx", total)
        return True

    def _receive(self, seq: int, length: int, imm: bool, value: int, remote_write: bool,
                 region: Region | None = None, addr: int = 0,
                 iovs: list | None = None) -> None:
        """A SEND (or a WRITE with immediate) takes the head of the receive queue."""
        vi = self.vi
        with vi._lock:
            desc = vi._rq.popleft() if vi._rq else None
        if desc is None:
            raise _Refused(seq, Status.TRANSPORT_ERROR, "TRANSPORT_ERROR", "empty_queue",
                           "a message arrived with no receive descriptor posted (a reliable "
                           "VI breaks: post receives before the peer sends)")
        segs = vi._segs_of.get(desc.wr_id, [])
        if remote_write:
            if not self._into(seq, [(region, addr - region.addr, length)], length, iovs):
                raise _Refused(seq, Status.RDMA_PROT_ERROR, "PROTECTION", "refused_handle",
                               "RDMA Write into a region deregistered meanwhile")
        else:
            cap = 0
            for _r, _o, n in segs:
                cap += n
            if length > cap:
                why = f"a {length}-byte message arrived for a {cap}-byte receive descriptor"
                raise _Refused(seq, Status.REMOTE_DESC_ERROR, "LENGTH_ERROR", "length_errors",
                               why, desc, (int(Status.DONE | Status.LENGTH_ERROR
                                               | Status.OP_RECEIVE), 0, None, why))
            spans, left = [], length
            for r, off, n in segs:
                if not left:
                    break
                spans.append((r, off, min(n, left)))
                left -= spans[-1][2]
            if not self._into(seq, spans, length, iovs):
                why = "the receive descriptor's memory was deregistered while posted"
                raise _Refused(seq, Status.REMOTE_DESC_ERROR, "PROTECTION_ERROR",
                               "local_protection", why, desc, (int(
                                   Status.DONE | Status.PROTECTION_ERROR
                                   | Status.OP_RECEIVE), 0, None, why))
        status = _ST_REMOTE_WRITTEN if remote_write else _ST_RECEIVED
        if imm:
            status |= _ST_IMM
        # Applied before the receiver can see it: a VipDisconnect right after the completion
        # still acknowledges it (close() sends the last ACK), as RC acknowledges on placement.
        self.applied = seq
        if not self.ack_due:
            self.ack_due = time.monotonic() + ACK_DELAY_S
        vi._complete(desc, True, status, length, immediate=value if imm else None)

    # _complete_upto(seq): every operation of ours up to and including SEQ was applied by
    # the peer; they complete (an ACK for one never sent, or before an RDMA Read's response:
    # _Garbage, and nothing changes). Compiled.
    _complete_upto = _compiled.complete_upto

    def _read_response(self, seq: int, length: int) -> None:
        vi = self.vi
        if not self.pending or self.pending[0][0] != seq:
            raise _Garbage(f"READ_RESP {seq} answers no RDMA Read in flight")
        _s, desc, segs = self.pending[0]
        want = sum(n for _r, _o, n in segs)
        if desc.control & Control.OP_MASK != Control.OP_RDMAREAD or length != want:
            raise _Garbage(f"READ_RESP {seq} of {length} bytes (asked for {want})")
        if not self._into(seq, segs, length, None):
            raise _Garbage("the RDMA Read's local memory was deregistered")  # local misuse
        self.pending.popleft()
        self.ack_wait_t = time.monotonic()
        vi._complete_send(desc, Status.DONE)

    def _nak(self, seq: int, value: int, reason: str) -> None:
        vi = self.vi
        if not any(s == seq for s, _d, _g in self.pending):
            raise _Garbage(f"NAK {seq} for an operation never sent")
        status = Status(value & int(Status.ERROR_MASK)) or Status.TRANSPORT_ERROR
        while self.pending:
            s, desc, _segs = self.pending.popleft()
            if s == seq:
                vi._complete_send(desc, Status.DONE | status, reason=f"peer: {reason}")
                vi._broken(self, status.name or "TRANSPORT_ERROR",
                           f"the peer refused an operation: {reason}", desc)
                raise _Closed()
            vi._complete_send(desc, Status.DONE)


class _Closed(Exception):
    """The connection ended on purpose (a NAK taken); the reader stops quietly."""


class _NoPoll:
    """A poller that never finds the stream readable (the progress thread's pump after a
    wait that found nothing: owed ACKs and the ACK timeout only)."""

    @staticmethod
    def poll(_timeout_ms: float = 0) -> list:
        return []


_NEVER = _NoPoll()


class _Map:
    """One mapping of a peer's shared-buffer pages (and of its grant table), shared by the
    grants of those same pages with the same rights. A pull registers the image for remote
    read anew at every switch-over: mapping 16 MiB with MAP_POPULATE costs about 2 ms, which
    the grant of the next registration of the same pages does not pay again."""

    def __init__(self, key: tuple, mm: mmap.mmap, table: mmap.mmap):
        self.key, self.mm, self.table = key, mm, table
        self.users = 0  # grants using it now (a spare when 0: kept for the next grant)

    def close(self) -> None:
        self.mm.close()
        self.table.close()


class _Grant:
    """A peer's region mapped into this process (its pages of the peer's memfd, writable only
    if the grant allows remote write) and the peer's grant table (read-only), to check the
    region is still registered."""

    def __init__(self, mp: _Map, start: int, addr: int, length: int, rkey: int, slot: int,
                 rights: int):
        self.map, self.mm, self.table, self.view = mp, mp.mm, mp.table, memoryview(mp.mm)
        self.start, self.addr, self.length = start, addr, length
        self.rkey, self.slot, self.rights = rkey, slot, rights
        self.want = shm.SLOT.pack(rkey, rights)
        self.closed = False  # (MP.users counts this grant already: see _Conn._mapping)

    @classmethod
    def map(cls, pid: int, fd: int, off: int, size: int, addr: int, rkey: int, slot: int,
            rights: int, mapping: Callable[[tuple, Callable[[], _Map]], _Map]) -> _Grant:
        """The grant of the pages OFF..OFF+SIZE of the peer's memfd FD, through
        MAPPING(key, make): the mapping of those pages with that protection, made if new."""
        path = f"/proc/{pid}/fd/{fd}"
        if not os.readlink(path).startswith(f"/memfd:{shm.MEMFD_NAME}"):
            raise ValueError(f"{path} is not a shared buffer of the soft provider")
        writable = bool(rights & EN_WRITE)  # (a read-only grant maps read-only pages)
        f = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        try:
            st = os.fstat(f)
            if st.st_size < off + size:
                raise ValueError(f"{path} is shorter than the granted region")
            lo = off - off % shm.PAGE

            def make() -> _Map:
                mm = mmap.mmap(f, off + size - lo, offset=lo,
                               flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                               prot=mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
                return _Map(key, mm, mmap.mmap(f, shm.PAGE, offset=0, access=mmap.ACCESS_READ))

            key = (st.st_dev, st.st_ino, lo, off + size - lo, writable)
            mp = mapping(key, make)
        finally:
            os.close(f)
        try:
            return cls(mp, off - lo, addr, size, rkey, slot, rights)
        except ValueError:  # (the connection closed and unmapped it meanwhile)
            mp.users -= 1
            raise

    def valid(self) -> bool:
        at = self.slot * shm.SLOT.size
        return self.table[at:at + shm.SLOT.size] == self.want

    def close(self) -> None:
        """This grant is no longer used; its mapping stays (the connection drops spares)."""
        if not self.closed:
            self.closed = True
            self.view.release()
            self.map.users -= 1


def _rest(parts: list, sent: int) -> list:
    """PARTS less the first SENT bytes."""
    i = 0
    while i < len(parts) and sent >= len(parts[i]):
        sent -= len(parts[i])
        i += 1
    rest = parts[i:]
    if rest and sent:
        rest[0] = memoryview(rest[0])[sent:]
    return rest


# The per-message path in compiled code (hsp_rdma/cext/softpath.pyx), on these constants.
_ST_FLUSHED = int(Status.DONE | Status.DESC_FLUSHED_ERROR)
_compiled.configure(MAGIC, HDR.size, **{k: v for k, v in globals().items() if k.isupper()
                                        or k.startswith(("_ST_", "_OP_", "_CTL_"))},
                    MemHandle=MemHandle, ViState=ViState, _rest=_rest, _Closed=_Closed,
                    _Eof=_Eof, _Garbage=_Garbage, module=sys.modules[__name__],
                    VipInvalidParameter=VipInvalidParameter, VipInvalidPtag=VipInvalidPtag,
                    VipInvalidRdmaRead=VipInvalidRdmaRead, VipInvalidState=VipInvalidState,
                    VipErrorResource=VipErrorResource, VipTimeout=VipTimeout)


# ---- the VI ---------------------------------------------------------------------------------------
class Vi(_compiled.ViBase):
    """A VI; connected, one TCP stream. Descriptors complete in post order per queue."""

    def __init__(self, nic: Nic, attrs: ViAttributes, send_cq: CompletionQueue | None = None,
                 recv_cq: CompletionQueue | None = None):
        if nic.closed:
            raise VipInvalidState(f"{nic.name} is closed")
        if attrs.reliability_level is Reliability.UNRELIABLE:
            raise VipNotSupported("unreliable VIs are not supported by the soft provider: "
                                  "use RELIABLE_DELIVERY")
        if not isinstance(attrs.ptag, Ptag) or attrs.ptag.nic is not nic or attrs.ptag.closed:
            raise VipInvalidPtag("the VI's ptag does not belong to this NIC")
        for cq in (send_cq, recv_cq):
            if cq is not None and (not isinstance(cq, CompletionQueue) or cq.nic is not nic):
                raise VipInvalidParameter("the completion queue does not belong to this NIC")
        if len(nic.vis) >= MAX_VI:
            raise VipErrorResource(f"{nic.name} holds at most {MAX_VI} VIs")
        if attrs.max_transfer_size < 0 or attrs.max_transfer_size > MAX_TRANSFER:
            raise VipInvalidParameter(f"max_transfer_size {attrs.max_transfer_size}: between 0 "
                                      f"(the NIC's maximum) and {MAX_TRANSFER}")
        self.nic, self.attrs = nic, attrs
        self.state = ViState.IDLE
        self.why_error = "no reason recorded"
        self.serial = next(nic._serials)
        self.send_cq = send_cq or CompletionQueue(nic, QUEUE_DEPTH)
        self.recv_cq = recv_cq or CompletionQueue(nic, QUEUE_DEPTH)
        self.shared = (send_cq, recv_cq)
        for cq in self.shared:
            if cq is not None:
                cq.users += 1
        self.sendq: deque[VipDescriptor] = deque()
        self.recvq: deque[VipDescriptor] = deque()
        self._rq: deque[VipDescriptor] = deque()  # posted receives no message took yet
        self._segs_of: dict[int, list] = {}
        self._done: dict[int, tuple] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.conn: _Conn | None = None
        self.peer_attrs: ViAttributes | None = None
        self.serves_reads = True  # (via.serve_reads)
        self._notify: list[threading.Thread] = []
        nic.vis.append(self)
        nic.vi_by_serial[self.serial] = self

    @property
    def max_transfer(self) -> int:
        return self.attrs.max_transfer_size or MAX_TRANSFER

    def serve_reads(self, allowed: bool) -> None:
        """via.serve_reads. Off: read requests are refused from now on, and the same-host
        read grants this connection gave are withdrawn (their slots cleared: the peer's next
        read goes as a frame, refused); on: reads are served again (as frames on this
        connection, since the peer asks each region's grant only once)."""
        self.serves_reads = allowed
        conn = self.conn
        if not allowed and conn is not None:
            conn.withdraw_read_grants()

    # ---- connection ---------------------------------------------------------------------
    def _establish(self, conn: _Conn, peer: ViAttributes) -> None:
        with self._lock:
            if self.nic.closed or self not in self.nic.vis:
                self.state = ViState.IDLE
                _close(conn.sock)
                raise VipInvalidState("the VI was destroyed (or its NIC closed) while it "
                                      "connected")
            if self.nic.link_down:
                self.state = ViState.IDLE
                _close(conn.sock)
                raise VipNotReachable(self.nic._link_refusal())
            self.conn, self.peer_attrs = conn, peer
            self.state = ViState.CONNECTED
            conn.start()

    def _broken(self, conn: _Conn, code: str, message: str,
                desc: VipDescriptor | None = None, completion: tuple | None = None) -> None:
        """The stream CONN failed: ERROR, everything posted flushed, the handler told once.
        COMPLETION, if given, is DESC's own (error) completion, recorded first."""
        with self._lock:
            if conn is not self.conn or conn.closed or conn.failed:
                return
            conn.failed = True
            self.state = ViState.ERROR
            self.why_error = f"{code}: {message}"
            if completion is not None:
                self._done[desc.wr_id] = completion
            flushed = self._flush_locked() + ([True] if completion is not None else [])
        self._signal(flushed)
        self.nic.report(ErrorDescriptor(self.nic, self, "VI", code, message, desc))

    def _flush_locked(self) -> list[tuple[CompletionQueue, bool]]:
        out = []
        for recv, q in ((False, self.sendq), (True, self.recvq)):
            for d in q:
                if d.wr_id not in self._done:
                    self._done[d.wr_id] = (int(Status.DONE | Status.DESC_FLUSHED_ERROR
                                               | (Status.OP_RECEIVE if recv else 0)),
                                           0, None, "flushed")
                    out.append(recv)
        self._rq.clear()
        if self.conn is not None:
            self.conn.pending.clear()
        return out

    def _signal(self, flushed: list[bool]) -> None:
        for recv in flushed:
            (self.recv_cq if recv else self.send_cq).push(self, recv)

    def disconnect(self) -> None:
        """VipDisconnect: every posted descriptor completes DESC_FLUSHED; the VI is IDLE."""
        conn = self.conn
        if conn is not None:
            conn.close()
        with self._lock:
            self.conn = None
            flushed = self._flush_locked()
            self.state = ViState.IDLE
        self._signal(flushed)

    def destroy(self, force: bool = False) -> None:
        if not force and self.state is ViState.CONNECTED:
            raise VipInvalidState("VI is CONNECTED: VipDisconnect it first")
        if not force and (self.sendq or self.recvq):
            raise VipInvalidState(f"VI still has {len(self.sendq)} send and {len(self.recvq)} "
                                  "receive descriptors: take them with VipSendDone/RecvDone")
        self.disconnect()
        self.sendq.clear()
        self.recvq.clear()
        self._done.clear()
        self._segs_of.clear()
        for cq in self.shared:
            if cq is not None:
                cq.users -= 1
        self.shared = (None, None)
        if self in self.nic.vis:
            self.nic.vis.remove(self)
        self.nic.vi_by_serial.pop(self.serial, None)

    # ---- data transfer --------------------------------------------------------------------
    # Compiled (softpath): _segs(desc), DESC's data segments as (region, offset, length),
    # each checked (registered on this NIC, the VI's ptag, inside its region); post_send(desc),
    # the checks, then the frame (same host, granted: one copy into or out of the peer's
    # memory); post_recv(desc).
    _segs = _compiled.segs
    post_send = _compiled.post_send
    post_recv = _compiled.post_recv

    # _complete(desc, recv, status, length, immediate=None, reason=""): DESC completed
    # (once: a second completion of it is ignored); its queue's CQ is told. Compiled.
    _complete = _compiled.complete

    # _complete_send(desc, status, reason=""): the send DESC completed with STATUS (its
    # operation's bits added) and its whole length. Compiled.
    _complete_send = _compiled.complete_send

    # done(recv): the head of the work queue if it completed (status, length, immediate data,
    # reason filled in), else None. Compiled.
    done = _compiled.take

    def _stream_detail(self) -> str:
        """For a wait that timed out: where this VI's stream stood (the evidence a rare
        stall leaves; see the soft provider's tests)."""
        c = self.conn
        if c is None:
            return " (no connection)"
        n = self.nic.counters
        return (f" (VI {self.state.name}, {len(self._rq)} receive(s) untaken; stream: "
                f"ended={c.ended} failed={c.failed} closed={c.closed} waiting={c.waiting} "
                f"buffered={c.stream.pending()} B, in_frame={c.in_frame}, applied={c.applied}"
                f", acked={c.acked}, last_sent={c.last_seq}, progress thread "
                f"{'alive' if c.reader.is_alive() else 'ended'}; NIC frames rx "
                f"{n['frames_rx']} tx {n['frames_tx']})")

    # wait(recv, timeout_ms): the head of the work queue once it completed; this thread reads
    # the VI's stream meanwhile when it may (_Conn.drive), else sleeps on the CQ. Compiled.
    wait = _compiled.wait


def resize_cq(cq: CompletionQueue, entries: int) -> None:
    if entries < 1:
        raise VipInvalidParameter(f"a completion queue needs at least 1 entry, not {entries}")
    if entries > MAX_CQ_ENTRIES:
        raise VipErrorResource(f"a completion queue holds at most {MAX_CQ_ENTRIES} entries")
    cq.entries = entries


__all__ = ["CompletionQueue", "ConnRequest", "ErrorDescriptor", "Nic", "Ptag", "Region", "Vi",
           "VipError", "connect_accept", "connect_reject", "connect_request", "connect_wait",
           "deregister", "frame", "port_of", "query_nic", "register", "resize_cq",
           "system_management_info"]
