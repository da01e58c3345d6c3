"""The Graceful Switch Over driver: core.gso's machine executed over one VIA reliable VI.

One RC VI per pair carries the gso channel's control frames (send/receive, Interface A) and
the image copy (RDMA Write, Interface B); the marker is the last RDMA Write on that same VI, so
the RC ordering guarantees every data write landed before it. Each node registers one state
buffer (header | P.mem | blob): the live state while it is active, the copy target while it
is standby, so the standby resumes in place ("IRET") and switch-back needs no new memory.

The engine carries out every action the machine emits and feeds every I/O outcome back as an
event: a send or write completed in error, or a receive failing, is the loss of the only
fabric (AllFabricsLost), fed after the current action list has run to its end. With a second
fabric open (``add_fabric``, ``connect_fabrics``), a push GSO's link lost before the marker
(RELINKABLE: A copying, B waiting for the marker) is first connected again on the other
fabric within a few seconds (``_relink``) and the copy starts again there from its first
byte; only when that fails is the loss fed. Why that never makes two actives: B resumes only
on this epoch's marker, which A posts only after CopyComplete on the VI it then holds (every
write of the image before it, RC order), and A thaws before the marker only by an abort after
which it never posts that marker; a write of the old VI landing late carries the same frozen
bytes; a B that gave up (its budget or timer) no longer polls, and one at rest ignores any
marker (a new GSO zeroes the word, and each epoch has its own value). Sends never
block: control frames, image writes and the marker are posted and their completions reaped as
they come, so the copy runs while the machine keeps getting ticks (its copy timeout and the
standby's Abort work while writes are in flight).

Pull mode (``Engine.mode``, the active's choice, announced in Start-GSO): the image is
registered a second time, for remote read only, for this GSO only. Where the link can refuse
reads (``via.serve_reads``: RoCE, IB, soft) that happens at Start-GSO, before the freeze, on a
link that serves no reads until the seal; on iWARP (no such gate) at the seal. The active
freezes, writes the image header (without a digest) into its own buffer, opens the link to
reads (or registers), and the handle travels in Sealed. Then it
digests the frozen image in a worker thread while the standby reads it (both only read it)
and sends the digest in Digest. The standby RDMA-reads the image in chunks of the profile's
size, queue_depth reads in flight, one segment per read (iWARP scatters a read into one
segment), pumped by the serve loop like the push copy, then verifies it against the digest
Digest brought (waiting for it, if the pull was first, under the copy timer) and resumes.
The active deregisters that second registration when the GSO ends (RevokeRead), before its
application runs again: a read with the old handle then fails.

Where the digest is taken (the profile's ``digest``, CRC32C for rxe/siw/soft). Push: the
active posts every write the queue depth allows, then digests the oldest posted chunk while
they fly, one chunk per pump; the header (with the digest) is posted right behind the last
write, without waiting for their completions (the queue pair carries them in order; a
striped copy first fences its stripe), and the marker only after the header completed (on
iWARP, where a write completes once TCP took it, after the landed read posted behind the
header completed too: LANDED_BY_READ); the standby digests the whole image after the marker
(it cannot know earlier what landed). Pull:
the standby digests each chunk as its read completes (reads complete in order, and its own
reads are the only writes into its buffer during the pull, so a chunk digested then is the
chunk verify sees), so verify is the header checks and a comparison. The active digests the
image after Sealed, in a thread of its own (the compiled CRC32C, zlib's CRC-32 and blake2b
release the GIL), so the seal is only the header and the registration; the digest travels in
Digest, sent only while the active is still frozen (core.gso).
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hsp_rdma import via
from hsp_rdma.core import gso
from hsp_rdma.core.frames import PROTOCOL_VERSION
from hsp_rdma.core.gso_wire import Goodbye, Hello, Stripe, decode_message, encode_message
from hsp_rdma.core.profiles import MAX_QUEUE_DEPTH, PollMode, Profile, Transport
from hsp_rdma.errors import ConfigError, FrameError, HspError, IllegalTransition
from hsp_rdma.ha.connect import ATTEMPT_S, HELLO_WAIT_S, PERMANENT, Attempts, retry_until
from hsp_rdma.ha.fence import FenceAgent
from hsp_rdma.ha.image import HEADER_SPACE, StateImage, Verified, verify
from hsp_rdma.ha.persist import Epochs, EpochStore

DISCRIMINATOR = b"hsp-gso"
CTL_SLOTS = 16  # receive descriptors kept posted: one per possible in-flight control frame
CTL_SIZE = 256  # a gso control frame: 26 header bytes + a payload (Goodbye's is the largest)
CONNECT_TIMEOUT_S = 120.0  # the pair may start seconds apart on a loaded host; see connect()
MARKER = struct.Struct("<Q")
# A VI's send queue holds via's QUEUE_DEPTH descriptors: the copy's writes, the control
# frames in flight, the header and the landed read behind them must fit in it together (the
# marker and its doorbell go once they all completed).
if MAX_QUEUE_DEPTH + CTL_SLOTS + 2 > via.QUEUE_DEPTH:
    raise ImportError("profiles.MAX_QUEUE_DEPTH exceeds what a VI's send queue can hold")
Clock = Callable[[], float]
DOORBELL = object()  # what _receive returns for the marker's doorbell, when asked
# Transports on which a send or RDMA Write completes only once the peer's end of the link
# acknowledged it (InfiniBand and RoCE RC), so a completion is as good as a message heard
# for the link's silence. Not iWARP (a write completes once TCP took it) nor the soft
# provider (a same-host write into a granted region completes once copied).
ACKED_BY_PEER = frozenset({Transport.ROCE_V2, Transport.IB})
# Transports on which a push's copy ends with the landed read: an RDMA Read of the standby's
# marker word posted right behind the header on the link, whose response follows every
# earlier write of that queue pair into the peer's memory. On iWARP a write completes once
# TCP took it: measured in the lab (siw, 16 MiB in 64 KiB writes, pyverbs), the last write
# completed 25-43 ms before a read behind it did, against one idle read's 2-4 ms; on rxe
# the two were equal. So there the header's completion is not the end of the copy, and the
# marker goes when the image has landed, as on RC (one round trip more).
LANDED_BY_READ = frozenset({Transport.IWARP})
# Two fabrics (x, y): how long one fabric is tried before the next, the listener's look at
# each fabric's listener in turn, and the resting link's keep-alive (a zero-length send; a
# link silent for KEEPALIVE_DEAD sends is lost, and connected again on a fabric that answers).
FABRIC_ATTEMPT_S = 5.0
LISTEN_SLICE_S = 0.25
KEEPALIVE_S = 0.5
KEEPALIVE_DEAD = 6
# A GSO's link lost before the marker, with another fabric open: how long the active tries to
# connect it again there (never past its copy timer) before the GSO aborts as on any loss.
# A pulled cable shows to a side only when it sends (a write or a kick failing after the RC
# retries) or as the peer's silence (KEEPALIVE_DEAD kicks missed: 3 s), so the two sides may
# see it up to that far apart. The active, frozen, tries 3 s (its blackout grows by that
# much when no fabric answers: a standby that died); the standby, frozen anyway and bounded
# by its gso timer, tries 3 s longer, so its window still covers the active's when it saw
# the loss that much earlier, and meets it when it saw it that much later (the active's
# connector retries, or its listener takes the waiting request, within the overlap).
RELINK_S = 3.0
RELINK_STANDBY_S = RELINK_S + KEEPALIVE_DEAD * KEEPALIVE_S
# Striping (Engine.stripe): once the link is up on one fabric, a second VI connects on the
# other (discriminator + STRIPE_SUFFIX) within STRIPE_WAIT_S, or the pair runs unstriped. No
# keep-alive goes meanwhile: it stays below the peer's silence limit (KEEPALIVE_DEAD kicks).
STRIPE_WAIT_S = 2.0
STRIPE_SUFFIX = b"/stripe"
# A stripe with writes in flight and none completed for this long is lost: a pulled cable
# shows on iWARP (TCP retransmitting) only after minutes; a healthy one completes a chunk in
# a fraction of this even in the lab (1 MiB at ~10 MB/s: ~0.1 s).
STRIPE_STALL_S = 2.0
if STRIPE_WAIT_S >= KEEPALIVE_DEAD * KEEPALIVE_S:
    raise ImportError("STRIPE_WAIT_S must stay below the peer's silence limit")
WITHDRAWN = Stripe(0, 0, 0)  # "my stripe is gone": the peer disconnects its end at once
FENCE_AT = 64  # where in src_marker's page the stripe's fence read lands (8 bytes)
LANDED_AT = FENCE_AT + 8  # ... and the link's landed read (LANDED_BY_READ), 8 bytes
# Profile prime_grants, pull: the first read, alone (the header and the start of the payload);
# the grant comes with its answer, and the next reads, of a chunk each, go direct.
PRIME_READ = 4096
# Profile digest_thread, pull: the worker's digest gives up when no read landed for the copy
# timeout and this much more (the copy timer cancels the pull first: this is a safety net).
PULL_DIGEST_IDLE_S = 5.0


class SwitchoverError(HspError):
    """The switch-over engine could not set up or lost its peer; says which step."""


class PeerLeft(SwitchoverError):
    """The peer ended the pair with a Goodbye (it can never switch over with this node as
    the two are configured), or the link is gone while no GSO is in progress: nothing can
    reach this node any more. The message says why."""


@dataclass(frozen=True)
class FabricLink:
    """One fabric the GSO's VI may run on: its name (x, y), this node's rdma device on it, this
    node's IPv4 there and the peer's (None on the listening side)."""

    name: str
    device: str
    local: str
    peer: str | None = None


# What one fabric's NIC holds for the engine (the same buffers, registered on each NIC).
_PORT_FIELDS = ("nic", "ptag", "vi", "image_handle", "marker_handle", "src_marker_handle",
                "ctl_handle")


# A node in one of these states has no GSO in progress (no timer, nothing frozen).
RESTING = frozenset({gso.GsoState.NORMAL_ACTIVE, gso.GsoState.NORMAL_STANDBY})
# A push GSO whose link is lost in one of these states continues on another fabric open for
# it (``Engine._relink``), below the machine, which never sees the loss. They are the copy
# before the marker, on both sides: A in COPYING has not posted the marker (CopyComplete
# posts it and leaves COPYING in the same feed), B in GSO_INTERRUPT has not seen it (seeing
# it leaves for VERIFYING in the same feed). There the image is frozen on A and nothing on B
# depends on what landed so far: the copy starts again from its first byte on the new VI
# (writes of the same frozen bytes are idempotent, the header's digest covers the whole
# image) and the marker still goes last on the VI that carried every write (RC order).
# Not continued: PRE_GSO / START_GSO (the application has not stopped: aborting costs
# nothing, and a Ready lost with the old link would leave A waiting for it), a pull (B's
# reads use a registration made on the old fabric's NIC), and anything after the marker
# (A in doubt fences, as on any loss: it must never continue there).
RELINKABLE = frozenset({gso.GsoState.COPYING, gso.GsoState.GSO_INTERRUPT})


class _ConnectFailed(SwitchoverError):
    """A connection that broke or stayed silent as it came up: worth another attempt."""


def lands_by_read(profile: Profile) -> bool:
    """Does a push on PROFILE's device end its copy with the landed read (LANDED_BY_READ, and
    a profile that reads at all)? The bench's reference ends the same way where it does."""
    return profile.transport in LANDED_BY_READ and profile.rdma_read


def _marker_attrs(ptag, profile: Profile):
    """The marker word's registration: the peer writes it (the GSO's marker) and, where the
    profile reads at all, may read it (a push's landed read, LANDED_BY_READ)."""
    return via.MemAttributes(ptag=ptag, enable_rdma_write=True,
                             enable_rdma_read=profile.rdma_read)


@dataclass
class GsoReport:
    """What one GSO did, measured on this node's monotonic clock."""

    epoch: int
    outcome: str
    role: str  # the side this node played: "active" (source) or "standby" (target)
    mode: str = "push"  # how the image travelled: "push" (A writes) or "pull" (B reads)
    image_bytes: int = 0
    stop_t: float = 0.0  # A: application frozen
    copy_start_t: float = 0.0
    copy_end_t: float = 0.0  # A: the image landed: the header write completed (posted behind
    # the data writes), and on iWARP the landed read behind it too (LANDED_BY_READ)
    header_t: float = 0.0  # A: the header write completed
    landed_by: str = ""  # A (push): "ack" (the header's completion) or "read" (the landed read)
    marker_t: float = 0.0  # A: marker write completed
    sealed_t: float = 0.0  # A (pull): image sealed and open for read, Sealed posted
    done_t: float = 0.0  # A: "done" received (B resumed before sending it)
    resume_t: float = 0.0  # B: resumed as active
    verify_s: float = 0.0  # B: digest check
    digest_wait_s: float = 0.0  # B (pull): the whole image here, A's Digest not yet
    digest_s: float = 0.0  # A: digesting the image (inside the copy for a push; for a pull in
    # a worker thread after Sealed, while the standby reads)
    resume_s: float = 0.0  # B: the application's resume, before "done" leaves
    reason: str = ""
    writes: int = 0  # RDMA Writes posted (push, on A) or RDMA Reads (pull, on B)
    relinks: list = field(default_factory=list)  # the link lost and connected again: "x->y"
    relink_s: float = 0.0  # time spent connecting the link again (within the copy)
    fabrics: str = ""  # A (push): the fabrics the copy's writes went over: "x", or "x+y"
    stripe_writes: int = 0  # A (push): of ``writes``, those on the stripe
    header_behind: int = 0  # A (push): data writes still in flight when the header was posted
    # A (pull): when the image's read registration was made: "start-gso" (before the freeze,
    # the link serving no reads until the seal) or "seal" (iWARP: no such gate)
    read_registered: str = ""

    @property
    def blackout_s(self) -> float:
        """A's stop to A's receipt of "done": an upper bound of the real blackout."""
        return self.done_t - self.stop_t if self.done_t and self.stop_t else 0.0

    def phases_ms(self) -> dict[str, float]:
        """Where the time went, on this node's clock. Push: A's freeze (stop .. first
        write), copy, marker, and the wait for "done"; B's verify and resume. Pull: A's seal
        (stop .. Sealed posted: blob, header, the link opened for reads, or on iWARP the
        registration) and the wait for "done";
        B's pull (first read posted .. last completed), verify and resume."""
        pairs: tuple = ()
        if self.role == "active" and self.stop_t and self.mode == "pull":
            pairs = (("seal", self.stop_t, self.sealed_t),
                     ("await_done", self.sealed_t, self.done_t))
        elif self.role == "active" and self.stop_t:
            pairs = (("freeze", self.stop_t, self.copy_start_t),
                     ("copy", self.copy_start_t, self.copy_end_t),
                     ("marker", self.copy_end_t, self.marker_t),
                     ("await_done", self.marker_t, self.done_t))
        elif self.role == "standby" and self.mode == "pull":
            pairs = (("pull", self.copy_start_t, self.copy_end_t),)
        ms = {k: round((b - a) * 1000, 2) for k, a, b in pairs if a and b and b >= a}
        if self.role == "standby":
            ms |= {"verify": round(self.verify_s * 1000, 2),
                   "resume": round(self.resume_s * 1000, 2)}
        return ms

    @property
    def copy_MBps(self) -> float:
        """MB = 2**20 bytes, as perftest counts, so the two figures compare directly."""
        dt = self.copy_end_t - self.copy_start_t
        return self.image_bytes / dt / (1 << 20) if dt > 0 else 0.0


@dataclass
class Application:
    """The application's hooks. As the active: ``freeze() -> blob`` stops it for the copy,
    ``thaw()`` lets it serve again when the GSO ends without a switch (or the standby was
    fenced). As the standby: ``stop_standby()`` before the copy, ``resume_standby(resync)``
    when the GSO ends without a switch, ``resume(P.mem view, blob)`` to take over ("IRET")."""

    freeze: Callable[[], bytes] = lambda: b""
    thaw: Callable[[], None] = lambda: None
    resume: Callable[[memoryview, bytes], None] = lambda pmem, blob: None
    stop_standby: Callable[[], None] = lambda: None
    resume_standby: Callable[[bool], None] = lambda needs_resync: None


@dataclass
class _Posted:
    """A descriptor on the send queue, in post order: what it is and for which epoch."""

    desc: object
    what: str  # "control", "write", "header", "marker"
    epoch: int = 0


@dataclass
class _Copy:
    """The image copy in progress: next offset to post, writes in flight, the digest."""

    epoch: int
    end: int
    digest: object
    view: memoryview
    next: int = HEADER_SPACE
    digested: int = HEADER_SPACE  # the chunks before this are digested (all posted already)
    inflight: int = 0
    header_posted: bool = False
    job: _DigestJob | None = None  # the digest taken in a worker thread (profile digest_thread)
    stripe_inflight: int = 0  # this copy's writes in flight on the stripe
    stripe_used: str = ""  # the stripe's fabric, once some of this copy's writes went there
    fence: int = 0  # the stripe's fence read: 0 not posted, 1 in flight, 2 completed
    landed_posted: bool = False  # the landed read (LANDED_BY_READ) is behind the header


@dataclass
class _Stripe:
    """A push's second VI, on the fabric the link is not on: data writes only (the header and
    the marker stay on the link). RC orders writes within one VI, never across two, and an
    iWARP write completes once sent, not once placed; so before the header goes on the link,
    an RDMA Read of the peer's fence word on the stripe completes: its response follows every
    earlier write of the stripe into the peer's memory (IB and iWARP alike)."""

    fabric: str
    vi: object
    image_handle: object  # our image's registration on that fabric
    scratch_handle: object  # src_marker's there (the fence read lands at FENCE_AT)
    region_handle: int  # the peer's image there (at Hello's region_addr)
    fence_addr: int
    fence_handle: int
    posted: deque = field(default_factory=deque)  # _Posted, oldest first
    progress_t: float = 0.0  # the last completion, or the post that found none in flight


@dataclass
class _Pull:
    """B's pull in progress: next offset to read, reads in flight, where the image is."""

    epoch: int
    end: int
    address: int
    handle: int
    next: int = 0
    inflight: int = 0
    landed: int = 0  # the reads complete in order: [0, landed) is in our buffer
    digested: int = 0  # [HEADER_SPACE, digested) is in the digest (0: not started)
    digest: object = None  # the payload's digest, taken chunk by chunk as the reads land
    bound: bytes = b""  # the header fields the digest began with
    follower: _PullDigest | None = None  # (profile digest_thread) the digest worker's part


class _DigestWorker:
    """One thread, kept for the engine's life, that takes the digest jobs in turn: starting a
    thread per switch-over cost 0.4-3.3 ms of a 7-10 ms soft copy on a loaded 2-CPU host
    (Thread.start waits until the new thread runs); a job handed to a waiting thread does
    not wait for a scheduler to start one."""

    def __init__(self, name: str):
        self._jobs: deque = deque()
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        with self._ready:
            self._jobs.append(job)
            self._ready.notify()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._jobs:
                    self._ready.wait()
                job = self._jobs.popleft()
            if job is None:
                return
            job()

    def stop(self) -> None:
        """The thread ends after the jobs before this (never joined: a job ends on its own)."""
        self.submit(None)


class _WorkerJob:
    """A job of the digest worker: ``done`` once it ended (its outcome in its fields)."""

    def __init__(self):
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def join(self, timeout_s: float) -> None:
        self._done.wait(timeout_s)


class _DigestJob(_WorkerJob):
    """A: the frozen image's digest, taken by the engine's digest worker while the peer reads
    it (pull) or while the copy's writes go out (push, profile digest_thread). It only reads
    the image; ``digest`` is empty until ``done``."""

    def __init__(self, worker: _DigestWorker, image: StateImage, epoch: int, length: int,
                 algo: gso.DigestAlgo, clock: Clock, corrupt: bool):
        super().__init__()
        self.epoch, self.digest, self.took_s, self.error = epoch, b"", 0.0, ""
        self.length = length
        worker.submit(lambda: self._run(image, length, algo, clock, corrupt))

    def _run(self, image, length, algo, clock, corrupt) -> None:
        t0 = clock()
        try:
            d = image.digest_start(self.epoch, algo)
            with memoryview(image.buf) as view:
                d.update(view[HEADER_SPACE:length])
            digest = d.digest()
            if corrupt:
                digest = bytes([digest[0] ^ 1]) + digest[1:]
            self.digest = digest
        except Exception as exc:  # noqa: BLE001 - reported, never fed: B's copy timer ends it
            self.error = f"{type(exc).__name__}: {exc}"
        self.took_s = clock() - t0
        self._done.set()


class _PullDigest(_WorkerJob):
    """B (pull, profile digest_thread): the payload's digest taken by the digest worker
    beside the reads, following them as they land (they complete in order, and they are the
    only writes into the buffer during the pull, so what is digested is what verify sees).
    The engine says how far the reads landed (``advance``); ``cancel`` when the pull ends
    otherwise (the copy timer's CancelPull included). It gives up if nothing lands for
    IDLE_S (the engine gives the copy timeout + PULL_DIGEST_IDLE_S): only a pull that no one
    cancelled, by a bug, gets there."""

    def __init__(self, worker: _DigestWorker, buf, digest, start: int, end: int,
                 clock: Clock, idle_s: float):
        super().__init__()
        self.digest, self.end, self.clock, self.idle_s = digest, end, clock, idle_s
        self.busy_s, self.error = 0.0, ""
        self._landed, self._cancelled = start, False
        self._cv = threading.Condition()
        worker.submit(lambda: self._run(buf, start))

    def advance(self, landed: int) -> None:
        with self._cv:
            self._landed = landed
            self._cv.notify()

    def cancel(self) -> None:
        with self._cv:
            self._cancelled = True
            self._cv.notify()

    def _run(self, buf, at: int) -> None:
        try:
            with memoryview(buf) as view:
                while at < self.end:
                    with self._cv:
                        while self._landed <= at and not self._cancelled:
                            if not self._cv.wait(self.idle_s) and self._landed <= at:
                                raise TimeoutError(f"no read landed for {self.idle_s:g} s")
                        if self._cancelled:
                            return
                        upto = min(self._landed, self.end)
                    t0 = self.clock()
                    self.digest.update(view[at:upto])  # (CRC-32C: without the GIL)
                    self.busy_s += self.clock() - t0
                    at = upto
        except Exception as exc:  # noqa: BLE001 - the pull fails with it (_pump_pull)
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._done.set()


@dataclass
class Peer:
    hello: Hello | None = None


@dataclass
class Engine:
    """One node's GSO engine over one connected VI."""

    nic: object
    vi: object
    ptag: object
    image: StateImage
    image_handle: object
    marker_buf: mmap.mmap
    marker_handle: object
    src_marker: mmap.mmap
    src_marker_handle: object
    ctl_buf: mmap.mmap
    ctl_handle: object
    machine: gso.GsoMachine
    profile: Profile
    app: Application = field(default_factory=Application)
    clock: Clock = time.monotonic
    digest_algo: gso.DigestAlgo = gso.DigestAlgo.CRC32
    chunk_size: int = 0
    read_chunk_size: int = 0  # a pull's RDMA Read size (0: chunk_size)
    queue_depth: int = 0
    peer: Peer = field(default_factory=Peer)
    reports: list[GsoReport] = field(default_factory=list)
    fence: FenceAgent | None = None  # the fence action for the peer (none: alarm, no promote)
    peer_name: str | None = None  # the peer's name for the fence action's plug=
    on_alarm: Callable[[str], None] = lambda why: None
    store: EpochStore | None = None  # epochs persisted before the actions that use them
    digest_thread: bool = False  # a push's digest in a worker thread beside the copy
    # With two fabrics: a second VI on the fabric the link is not on, and a push's writes
    # spread over both (both nodes must say so; a peer that does not is run unstriped)
    stripe: bool = False
    _stripe: _Stripe | None = None
    stripe_note: str = ""  # why the pair runs unstriped although stripe is asked
    _peer_stripe: Stripe | None = None  # the peer's Stripe on this connection
    fence_buf: mmap.mmap | None = None  # the word the peer's stripe fence reads
    _persisted: Epochs | None = None
    _current: GsoReport | None = None
    _send_seq: int = 0
    _recv_slots: deque = field(default_factory=deque)
    _send_slot: int = 0
    _inbox: deque = field(default_factory=deque)
    _posted: deque = field(default_factory=deque)  # _Posted, oldest first
    _copy: _Copy | None = None
    _pull: _Pull | None = None
    mode: gso.GsoMode = gso.GsoMode.PUSH  # how this node's GSO requests move the image
    _read_handle: object = None  # A (pull): the image's registration for remote read
    _gated_vi: object = None  # A (pull): the VI serving no reads from Start-GSO to the seal
    _digest_job: _DigestJob | None = None  # A (pull): the digest taken while B reads
    _digest_jobs: list = field(default_factory=list)  # every one started (joined at close)
    _digest_worker: _DigestWorker | None = None  # the thread the jobs run in (first use on)
    # B (pull): (epoch, algo, bound fields, digest) of the payload, digested as it landed
    _landed: tuple | None = None
    link_error: str = ""  # why the VI is gone: set once, then AllFabricsLost is fed
    peer_goodbye: Goodbye | None = None  # the peer ended the pair and said why
    _lost_fed: bool = False
    forged_frames: int = 0  # frames that failed to decode: counted, never applied
    alarm: str = ""
    fence_results: list[str] = field(default_factory=list)
    markers_ignored: int = 0  # marker values seen that were not this epoch's (stale, torn)
    # Misbehaviour on purpose, for the drills (hsp_rdma.ha.gso_node --inject).
    hello_version: int = PROTOCOL_VERSION
    drop_ready: bool = False
    stale_marker_first: bool = False
    corrupt_image: bool = False  # the header carries a wrong digest: B must refuse the image
    hold_verify_s: float = 0.0  # B waits this long after the marker before verifying
    replay_stale_first: bool = False  # A replays its last Start-GSO and marker first
    on_marker: Callable[[int], None] = lambda value: None  # B saw this epoch's marker
    on_copy_start: Callable[[int, int], None] = lambda epoch, length: None  # A: copy begins
    # A: the marker goes out, the point of no return (B may resume from now on)
    on_marker_write: Callable[[int], None] = lambda value: None
    # A drill's window into the copy: at most this many bytes of image per second (0: as
    # fast as the fabric takes them). A drill that faults "during the copy" needs a copy
    # that lasts; a small image is copied in milliseconds.
    copy_rate_Bps: float = 0.0
    discriminator: bytes = DISCRIMINATOR  # the GSO listener's (several pairs on one address)
    hello_wait_s: float = HELLO_WAIT_S  # a new connection without the peer's Hello: again
    on_connect_failed: Callable[[str], None] = lambda why: None  # an attempt failed (retried)
    fabric: str = "x"  # the fabric the VI (nic, vi, handles) is on
    _ports: dict = field(default_factory=dict)  # name -> {field: value} of every fabric's NIC
    keepalive_s: float = 0.0  # resting and connected: a zero-length send this often (0: none)
    _last_heard: float = 0.0  # the last receive completion (any message, a kick included)
    _last_sent: float = 0.0
    _rest_since: float = 0.0  # when the machine last came to rest (0: not resting)
    _links: list = field(default_factory=list)  # the FabricLinks connect_fabrics was given
    _relinking: bool = False  # the link moves to another fabric in the middle of a GSO
    # the link moved to another fabric in the middle of a GSO (a text for the log)
    on_relink: Callable[[str], None] = lambda what: None

    # ---- set-up --------------------------------------------------------------------
    @classmethod
    def open(cls, device: str, profile: Profile, pmem_size: int, blob_capacity: int,
             serving: bool, epoch: int = 0, timeouts: gso.Timeouts | None = None,
             app: Application | None = None, chunk_size: int = 0,
             queue_depth: int = 0, fence: FenceAgent | None = None,
             peer_name: str | None = None, state_dir: str | None = None,
             read_chunk_size: int = 0) -> Engine:
        """Open DEVICE and register the state buffer, the marker and the control slots.
        CHUNK_SIZE (0: the profile's) sizes a push's writes and, unless READ_CHUNK_SIZE
        names one, a pull's reads (the profile's read_chunk when neither is given).
        STATE_DIR: where the epochs persist; a node restarted with the same directory
        continues from what it saw, so nothing of an earlier epoch can start or complete
        a GSO on it."""
        store = EpochStore(state_dir) if state_dir else None
        saved = store.load() if store else None
        depth = queue_depth or profile.queue_depth
        if not 1 <= depth <= MAX_QUEUE_DEPTH:
            raise ConfigError(f"queue depth {depth} should be between 1 and {MAX_QUEUE_DEPTH} "
                              "(a VI's send queue also carries the control frames)")
        nic = via.VipOpenNic(device)
        try:
            ptag = via.VipCreatePtag(nic)
            image = StateImage(pmem_size, blob_capacity)
            # Remote write only: a peer reads the image only through the registration that
            # SealImage makes for one epoch of a pull and RevokeRead ends.
            rw = via.MemAttributes(ptag=ptag, enable_rdma_write=True)
            image_handle = via.VipRegisterMem(nic, image.buf, rw)
            marker = via.shared_buffer(mmap.PAGESIZE)  # (soft: written without a message)
            # the peer may read the marker word too: a push's landed read on iWARP
            marker_handle = via.VipRegisterMem(nic, marker, _marker_attrs(ptag, profile))
            src_marker = mmap.mmap(-1, mmap.PAGESIZE)
            local = via.MemAttributes(ptag=ptag)
            src_marker_handle = via.VipRegisterMem(nic, src_marker, local)
            ctl = mmap.mmap(-1, CTL_SIZE * (CTL_SLOTS + CTL_SLOTS))
            ctl_handle = via.VipRegisterMem(nic, ctl, local)
            vi = via.VipCreateVi(nic, via.ViAttributes(
                ptag=ptag, enable_rdma_write=True, enable_rdma_read=profile.rdma_read))
        except BaseException:
            via.VipCloseNic(nic)
            raise
        machine_cls = gso.GsoMachine.active if serving else gso.GsoMachine.standby
        machine = machine_cls(epoch=saved.epoch if saved else epoch, region_size=image.capacity,
                              timeouts=timeouts or gso.Timeouts(),
                              seen=saved.seen if saved else None)
        return cls(nic=nic, vi=vi, ptag=ptag, image=image, image_handle=image_handle,
                   marker_buf=marker, marker_handle=marker_handle, src_marker=src_marker,
                   src_marker_handle=src_marker_handle, ctl_buf=ctl, ctl_handle=ctl_handle,
                   machine=machine, profile=profile, app=app or Application(),
                   chunk_size=chunk_size or profile.chunk_size,
                   read_chunk_size=read_chunk_size or chunk_size or profile.read_chunk,
                   queue_depth=depth,
                   fence=fence, peer_name=peer_name, store=store, _persisted=saved,
                   digest_thread=profile.digest_thread,
                   _digest_worker=_DigestWorker(f"gso-digest-{device}")
                   if profile.digest_thread else None)

    def _post_recv(self, slot: int) -> None:
        d = via.VipDescriptor(segments=[via.DataSegment(
            via.address_of(self.ctl_buf, slot * CTL_SIZE), self.ctl_handle, CTL_SIZE)])
        d.slot = slot
        via.VipPostRecv(self.vi, d)
        self._recv_slots.append(slot)

    def connect(self, local_ip: str, peer_ip: str | None,
                timeout_s: float = CONNECT_TIMEOUT_S) -> Hello:
        """Listen (peer_ip None) or connect, then exchange Hello; returns the peer's.

        On a new connection each side sends its Hello and a zero-length kick, then waits at
        most hello_wait_s for the peer's Hello. The connector retries any VIA failure
        (nothing listens yet, refused, unreachable, no answer in ATTEMPT_S, a connection that
        broke or brought no Hello: torn down and made again) until TIMEOUT_S; the listener
        waits again for the next connection when one breaks or brings no Hello. Each failed
        attempt is told to on_connect_failed. A peer of another protocol version, or a
        second active, ends it at once."""
        local = via.NetAddress(local_ip, self.discriminator)
        deadline = self.clock() + timeout_s
        if not self._recv_slots:
            for slot in range(CTL_SLOTS):  # receives first: the peer may send at once
                self._post_recv(slot)  # (they stay posted across failed attempts)
        if peer_ip is None:
            return self._accept(local, deadline, timeout_s)
        remote = via.NetAddress(peer_ip, self.discriminator)

        def attempt(left_s: float) -> Hello:
            via.VipConnectRequest(self.vi, local, remote,
                                  max(1, int(min(left_s, ATTEMPT_S) * 1000)))
            return self._up(peer_ip, min(self.hello_wait_s, max(0.1, deadline - self.clock())))

        def give_up(attempts: Attempts) -> SwitchoverError:
            return SwitchoverError(f"cannot connect to {peer_ip} within {timeout_s:.0f} s "
                                   f"({attempts}); is its gso_node listening on {peer_ip} "
                                   "on this fabric?")

        return retry_until(attempt, deadline, clock=self.clock,
                           retry_on=(via.VipError, _ConnectFailed), reset=self._reset_link,
                           give_up=give_up, failed=lambda exc: self.on_connect_failed(str(exc)))

    def _accept(self, local: via.NetAddress, deadline: float, timeout_s: float) -> Hello:
        """The listener: accept, exchange Hello; a connection that fails to come up, breaks
        or brings no Hello is dropped and the next one awaited, until DEADLINE."""
        attempts = Attempts()
        while (left := deadline - self.clock()) > 0:
            try:
                req = via.VipConnectWait(self.nic, local, max(1, int(left * 1000)))
            except via.VipTimeout:
                break
            except via.VipError as exc:
                cause = exc.__cause__
                if errno.EADDRINUSE not in (exc.errno, getattr(cause, "errno", None)):
                    raise
                raise SwitchoverError(
                    f"cannot listen at {local.host}: {exc}; another GSO listener (a gso_node "
                    "or hsp-bench serve still running, or still exiting) holds the port on "
                    "this node: stop it, or listen on another address") from exc
            try:
                via.VipConnectAccept(req, self.vi)
                return self._up("the peer", self.hello_wait_s)
            except PERMANENT:
                raise
            except (via.VipError, _ConnectFailed) as exc:
                attempts.failed(exc)
                self.on_connect_failed(str(exc))
                self._reset_link()
        raise SwitchoverError(f"no peer connected in {timeout_s:.0f} s"
                              + (f" ({attempts})" if attempts.count else ""))

    def _hello(self) -> Hello:
        return Hello(region_addr=via.address_of(self.image.buf),
                     region_handle=int(self.image_handle), region_size=self.image.capacity,
                     marker_addr=via.address_of(self.marker_buf),
                     marker_handle=int(self.marker_handle), serving=self.machine.serving,
                     active_since=self.machine.active_since, version=self.hello_version)

    def _up(self, who: str, wait_s: float) -> Hello:
        """A new connection: our Hello and a kick go, then the peer's Hello, within WAIT_S.
        _ConnectFailed when the connection breaks or stays silent (worth another attempt);
        SwitchoverError when the peer can never be ours (version, a second active)."""
        try:
            self._send(self._hello())
            self._kick()
        except (via.VipError, SwitchoverError) as exc:
            raise _ConnectFailed(f"the connection to {who} broke as it came up, before our "
                                 f"Hello: {exc}") from exc
        end = self.clock() + wait_s
        while self.peer.hello is None:
            msg = self._receive(end)
            if self.peer_goodbye is not None:
                raise PeerLeft(self.link_error)
            if msg is None and not self.link_up:
                raise _ConnectFailed(f"the connection to {who} broke before its Hello: "
                                     f"{self.link_error}")
            if msg is None:
                raise _ConnectFailed(f"{who} sent no Hello in {wait_s:.0f} s on a connection "
                                     "that came up")
            if isinstance(msg, Hello):
                if msg.version != PROTOCOL_VERSION:
                    self._refuse_peer(gso.AbortReason.VERSION_MISMATCH,
                                      f"peer speaks protocol version {msg.version}, we speak "
                                      f"{PROTOCOL_VERSION}: upgrade one side",
                                      f"it speaks protocol version {PROTOCOL_VERSION}, we "
                                      f"speak {msg.version}: upgrade one side")
                self.peer.hello = msg
            else:
                self._inbox.append(msg)
        self._peer_role(self.peer.hello)
        if self.profile.prime_grants:
            self._prime(self.peer.hello, who)
        self._last_heard = self._last_sent = self.clock()
        return self.peer.hello

    def _peer_role(self, hello: Hello) -> None:
        """The peer's Hello carries its role as a heart beat would: serving, active since
        epoch N. When it serves and this node plays the active side, that is PeerActive(N)
        for the machine, which judges it: a peer active since this node's epoch or later is
        one no row of an active accepts before a GSO (IllegalTransition: two actives, split
        brain), so this node refuses to run and tells the peer why; after the marker it would
        be B's word that it took over (this node becomes standby). A peer active since an
        older epoch is stale (ignored): this node is the active, and the peer, which sees
        the newer epoch in this node's Hello, is the one that refuses."""
        if not (hello.serving and self.machine.role is gso.Role.ACTIVE):
            return
        ours = self.machine.active_since
        try:
            self._feed(gso.PeerActive(hello.active_since))
        except IllegalTransition:
            older = ("this node is the older active: restart it as standby"
                     if hello.active_since > ours else "restart one of them as standby")
            self._refuse_peer(gso.AbortReason.NOT_STANDBY,
                              f"both nodes claim to be active (split brain): the peer since "
                              f"epoch {hello.active_since}, this node since epoch {ours}; "
                              f"refusing to run; {older}",
                              f"both nodes claim to be active (split brain): this node since "
                              f"epoch {hello.active_since}, the peer since epoch {ours}")

    def _refuse_peer(self, reason: gso.AbortReason, ours: str, theirs: str) -> None:
        """End the pair: tell the peer why (THEIRS, in its words) in a Goodbye, so it ends at
        once rather than on a timeout, then raise PeerLeft(OURS). The Goodbye is posted;
        close() lets it go out before disconnecting."""
        self.say_goodbye(reason, theirs)
        raise PeerLeft(ours)

    def say_goodbye(self, reason: gso.AbortReason, text: str) -> None:
        """Tell the peer this node ends the pair, and why (best effort: a link already gone
        takes nothing). The caller ends too; close() lets the Goodbye go out first."""
        if self.link_up:
            try:
                self._send(Goodbye(reason, text))
            except (SwitchoverError, via.VipError):
                pass  # the peer's own timeouts end it

    def _kick(self) -> None:
        """A zero-length send right after our Hello. siw (6.1) now and then leaves the first
        send of a new connection unsent until another send is posted (as the Interface A
        node saw, commit bc766cd); this is that other send. The peer takes it as it takes
        the marker's doorbell: a no-op, its receive posted again."""
        self._post_send(via.VipDescriptor(segments=self._nothing()), "control")

    def _nothing(self) -> list:
        """The one data segment of a zero-length operation (kick, doorbell, priming write):
        no byte of our scratch page."""
        return [via.DataSegment(via.address_of(self.src_marker, MARKER.size),
                                self.src_marker_handle, 0)]

    def _prime(self, hello: Hello, who: str) -> None:
        """Profile prime_grants: a zero-length RDMA Write into the peer's image and into its
        marker, which change no byte there. The soft provider grants a proven same-host peer
        direct access to a shared region on its first write into it, so the first switch-over
        copies straight into the standby's memory, as the later ones do (without this, its
        writes went as frames the standby copied: 18-40 ms against 4-7). They complete as
        the kick does; one that fails loses the link like any send. (A pull's read
        registration is new at each switch-over: its first read goes alone, ``_pump_pull``.)"""
        for addr, handle in ((hello.region_addr, hello.region_handle),
                             (hello.marker_addr, hello.marker_handle)):
            try:
                self._post_send(via.VipDescriptor(
                    control=via.VIP_CONTROL_OP_RDMAWRITE, segments=self._nothing(),
                    address=via.AddressSegment(addr, handle)), "control")
            except (via.VipError, SwitchoverError) as exc:
                raise _ConnectFailed(f"the connection to {who} broke as it came up, priming "
                                     f"its regions: {exc}") from exc

    def _reset_link(self) -> None:
        """After a failed attempt: the VI back to IDLE, every receive posted again, nothing
        of that connection left (sends, messages, the peer's Hello, the link error)."""
        try:
            via.VipDisconnect(self.vi)
        except via.VipError:
            pass  # a connect that failed left the VI IDLE already
        flushed = []
        try:
            while (d := via.VipRecvDone(self.vi)) is not None:
                flushed.append(d.slot)
            while via.VipSendDone(self.vi) is not None:
                pass
        except via.VipError:
            pass
        for slot in flushed:
            self._recv_slots.remove(slot)
        self._posted.clear()
        self._inbox.clear()
        self.peer.hello = None
        self.link_error, self._lost_fed = "", False
        # the flushed ones, and any a receive could not post again as the VI failed
        for slot in sorted(set(range(CTL_SLOTS)) - set(self._recv_slots)):
            self._post_recv(slot)

    # ---- two fabrics: the VI on one of them ----------------------------------------------
    def add_fabric(self, name: str, device: str) -> None:
        """Open DEVICE as fabric NAME: its NIC, the same buffers registered there and a VI of
        its own, so the GSO's link can move to it (``use_fabric``) while the image, the
        machine and its epochs stay. The fabric opened by ``open`` is ``self.fabric``."""
        if not self._ports:
            self._ports[self.fabric] = {f: getattr(self, f) for f in _PORT_FIELDS}
        if name in self._ports:
            raise ConfigError(f"fabric {name} is already open for the GSO: each fabric once")
        nic = via.VipOpenNic(device)
        try:
            ptag = via.VipCreatePtag(nic)
            rw = via.MemAttributes(ptag=ptag, enable_rdma_write=True)
            local = via.MemAttributes(ptag=ptag)
            port = {"nic": nic, "ptag": ptag,
                    "image_handle": via.VipRegisterMem(nic, self.image.buf, rw),
                    "marker_handle": via.VipRegisterMem(nic, self.marker_buf,
                                                        _marker_attrs(ptag, self.profile)),
                    "src_marker_handle": via.VipRegisterMem(nic, self.src_marker, local),
                    "ctl_handle": via.VipRegisterMem(nic, self.ctl_buf, local),
                    "vi": via.VipCreateVi(nic, via.ViAttributes(
                        ptag=ptag, enable_rdma_write=True,
                        enable_rdma_read=self.profile.rdma_read))}
        except BaseException:
            via.VipCloseNic(nic)
            raise
        self._ports[name] = port

    @property
    def fabrics(self) -> list[str]:
        """The fabrics open for the GSO's link, the current one among them."""
        return list(self._ports) or [self.fabric]

    def use_fabric(self, name: str) -> None:
        """Move the GSO's link to fabric NAME: the current connection, if any, is dropped
        (disconnected, its completions taken); the next ``connect`` runs on NAME. Only while
        no GSO is in progress (a GSO's writes and marker must travel on one VI)."""
        if name == self.fabric:
            return
        if name not in self._ports:
            raise ConfigError(f"fabric {name} is not open for the GSO (open: "
                              f"{', '.join(self.fabrics)}): add_fabric it first")
        if self.machine.state not in RESTING and not self._relinking:
            raise SwitchoverError(f"a GSO is in progress ({self.machine.state.value}) on "
                                  f"fabric {self.fabric}: its link cannot move to {name}")
        self._drop_connection()
        self._ports[self.fabric] = {f: getattr(self, f) for f in _PORT_FIELDS}
        for f, v in self._ports[name].items():
            setattr(self, f, v)
        self.fabric = name

    def _drop_connection(self) -> None:
        """The current VI disconnected and IDLE, its flushed completions taken, nothing of
        that connection left; no receive is posted again (connect posts them)."""
        self._disconnect(self.vi)
        self._recv_slots.clear()
        self._posted.clear()
        self._inbox.clear()
        self.peer.hello = None
        self.link_error, self._lost_fed = "", False

    def connect_fabrics(self, links: list[FabricLink], timeout_s: float = CONNECT_TIMEOUT_S,
                        attempt_s: float = FABRIC_ATTEMPT_S, last: str | None = None) -> Hello:
        """Connect on the first of LINKS that comes up, in their order (x first), fabric LAST
        (the one the link was just lost on) tried after the others: the connector (links
        with a peer) tries each for ATTEMPT_S in turn; the listener listens on every one and
        takes the first connection, on whichever fabric. Until TIMEOUT_S; ``self.fabric``
        then names the fabric the link is on. One link: ``connect``. With ``stripe`` and two
        links, the stripe then connects on the other fabric (``_open_stripe``)."""
        if not links:
            raise ConfigError("no fabric to connect the GSO's link on")
        links = sorted(links, key=lambda ln: ln.name == last)  # (stable: x before y)
        if not self._relinking:
            self._links = list(links)  # (a GSO's link lost before its marker moves on them)
        self._close_stripe()  # its VI is the other fabric's: the link may move there
        if self.peer.hello is not None or self.link_error:
            self._drop_connection()  # a link that was up before: connected anew
        hello = self._connect_link(links, timeout_s, attempt_s)
        if len(links) > 1 and self.stripe and not self._relinking:
            self._open_stripe(links)
        return hello

    def _connect_link(self, links: list[FabricLink], timeout_s: float,
                      attempt_s: float) -> Hello:
        if len(links) == 1:
            self.use_fabric(links[0].name)
            return self.connect(links[0].local, links[0].peer, timeout_s)
        deadline = self.clock() + timeout_s
        failed: list[str] = []
        while (left := deadline - self.clock()) > 0:
            if links[0].peer is None:
                hello = self._accept_fabrics(links, deadline)
                if hello is not None:
                    return hello
                continue
            for link in links:
                left = deadline - self.clock()
                if left <= 0:
                    break
                self.use_fabric(link.name)
                try:
                    return self.connect(link.local, link.peer, min(attempt_s, left))
                except PeerLeft:
                    raise
                except SwitchoverError as exc:
                    failed.append(f"fabric {link.name}: {exc}")
                    self.on_connect_failed(f"fabric {link.name}: {exc}")
        who = ("no peer connected on any fabric" if links[0].peer is None
               else "cannot connect to the peer on any fabric")
        raise SwitchoverError(f"{who} ({', '.join(ln.name for ln in links)}) within "
                              f"{timeout_s:.0f} s" + (f"; last: {failed[-1]}" if failed else ""))

    def _accept_fabrics(self, links: list[FabricLink], deadline: float) -> Hello | None:
        """The listener on every fabric of LINKS, each looked at for LISTEN_SLICE_S in turn
        (a request waits in its listener meanwhile); the first connection that brings the
        peer's Hello wins and the link is on its fabric. None at the deadline."""
        for link in links:
            if (left := deadline - self.clock()) <= 0:
                return None
            nic = self.nic if link.name == self.fabric else self._ports[link.name]["nic"]
            local = via.NetAddress(link.local, self.discriminator)
            try:
                req = via.VipConnectWait(nic, local, max(1, int(min(left, LISTEN_SLICE_S)
                                                                * 1000)))
            except via.VipTimeout:
                continue
            except via.VipError as exc:
                cause = exc.__cause__
                if errno.EADDRINUSE in (exc.errno, getattr(cause, "errno", None)):
                    raise SwitchoverError(
                        f"cannot listen at {local.host} (fabric {link.name}): {exc}; another "
                        "GSO listener holds the port on this node: stop it") from exc
                self.on_connect_failed(f"fabric {link.name}: listening: {exc}")
                time.sleep(min(LISTEN_SLICE_S, max(0.0, deadline - self.clock())))
                continue
            self.use_fabric(link.name)
            if not self._recv_slots:
                for slot in range(CTL_SLOTS):
                    self._post_recv(slot)
            try:
                via.VipConnectAccept(req, self.vi)
                return self._up("the peer", self.hello_wait_s)
            except PERMANENT:
                raise
            except (via.VipError, _ConnectFailed) as exc:
                self.on_connect_failed(f"fabric {link.name}: {exc}")
                self._reset_link()
        return None

    # ---- striping: a second VI on the other fabric --------------------------------------
    def _open_stripe(self, links: list[FabricLink]) -> None:
        """The link is up: connect the stripe on the other fabric of LINKS. Each side sends
        its Stripe (its image's handle and its fence word on that fabric) and waits for the
        peer's; then the side that connected the link connects the stripe and the other
        accepts it, within STRIPE_WAIT_S. Anything short of that leaves the pair unstriped
        (``stripe_note`` says why, on_connect_failed hears it); the link stays as it is."""
        other = next(ln for ln in links if ln.name != self.fabric)
        port = self._ports[other.name]
        deadline = self.clock() + STRIPE_WAIT_S
        try:
            if not self.profile.rdma_read:
                raise SwitchoverError(f"hw profile '{self.profile.name}' says rdma_read = "
                                      "false, and the stripe's fence is an RDMA Read")
            if "fence_handle" not in port:
                if self.fence_buf is None:
                    self.fence_buf = mmap.mmap(-1, mmap.PAGESIZE)
                port["fence_handle"] = via.VipRegisterMem(port["nic"], self.fence_buf,
                                                          via.MemAttributes(
                                                              ptag=port["ptag"],
                                                              enable_rdma_read=True))
            self._send(Stripe(int(port["image_handle"]), via.address_of(self.fence_buf),
                              int(port["fence_handle"])))
            while self._peer_stripe is None:
                msg = self._receive(deadline)
                if msg is None and self._peer_stripe is None:
                    raise SwitchoverError(
                        f"the peer sent no Stripe in {STRIPE_WAIT_S:g} s"
                        + (f" (the link broke: {self.link_error})" if not self.link_up else
                           ": it does not stripe (give both nodes stripe / --fabrics 2)"))
                if msg is not None:
                    self._inbox.append(msg)
            local = via.NetAddress(other.local, self.discriminator + STRIPE_SUFFIX)
            if other.peer is not None:
                remote = via.NetAddress(other.peer, self.discriminator + STRIPE_SUFFIX)
                while True:  # the peer listens only once it has our Stripe: a refusal
                    try:  # before that is tried again
                        via.VipConnectRequest(port["vi"], local, remote, self._ms_left(deadline))
                        break
                    except via.VipError:
                        self._disconnect(port["vi"])
                        if self.clock() + 0.05 >= deadline:
                            raise
                        time.sleep(0.05)
            else:
                req = via.VipConnectWait(port["nic"], local, self._ms_left(deadline))
                via.VipConnectAccept(req, port["vi"])
        except (SwitchoverError, via.VipError) as exc:
            self._disconnect(port["vi"])
            self.stripe_note = f"no stripe on fabric {other.name}: {exc}"
            self.on_connect_failed(self.stripe_note)
            return
        ps = self._peer_stripe
        self._stripe = _Stripe(other.name, port["vi"], port["image_handle"],
                               port["src_marker_handle"], ps.region_handle, ps.fence_addr,
                               ps.fence_handle)
        self.stripe_note = ""

    def _ms_left(self, deadline: float) -> int:
        return max(1, int((deadline - self.clock()) * 1000))

    @staticmethod
    def _disconnect(vi) -> None:
        """VI back to IDLE, whatever it was, its completions (flushes) taken."""
        try:
            via.VipDisconnect(vi)
        except via.VipError:
            pass
        try:
            while via.VipSendDone(vi) is not None:
                pass
            while via.VipRecvDone(vi) is not None:
                pass
        except via.VipError:
            pass

    @property
    def striped(self) -> str:
        """The stripe's fabric when one is connected, else ""."""
        return self._stripe.fabric if self._stripe is not None else ""

    def _close_stripe(self) -> None:
        """Disconnect the stripe (idempotent); the peer's Stripe is forgotten with it."""
        s, self._stripe, self._peer_stripe = self._stripe, None, None
        if s is not None:
            self._disconnect(s.vi)

    def _lose_stripe(self, why: str) -> None:
        """The stripe failed (WHY): it is closed, and a copy that used it and has not fenced
        it starts again from its first byte on the link alone. Its writes may not have
        landed (an iWARP write completes once sent); the link's own writes in flight
        complete as they come. The marker still goes last, on the link."""
        fabric = self._stripe.fabric
        self._close_stripe()
        self.stripe_note = f"the stripe on fabric {fabric} was lost: {why}"
        if self.link_up:
            # The peer disconnects its end as it reads this, before the marker (which
            # follows on the link): a write of ours still on its way there (iWARP: in a TCP
            # send queue, until a cable comes back) can then never land in its image.
            try:
                self._send(WITHDRAWN)
            except (SwitchoverError, via.VipError) as exc:
                self._lose_link(f"withdrawing the stripe: {exc}")
        c = self._copy
        if c is None or not c.stripe_used or c.fence == 2:
            self.on_relink(self.stripe_note)
            return
        c.next = c.digested = HEADER_SPACE
        c.digest = self.image.digest_start(c.epoch, self.digest_algo)
        c.stripe_inflight, c.stripe_used, c.fence = 0, "", 0
        self._current.relinks.append(f"{self.fabric}+{fabric}->{self.fabric}")
        self.on_relink(f"epoch {c.epoch}: {self.stripe_note}; the copy starts again on fabric "
                       f"{self.fabric} alone")

    def _take_withdrawal(self) -> None:
        """B, the marker seen, before it verifies: read the control frames already here. A
        stripe the active withdrew (sent before the copy it restarted on the link, so before
        the marker) is closed now, before the image is taken; other frames wait in the
        inbox, in order."""
        while self._stripe is not None and self.link_up:
            msg = self._receive(0, block=False)
            if msg is None:
                return
            self._inbox.append(msg)

    def _post_stripe(self, desc, what: str, epoch: int) -> None:
        s = self._stripe
        via.VipPostSend(s.vi, desc)
        if not s.posted:
            s.progress_t = self.clock()
        s.posted.append(_Posted(desc, what, epoch))

    def _reap_stripe(self, timeout_ms: int = 0) -> None:
        """Take the stripe's send completions (wait up to TIMEOUT_MS for the first); a
        completion in error loses the stripe (``_lose_stripe``)."""
        s, wait = self._stripe, timeout_ms
        while s is not None and s.posted:
            try:
                d = via.VipSendWait(s.vi, max(1, wait)) if wait else via.VipSendDone(s.vi)
            except via.VipTimeout:
                return
            except via.VipError as exc:
                self._lose_stripe(f"send queue: {exc}")
                return
            if d is None:
                return
            wait = 0
            p = s.posted.popleft()
            s.progress_t = self.clock()
            if p.desc is not d or d.status & via.VIP_STATUS_ERROR_MASK:
                self._lose_stripe(f"{p.what} completed with status 0x{d.status:x}"
                                  if p.desc is d else f"{p.what}: completions out of order")
                return
            c = self._copy
            if c is not None and c.epoch == p.epoch:
                if p.what == "fence":
                    c.fence = 2
                else:
                    c.stripe_inflight -= 1

    def drop_link(self, why: str) -> None:
        """Give the link up (WHY) while no GSO runs: the next ``serve`` raises PeerLeft and
        the caller connects again (``connect_fabrics``), on another fabric first."""
        if self.machine.state not in RESTING:
            raise SwitchoverError(f"a GSO is in progress ({self.machine.state.value}): its "
                                  "link is not given up")
        self._lose_link(why)

    # ---- a GSO's link lost before the marker: continued on another fabric ----------------
    def _watched(self) -> bool:
        """A GSO phase in which the link's silence is judged as a resting link's is (both
        sides kick every keepalive_s): the copy before the marker. A pulled cable shows on
        RC only to a side that sends, and during the copy the standby sends nothing."""
        m = self.machine
        return bool(self.keepalive_s) and len(self._links) > 1 \
            and m.mode is gso.GsoMode.PUSH and m.state in RELINKABLE

    def _relinkable(self) -> bool:
        """The link, lost now, may be connected again on another fabric and the GSO go on:
        a push GSO in a RELINKABLE state, another fabric open, no Goodbye, and fewer
        relinks in this GSO than other fabrics."""
        m, rep = self.machine, self._current
        return (len(self._links) > 1 and self.peer_goodbye is None and not self._relinking
                and m.mode is gso.GsoMode.PUSH and m.state in RELINKABLE
                and rep is not None and rep.epoch == m.epoch
                and len(rep.relinks) < len(self._links) - 1)

    def _relink(self) -> bool:
        """Connect the lost link again on another fabric, the lost one tried last, within
        RELINK_S (the standby RELINK_STANDBY_S), never past the machine's deadline; the side
        that connects or listens is the one connect_fabrics was given. Messages the peer
        sent on the old link and not yet fed stay. False (the link still lost, its error
        saying why) when nothing answered in time."""
        m, rep = self.machine, self._current
        now = self.clock()
        budget = RELINK_S if m.role is gso.Role.ACTIVE else RELINK_STANDBY_S
        if m.deadline is not None:
            budget = min(budget, m.deadline - now)
        why, old = self.link_error, self.fabric
        if budget < 0.2:
            return False
        inbox = list(self._inbox)
        self._relinking = True
        try:
            self.connect_fabrics(self._links, budget, last=old)
        except (SwitchoverError, via.VipError) as exc:
            rep.relink_s += self.clock() - now
            self.link_error = (f"{why}; not connected again on another fabric within "
                               f"{budget:.1f} s: {exc}")
            self._posted.clear()
            self.on_relink(f"epoch {m.epoch}: the link on fabric {old} was lost ({why}); "
                           f"no other fabric answered in {budget:.1f} s: the GSO ends")
            return False
        finally:
            self._relinking = False
        took = self.clock() - now
        rep.relink_s += took
        rep.relinks.append(f"{old}->{self.fabric}")
        self._inbox.extendleft(reversed(inbox))
        self.on_relink(f"epoch {m.epoch}: the link on fabric {old} was lost ({why}); "
                       f"connected again on fabric {self.fabric} in {took * 1000:.0f} ms, "
                       f"the GSO continues there")
        return True

    def _continue(self) -> None:
        """The GSO on the new link: A copies the image again from its first byte (the
        marker goes last on this VI); B looks at the marker again."""
        m = self.machine
        if m.state is gso.GsoState.COPYING:
            self._copy = _Copy(m.epoch, m.image_length,
                               self.image.digest_start(m.epoch, self.digest_algo),
                               memoryview(self.image.buf),
                               job=self._push_digest(m.epoch, m.image_length, again=True))
            return
        expected = gso.marker_value(m.epoch)
        value = MARKER.unpack_from(self.marker_buf, 0)[0]
        self._feed(self._execute(gso.PollMarker(expected, 0 if value == expected else value,
                                                m.deadline)))

    def _watch(self, since: float, where: str) -> None:
        """Connected: a kick every keepalive_s, and the link lost when the peer was silent
        for KEEPALIVE_DEAD of them (counted from SINCE at the earliest)."""
        if not self.link_up:
            return
        now = self.clock()
        quiet = now - max(self._last_heard, since)
        if quiet >= self.keepalive_s * KEEPALIVE_DEAD:
            self._lose_link(f"nothing heard from the peer on fabric {self.fabric} in "
                            f"{now - self._last_heard:.1f} s{' ' + where if where else ''} "
                            f"(keep-alive every {self.keepalive_s:g} s)")
            return
        if now - self._last_sent >= self.keepalive_s:
            self._last_sent = now
            try:
                self._kick()
            except (SwitchoverError, via.VipError) as exc:
                self._lose_link(f"keep-alive on fabric {self.fabric}: {exc}")

    def silent_s(self) -> float:
        """Seconds since the peer was last heard on the link (any message, a kick too)."""
        return self.clock() - self._last_heard

    # ---- the send queue: posted in order, reaped as completions come --------------------
    def _post_send(self, desc, what: str, epoch: int = 0) -> None:
        if not self.link_up:
            raise SwitchoverError(f"{what}: the VI is gone ({self.link_error})")
        via.VipPostSend(self.vi, desc)
        self._posted.append(_Posted(desc, what, epoch))

    @property
    def link_up(self) -> bool:
        return not self.link_error

    def _lose_link(self, why: str) -> None:
        """The VI failed: remember why once; AllFabricsLost follows the current actions."""
        if not self.link_error:
            self.link_error = why
            self._posted.clear()  # their completions can only be flushes now
            self._abandon_copy()
            self._drop_pull()
            self._close_stripe()  # (a relink may take its fabric)
            self._find_goodbye()

    def _find_goodbye(self) -> None:
        """The link failed: a Goodbye the peer sent as it left may still wait, unread, among
        the completed receives (a send can meet the disconnect first). Read what completed
        (nothing is posted again: the VI is gone); a Goodbye names why the peer left."""
        try:
            while (d := via.VipRecvDone(self.vi)) is not None:
                if d.slot in self._recv_slots:
                    self._recv_slots.remove(d.slot)
                if d.status & via.VIP_STATUS_ERROR_MASK or not d.length:
                    continue
                off = d.slot * CTL_SIZE
                try:
                    msg, _seq = decode_message(bytes(self.ctl_buf[off:off + d.length]))
                except FrameError:
                    continue
                if isinstance(msg, Goodbye):
                    self.peer_goodbye = msg
                    self.link_error = f"the peer ended the pair: {msg.text}"
                    return
        except via.VipError:
            pass  # nothing more to read on this VI

    def _reap(self, timeout_ms: int = 0) -> gso.Event | None:
        """Take send completions: wait up to TIMEOUT_MS for the first, then all that are
        there. The copy's completions may finish it: CopyComplete/CopyFailed is returned."""
        event = None
        wait = timeout_ms
        while self._posted and self.link_up:
            try:
                d = (via.VipSendWait(self.vi, max(1, wait)) if wait
                     else via.VipSendDone(self.vi))
            except via.VipTimeout:
                return event
            except via.VipError as exc:
                self._lose_link(f"send queue: {exc}")
                return event
            if d is None:
                return event
            wait = 0
            p = self._posted.popleft()
            if p.desc is not d:
                self._lose_link(f"{p.what}: send completions out of order")
                return event
            failed = d.status & via.VIP_STATUS_ERROR_MASK
            copying = self._copy is not None and p.what in ("write", "header", "landed")
            pulling = self._pull is not None and p.what == "read" and self._pull.epoch == p.epoch
            if failed:
                why = (f"{p.what} completed with status 0x{d.status:x}"
                       f"{' (' + d.reason + ')' if getattr(d, 'reason', '') else ''} (the "
                       "peer, its read permission or the link is gone)")
                if copying and self._copy.epoch == p.epoch and not self._relinkable():
                    self._current.reason = why
                    self._abandon_copy()
                    event = gso.CopyFailed(p.epoch, why)
                elif pulling:
                    self._current.reason = why
                    self._drop_pull()
                    event = gso.PullFailed(p.epoch, why)
                self._lose_link(why)
                return event
            if pulling:
                self._pull.inflight -= 1
                self._pull.landed += d.segments[0].length  # (one segment a read)
                if self._pull.follower is not None:
                    self._pull.follower.advance(self._pull.landed)
            elif copying and self._copy.epoch == p.epoch:
                self._copy.inflight -= 1
                if p.what == "header":
                    self._current.header_t = self.clock()
            elif p.what == "marker" and self._current is not None:
                self._current.marker_t = self.clock()
            if self.profile.transport in ACKED_BY_PEER and self.machine.state not in RESTING:
                # in a GSO, the peer's end of the link acknowledged it: the link is not
                # silent (a kick queued behind megabytes of the copy's writes comes late,
                # the acks of those writes do not). At rest only the peer's own kicks count.
                self._last_heard = self.clock()
        return event

    def _send(self, msg) -> None:
        """Post one control frame; its send slot is free again once its completion is in
        (at most CTL_SLOTS frames in flight, so a slot is never overwritten too early)."""
        while sum(p.what == "control" for p in self._posted) >= CTL_SLOTS and self.link_up:
            self._reap(timeout_ms=1000)
        slot = CTL_SLOTS + self._send_slot % CTL_SLOTS
        self._send_slot += 1
        self._send_seq += 1
        wire = encode_message(msg, self._send_seq)
        off = slot * CTL_SIZE
        self.ctl_buf[off:off + len(wire)] = wire
        d = via.VipDescriptor(segments=[via.DataSegment(
            via.address_of(self.ctl_buf, off), self.ctl_handle, len(wire))])
        self._post_send(d, "control")

    def _receive(self, deadline: float, block: bool = True, doorbell: bool = False):
        """The next valid message, or None at the deadline; forged frames are counted.
        A receive that fails is the loss of the link (returns None, link_error set). The
        marker's doorbell (a zero-length message) is returned as DOORBELL when DOORBELL is
        asked for, else skipped."""
        while self.link_up:
            left = deadline - self.clock()
            if block and left <= 0:
                return None
            try:
                if block:
                    d = via.VipRecvWait(self.vi, max(1, int(left * 1000)))
                else:
                    d = via.VipRecvDone(self.vi)
                    if d is None:
                        return None
            except via.VipTimeout:
                return None
            except via.VipError as exc:
                self._lose_link(f"control receive: {exc}")
                return None
            slot = self._recv_slots.popleft()
            if not d.status & via.VIP_STATUS_ERROR_MASK:
                self._last_heard = self.clock()
            if d.status & via.VIP_STATUS_ERROR_MASK:
                self._lose_link(f"control receive failed with status 0x{d.status:x}: the peer "
                                "is gone or the link is down")
                return None
            raw = bytes(self.ctl_buf[slot * CTL_SIZE: slot * CTL_SIZE + d.length])
            try:
                self._post_recv(slot)
            except via.VipInvalidState:
                if self.vi.state is not via.ViState.ERROR:
                    raise
                # The peer left right after this message (its goodbye at the end of the last
                # run): the message still counts; the next receive reports the VI's state.
            if not raw:  # the marker's doorbell
                if doorbell:
                    return DOORBELL
                continue
            try:
                msg, _seq = decode_message(raw)
            except FrameError:
                self.forged_frames += 1
                continue
            if isinstance(msg, Hello) and self.peer.hello is not None:
                continue  # a repeated Hello changes nothing once connected
            if msg == WITHDRAWN:
                self._close_stripe()  # the peer lost its stripe: ours goes too, now
                self.stripe_note = "the peer withdrew the stripe (it lost it)"
                return None
            if isinstance(msg, Stripe):
                self._peer_stripe = msg  # for _open_stripe (which waits for it); to any
                return None  # other caller, as if nothing came
            if isinstance(msg, Goodbye):
                # the peer ends the pair: like a link loss to the machine (a GSO in progress
                # aborts, the application thaws), and serve() then ends with its reason
                self.peer_goodbye = msg
                self._lose_link(f"the peer ended the pair: {msg.text}")
                return None
            return msg
        return None

    # ---- the machine's actions ----------------------------------------------------------
    def request_gso(self) -> None:
        """Start a GSO as the active; GsoRefused (nothing stopped) when it cannot."""
        hello = self.peer.hello
        if hello is None:
            raise SwitchoverError("no peer connected: cannot switch over")
        if not self.link_up:
            raise gso.GsoRefused(f"GSO refused: the link to the peer is gone ({self.link_error})")
        # The blob is padded to its reserved size, so the length is known before the freeze.
        length = HEADER_SPACE + self.image.pmem_size + self.image.blob_capacity
        if self.replay_stale_first and self.machine.seen:
            # A drill: the last epoch's Start-GSO and marker arrive again, late, before the
            # new GSO; a standby that persisted its epochs must ignore both.
            old = self.machine.seen
            self._current = GsoReport(old, "", "active")
            self._send(gso.StartGso(old, length, self.digest_algo))
            self._write_marker(gso.marker_value(old))
            self._current = None
        if self.mode is gso.GsoMode.PULL and not self.profile.rdma_read:
            raise gso.GsoRefused(f"GSO refused: pull mode needs RDMA Read, and hw profile "
                                 f"'{self.profile.name}' says rdma_read = false; use push")
        if length > hello.region_size:
            # the pair can never switch over this way: the standby hears why and ends too
            self.say_goodbye(gso.AbortReason.IMAGE_TOO_LARGE,
                             f"the active's state image of {length} bytes exceeds this "
                             f"standby's registered region of {hello.region_size} bytes: "
                             f"give this node a region of at least {length} bytes (P.mem, "
                             "blob and header)")
        self._feed(gso.RequestGso(image_length=length, peer_region_size=hello.region_size,
                                  peer_version=hello.version, digest_algo=self.digest_algo,
                                  mode=self.mode))

    def peer_lost(self) -> None:
        """The node's failure detector suspects the peer (every fabric silent, its verdict):
        AllFabricsLost for the machine. Call from the thread that runs ``serve``. A GSO in
        progress ends by the machine's rule for its state (before the marker: cancelled, the
        application thawed; after it: in doubt); a resting node ignores it."""
        self._feed(gso.AllFabricsLost())

    def _feed(self, event: gso.Event) -> None:
        """Feed EVENT and carry out every action, in order, to the end of the list: an I/O
        failure inside one action is remembered and fed as AllFabricsLost afterwards."""
        pending = deque(self._machine_feed(event))
        while pending:
            action = pending.popleft()
            try:
                follow = self._execute(action)
            except (SwitchoverError, via.VipError) as exc:
                self._lose_link(f"{type(action).__name__}: {exc}")
                follow = None
            if follow is not None:
                pending.extend(self._machine_feed(follow))
        if self.link_error and not self._lost_fed:
            if self._relinkable() and self._relink():
                self._continue()  # on the new link; the machine never saw the loss
                return
            self._lost_fed = True
            self._feed(gso.AllFabricsLost())

    def _machine_feed(self, event: gso.Event) -> list[gso.Action]:
        """The machine's actions for EVENT, with its epochs persisted before any runs."""
        actions = self.machine.feed(event, self.clock())
        if self.machine.state not in RESTING:
            self._rest_since = 0.0  # (a whole GSO may run inside one serve tick's feed)
        if self.store is not None:
            m = self.machine
            now = Epochs(m.epoch, m.seen, m.active_since)
            if now != self._persisted:
                self.store.save(now)
                self._persisted = now
        return actions

    def _execute(self, action: gso.Action) -> gso.Event | None:
        now = self.clock()
        match action:
            case gso.SendMessage(message=msg):
                if isinstance(msg, gso.StartGso):
                    self._current = GsoReport(msg.epoch, "", "active", msg.mode.name.lower())
                elif isinstance(msg, gso.Cancel) and self._current is not None \
                        and not self._current.reason:
                    # the report of an abort on our own timer or link says which (READY_TIMEOUT)
                    self._current.reason = msg.reason.name
                if not (self.drop_ready and isinstance(msg, gso.Ready)):
                    self._send(msg)
                if isinstance(msg, gso.StartGso) and msg.mode is gso.GsoMode.PULL:
                    self._register_read()
            case gso.StopApplication():
                rep = self._current
                rep.stop_t = now
                blob = self.app.freeze()
                rep.image_bytes = self.image.load_blob(blob.ljust(self.image.blob_capacity,
                                                                  b"\0"))
            case gso.StartCopy(epoch=epoch, image_length=length):
                return self._start_copy(epoch, length)
            case gso.CancelCopy():
                self._abandon_copy()
            case gso.SealImage(epoch=epoch, image_length=length):
                return self._seal(epoch, length)
            case gso.RevokeRead():
                self._revoke_read()
            case gso.DigestImage(epoch=epoch, image_length=length):
                self._digest_job = self._start_digest(epoch, length)
            case gso.StartPull(epoch=epoch, address=addr, handle=handle, image_length=length):
                self._current.copy_start_t = now
                self._current.image_bytes = length
                self._landed = None
                self._drop_pull()
                self._pull = _Pull(epoch, length, addr, handle)
            case gso.CancelPull():
                self._drop_pull()  # reads in flight land and are reaped; none is posted
            case gso.WriteMarker(value=value):
                self.on_marker_write(value)
                self._write_marker(value)
            case gso.ResumeApplication():
                self.app.thaw()
            case gso.RestartAsStandby():
                # The marker's completion came before "done" (B saw the marker land), even
                # when it is reaped only now: its time is at most the receipt of "done".
                self._reap()
                rep = self._current
                rep.done_t = now
                rep.marker_t = min(rep.marker_t, now) if rep.marker_t else now
            case gso.StopActivity():
                self._current = GsoReport(self.machine.epoch, "", "standby",
                                          self.machine.mode.name.lower())
                self.app.stop_standby()
            case gso.ResumeStandby(needs_resync=resync):
                self.app.resume_standby(resync)
            case gso.ZeroMarker():
                MARKER.pack_into(self.marker_buf, 0, 0)
                return gso.Quiesced(self.machine.epoch)
            case gso.PollMarker(expected=expected, not_equal_to=ne, deadline=deadline):
                seen = self._poll_marker(ne, deadline)
                if isinstance(seen, gso.MarkerSeen) and seen.value != expected:
                    self.markers_ignored += 1
                return seen
            case gso.VerifyImage(epoch=epoch, image_length=length, digest_algo=algo,
                                 digest=expected):
                self.on_marker(gso.marker_value(epoch))
                if self._stripe is not None:
                    self._take_withdrawal()
                if self.hold_verify_s:
                    time.sleep(self.hold_verify_s)
                t0 = self.clock()
                pulled = self.machine.mode is gso.GsoMode.PULL
                if pulled and self._current.copy_end_t:
                    self._current.digest_wait_s = max(0.0, now - self._current.copy_end_t)
                landed = self._landed if pulled and self._landed and \
                    self._landed[0] == epoch else None
                if pulled and not expected:
                    v = Verified(False, "no digest from the active to verify the pulled image")
                else:
                    v = verify(self.image.buf, epoch, length, algo,
                               landed[1:] if landed is not None else None,
                               expected=expected if pulled else None)
                self._landed = None
                self._current.verify_s = self.clock() - t0
                self._current.reason = v.reason
                return gso.ImageVerified(epoch, v.ok)
            case gso.ResumeAsActive():
                self._current.resume_t = now
                at = HEADER_SPACE + self.image.pmem_size
                self.app.resume(self.image.pmem,
                                bytes(self.image.buf[at:at + self.image.blob_capacity]))
                self._current.resume_s = self.clock() - now
            case gso.FencePeer(epoch=epoch):
                return self._fence_peer(epoch)
            case gso.RaiseAlarm(reason=why):
                self.alarm = why
                self.on_alarm(why)
            case gso.ClearAlarm():
                self.alarm = ""
            case gso.Notify(outcome=outcome, epoch=epoch, reason=reason):
                self._revoke_read()  # (a pull that ended before its seal: never opened)
                rep = self._current or GsoReport(epoch, "", self.machine.role.name.lower())
                rep.outcome = outcome.value
                if reason is not None:
                    rep.reason = reason.name
                self.reports.append(rep)
                self._current = None
            case _:
                raise TypeError(f"the GSO engine has no way to carry out {action!r}")
        return None

    def _fence_peer(self, epoch: int) -> gso.Event:
        """Run the fence action on the peer; FenceConfirmed only once our VI to it is gone,
        so nothing the fenced peer sent can still arrive."""
        if self.fence is None:
            why = ("no fence action configured: the active stays frozen until the standby "
                   "answers (configure one, e.g. --fence-agent fence_ipmilan)")
            self.fence_results.append(why)
            self.on_alarm(f"{self.alarm}; {why}" if self.alarm else why)
            return gso.FenceFailed(epoch, why)
        res = self.fence.run("off", self.peer_name, self.machine.timeouts.fence)
        self.fence_results.append(res.detail)
        if not res.ok:
            self.on_alarm(f"fencing the standby failed: {res.detail}")
            return gso.FenceFailed(epoch, res.detail)
        self._lose_link(f"peer fenced: {res.detail}")
        try:
            via.VipDisconnect(self.vi)
        except via.VipError:
            pass  # the VI is in ERROR already; disconnect only flushes it
        return gso.FenceConfirmed(epoch)

    def _register_read(self) -> None:
        """Pull, at Start-GSO (the application still runs): close the link's VI to the
        peer's reads (via.serve_reads), then register the image for remote read, for this
        GSO only. Registering pins the image's pages, a cost that grows with it (16 MiB: 1-7
        ms in the lab's guests; 128 MiB: 7-14 ms): done here, it is out of the blackout, and
        the seal only opens the VI again. Until then no read
        is served whatever handle it names (and the peer learns this one only in Sealed).
        Where the VI has no such gate (iWARP), or a step fails, nothing is registered here:
        the seal registers, as it did before, so the image is never readable unfrozen."""
        self._revoke_read()
        try:
            via.serve_reads(self.vi, False)
        except via.VipError:  # (VipNotSupported on iWARP)
            return
        self._gated_vi = self.vi
        try:
            self._register_for_read()
        except via.VipError:
            pass  # (the seal registers, and reports its failure)

    def _register_for_read(self) -> None:
        """This GSO's registration of the image for remote read only (VipError if refused).
        On this link's NIC: a pull's link does not move until the GSO ended (no relink, no
        use_fabric), and the GSO's end deregisters it."""
        self._read_handle = via.VipRegisterMem(self.nic, self.image.buf, via.MemAttributes(
            ptag=self.ptag, enable_rdma_read=True))

    def _seal(self, epoch: int, length: int) -> gso.Event:
        """Pull: write the frozen image's header into our own buffer (its digest field left
        zero: the digest follows in Digest, taken while the peer reads) and open the image
        for remote read: its registration of this GSO (made at Start-GSO, else now) and,
        if Start-GSO closed it, the VI's service of reads. RevokeRead closes both."""
        hdr = self.image.header(epoch, bytes(32), self.digest_algo)
        self.image.buf[:len(hdr)] = hdr
        if self._read_handle is None:  # (iWARP, or the registration at Start-GSO failed)
            try:
                self._register_for_read()
            except via.VipError as exc:
                self._current.reason = f"cannot open the image for remote read: {exc}"
                return gso.SealFailed(epoch, self._current.reason)
            self._current.read_registered = "seal"
        else:
            self._current.read_registered = "start-gso"
        if self._gated_vi is not None:
            vi, self._gated_vi = self._gated_vi, None
            try:
                via.serve_reads(vi, True)
            except via.VipError as exc:
                self._current.reason = f"cannot open the link for the standby's reads: {exc}"
                return gso.SealFailed(epoch, self._current.reason)
        self._current.sealed_t = self.clock()
        return gso.ImageSealed(epoch, via.address_of(self.image.buf), int(self._read_handle))

    def _digested(self) -> gso.Event | None:
        """ImageDigested once the digest thread is done (None before, or if it failed: then
        nothing is sent and the standby's copy timer ends the GSO)."""
        job = self._digest_job
        if job is None or not job.done:
            return None
        self._digest_job = None
        if self._current is not None and self._current.epoch == job.epoch:
            self._current.digest_s = job.took_s
            if job.error:
                self._current.reason = f"digesting the image failed: {job.error}"
        return None if job.error else gso.ImageDigested(job.epoch, job.digest)

    def _revoke_read(self) -> None:
        """Close the peer's read of the image (idempotent). A digest still being taken is
        dropped: the GSO ended, the image may run again, its digest must never be sent."""
        self._digest_job = None
        self._drop_read()

    def _drop_read(self) -> None:
        """Deregister the image's read registration, then let the VI that Start-GSO closed
        serve reads again (as every VI does outside a pull: its other regions' rights are
        the gate), in that order: a read between the two finds no registration."""
        if self._read_handle is not None:
            handle, self._read_handle = self._read_handle, None
            via.VipDeregisterMem(self.nic, self.image.buf, handle)
        if self._gated_vi is not None:
            vi, self._gated_vi = self._gated_vi, None
            try:
                via.serve_reads(vi, True)
            except via.VipError:
                pass  # (a VI in ERROR: its next connection is opened as it connects)

    def _pump_pull(self, wait_ms: int) -> gso.Event | None:
        """Keep queue_depth RDMA Reads in flight (one segment each: iWARP scatters a read
        into one), digesting each chunk once its read completed while the next ones fly
        (profile digest_thread: in the digest worker, following the reads as they land);
        PullComplete when the last landed and is digested. Waits at most WAIT_MS for one."""
        p = self._pull
        if p.digest is None and p.landed >= HEADER_SPACE:
            # Our own reads are the only writes into this buffer during the pull: a chunk
            # that landed stays as it landed until verify, so digesting it now is digesting
            # it at verify, minus the wait. The header (first chunk) gives the bound fields.
            p.digest, p.bound = self.image.landing_digest(p.epoch, self.machine.digest_algo)
            p.digested = HEADER_SPACE
            if self.digest_thread:
                p.follower = _PullDigest(self._worker(), self.image.buf, p.digest,
                                         HEADER_SPACE, p.end, self.clock,
                                         self.machine.timeouts.copy + PULL_DIGEST_IDLE_S)
                p.follower.advance(p.landed)
        chunk = self.read_chunk_size or self.chunk_size
        if p.follower is None and p.digest is not None and p.digested < p.landed:
            t0 = self.clock()
            n = min(chunk, p.landed - p.digested)
            p.digest.update(memoryview(self.image.buf)[p.digested:p.digested + n])
            p.digested += n
            self._current.digest_s += self.clock() - t0
        depth, first = self.queue_depth, chunk
        if self.profile.prime_grants and p.landed == 0:
            # a small first read alone: its answer brings the grant, the rest go direct
            depth, first = 1, PRIME_READ
        while p.next < p.end and p.inflight < depth:
            n = min(chunk if p.next else first, p.end - p.next)
            d = via.VipDescriptor(
                control=via.VIP_CONTROL_OP_RDMAREAD,
                segments=[via.DataSegment(via.address_of(self.image.buf, p.next),
                                          self.image_handle, n)],
                address=via.AddressSegment(p.address + p.next, p.handle))
            self._post_send(d, "read", p.epoch)
            self._current.writes += 1
            p.inflight += 1
            p.next += n
            # (the worker digests what landed while the next reads go: a direct read has
            # completed already, so it is reaped now, not after the whole queue was posted)
            if p.follower is not None and ((event := self._reap(0)) is not None
                                           or self._pull is not p):
                return event
        if p.follower is not None:
            if p.follower.error:
                self._drop_pull()
                self._current.reason = f"digest of the pulled image failed: {p.follower.error}"
                return gso.PullFailed(p.epoch, self._current.reason)
            if p.inflight == 0 and p.next >= p.end:
                p.follower.join(wait_ms / 1000)  # (nothing in flight: wait for the digest)
            if p.follower.done and not p.follower.error:
                p.digested = p.end
                self._current.digest_s = p.follower.busy_s
        if p.next >= p.end and p.inflight == 0 and p.digested >= p.end:
            self._current.copy_end_t = self.clock()
            self._landed = (p.epoch, self.machine.digest_algo, p.bound, p.digest.digest())
            self._pull = None
            return gso.PullComplete(p.epoch)
        # more landed than digested here: take what completed, do not sleep on the next one
        return self._reap(0 if p.follower is None and p.digested < p.landed else wait_ms)

    def _drop_pull(self) -> None:
        """The pull ends without completing (or another starts): its digest stops too."""
        if self._pull is not None and self._pull.follower is not None:
            self._pull.follower.cancel()
        self._pull = None

    def _start_copy(self, epoch: int, length: int) -> gso.Event | None:
        """Begin the copy of [HEADER_SPACE, length); the serve loop pumps it."""
        self._current.copy_start_t = self.clock()
        if self.stale_marker_first:
            # A marker left over from an earlier switch-over lands late, before the copy.
            self._write_marker(gso.marker_value(epoch - 1) if epoch > 1 else 0xFABE)
        self._copy = _Copy(epoch, length, self.image.digest_start(epoch, self.digest_algo),
                           memoryview(self.image.buf), job=self._push_digest(epoch, length))
        self.on_copy_start(epoch, length)
        return None

    def _worker(self) -> _DigestWorker:
        if self._digest_worker is None:
            self._digest_worker = _DigestWorker(f"gso-digest-{id(self):x}")
        return self._digest_worker

    def _push_digest(self, epoch: int, length: int, again: bool = False) -> _DigestJob | None:
        """The digest thread of a push (profile digest_thread), or None (inline). It starts
        with the copy: the image is frozen from StopApplication on, and the thread only
        reads it. A copy started AGAIN on another fabric (the same GSO, the image still
        frozen) keeps its job."""
        if not self.digest_thread:
            return None
        for job in self._digest_jobs if again else ():
            if job.epoch == epoch and not job.error and job.length == length:
                return job
        return self._start_digest(epoch, length)

    def _start_digest(self, epoch: int, length: int) -> _DigestJob:
        """The frozen image's digest handed to the digest worker (push or pull), kept among
        the jobs close() waits for."""
        job = _DigestJob(self._worker(), self.image, epoch, length, self.digest_algo, self.clock,
                         self.corrupt_image)
        self._digest_jobs = [j for j in self._digest_jobs if not j.done]
        self._digest_jobs.append(job)
        return job

    def _abandon_copy(self) -> None:
        """Post no more writes of this copy; the marker is never written for it. Writes in
        flight complete (or flush) on their own and are reaped as they come."""
        if self._copy is not None:
            self._copy.view.release()
            self._copy = None

    def _pump_copy(self, wait_ms: int) -> gso.Event | None:
        """Keep queue_depth writes in flight, digesting each chunk while the writes fly; then
        the header; CopyComplete when it landed. Waits at most WAIT_MS for a completion."""
        c, hello = self._copy, self.peer.hello
        limit = c.end
        if self.copy_rate_Bps > 0:  # a paced copy (a drill's window): one chunk at once
            sent_s = self.clock() - self._current.copy_start_t
            limit = min(c.end, HEADER_SPACE + self.chunk_size
                        + int(sent_s * self.copy_rate_Bps))
        s = self._stripe if self.machine.mode is gso.GsoMode.PUSH else None
        depth = self.queue_depth
        while c.next < limit:
            n = min(self.chunk_size, c.end - c.next)
            # the link, unless the stripe has fewer in flight (or the link is full)
            if c.inflight < depth and (s is None or c.inflight <= c.stripe_inflight
                                       or c.stripe_inflight >= depth):
                self._post_write(c.next, n, hello.region_addr + c.next, hello.region_handle,
                                 "write", c.epoch)
                c.inflight += 1
            elif s is not None and c.stripe_inflight < depth:
                try:
                    self._post_stripe(via.VipDescriptor(
                        control=via.VIP_CONTROL_OP_RDMAWRITE,
                        segments=[via.DataSegment(via.address_of(self.image.buf, c.next),
                                                  s.image_handle, n)],
                        address=via.AddressSegment(hello.region_addr + c.next,
                                                   s.region_handle)), "write", c.epoch)
                except via.VipError as exc:
                    self._lose_stripe(f"posting a write: {exc}")
                    return None
                c.stripe_inflight += 1
                c.stripe_used = s.fabric
                self._current.writes += 1
                self._current.stripe_writes += 1
            else:
                break
            c.next += n
        if s is not None:
            self._reap_stripe(0)
            if self._stripe is not None and s.posted \
                    and self.clock() - s.progress_t > STRIPE_STALL_S:
                self._lose_stripe(f"no write completed on it in {STRIPE_STALL_S:g} s")
            if self._stripe is None:
                return None  # the stripe was lost (the copy may start again, on the link)
        if c.job is None and c.digested < c.next:
            # the oldest posted chunk not yet digested, while the writes fly (the image is
            # frozen: the bytes digested are the bytes the writes carry); then completions
            # without waiting, and the next pump posts again before digesting the next chunk
            t0 = self.clock()
            n = min(self.chunk_size, c.next - c.digested)
            c.digest.update(c.view[c.digested:c.digested + n])
            c.digested += n
            self._current.digest_s += self.clock() - t0
            return self._reap(0)
        if c.next >= c.end and c.inflight == 0 and c.header_posted:
            self._current.copy_end_t = self.clock()
            self._current.landed_by = "read" if c.landed_posted else "ack"
            self._current.fabrics = "+".join(filter(None, (self.fabric, c.stripe_used)))
            self._abandon_copy()
            return gso.CopyComplete(c.epoch)
        if c.next >= c.end and not c.header_posted and (c.inflight == 0 or not c.stripe_used):
            # The header goes right behind the last data write on the link's queue pair,
            # without waiting for their completions: the queue pair carries them in order,
            # and the marker goes only after the header's own completion (which on RC also
            # means every earlier write was acknowledged). That saves one round trip off the
            # copy and the blackout. A striped copy still waits: its stripe's writes are
            # ordered with the header only by the fence read.
            if c.stripe_used and c.fence != 2:
                if c.stripe_inflight:  # the stripe's last writes first
                    self._reap_stripe(wait_ms)
                    return None
                if c.fence == 0:  # every stripe write completed: its fence read
                    try:
                        self._post_stripe(via.VipDescriptor(
                            control=via.VIP_CONTROL_OP_RDMAREAD,
                            segments=[via.DataSegment(via.address_of(self.src_marker, FENCE_AT),
                                                      s.scratch_handle, MARKER.size)],
                            address=via.AddressSegment(s.fence_addr, s.fence_handle)),
                            "fence", c.epoch)
                    except via.VipError as exc:
                        self._lose_stripe(f"posting the fence read: {exc}")
                        return None
                    c.fence = 1
                self._reap_stripe(wait_ms)
                return None
            digest = None
            if c.job is not None:
                # every data write is posted; the header waits for the digest thread
                if c.job.done:
                    self._current.digest_s = c.job.took_s
                    if c.job.error:
                        why = f"digesting the image failed: {c.job.error}"
                        self._current.reason = why
                        self._abandon_copy()
                        return gso.CopyFailed(c.epoch, why)
                    digest = c.job.digest  # (corrupt_image applied in the thread)
                elif c.inflight == 0:
                    c.job.join(max(1, wait_ms) / 1000)
                    return None
            else:
                digest = c.digest.digest()
                if self.corrupt_image:
                    digest = bytes([digest[0] ^ 1]) + digest[1:]
            if digest is not None:
                hdr = self.image.header(c.epoch, digest, self.digest_algo)
                self.image.buf[:len(hdr)] = hdr
                self._post_write(0, len(hdr), hello.region_addr, hello.region_handle,
                                 "header", c.epoch)
                self._current.header_behind = c.inflight
                c.header_posted = True
                c.inflight += 1
                if lands_by_read(self.profile):
                    self._post_landed(c.epoch)
                    c.landed_posted = True
                    c.inflight += 1
        if c.inflight == 0 and c.next < c.end and not c.stripe_inflight:
            time.sleep(min(wait_ms / 1000, 0.02))  # paced, nothing in flight: time must pass
        if c.inflight == 0 and c.stripe_inflight:
            self._reap_stripe(wait_ms)  # only the stripe has writes in flight
            return None
        return self._reap(wait_ms)

    def _post_write(self, off: int, n: int, raddr: int, rhandle: int, what: str,
                    epoch: int) -> None:
        d = via.VipDescriptor(
            control=via.VIP_CONTROL_OP_RDMAWRITE,
            segments=[via.DataSegment(via.address_of(self.image.buf, off), self.image_handle, n)],
            address=via.AddressSegment(raddr, rhandle))
        self._post_send(d, what, epoch)
        self._current.writes += 1

    def _post_landed(self, epoch: int) -> None:
        """The landed read (LANDED_BY_READ): 8 bytes of the peer's marker word, read right
        behind the header on the link; the copy completes with it, so the marker goes, and
        the copy's time ends, once the whole image is in the peer's memory."""
        hello = self.peer.hello
        self._post_send(via.VipDescriptor(
            control=via.VIP_CONTROL_OP_RDMAREAD,
            segments=[via.DataSegment(via.address_of(self.src_marker, LANDED_AT),
                                      self.src_marker_handle, MARKER.size)],
            address=via.AddressSegment(hello.marker_addr, hello.marker_handle)),
            "landed", epoch)

    def _write_marker(self, value: int) -> None:
        """The marker: one more RDMA Write on the same VI, after every data write (RC order)."""
        MARKER.pack_into(self.src_marker, 0, value)
        hello = self.peer.hello
        d = via.VipDescriptor(
            control=via.VIP_CONTROL_OP_RDMAWRITE,
            segments=[via.DataSegment(via.address_of(self.src_marker), self.src_marker_handle,
                                      MARKER.size)],
            address=via.AddressSegment(hello.marker_addr, hello.marker_handle))
        self._post_send(d, "marker", self.machine.epoch)
        # The doorbell: a zero-length message after the marker on the same queue pair (RC
        # order: it arrives after the marker landed), so a standby whose profile says
        # "doorbell" sleeps on its receive queue instead of polling memory. Any standby
        # takes it as a no-op; it uses one of the receives the peer keeps posted.
        self._post_send(via.VipDescriptor(segments=self._nothing()), "control")

    def _poll_marker(self, not_equal_to: int, deadline: float) -> gso.Event:
        """Look at the marker word per the profile's marker_poll; between looks, take any
        control frame (a Cancel from A must not wait for the deadline)."""
        poll = self.profile.marker_poll
        looks = 0
        watched, since = self._watched(), self.clock()
        while True:
            value = MARKER.unpack_from(self.marker_buf, 0)[0]
            if value != not_equal_to:
                return gso.MarkerSeen(value)
            now = self.clock()
            if now >= deadline or not self.link_up:
                return gso.Tick()
            if watched and (poll.mode is PollMode.DOORBELL or looks % 64 == 0):
                # the link's silence judged as the active judges it during its copy (the
                # kicks' completions first: on RC they are the peer's acks)
                self._reap()
                self._watch(since, "while waiting for the marker")
                if not self.link_up:
                    return gso.Tick()
            if poll.mode is PollMode.DOORBELL:
                # asleep until a message comes: the doorbell (look again) or a control frame
                wake = min(deadline, now + self.keepalive_s) if watched else deadline
                msg = self._receive(wake, doorbell=True)
                if msg is not None and msg is not DOORBELL:
                    return msg
                continue
            looks += 1
            if looks % 64 == 0:
                self._reap()
                msg = self._receive(now, block=False)
                if msg is not None:
                    return msg
            if poll.mode is PollMode.YIELD:
                os.sched_yield()
            elif poll.mode is PollMode.SLEEP:
                time.sleep(poll.sleep_us / 1e6)

    # ---- the loop -----------------------------------------------------------------------
    def serve(self, until: Callable[[], bool], tick_s: float = 0.05) -> None:
        """Carry the machine until UNTIL() is true: control frames, the copy, send
        completions and ticks (so every timer fires, also while the copy runs)."""
        tick_ms = max(1, int(tick_s * 1000))
        while True:
            resting = self.machine.state in RESTING
            if resting and self.peer_goodbye is not None:
                raise PeerLeft(self.link_error)  # (a GSO it interrupted is in reports)
            if until():
                return
            if resting and not self.link_up:
                raise PeerLeft(f"the link to the peer is gone ({self.link_error}) and no GSO "
                               "is in progress: nothing can reach this node any more")
            if self.keepalive_s:
                self._keep_alive(resting)
            while self._inbox:
                self._feed(self._inbox.popleft())
            digested = self._digested()
            if digested is not None:
                self._feed(digested)
            if self._copy is not None or self._pull is not None:
                try:
                    done = (self._pump_copy(tick_ms) if self._copy is not None
                            else self._pump_pull(tick_ms))
                except (SwitchoverError, via.VipError) as exc:
                    self._lose_link(f"posting the {'copy' if self._copy else 'pull'}: {exc}")
                    done = None
                if done is not None:
                    self._feed(done)
                msg = self._receive(0, block=False)  # the peer's Abort or Cancel, mid-copy
            else:
                # A marker in flight: wait for its completion first (it comes before "done"),
                # so the marker and await_done phases are measured apart.
                marker = any(p.what == "marker" for p in self._posted)
                done = self._reap(tick_ms if marker else 0)
                if done is not None:
                    self._feed(done)
                if self.link_up:
                    # a digest being taken: look at it often, the standby may be waiting
                    wait_s = min(tick_s, 0.002) if self._digest_job is not None else tick_s
                    msg = self._receive(self.clock() + wait_s)
                else:
                    time.sleep(tick_s)  # no link: only time passes (timers, fencing)
                    msg = None
            self._feed(msg if msg is not None else gso.Tick())

    def _keep_alive(self, resting: bool) -> None:
        """Resting and connected: a zero-length send every keepalive_s (the peer takes it as
        a no-op), and a link on which the peer was silent for KEEPALIVE_DEAD of them is lost
        (a pulled cable shows on an idle RC link only when something is sent, late on
        iWARP). During a GSO the machine's timers judge the silence instead."""
        now = self.clock()
        if not resting:
            self._rest_since = 0.0  # (a GSO's silences are its timers' business, but for
            if self._watched():  # the copy before the marker, which may change fabric)
                self._watch(0.0, "during the GSO's copy")
            return
        if not self._rest_since:
            self._rest_since = now
        self._watch(self._rest_since, "")

    def close(self, drain_s: float = 2.0) -> None:
        """Let what is posted go out (a last "done" or "abort" must reach the peer), then
        disconnect and free everything."""
        deadline = self.clock() + drain_s
        self._close_stripe()
        pull = self._pull
        self._drop_pull()
        for job in self._digest_jobs + ([pull.follower] if pull and pull.follower else []):
            job.join(drain_s)  # a digest thread reads the image buffer closed below
        self._digest_job = None
        if self._digest_worker is not None:
            self._digest_worker.stop()
            self._digest_worker = None
        while self._posted and self.link_up and self.clock() < deadline:
            self._reap(timeout_ms=100)
        try:
            if self.vi is not None:
                try:
                    via.VipDisconnect(self.vi)
                except via.VipError:
                    pass
        finally:
            for name, port in self._ports.items():
                if name != self.fabric:
                    try:
                        via.VipCloseNic(port["nic"])
                    except via.VipError:
                        pass
            via.VipCloseNic(self.nic)
            self.image.close()
            for b in (self.marker_buf, self.src_marker, self.ctl_buf):
                b.close()
