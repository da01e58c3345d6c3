"""The node engine of Interface A: one event loop that carries out what ``core/ifa.py`` decides.

``Node(config)`` opens the pair's channels (health, oam, pmem, disk, config: one VI each,
chosen by discriminator) on fabric x, registers P.mem, and serves the application's calls
(``node.pmem``, ``node.disk[name]``, ``node.config_change``, ``node.oam``, ``node.status()``).

Event loop: ``select.epoll``, not asyncio. What wakes the node is a handful of file descriptors
(each VI's completion channels, a wake-up pipe for the application's threads and the NIC's
error callback) and one timer (heart beats); the work per wake-up is short and synchronous
(take completions, feed the core, post what it says). asyncio would add a second scheduler
and coroutines to every call without adding anything: the application calls ``commit`` from
its own threads, which simply block on a condition variable until the loop moves the
watermark. The loop sleeps in ``epoll`` when nothing happens (no spinning: CPU time at idle
is the heart beats'). The epoll object is used as it is, not through ``selectors`` (whose
key objects and mapping cost about 60 us of a TCG lab guest's CPU per wake-up, on the
commit's path on both nodes).

Threads: the loop thread reaps completions and feeds the ``Session``; an application thread
submits its transaction and posts the frames itself, under the same ``_lock`` (handing it to
the loop instead cost two thread switches per commit, measured as the larger part of a
commit's CPU in the lab's one-vCPU guests), then waits on ``_cv`` for the watermark the loop
moves. The NIC's error callback hands its news over through a queue and the wake-up pipe; the
control socket (``ha/control.py``) runs in its own thread and reads status under ``_lock``.

Two fabrics (issue 13; DESIGN.md "Dual fabric X/Y"). ``_FabricPort`` holds one fabric's NIC,
protection tag, registered P.mem and a VI per channel with its buffers; the ``Session`` (core)
holds what the pair session keeps across links (sequence numbers, unacked frames, reassembly).
With [fabric.x] and [fabric.y] both ports are open:
- ``health`` runs on every fabric at all times, each with its own small session: heart beats
  flow both ways on every fabric, so the failure detector hears each fabric apart and suspects
  the peer only when every fabric is silent.
- The other channels (``MAIN``: oam, pmem, disk, config) ride one fabric, the *carrier* (x at
  start), and are connected in advance on the other ("warm": connected, idle, no session link).
- The carrier moves (``_switch``) when one of its channels breaks (a VI error, a failed post, a
  cm event) or when nothing at all has come in on it for ``QUIET_INTERVALS`` heart-beat
  intervals while the other fabric was heard; only to a fabric that is warm. The session feeds
  ``Disconnected`` then ``Connected`` for every MAIN channel: a new link on the new fabric,
  whose HELLO says where each side stands, and the core sends again exactly what the peer had
  not acknowledged (sequence numbers are per session, not per fabric, so each transaction is
  applied once, in order). The application sees a short pause, no error.
- The peer follows when the first frame of such a link (a HELLO) reaches it on a fabric that
  is not its carrier. Any other frame on a non-carrier fabric is late traffic of an old link:
  dropped (``stale_frames``); the re-send covers it.
- The old carrier's MAIN channels are torn down (disconnected) and made again in the
  background, so a later move back never meets a frame of an old link; once back they are the
  warm spare. ``[replication] fabric_failback = "back"`` moves traffic back to x when x is
  warm again (decided by the node whose name sorts first, so the two never move apart);
  "stay" (the default) leaves it where it is.
A one-fabric configuration is this with no spare: a broken channel is reconnected in place.

Who connects: the node configured ``active`` connects, the ``standby`` listens, per channel in
the order of ``CHANNELS``, on each fabric. A broken link is fed to the core as ``Disconnected``
and shown in status and alarms, and connected again by that fabric's reconnect thread.

GSO control messages stay on their own VI (ha/switchover.py): they must be ordered with the
image's RDMA Writes, which RC gives only on the same queue pair; moving them here would need
an explicit fence between two VIs for no gain.

Every action's I/O outcome comes back as an event: a failed post marks the link lost and
``Disconnected`` is fed after the rest of the list ran, so no exception leaves a list half
done.
"""

from __future__ import annotations

import json
import mmap
import os
import queue
import select
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from hsp_rdma import via
from hsp_rdma.core import ifa
from hsp_rdma.core.failover import Verdict
from hsp_rdma.core.frames import HEADER, MAGIC, Channel, crc32c
from hsp_rdma.core.ifa import FRAME_DIR, Commit
from hsp_rdma.errors import HspError
from hsp_rdma.ha import carrier
from hsp_rdma.ha.carrier import CarrierWatch
from hsp_rdma.ha.config import NodeConfig
from hsp_rdma.ha.image import crc32c_hardware
from hsp_rdma.ha.pmem_store import PmemStore

CHANNELS = (Channel.HEALTH, Channel.OAM, Channel.PMEM, Channel.DISK, Channel.CONFIG)
MAIN = CHANNELS[1:]  # the channels that ride the carrier fabric (health runs on every fabric)
QUIET_INTERVALS = 2.0  # nothing in on the carrier for this many heart-beat intervals: move
FAILBACK_STABLE_S = 1.0  # "back": x warm and heard for this long before traffic goes back
HELLO_DUE_S = 3.0  # after a move, a channel whose peer sent no HELLO in this time is made again
OAM_APP, OAM_SYSTEM = 0, 1  # first byte of an oam message: the application's, or the node's
OAM_EVENTS_KEPT = 1000  # the peer's reports a node keeps (node.oam.events)
_HB = struct.Struct("<dQ")  # sender's clock, count
HELLO_WAIT_S = 20.0
RECONNECT_CONNECT_MS = 3000  # one runtime connect attempt (a TCG guest's rdma_cm can take >1 s)
_STATUS_ERROR = int(via.VIP_STATUS_ERROR_MASK)  # an int: the flag enum's & is a call per use
_MODES = {m.name.lower(): m for m in Commit} | {m: m for m in Commit}
SEND_SLOT_WAIT_MS = 5000  # no free send slot and no send completion in this time: link lost  # a new connection whose peer says nothing in this time is made again


def _is_hello(data: bytes) -> bool:
    """Whether DATA has the header of a HELLO frame (the first frame of a link), either side's."""
    if len(data) < HEADER.size:
        return False
    magic, _version, _channel, ftype = HEADER.unpack_from(data)[:4]
    return magic == MAGIC and (ftype & ~FRAME_DIR) == ifa.FrameType.HELLO


class _TimedLock:
    """The node's re-entrant lock, timing each outermost hold: a hold longer than
    ``limit_s`` is remembered (the holding thread's name and how long) for the loop to
    report. The loop's heart beats wait on this lock, so a thread that keeps it longer than
    the peer's silence allowance gets the node fenced: this names it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # (changed only by the holder)
        self._since = 0.0
        self.limit_s = float("inf")
        self.long: list[tuple[str, float, dict]] = []  # (thread, seconds, what it did) not
        # yet reported
        self.work: dict[str, float] = {}  # what the current hold did: seconds waiting for a
        # send slot, frames taken in (the holder adds, ``spent``)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        self._depth += 1
        if self._depth == 1:
            self._since = time.monotonic()
            if self.work:
                self.work = {}
        return True

    def spent(self, what: str, amount: float) -> None:
        """Under the lock: the current hold did AMOUNT of WHAT (named in a long hold)."""
        self.work[what] = self.work.get(what, 0.0) + amount

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            held = time.monotonic() - self._since
            if held > self.limit_s:
                self.long.append((threading.current_thread().name, held, self.work))
                del self.long[:-8]
                self.work = {}
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _work_said(work: dict[str, float]) -> str:
    """What a long hold of the node's lock did, for its stall alarm ("" when nothing known)."""
    said = []
    if work.get("frames"):
        said.append(f"{work['frames']:.0f} frame(s) taken in, {work.get('applied', 0):.0f} "
                    "transaction(s) applied")
    if work.get("send_wait"):
        said.append(f"{work['send_wait'] * 1000:.0f} ms waiting for a send slot (the wire or "
                    "the peer's transport is slow)")
    if work.get("persist"):
        said.append(f"{work['persist'] * 1000:.0f} ms writing the P.mem store")
    return f" ({'; '.join(said)})" if said else ""


class NodeError(HspError):
    """The node could not start or a call could not be served; the message says why."""


class CommitTimeout(NodeError):
    exit_code = 124


@dataclass
class _ChannelLink:
    channel: Channel
    vi: object
    recv_buf: mmap.mmap
    recv_handle: object
    send_buf: mmap.mmap
    send_handle: object
    free: list[int] = field(default_factory=list)
    recv_descs: dict[int, object] = field(default_factory=dict)  # slot -> its descriptor
    send_descs: dict[int, object] = field(default_factory=dict)  # slot -> its descriptor
    send_addrs: dict[int, int] = field(default_factory=dict)  # slot -> its buffer's address
    up: bool = False
    lost: str = ""
    unposted: list[int] = field(default_factory=list)  # receive slots flushed in error
    short: int = 0  # heart beats in a row that found fewer receives than credits, link up
    early: list[bytes] = field(default_factory=list)  # frames of a new connection before
    # the reconnect thread fed it Connected (the loop reaps while that thread connects)


class _FabricPort:
    """One fabric's NIC, P.mem registration and the channel VIs on it."""

    def __init__(self, index: int, fabric, pmem: mmap.mmap, size: int, credits: int):
        self.index = index
        self.config = fabric
        self.nic = via.VipOpenNic(fabric.rdma_device)
        self.links: dict[Channel, _ChannelLink] = {}
        try:
            self.ptag = via.VipCreatePtag(self.nic)
            self.pmem_handle = via.VipRegisterMem(self.nic, pmem, via.MemAttributes(
                ptag=self.ptag, enable_rdma_write=True))
            slots = credits + 4
            for ch in CHANNELS:
                rb, sb = mmap.mmap(-1, size * credits), mmap.mmap(-1, size * slots)
                attrs = via.MemAttributes(ptag=self.ptag)
                rh = via.VipRegisterMem(self.nic, rb, attrs)
                sh = via.VipRegisterMem(self.nic, sb, attrs)
                vi = via.VipCreateVi(self.nic, via.ViAttributes(ptag=self.ptag))
                self.links[ch] = _ChannelLink(ch, vi, rb, rh, sb, sh, list(range(slots)))
        except BaseException:
            via.VipCloseNic(self.nic)
            raise

    def close(self) -> None:
        via.VipCloseNic(self.nic)

    def warm(self) -> bool:
        """Every channel connected on this fabric: traffic may move here."""
        return all(link.up for link in self.links.values())


class _Pmem:
    """``node.pmem``: the registered region and its transactions."""

    def __init__(self, node: Node):
        self._node = node
        self.buf = node._pmem
        self.size = len(node._pmem)

    def transaction(self, commit: str | None = None) -> _PmemTx:
        return _PmemTx(self._node, commit)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.buf[offset:offset + length])


class _PmemTx:
    def __init__(self, node: Node, commit: str | None):
        self._node, self._commit = node, commit
        self.writes: list[tuple[int, bytes]] = []
        self.txid = 0

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > len(self._node._pmem):
            raise NodeError(f"P.mem write {offset}+{len(data)} is outside the region of "
                            f"{len(self._node._pmem)} bytes")
        self.writes.append((offset, bytes(data)))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if exc_type is not None:
            return  # an aborted transaction writes nothing anywhere
        node = self._node
        pmem, writes = node._pmem, self.writes

        def local() -> None:  # under the node's lock, right before the submit
            if node.pmem_store is not None:  # first: a store that fails changes nothing
                node._persist_pmem(writes, node.pmem_durable)
            for off, data in writes:
                pmem[off:off + len(data)] = data

        self.txid = node._commit(Channel.PMEM, ifa.encode_pmem(writes), self._commit,
                                 local=local)


def stable(fd: int) -> None:
    """Every write made through FD so far is stable: ``fdatasync`` for a file and for a block
    device alike. On a file it writes the data and the metadata needed to read it back (the
    size), not the times (what ``fsync`` adds); on a block device the kernel's fdatasync and
    fsync are one call that writes the device's dirty pages and then flushes its volatile
    cache. ``sync_file_range`` is not used: it never flushes the device cache nor the file's
    size, so it is no barrier."""
    os.fdatasync(fd)


class _Disk:
    """``node.disk[name]``: a replicated file or block device."""

    def __init__(self, node: Node, index: int, cfg):
        self._node, self.index, self.config = node, index, cfg
        self.path = Path(cfg.path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        size = cfg.size
        actual = os.lseek(self.fd, 0, os.SEEK_END)
        if size is None:
            size = actual
        elif actual < size and self.path.is_file():
            os.ftruncate(self.fd, size)
        self.size = size
        self.writes = 0
        self.bytes = 0

    def write(self, offset: int, data: bytes, commit: str | None = None,
              flush: bool = False) -> int:
        """Write DATA at OFFSET here and replicate it. FLUSH: a synchronous write, the write
        and its flush as one transaction (one commit, not two): stable here before this
        returns and (``applied``) stable on the standby with every earlier write, as
        ``write`` then ``flush`` would give. The local write is made under the node's lock
        right before the submit (so the order of the copy and of the stream is one, whatever
        threads write), the local flush after the submit, in parallel with the standby's (as
        DRBD submits its local and remote writes)."""
        if offset < 0 or offset + len(data) > self.size:
            raise NodeError(f"disk {self.config.name}: write {offset}+{len(data)} is beyond "
                            f"its {self.size} bytes")

        def local() -> None:
            os.pwrite(self.fd, data, offset)
            self.writes += 1
            self.bytes += len(data)

        return self._node._commit(
            Channel.DISK, ifa.encode_disk([(self.index, offset, data)], flush=flush), commit,
            local=local, after=(lambda: stable(self.fd)) if flush else None)

    def flush(self, commit: str | None = None) -> int:
        """Stable here, then (``applied``) stable on the standby with every earlier write."""
        stable(self.fd)
        return self._node._commit(Channel.DISK, ifa.encode_flush(self.index), commit)

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def digest(self) -> int:
        crc, off = 0, 0
        while off < self.size:
            chunk = os.pread(self.fd, min(1 << 20, self.size - off), off)
            if not chunk:
                break
            crc = crc32c(chunk, crc)
            off += len(chunk)
        return crc


class _Oam:
    """``node.oam``: the application's own messages, socket-like."""

    def __init__(self, node: Node):
        self._node = node
        self.inbox: queue.Queue[bytes] = queue.Queue()
        # the nodes' own reports (alarms, resync and audit messages) received on oam: the
        # last OAM_EVENTS_KEPT (a long-running standby with periodic audits gets one per
        # audit), and how many came in all (``keep``; readers hold a cursor on that count)
        self.events: deque[dict] = deque(maxlen=OAM_EVENTS_KEPT)
        self.received = 0

    def keep(self, event: dict) -> None:
        self.events.append(event)
        self.received += 1

    def since(self, seen: int) -> tuple[list[dict], int]:
        """The events after the first SEEN received (those still kept), and the new count."""
        kept = list(self.events)
        first = self.received - len(kept)  # the count of the oldest kept
        return kept[max(0, seen - first):], self.received

    def send(self, data: bytes, timeout: float | None = None) -> None:
        self._node._commit(Channel.OAM, bytes([OAM_APP]) + bytes(data), "async", timeout)

    def recv(self, timeout: float | None = None) -> bytes:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise NodeError(f"no oam message in {timeout} s") from None


class Node:
    """One node of a pair, its Interface A channels and the replicated resources."""

    def __init__(self, config: NodeConfig, on_config: Callable[[dict], None] | None = None,
                 epoch: int = 1):
        self.config = config
        self.on_config = on_config
        rep = config.replication
        self.default_commit = rep.commit
        self.role = config.role
        self._side = 0 if config.name < config.peer else 1  # marks the frames this side sends
        self._interval_s = config.timeouts.heartbeat_interval / 1000
        self._quiet_s = QUIET_INTERVALS * self._interval_s  # the carrier's quiet check
        self.session = self._new_session(epoch)
        # heart beats: one small session per fabric (health runs on every fabric)
        self._health = [self._new_health(epoch) for _ in config.fabrics]
        self._session_gen = 0  # +1 each time the peer restarted (a new session)
        # every frame's CRC by the compiled CRC32C's faster path here (measured once per
        # process: a TCG guest emulates SSE4.2's crc32 several times slower than the table)
        ifa.use_crc32c_hardware(crc32c_hardware())
        self._msg_size = rep.message_size
        self._pmem = mmap.mmap(-1, config.pmem_size)
        # [pmem] persist: P.mem kept under state_dir/pmem (image + write-ahead log), loaded
        # here; a node whose P.mem came back is Consistent after a restart (ha/pmem_store.py)
        self.pmem_store: PmemStore | None = None
        self.pmem_restored = False
        if config.pmem_persist:
            self.pmem_store = PmemStore(Path(config.state_dir) / "pmem", config.pmem_size)
            self.pmem_restored = self.pmem_store.load(self._pmem)
        self.pmem = _Pmem(self)
        self.disk: dict[str, _Disk] = {}
        self._disks: list[_Disk] = []
        for i, d in enumerate(config.disks):
            self._disks.append(_Disk(self, i, d))
            self.disk[d.name] = self._disks[-1]
        self._disk_sizes = tuple(d.size for d in self._disks)  # decode_tx's bounds, per apply
        self.oam = _Oam(self)
        self._lock = _TimedLock()
        self._cv = threading.Condition()
        self._marks = {ch: (0, 0, 0) for ch in CHANNELS}
        self._requests: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = False
        self._closed = False
        self._dead = ""  # why the loop thread ended, if it ended other than by close()
        self._thread: threading.Thread | None = None
        self._ports: list[_FabricPort] = []
        self._carrier = 0  # the index of the fabric the MAIN channels ride
        self.fabric_switches = 0
        self.port_downs = 0  # the NIC said a fabric's port went down (IBV_EVENT_PORT_ERR)
        # the loop held up (woke late, or waited for the lock) past one heart-beat interval:
        # its heart beats stopped meanwhile, and the peer may have taken that for a death
        self.loop_stalls = 0
        self.longest_stall_ms = 0.0
        self._stall_alarm_at = float("-inf")
        self.on_alarm: Callable[[str], None] | None = None  # each alarm, as it is raised
        # the fabrics' netdev link events (two fabrics; opened by the loop, or a test's)
        self.carrier_watch: carrier.CarrierWatch | None = None
        self._port_out = [False] * len(config.fabrics)  # a port down taken, not yet back
        self.stale_frames = 0  # frames of an old link on a fabric that no longer carries
        # the last time anything came in on each fabric (the carrier's quiet check)
        self._heard_at = [time.monotonic()] * len(config.fabrics)
        self._hb_heard: list[float | None] = [None] * len(config.fabrics)  # heart beats
        self._warm_since: list[float | None] = [None] * len(config.fabrics)
        self._hello_due: float | None = None  # after a move: when every HELLO must be in
        # called in the loop thread after each move of the carrier: (old, new, why)
        self.on_fabric_switch: Callable[[str, str, str], None] | None = None
        self._control = None
        self.alarms: list[str] = []
        self.config_applied = 0
        self.inconsistent = False
        self.heartbeats = {"sent": 0, "received": 0}
        self._started = time.monotonic()
        self._pending_lost: list[tuple[int, Channel, str]] = []  # fabric, channel, why
        # frames of a newer epoch kept until the session takes it (_take_frame), per channel
        self._held: dict[Channel, list[bytes]] = {}
        # runtime reconnect (after start): channels to connect again, and the thread doing it
        self._running = False
        self._reconnect: set[tuple[int, Channel]] = set()  # (fabric, channel)
        self._reconnect_wake = [threading.Event() for _ in config.fabrics]
        # what each fabric's reconnect thread is doing and since when (status evidence: a
        # step that lasts is a thread blocked in it, e.g. a disconnect towards a dead peer)
        self._reconnect_doing: list[tuple[str, float]] = [("not started", time.monotonic())
                                                          for _ in config.fabrics]
        self._reconnectors: dict[int, threading.Thread] = {}
        self.reconnects = 0
        # fault injection for drills and tests (tools/ifa_pair --kill-mid-tx): called with
        # each Send action before it is posted, in the loop thread
        self.before_send: Callable[[ifa.Send], None] | None = None
        # the failover engine (ha/failover_engine.py) when one is attached; None: heart beats
        # are sent and counted only
        self.failover = None

    def _new_session(self, epoch: int, incarnation: int | None = None) -> ifa.Session:
        rep = self.config.replication
        return ifa.Session(epoch, rep.message_size, rep.credits, MAIN,
                           side=self._side,
                           incarnation=incarnation)

    def _new_health(self, epoch: int) -> ifa.Session:
        """One fabric's heart-beat session: the main session's incarnation (a peer that
        restarted shows on any of them)."""
        rep = self.config.replication
        return ifa.Session(epoch, rep.message_size, rep.credits, (Channel.HEALTH,),
                           side=self._side,
                           incarnation=self.session.incarnation)

    @property
    def _port(self) -> _FabricPort | None:
        """The carrier's port (the MAIN channels' links)."""
        return self._ports[self._carrier] if self._ports else None

    def carrier_heard(self) -> tuple[str, float]:
        """(the fabric that carries the traffic, seconds since anything came in on it). With
        a heart beat every interval on every fabric, a carrier heard more than one interval
        ago may be a cable just pulled that the quiet check has not judged yet."""
        carrier = self._carrier
        name = self._ports[carrier].config.name if self._ports else \
            self.config.fabrics[0].name
        return name, time.monotonic() - self._heard_at[carrier]

    @property
    def heartbeat_interval_s(self) -> float:
        return self._interval_s

    def _sess(self, fab: int, ch: Channel) -> ifa.Session:
        """The session CH's frames on fabric FAB belong to."""
        return self._health[fab] if ch is Channel.HEALTH else self.session

    def _on_session(self, fab: int, ch: Channel) -> bool:
        """Whether CH's link on FAB is a session's link (health anywhere; MAIN on the carrier)."""
        return ch is Channel.HEALTH or fab == self._carrier

    def _peer_restarted(self, ch: Channel) -> None:
        """In the loop: CH's peer is a new process (``ifa.PeerRestarted``). What this session
        kept for the old one means nothing to it: a new session, every channel connected
        again (the listening side waits for the peer's new connections), commits waiting on
        the old session told. What the peer lacks comes back by the failover engine's resync
        (a restarted node asks for everything)."""
        self._alarm(f"{ch.name.lower()}: the peer restarted (another incarnation): a new "
                    "session, every channel connected again")
        # The same incarnation: the new peer must not take this side for restarted too. It
        # took nothing of the old session (its fresh streams refuse the old numbering) and
        # this side took nothing of it (every stream stops at the new peer's HELLO), so both
        # number from where the new session and its fresh streams start.
        self.session = self._new_session(self.session.epoch, self.session.incarnation)
        self._health = [self._new_health(self.session.epoch) for _ in self._ports]
        self._session_gen += 1
        self._pending_lost.clear()
        with self._cv:
            self._marks = {c: (0, 0, 0) for c in CHANNELS}
            self._cv.notify_all()
        self._carrier = 0  # the new peer starts on x (or moves, and this side follows)
        for port in self._ports:
            for c in CHANNELS:
                self._reset_link(port.index, c)  # the peer sees it and connects again
                port.links[c].lost = "the peer restarted"
                self._want_reconnect(port.index, c)
        if self.failover is not None:
            self.failover.peer_restarted()

    # ---- life -------------------------------------------------------------------------------
    def start(self) -> Node:
        """Open every fabric, connect every channel on x (the active connects, the standby
        listens), start the loop, connect y in the background (its health at once, the rest
        warm) and the control socket. With two fabrics, x that cannot be connected is not
        fatal while y can: traffic starts on y. Raises NodeError naming what failed."""
        rep = self.config.replication
        for i, fab in enumerate(self.config.fabrics):
            try:
                port = _FabricPort(i, fab, self._pmem, rep.message_size, rep.credits)
            except via.VipError as exc:
                for p in self._ports:
                    p.close()
                self._ports = []
                raise NodeError(f"fabric {fab.name}: cannot open {fab.rdma_device}: {exc}"
                                ) from exc
            self._ports.append(port)
            via.VipErrorCallback(port.nic, i, self._on_via_error)
        first_error: NodeError | None = None
        try:
            self._connect_all()
        except NodeError as exc:
            if len(self._ports) == 1:
                raise
            first_error = exc
            for ch in CHANNELS:  # made again in the background, as a lost link
                self._reset_link(0, ch)
                self._ports[0].links[ch].lost = f"not connected at start: {exc}"
        self._thread = threading.Thread(target=self._loop, name=f"hsp-node-{self.config.name}",
                                        daemon=True)
        self._running = True
        self._thread.start()
        with self._lock:
            for port in self._ports[1:] if first_error is None else self._ports:
                for ch in CHANNELS:
                    self._want_reconnect(port.index, ch)
            if self.config.role != "active" and first_error is None:
                # the listening side listens for as long as it runs: a cable pulled and
                # plugged may leave the peer's side of a channel broken and ours not (nothing
                # crossed to break it), and only the peer's new connection tells us
                self._want_reconnect(0, None)
        if len(self._ports) > 1:
            self._await_spare(first_error)
        self._start_control()
        return self

    def _await_spare(self, first_error: NodeError | None) -> None:
        """Two fabrics: wait (within the connect timeout) for the other fabric to be warm, so
        that a node that started can move at once. X not connected at start (FIRST_ERROR):
        traffic starts on y once it is warm; neither: NodeError naming both."""
        end = time.monotonic() + self.config.timeouts.connect / 1000
        spare = self._ports[1]
        while time.monotonic() < end and not self._dead:
            with self._lock:
                if spare.warm():
                    self._note_warm(time.monotonic())
                    if first_error is not None and self._carrier == 0:
                        self._switch(1, f"fabric {self._ports[0].config.name} could not be "
                                        f"connected at start ({first_error})")
                    break
            time.sleep(0.02)
        with self._lock:
            warm = spare.warm()
            if not warm:
                self._alarm(f"fabric {spare.config.name}: not connected within the connect "
                            "timeout at start; its channels keep being connected in the "
                            "background (no spare until then)")
        if first_error is not None and not warm:
            self.close()
            raise NodeError(f"no fabric could be connected: {first_error}; and fabric "
                            f"{spare.config.name} ({spare.config.rdma_device}) was not "
                            "connected either within the connect timeout") from first_error
        if first_error is not None:  # traffic on y: its HELLOs, before a commit may go
            end = time.monotonic() + HELLO_WAIT_S
            while time.monotonic() < end and not all(
                    (st.link is not None and st.link.synced)
                    for st in self.session.streams.values()):
                time.sleep(0.02)

    def _disc(self, ch: Channel) -> bytes:
        a, b = sorted((self.config.name, self.config.peer))
        return f"ifa:{a}-{b}:{ch.name.lower()}".encode()[:48]

    def _connect_all(self) -> None:
        size = self.config.replication.message_size
        deadline = time.monotonic() + self.config.timeouts.connect / 1000
        for port in self._ports:  # every fabric's receives, before any connection
            for ch in CHANNELS:
                for slot in range(self.config.replication.credits):
                    self._post_recv(port.links[ch], slot, size)
        if self.config.role == "active":  # by config: a restarted node may start standby
            for ch in CHANNELS:
                self._connect_channel(ch, deadline)
        else:
            self._accept_all(deadline)

    def _what(self, ch: Channel, fab: int | None = None) -> str:
        cfg = self._ports[self._carrier if fab is None else fab].config
        return f"channel {ch.name.lower()} on fabric {cfg.name} ({cfg.rdma_device})"

    def _up(self, ch: Channel, timeout_s: float) -> None:
        """A new connection of CH (at start, on the carrier): feed Connected (our HELLO goes),
        kick, await the peer's."""
        fab = self._carrier
        link = self._port.links[ch]
        link.up, link.lost = True, ""
        with self._lock:
            self._run(self._sess(fab, ch).feed(ifa.Connected(ch)), fab)
            self._kick(link)
        self._await_hello(ch, timeout_s)

    def _connect_channel(self, ch: Channel, deadline: float) -> None:
        """The active: connect CH and wait for the peer's HELLO on it; a connection that
        brings none in HELLO_WAIT_S is torn down and made again, until DEADLINE."""
        fab = self._port.config
        link = self._port.links[ch]
        local = via.NetAddress(fab.local, self._disc(ch))
        attempts = 0
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise via.VipTimeout("the connect timeout passed")
                via.VipConnectRequest(link.vi, local, via.NetAddress(fab.peer, self._disc(ch)),
                                      max(1, int(left * 1000)))
                self._up(ch, min(HELLO_WAIT_S, max(0.1, deadline - time.monotonic())))
                return
            except (via.VipError, NodeError) as exc:
                attempts += 1
                self._reset_link(self._carrier, ch)
                if time.monotonic() + 0.3 >= deadline:
                    raise NodeError(f"{self._what(ch)}: no connection within the connect "
                                    f"timeout after {attempts} attempt(s), the last: {exc}; is "
                                    "the peer node running with the same [fabric] addresses?"
                                    ) from exc
                time.sleep(0.3)

    def _accept_all(self, deadline: float) -> None:
        """The standby: listen on every channel and accept them in whatever order they come;
        a channel that breaks before every channel is up (the active gave up on it and
        connects it again) goes back to waiting. Listening on all at once also spares the
        active refused attempts (on siw a refused one could still reach a listener made a
        moment later, which then waited 30 s for an initiator that had given up)."""
        fab = self._port.config
        pending = list(CHANNELS)
        last: dict[Channel, str] = {}
        while pending:
            while True:  # channels that broke meanwhile (the NIC's error callback)
                try:
                    req = self._requests.get_nowait()
                except queue.Empty:
                    break
                if req[0] != "lost":
                    self._requests.put(req)  # (a call for the loop: it runs them)
                    break
                _lost, ch, why, where = req
                if where == self._carrier and ch not in pending and not self._stale(where, ch):
                    self._reset_link(where, ch)
                    pending.append(ch)
                    last[ch] = why
            if time.monotonic() >= deadline:
                ch = pending[0]
                raise NodeError(f"{self._what(ch)}: no connection within the connect timeout"
                                + (f" (the last attempt: {last[ch]})" if ch in last else "")
                                + "; is the peer node running with the same [fabric] "
                                "addresses?")
            for ch in list(pending):
                try:
                    req = via.VipConnectWait(self._port.nic,
                                             via.NetAddress(fab.local, self._disc(ch)), 50)
                except via.VipTimeout:
                    continue
                try:
                    via.VipConnectAccept(req, self._port.links[ch].vi)
                    self._up(ch, HELLO_WAIT_S)
                    pending.remove(ch)
                except (via.VipError, NodeError) as exc:
                    last[ch] = str(exc)
                    self._reset_link(self._carrier, ch)

    def _kick(self, link: _ChannelLink) -> None:
        """A zero-length send right after our HELLO, in case siw (6.1) left the first send of
        the new connection unsent until another is posted (suspected, from a reconnect race
        the VIA provider met; not proven to matter here: the fix that did was accepting the
        channels in any order). The peer re-posts its receive and feeds nothing (a
        zero-length message is never a frame); HELLO, kick and window - 2 DATA frames fit."""
        if not link.free:
            return
        self._post_send(link, link.free.pop(), 0)

    def _post_send(self, link: _ChannelLink, slot: int, length: int) -> None:
        """Post send-buffer SLOT of LINK (its first LENGTH bytes, already in place); the slot
        goes back to the free list if the post fails. One descriptor per slot, made once (a
        slot is posted again only after its completion was taken); only its segment's
        length changes."""
        d = link.send_descs.get(slot)
        if d is None:
            d = link.send_descs[slot] = via.VipDescriptor()
            d.slot = slot
            link.send_addrs[slot] = via.address_of(link.send_buf, slot * self._msg_size)
        d.segments = [via.DataSegment(link.send_addrs[slot], link.send_handle, length)]
        try:
            via.VipPostSend(link.vi, d)
        except via.VipError:
            link.free.append(slot)
            raise

    def _await_hello(self, ch: Channel, timeout_s: float) -> None:
        link = self._port.links[ch]
        stream = self._sess(self._carrier, ch).streams[ch]
        end = time.monotonic() + timeout_s
        while stream.link is None or not stream.link.synced:
            left = end - time.monotonic()
            if not link.up or left <= 0:
                raise NodeError(f"no HELLO from the peer in {timeout_s:.0f} s"
                                + (f" ({link.lost})" if link.lost else ""))
            try:
                d = via.VipRecvWait(link.vi, max(1, int(left * 1000)))
            except via.VipTimeout:
                continue
            with self._lock:
                self._on_recv(self._carrier, ch, link, d)
                self._feed_lost()

    def _reset_link(self, fab: int, ch: Channel) -> None:
        """Back to IDLE with every receive posted again and every send slot free. The
        disconnect outside the loop's lock (towards a dead peer it can wait for the cm's
        timeout: ~12 s of stopped commits in the lab), the rest under it (the loop may be
        reaping this VI's queues: what it takes in error is posted again here). The session
        hears ``Disconnected`` only when this link was its link (health, or the carrier)."""
        link = self._ports[fab].links[ch]
        with self._lock:
            link.up = False
            if self._on_session(fab, ch):
                self._held.pop(ch, None)  # frames of the old connection
        try:
            via.VipDisconnect(link.vi)
        except via.VipError:
            pass  # a connect that failed left the VI IDLE already
        with self._lock:
            size = self.config.replication.message_size
            slots, link.unposted = link.unposted, []
            while (d := via.VipRecvDone(link.vi)) is not None:
                slots.append(d.slot)
            while (d := via.VipSendDone(link.vi)) is not None:
                link.free.append(d.slot)
            for slot in slots:
                self._post_recv(link, slot, size)
            self._pending_lost = [p for p in self._pending_lost if p[:2] != (fab, ch)]
            link.early.clear()  # (the old connection is gone: only the next one's frames)
            if self._on_session(fab, ch):
                self._run(self._sess(fab, ch).feed(ifa.Disconnected(ch)), fab)

    def _start_control(self) -> None:
        try:
            from hsp_rdma.ha.control import ControlServer
        except ImportError:  # pragma: no cover - control.py ships with the package
            return
        path = self.config.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._audit().start_periodic()  # when the config sets audit_interval
        self._control = ControlServer(path, {"status": lambda _req: self.status(),
                                             "digest": lambda _req: self.digest(),
                                             "audit": lambda req: self._audit().control(req)}
                                      ).start()

    def _audit(self):
        """The node's auditor (``ha/audit.py``), made at its first use."""
        auditor = getattr(self, "auditor", None)
        if auditor is None:
            from hsp_rdma.ha.audit import Auditor
            with self._lock:
                auditor = getattr(self, "auditor", None) or Auditor(self)
                self.auditor = auditor
        return auditor

    def _persist_pmem(self, writes, durable: bool) -> None:
        began = time.monotonic()
        try:
            self.pmem_store.record(writes, durable)
        except OSError as exc:
            raise NodeError(f"P.mem store {self.pmem_store.dir}: cannot write the transaction "
                            f"({exc.strerror}); nothing of it was applied here: free space "
                            "or fix the state directory ([pmem] persist)") from None
        finally:
            self._lock.spent("persist", time.monotonic() - began)

    @property
    def pmem_durable(self) -> bool:
        """Whether a P.mem commit here must be stable in the store before it is acknowledged:
        while this node serves and its peer is not UpToDate (the dirty bitmaps are on)."""
        return self.failover is not None and self.failover.dirty.on

    def audit_now(self) -> int:
        """Start an audit of P.mem and every disk against the standby's (on the active; returns
        at once with the audit's id: ``status()["audit"]`` and, with a failover engine, its
        ``audit_done`` note follow). Raises NodeError on a standby or a pair not in step."""
        if self.role != "active":
            raise NodeError(f"node {self.config.name} is the {self.role}: run the audit on "
                            "the active (it is authoritative), e.g. hsp audit --now there")
        return self._audit().start_run()

    def close(self) -> None:
        """Stop the loop and the threads, close every fabric's NIC, the disks and the store.
        A second call does nothing (its fd numbers may belong to someone else by then)."""
        if self._closed:
            return
        self._closed = True
        self._stop = True
        self._wake()
        for ev in self._reconnect_wake:
            ev.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        for t in list(self._reconnectors.values()):
            t.join(5)
        if self._control is not None:
            self._control.close()
        for port in self._ports:
            port.close()
        for d in self._disks:
            os.close(d.fd)
        if self.pmem_store is not None:
            self.pmem_store.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.close()

    # ---- the application's side -------------------------------------------------------------
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop wakes anyway

    def _commit(self, ch: Channel, message: bytes, commit: str | None,
                timeout: float | None = None, local: Callable[[], None] | None = None,
                after: Callable[[], None] | None = None) -> int:
        """Submit MESSAGE and post its frames from this thread (under the loop's lock: no
        hand-over to the loop, which costs two thread switches per commit), then wait as the
        commit mode says; the txid. LOCAL writes this node's own copy, under the lock right
        before the submit (or the local acknowledgement when serving alone): the copy and
        the stream take transactions in one order whatever threads commit, an audit digests
        at an exact transaction fence, and a refused commit writes nothing. AFTER runs once
        it is submitted, outside the lock, before the wait (a disk write's local flush)."""
        mode = _MODES.get(commit or self.default_commit) or Commit.parse(
            commit or self.default_commit)
        if self._dead:
            raise NodeError(f"{ch.name.lower()}: no commit: {self._dead}; close the node and "
                            "start it again")
        timeout = self.config.timeouts.commit / 1000 if timeout is None else timeout
        deadline = time.monotonic() + timeout
        queued = False
        if self.failover is not None:
            while True:
                with self._lock:
                    try:
                        gate = self.failover.commit_gate(ch, mode, message)
                    except Exception as exc:  # noqa: BLE001 - failover_engine.CommitRefused
                        raise NodeError(f"{ch.name.lower()}: no commit: {exc}") from None
                    if gate == "local":  # serving alone, the peer fenced or outdated
                        if local is not None:
                            local()
                        txid = self.failover.local_txid(ch)
                    else:
                        txid = None
                if gate == "local":
                    if after is not None:
                        after()
                    return txid
                queued = gate == "queue"  # alone: replicated when the peer is back
                if gate != "wait":
                    break
                # the peer was just lost and is being outdated: hold the commit until the
                # fence device answers (then local, or refused), within the commit timeout
                if time.monotonic() >= deadline:
                    raise CommitTimeout(f"{ch.name.lower()}: not committed in {timeout:.1f} s: "
                                        "the peer is lost and the fence device has not "
                                        "answered the outdate yet")
                with self._cv:
                    self._cv.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        with self._lock:
            try:
                txid, actions = self.session.submit(ch, message, mode)
            except ValueError as exc:
                raise NodeError(f"{ch.name.lower()}: {exc}") from exc
            gen = self._session_gen
            if local is not None:
                local()
            self._run(actions)
        if after is not None:
            after()
        if queued:
            return txid
        index = mode - 1  # the watermark: ASYNC sent, RECEIVED received, APPLIED applied
        failover = self.failover
        with self._cv:
            while self._marks[ch][index] < txid:
                if failover is not None and failover.alone_ok:
                    # the peer was lost after this was sent and is now fenced or outdated:
                    # acknowledged here alone (the core sends it again when the peer is back)
                    return txid
                if self._session_gen != gen:
                    raise NodeError(f"{ch.name.lower()} transaction {txid} was not "
                                    f"{mode.name.lower()}: the peer restarted before it "
                                    "acknowledged it")
                if self._dead:
                    raise NodeError(f"{ch.name.lower()} transaction {txid} cannot be "
                                    f"{mode.name.lower()}: {self._dead}; close the node and "
                                    "start it again")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CommitTimeout(
                        f"{ch.name.lower()} transaction {txid} not {mode.name.lower()} in "
                        f"{timeout:.1f} s (the peer has not acknowledged it; link: "
                        f"{self.session.streams[ch].status()['state']})")
                self._cv.wait(left)
        return txid

    def config_change(self, command: dict, commit: str | None = "applied") -> int:
        """Replicate COMMAND (the change the application just made); applied in order on
        the standby through its ``on_config`` callback."""
        return self._commit(Channel.CONFIG, ifa.encode_config(command), commit)

    def sync(self) -> None:
        """Return when everything committed before is applied on the peer (P.mem and every
        disk flushed there too)."""
        self._commit(Channel.PMEM, ifa.encode_pmem([]), "applied")
        for d in self._disks:
            d.flush("applied")
        if not self._disks:
            self._commit(Channel.DISK, ifa.encode_disk([]), "applied")

    # ---- the loop ---------------------------------------------------------------------------
    def _on_via_error(self, fab: int, err) -> None:
        # from the NIC's event thread: hand it to the loop
        if fab >= len(self._ports):
            return
        if err.vi is None and err.code == "PORT_DOWN":
            self._requests.put(("port_down", None, err.message, fab))
        for ch, link in self._ports[fab].links.items():
            if err.vi is not None and link.vi is err.vi:
                self._requests.put(("lost", ch, f"{err.code}: {err.message}", fab))
        self._wake()

    def _loop(self) -> None:
        try:
            self._loop_body()
        except BaseException as exc:  # noqa: BLE001 - told to every waiting commit
            self._dead = f"the node's loop thread died: {type(exc).__name__}: {exc}"
            self._alarm(self._dead)
            with self._cv:
                self._cv.notify_all()

    def _loop_body(self) -> None:
        ep = select.epoll()
        watch = None
        try:
            wake_r = self._wake_r
            ep.register(wake_r, select.EPOLLIN)
            # Only receive queues wake the loop. Send completions free a buffer slot and
            # nothing else (a broken link shows on the receive queue and as a cm event too),
            # so they are taken only when the slots run out (``_send``): no wake-up and no CQ
            # poll per frame out. Slots (credits + 4) are fewer than the provider's send
            # queue holds.
            cqs = {}
            for port in self._ports:
                for ch, link in port.links.items():
                    cq = link.vi.recv_cq
                    cq.arm()
                    cqs[cq.fileno()] = (port.index, ch, cq)
                    ep.register(cq.fileno(), select.EPOLLIN)
            self._lock.limit_s = self._interval_s / 2  # (longer holds: named in a stall)
            watch = self._open_carrier_watch() if len(self._ports) > 1 else None
            if watch is not None:
                ep.register(watch.fileno(), select.EPOLLIN)
            next_hb = time.monotonic()
            with self._lock:
                # the quiet check counts from here (connecting took seconds with no frame)
                self._heard_at = [next_hb] * len(self._ports)
                for port in self._ports:  # anything that completed before the loop ran
                    for ch in CHANNELS:
                        self._reap(port.index, ch, False)
                        self._reap(port.index, ch, True)
            self._run_loop(ep, wake_r, cqs, watch, next_hb)
        finally:
            ep.close()
            if watch is not None:
                watch.close()

    def _run_loop(self, ep, wake_r: int, cqs: dict, watch: CarrierWatch | None,
                  next_hb: float) -> None:
        interval, quiet = self._interval_s, self._quiet_s
        budget = interval / 4  # of frame work per wake-up; the rest waits for the next
        spare = len(self._ports) > 1
        requests = self._requests
        health = [(port.index, port.links[Channel.HEALTH]) for port in self._ports]
        behind: set[int] = set()  # receive queues left with work at the budget's end
        while not self._stop:
            now = time.monotonic()
            if now >= next_hb:
                next_hb = now + interval
                with self._lock:
                    # heart beats already in are taken before the detector judges: a loop
                    # that was held up (or a process starved) must not take its own delay
                    # for the peer's silence
                    for fab, link in health:
                        if link.up:
                            self._reap(fab, Channel.HEALTH, True)
                    self._heartbeat(now)
                    self._check_receives()
            wake_at = next_hb
            if spare:  # the carrier's quiet check runs at its own time too
                with self._lock:
                    if self._check_carrier(now, quiet, budget):
                        behind.update(cqs)  # frames left in: taken at once, budgeted
                due = self._heard_at[self._carrier] + quiet + 0.001
                if due > time.monotonic():  # (past it and still here: no move was possible;
                    wake_at = min(wake_at, due)  # look again at the next heart beat, no spin)
            ready = ep.poll(0.0 if behind else max(0.0, wake_at - time.monotonic()))
            woke = time.monotonic()
            with self._lock:  # one hold per wake-up
                self._check_stall(0.0 if behind else woke - wake_at)
                todo = behind
                behind = set()
                for fd, _ in ready:
                    if fd == wake_r:
                        try:
                            while os.read(wake_r, 4096):
                                pass
                        except BlockingIOError:
                            pass
                    elif watch is not None and fd == watch.fileno():
                        self._carrier_changes(watch)
                    else:
                        cqs[fd][2].take_event()
                        todo.add(fd)
                # (a received CREDIT that pumps DATA finds its send slots in _send, which
                # takes the send completions when none is free)
                until = woke + budget
                for fd in sorted(todo, key=lambda f: cqs[f][1] is not Channel.HEALTH):
                    fab, ch, _cq = cqs[fd]
                    if self._reap(fab, ch, True, until):
                        behind.add(fd)
                if requests.queue:  # (a peek; what comes later wakes the loop again)
                    self._serve_requests()
                if self._pending_lost:
                    self._feed_lost()

    def _open_carrier_watch(self) -> CarrierWatch | None:
        """The kernel's link events for each fabric's netdev (``ha.carrier``): a carrier lost
        there is that fabric's port down, at once, on siw too (no port event of its own).
        ``carrier_watch`` set before start (a test's) is used as it is."""
        if self.carrier_watch is not None:
            return self.carrier_watch
        found = {}
        for port in self._ports:
            dev = carrier.netdev_of(port.config.local)
            if dev is not None:
                found[port.index] = dev
        if not found:
            return None  # (the soft provider on loopback: no carrier to lose)
        try:
            self.carrier_watch = carrier.CarrierWatch(found)
        except OSError as exc:
            self._alarm(f"cannot watch the fabrics' link events ({exc}): a pulled cable is "
                        "found by heart-beat silence or the NIC's own port event only")
            return None
        return self.carrier_watch

    def _carrier_changes(self, watch: CarrierWatch) -> None:
        for fab, netdev, up in watch.changes():
            name = self._ports[fab].config.name
            if up:
                self._port_out[fab] = False
                self._alarm(f"fabric {name}: {netdev} has its carrier again")
            else:
                self._port_down(fab, f"{netdev}: carrier lost")

    def _serve_requests(self) -> None:
        while True:
            try:
                req = self._requests.get_nowait()
            except queue.Empty:
                return
            kind, ch, why = req[:3]
            if kind == "call":
                ch()  # a function handed to the loop (call_in_loop)
                continue
            fab = req[3] if len(req) > 3 else self._carrier
            if kind == "port_down":
                self._port_down(fab, why)
            elif not self._stale(fab, ch):
                self._lose(fab, ch, why)

    def _port_down(self, fab: int, why: str) -> None:
        """The NIC of fabric FAB reported its port down (a pulled cable or a dead switch
        port: rxe and real NICs do, siw does not). With two fabrics that is a break of every
        channel there, taken now rather than after heart-beat silence or the transport's
        retries: the carrier moves at once, and the links are made again in the background
        (the reconnects succeed once the port is back). With one fabric: an alarm only; the
        heart beats and the failure detector judge the peer as before."""
        if len(self._ports) > 1:  # (until the fabric is warm again or its carrier back)
            if self._port_out[fab]:
                return  # already taken (the NIC's port event and its netdev's carrier)
            self._port_out[fab] = True
        self.port_downs += 1
        name = self._ports[fab].config.name
        self._alarm(f"fabric {name}: port down ({why})")
        if len(self._ports) < 2:
            return
        for ch in CHANNELS:
            self._lose(fab, ch, f"port down ({why})")
        self._feed_lost()

    def _stale(self, fab: int, ch: Channel) -> bool:
        """Whether a queued error report of CH's VI is about a connection that is gone: the
        provider puts the VI in ERROR before it reports, and only a reset (``_reset_link``)
        takes it out. A report queued while the active gave a connection up and made it
        again (siw lab: a first connection whose HELLO never came) must not down the new
        one: that downed pmem at the loop's start, ~1 siw pair start in 7."""
        return via.VipQueryVi(self._ports[fab].links[ch].vi)[0] is not via.ViState.ERROR

    def call_in_loop(self, fn: Callable[[], None]) -> None:
        """Run FN in the loop thread, under the lock (from any thread)."""
        self._requests.put(("call", fn, None))
        self._wake()

    def _heartbeat(self, now: float) -> None:
        if self.failover is not None:
            self.failover.tick(now)  # its detector says when to send (send_heartbeat)
        else:
            self.send_heartbeat(now)
        if len(self._ports) > 1:
            self._check_hellos(now)
            self._maybe_failback(now)

    def send_heartbeat(self, now: float, fabric: str | None = None) -> None:
        """One heart beat on FABRIC (by name), or on every fabric."""
        for port in self._ports:
            if fabric is not None and port.config.name != fabric:
                continue
            session = self._health[port.index]
            if session.streams[Channel.HEALTH].link is None:
                continue
            self.heartbeats["sent"] += 1
            count = self.heartbeats["sent"]
            payload = (_HB.pack(now, count) if self.failover is None
                       else self.failover.heartbeat(now, count))
            _, actions = session.submit(Channel.HEALTH, payload, Commit.ASYNC)
            self._run(actions, port.index)

    # ---- completions ------------------------------------------------------------------------
    def _post_recv(self, link: _ChannelLink, slot: int, size: int) -> None:
        # one descriptor per receive slot, made once: a completed descriptor is the
        # caller's again (VIPL) and goes back as it is, its segment unchanged
        d = link.recv_descs.get(slot)
        if d is None:
            d = link.recv_descs[slot] = via.VipDescriptor(segments=[via.DataSegment(
                via.address_of(link.recv_buf, slot * size), link.recv_handle, size)])
            d.slot = slot
        via.VipPostRecv(link.vi, d)

    def _reap(self, fab: int, ch: Channel, recv: bool, until: float | None = None) -> bool:
        """Take the completions on one queue; True when it stopped at UNTIL (monotonic) with
        more perhaps waiting (the loop comes back for them: a stream of frames never holds the
        lock past it, so heart beats go out in time)."""
        link = self._ports[fab].links[ch]
        done = via.VipRecvDone if recv else via.VipSendDone
        vi = link.vi
        while True:
            try:
                d = done(vi)
            except via.VipError as exc:
                self._lose(fab, ch, str(exc))
                return False
            if d is None:
                return False
            if not recv:
                link.free.append(d.slot)
                if d.status & _STATUS_ERROR:
                    self._lose(fab, ch, f"send completed in error "
                               f"({getattr(d, 'reason', '') or hex(d.status)})")
                continue
            self._on_recv(fab, ch, link, d)
            if until is not None and time.monotonic() >= until:
                return True

    def _on_recv(self, fab: int, ch: Channel, link: _ChannelLink, d) -> None:
        if d.status & _STATUS_ERROR:
            link.unposted.append(d.slot)  # posted again by the reset before a reconnect
            self._lose(fab, ch, f"receive completed in error "
                       f"({getattr(d, 'reason', '') or hex(d.status)})")
            return
        size = self._msg_size
        off = d.slot * size
        data = link.recv_buf[off:off + d.length]  # a copy (bytes): the slot is posted again
        try:
            self._post_recv(link, d.slot, size)
        except via.VipError as exc:
            # Not posted, so the reset before the reconnect must post it again. Left out,
            # each message that came just before a loss took one receive with it; a link
            # down to none has its every new connection broken by the peer's first message
            # (rxe lab, pull-fabric-10s: health made and lost every 0.3 s for 2 minutes).
            link.unposted.append(d.slot)
            self._lose(fab, ch, f"cannot re-post a receive: {exc}")
        if data:  # a zero-length message is the peer's kick (see _kick), not a frame
            self._lock.spent("frames", 1)
            if not link.up:  # a runtime reconnect's new connection, not fed Connected yet
                link.early.append(data)
                return
            self._frame_in(fab, ch, data)

    def _frame_in(self, fab: int, ch: Channel, data: bytes) -> None:
        """A frame that came in on fabric FAB: heart beats to that fabric's health session;
        MAIN frames to the main session when FAB carries. On another fabric, a HELLO is the
        peer moving its traffic there (this side follows: ``_switch``); anything else is
        late traffic of an old link, dropped (the re-send covers it)."""
        self._heard_at[fab] = time.monotonic()
        if ch is Channel.HEALTH:
            self._run(self._health[fab].feed(ifa.FrameReceived(ch, data)), fab)
            return
        if fab != self._carrier:
            if not _is_hello(data):
                self.stale_frames += 1
                return
            self._switch(fab, f"the peer moved its traffic to fabric "
                              f"{self._ports[fab].config.name}")
        self._take_frame(ch, data)

    def _take_frame(self, ch: Channel, data: bytes) -> None:
        """A received frame to the session, once the failover engine admits it: one of an
        older epoch is dropped, one of a newer epoch kept (behind it every later frame of
        its channel, in order) until this node's session takes that epoch."""
        if self.failover is not None:
            held = self._held.get(ch)
            if held is not None:
                held.append(data)
                return
            verdict = self.failover.admit(ch, data)
            if verdict is Verdict.REFUSE:
                return
            if verdict is Verdict.HOLD:
                self._held[ch] = [data]
                return
        self._run(self.session.feed(ifa.FrameReceived(ch, data)))

    def release_held(self) -> None:
        """In the loop: the session's epoch changed; frames kept for it go to the session
        (in order; any still of a newer epoch are kept again)."""
        held, self._held = self._held, {}
        for ch, frames in held.items():
            for data in frames:
                self._take_frame(ch, data)

    def _lose(self, fab: int, ch: Channel, why: str) -> None:
        link = self._ports[fab].links[ch]
        if link.up:
            link.up = False
            link.lost = why
            self._pending_lost.append((fab, ch, why))

    def _feed_lost(self) -> None:
        while self._pending_lost:
            fab, ch, why = self._pending_lost.pop(0)
            name = self._ports[fab].config.name
            self._alarm(f"{ch.name.lower()}: link lost on fabric {name}: {why}")
            self._warm_since[fab] = None
            if ch is Channel.HEALTH:
                self._run(self._health[fab].feed(ifa.Disconnected(ch)), fab)
            elif fab == self._carrier:
                other = self._spare()
                if other is not None:
                    self._switch(other, f"{ch.name.lower()} broke on fabric {name}: {why}")
                else:
                    self._run(self.session.feed(ifa.Disconnected(ch)))
            if self.failover is not None:
                self.failover.link_lost(ch, why, name)
            if self._running:
                self._want_reconnect(fab, ch)

    # ---- the carrier (two fabrics) ---------------------------------------------------------
    def _spare(self, stable_s: float = 0.0) -> int | None:
        """A fabric other than the carrier that traffic can move to now (every channel
        connected on it; warm for STABLE_S at least), or None."""
        now = time.monotonic()
        for port in self._ports:
            if port.index != self._carrier and port.warm():
                since = self._warm_since[port.index]
                if stable_s and (since is None or now - since < stable_s):
                    continue
                return port.index
        return None

    def _switch(self, new: int, why: str) -> None:
        """In the loop (or under the lock): every MAIN channel moves to fabric NEW. The
        session gets a new link per channel there (its HELLO tells the peer, which follows,
        and where to resume: the core sends again what the peer had not acknowledged). The
        old carrier's MAIN channels are torn down and made again in the background."""
        old = self._carrier
        if new == old:
            return
        self._carrier = new
        self.fabric_switches += 1
        self._heard_at[new] = time.monotonic()  # its quiet window starts now
        self._hello_due = time.monotonic() + HELLO_DUE_S
        old_port, new_port = self._ports[old], self._ports[new]
        for ch in MAIN:
            link = old_port.links[ch]
            if link.up:
                link.up, link.lost = False, f"traffic moved to fabric {new_port.config.name}"
            self._pending_lost = [p for p in self._pending_lost if p[:2] != (old, ch)]
            self._held.pop(ch, None)  # frames of the old link: the peer sends them again
            self._run(self.session.feed(ifa.Disconnected(ch)))
            if self._running:
                self._want_reconnect(old, ch)
        for ch in MAIN:
            link = new_port.links[ch]
            if not link.up:
                continue  # its reconnect feeds Connected when it is up (it carries now)
            self._run(self.session.feed(ifa.Connected(ch)))
            try:
                self._kick(link)
            except via.VipError as exc:
                self._lose(new, ch, f"broke as traffic moved to it: {exc}")
        text = (f"fabric switch: {old_port.config.name} -> {new_port.config.name}: {why}")
        self._alarm(text)
        if self.on_fabric_switch is not None:
            try:
                self.on_fabric_switch(old_port.config.name, new_port.config.name, why)
            except Exception as exc:  # noqa: BLE001 - the application's hook
                self._alarm(f"on_fabric_switch raised {type(exc).__name__}: {exc}")
        if self._pending_lost:
            self._feed_lost()

    def _check_carrier(self, now: float, quiet: float, budget: float) -> bool:
        """Nothing in on the carrier for QUIET s while another fabric, warm, was heard at
        least one heart-beat interval after the carrier last was: move there. Frames already
        completed on every fabric are taken first (this loop may itself have been held up:
        then every fabric looks quiet, and nothing moves), for BUDGET s at most (the loop's
        per wake-up): each queue still gives at least one frame, and one frame is enough to
        say its fabric was heard. True when frames were left for the loop to take."""
        carrier = self._carrier
        if now - self._heard_at[carrier] <= quiet:
            return False
        until = time.monotonic() + budget
        cut = False
        for port in self._ports:
            for ch in CHANNELS:
                cut |= self._reap(port.index, ch, True, until)
        if self._pending_lost:
            self._feed_lost()
        now = time.monotonic()
        if self._carrier != carrier or now - self._heard_at[carrier] <= quiet:
            return cut
        # a fabric that just came back is no target for a move on silence alone (a cable
        # that flaps would take the traffic each time it is plugged); a break still moves
        other = self._spare(stable_s=FAILBACK_STABLE_S)
        if other is None or self._heard_at[other] - self._heard_at[carrier] < self._interval_s:
            return cut  # nowhere better to go (both quiet: the failure detector's matter)
        self._switch(other, f"nothing came in on fabric {self._ports[carrier].config.name} "
                            f"for {(now - self._heard_at[carrier]) * 1000:.0f} ms")
        return cut

    def _check_hellos(self, now: float) -> None:
        """After a move, a channel whose new link got no HELLO from the peer in HELLO_DUE_S
        (its side of that connection was gone or not yet up: our HELLO went nowhere, and
        nothing else would ever say so) is taken as lost: torn down and made again, and the
        peer's side with it (the re-send covers what it carried)."""
        if self._hello_due is None or now < self._hello_due:
            return
        self._hello_due = None
        port = self._ports[self._carrier]
        for ch in MAIN:
            stream = self.session.streams[ch]
            if port.links[ch].up and stream.link is not None and not stream.link.synced:
                self._lose(port.index, ch, f"no HELLO from the peer in {HELLO_DUE_S:g} s after "
                                           f"traffic moved to fabric {port.config.name}")
        if self._pending_lost:
            self._feed_lost()

    def _note_warm(self, now: float) -> None:
        """Since when each fabric has been warm (every channel connected)."""
        for port in self._ports:
            if port.warm():
                if self._warm_since[port.index] is None:
                    self._warm_since[port.index] = now
                    self._port_out[port.index] = False  # (a port down is news again)
                    if port.index != self._carrier and self.fabric_switches:
                        self._alarm(f"fabric {port.config.name}: warm again (a spare)")
            else:
                self._warm_since[port.index] = None

    def _maybe_failback(self, now: float) -> None:
        """``fabric_failback = "back"``: traffic goes back to x once x has been warm and heard
        for FAILBACK_STABLE_S; decided by the side whose name sorts first (the peer follows
        its HELLO), so the two never pull apart."""
        self._note_warm(now)
        if (self.config.replication.fabric_failback != "back" or self._carrier == 0
                or self.config.name > self.config.peer):
            return
        since = self._warm_since[0]
        quiet = self._quiet_s
        if since is not None and now - since >= FAILBACK_STABLE_S and \
                now - self._heard_at[0] <= quiet:
            self._switch(0, f"fabric {self._ports[0].config.name} is back (fabric_failback = "
                            '"back")')

    # ---- runtime reconnect ------------------------------------------------------------------
    # A channel lost after start (or torn down when traffic left its fabric, or never
    # connected on the spare fabric) is connected again by its fabric's own thread, as at
    # start (the node whose config says active connects, the other listens), until it is back
    # or the node closes; the loop goes on meanwhile (heart beats, the detector, local
    # commits). The core re-sends on the new link what the peer lacks. The failover engine
    # decides what a loss means (heart-beat silence on every fabric), not this thread.
    RECONNECT_PAUSE_S = 0.5

    def _want_reconnect(self, fab: int, ch: Channel | None) -> None:
        if ch is not None:
            self._reconnect.add((fab, ch))
        self._reconnect_wake[fab].set()
        t = self._reconnectors.get(fab)
        if t is None or not t.is_alive():
            t = self._reconnectors[fab] = threading.Thread(
                target=self._reconnect_loop, args=(fab,),
                name=f"hsp-reconnect-{self.config.name}-{self.config.fabrics[fab].name}",
                daemon=True)
            t.start()

    def _reconnect_loop(self, fab: int) -> None:
        """FAB's reconnect thread: never ends before the node closes (an error it did not
        expect is an alarm, and it goes on after a pause)."""
        while not self._stop:
            try:
                self._reconnect_rounds(fab)
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one failure
                with self._lock:
                    self._alarm(f"reconnect on fabric {self.config.fabrics[fab].name}: "
                                f"{type(exc).__name__}: {exc}; trying again")
                time.sleep(self.RECONNECT_PAUSE_S)

    def _doing(self, fab: int, what: str) -> None:
        """FAB's reconnect thread begins WHAT (shown in status with how long it has lasted)."""
        if self._reconnect_doing[fab][0] != what:
            self._reconnect_doing[fab] = (what, time.monotonic())

    def _reconnect_rounds(self, fab: int) -> None:
        connects = self.config.role == "active"
        port = self._ports[fab]
        cfg = port.config
        wake = self._reconnect_wake[fab]
        failed: Channel | None = None  # the channel whose attempt ended the last round
        while not self._stop:
            with self._lock:
                todo = [ch for ch in CHANNELS if (fab, ch) in self._reconnect]
            if failed in todo and len(todo) > 1:  # tried last this time: one channel that
                todo.remove(failed)  # keeps failing never holds the others back
                todo.append(failed)
            if connects and not todo:
                self._doing(fab, "idle: nothing to connect")
                wake.wait(1.0)
                wake.clear()
                continue
            # the listener waits on every channel: a request for one we hold up means the
            # peer lost its side and made it again; ours goes too
            for ch in todo if connects else CHANNELS:
                if self._stop:
                    return
                link = port.links[ch]
                local = via.NetAddress(cfg.local, self._disc(ch))
                try:
                    if connects:
                        # Always from a reset: a failed attempt flushed the receives posted
                        # for it, and a connection made without posting them again came up
                        # with none (siw lab: warm y links with 0 of 32 receives, broken by
                        # the peer's first HELLO when traffic moved there).
                        self._doing(fab, f"resetting {ch.name.lower()} before connecting")
                        self._reset_link(fab, ch)
                        self._doing(fab, f"connecting {ch.name.lower()} to {cfg.peer}")
                        via.VipConnectRequest(link.vi, local,
                                              via.NetAddress(cfg.peer, self._disc(ch)),
                                              RECONNECT_CONNECT_MS)
                    else:
                        if ((fab, ch) in self._reconnect and not link.up and
                                via.VipQueryVi(link.vi)[0] is via.ViState.CONNECTED):
                            # left by traffic that moved away: torn down, so the peer sees
                            # it and connects it again (no frame of the old link can come)
                            self._doing(fab, f"tearing down {ch.name.lower()} (traffic left)")
                            self._reset_link(fab, ch)
                        self._doing(fab, "listening" + (f" ({len(todo)} to connect)" if todo
                                                        else ""))
                        req = via.VipConnectWait(port.nic, local, 50 if todo else 200)
                        if link.up:
                            with self._lock:
                                self._lose(fab, ch, "the peer connected this channel again "
                                                    "(its side broke)")
                                self._feed_lost()
                        self._doing(fab, f"accepting {ch.name.lower()}")
                        self._reset_link(fab, ch)
                        via.VipConnectAccept(req, link.vi)
                except via.VipError as exc:  # (VipTimeout too)
                    if connects or not isinstance(exc, via.VipTimeout):
                        with self._lock:
                            why = f"reconnecting: {exc}"
                            if why != link.lost:  # (each new reason once: the evidence)
                                self._alarm(f"{ch.name.lower()} on fabric {cfg.name}: "
                                            f"{why}")
                            link.lost = why
                    if connects:
                        failed = ch
                        # the fabric is likely down (a pulled cable): the other channels'
                        # attempts would each wait out their timeout too, and one plugged
                        # meanwhile would be tried only after them all (siw lab: x still
                        # connecting ~10 s after its plug). End the round; the next one,
                        # after the pause, starts again with the first channel left.
                        break
                    continue
                self._doing(fab, f"joining {ch.name.lower()} (HELLO)")
                self._rejoined(fab, ch)
            if connects and todo:
                self._doing(fab, "pausing between rounds")
                wake.wait(self.RECONNECT_PAUSE_S)
                wake.clear()

    def _rejoined(self, fab: int, ch: Channel) -> None:
        """CH's new connection on FAB. On a session's link (health, or the carrier): feed
        Connected (our HELLO goes) and what came before it, and wait for the peer's HELLO
        (the loop takes it); none in HELLO_WAIT_S: made again. On the spare fabric: warm,
        nothing to wait for (a HELLO that came with it is the peer moving there: followed)."""
        port = self._ports[fab]
        link = port.links[ch]
        name = port.config.name
        with self._lock:
            link.up, link.lost = True, ""
            if self._on_session(fab, ch):
                self._run(self._sess(fab, ch).feed(ifa.Connected(ch)), fab)
                try:
                    self._kick(link)
                except via.VipError as exc:  # broken as it came up: lost, made again
                    self._lose(fab, ch, f"broke as it came up: {exc}")
                    self._feed_lost()
                    return
            early, link.early = link.early, []
            for data in early:
                self._frame_in(fab, ch, data)
            # The accept may have slept on this VI's receive queue itself (iWARP: the
            # provider waits there for the initiator's first message) and taken the
            # completion event the loop's epoll was armed for: the queue would stay
            # unarmed and the loop deaf to it (siw lab: heart beats on y "silent" for
            # seconds while they came). Arm it again, then take what already completed.
            try:
                link.vi.recv_cq.arm()
            except via.VipError as exc:
                self._lose(fab, ch, f"cannot arm its receive queue: {exc}")
                self._feed_lost()
                return
            self._reap(fab, ch, True)
            if not self._on_session(fab, ch):
                self._reconnect.discard((fab, ch))
                return
        end = time.monotonic() + HELLO_WAIT_S
        while not self._stop and time.monotonic() < end:
            with self._lock:
                if not link.up:
                    return  # lost again: the loss put it back on the list
                if not self._on_session(fab, ch):  # traffic left this fabric meanwhile
                    return
                stream = self._sess(fab, ch).streams[ch]
                if stream.link is not None and stream.link.synced:
                    self._reconnect.discard((fab, ch))
                    self.reconnects += 1
                    self._alarm(f"{ch.name.lower()}: reconnected on fabric {name}")
                    return
            time.sleep(0.01)
        self._reset_link(fab, ch)

    # ---- actions ----------------------------------------------------------------------------
    def _run(self, actions: list, fab: int | None = None) -> None:
        """Carry out every action (of the session whose link is on fabric FAB; None: the
        main session, on the carrier); an I/O failure becomes an event fed after the list."""
        for act in actions:
            kind = type(act)
            try:
                if kind is ifa.Send:
                    self._send(act, fab)
                elif kind is ifa.Deliver:
                    f = self._carrier if fab is None else fab
                    self._run(self._sess(f, act.channel).feed(self._apply(act, f)), fab)
                elif kind is ifa.Progress:
                    with self._cv:
                        self._marks[act.channel] = (act.sent, act.received, act.applied)
                        self._cv.notify_all()
                    if self.failover is not None and self.failover.sync is not None:
                        self.failover.resync_progress()  # acks free room: send more now
                elif kind is ifa.Alarm:
                    self._alarm(act.text)
                elif kind is ifa.PeerRestarted:
                    self._peer_restarted(act.channel)
                    return  # the rest of this list belongs to the old session
            except via.VipError as exc:
                self._lose(self._carrier if fab is None else fab, act.channel, str(exc))
        if self._pending_lost:
            self._feed_lost()

    def _send(self, act: ifa.Send, fab: int | None = None) -> None:
        fab = self._carrier if fab is None else fab
        link = self._ports[fab].links[act.channel]
        if self.before_send is not None:
            self.before_send(act)
        if not link.up:
            return  # the frame stays unacknowledged in the core and goes again on reconnect
        if not link.free:
            self._reap(fab, act.channel, False)
        if not link.free:
            # Credits bound what is in flight (window <= slots), so a send completion is on
            # its way: sleep on the send queue until it comes (GIL released, woken by the
            # completion itself; no polling). Only the peer's transport is waited on, never
            # its software or our own loop, so holding the lock cannot deadlock.
            waited = time.monotonic()
            try:
                d = via.VipSendWait(link.vi, SEND_SLOT_WAIT_MS)
            except via.VipTimeout:
                self._lose(fab, act.channel, f"no send completion in {SEND_SLOT_WAIT_MS} ms")
                return
            finally:
                self._lock.spent("send_wait", time.monotonic() - waited)
            link.free.append(d.slot)
            if d.status & _STATUS_ERROR:
                self._lose(fab, act.channel, f"send completed in error "
                           f"({getattr(d, 'reason', '') or hex(d.status)})")
                return
            self._reap(fab, act.channel, False)
        size = self._msg_size
        slot = link.free.pop()
        off = slot * size
        link.send_buf[off:off + len(act.data)] = act.data
        self._post_send(link, slot, len(act.data))

    def _apply(self, act: ifa.Deliver, fab: int = 0):
        ch = act.channel
        try:
            if ch == Channel.OAM:
                kind, body = act.message[:1], act.message[1:]
                if kind == bytes([OAM_SYSTEM]):
                    event = json.loads(body)
                    if isinstance(event, dict) and "audit" in event:
                        self._audit().on_message(event)  # ha/audit.py: answers, results
                    else:
                        self.oam.keep(event)
                else:
                    self.oam.inbox.put(bytes(body))
                return ifa.Applied(ch, act.txid)
            if ch == Channel.HEALTH:
                self.heartbeats["received"] += 1
                now = time.monotonic()
                self._hb_heard[fab] = now
                if self.failover is not None:
                    self.failover.heard(act.message, now, self._ports[fab].config.name)
                return ifa.Applied(ch, act.txid)
            kind, items = ifa.decode_tx(act.message, len(self._pmem), self._disk_sizes)
            self._lock.spent("applied", 1)
            if kind is ifa.TxKind.PMEM:
                if self.pmem_store is not None:  # first: a store that fails applies nothing
                    self._persist_pmem(items, False)
                for off, data in items:
                    self._pmem[off:off + len(data)] = data
            elif kind is ifa.TxKind.DISK_WRITE or kind is ifa.TxKind.DISK_WRITE_FLUSH:
                for disk, off, data in items:
                    os.pwrite(self._disks[disk].fd, data, off)
                    self._disks[disk].writes += 1
                    self._disks[disk].bytes += len(data)
                if kind is ifa.TxKind.DISK_WRITE_FLUSH:
                    for disk in {d for d, _, _ in items}:
                        stable(self._disks[disk].fd)
            elif kind is ifa.TxKind.DISK_FLUSH:
                stable(self._disks[items[0]].fd)
            elif kind is ifa.TxKind.AUDIT:
                self._audit().answer(items[0])  # digest our copy here, in stream order
            elif kind is ifa.TxKind.CONFIG:
                if self.on_config is None:
                    raise NodeError("no configuration apply callback is registered "
                                    "(Node(on_config=...))")
                self.on_config(items[0])
                self.config_applied = act.txid
            return ifa.Applied(ch, act.txid)
        except Exception as exc:  # noqa: BLE001 - any failure to apply is reported, not raised
            if ch == Channel.CONFIG:
                self.inconsistent = True
            self._report({"alarm": "apply_failed", "channel": ch.name.lower(),
                          "txid": act.txid, "why": str(exc)})
            return ifa.ApplyFailed(ch, act.txid, str(exc))

    def _alarm(self, text: str) -> None:
        self.alarms.append(text)
        del self.alarms[:-32]
        if self.on_alarm is not None:
            try:
                self.on_alarm(text)
            except Exception:  # noqa: BLE001, S110 - the application's hook; the alarm stands
                pass

    def _check_receives(self) -> None:
        """Each heart beat (under the lock): a connected link whose VI holds fewer receives
        than its credits lost one, and the peer's next messages past those left break it
        (VIPL: a message with no receive posted). Two beats in a row (one could catch a
        connection being made) raise one alarm; the count back to its credits ends it."""
        credits = self.config.replication.credits
        for port in self._ports:
            for ch, link in port.links.items():
                posted = len(link.vi.recvq)
                if not link.up or posted >= credits:
                    link.short = 0
                    continue
                link.short += 1
                if link.short == 2:
                    self._alarm(f"{ch.name.lower()} on fabric {port.config.name}: {posted} of "
                                f"{credits} receives posted on a connected link: a receive "
                                "was lost, and a burst of the peer's messages larger than "
                                "those left will break the link")

    def _check_stall(self, late_s: float) -> None:
        """Under the lock, once per wake-up: the loop woke LATE_S after it meant to; threads
        (this one included) may have held the lock long since the last look. Past one
        heart-beat interval, heart beats stopped that long (the peer may take that for a
        death): counted, and an alarm names where the time went."""
        holds = self._lock.long
        if not holds and late_s <= self._interval_s:
            return  # (the usual case, once per wake-up: nothing to look at)
        self._lock.long = []
        worst = max([late_s, *(held for _name, held, _work in holds)])
        if worst <= self._interval_s:
            return
        self.loop_stalls += 1
        self.longest_stall_ms = max(self.longest_stall_ms, worst * 1000)
        now = time.monotonic()
        # an alarm when it was long enough for the carrier's quiet check (or the peer's) to
        # fire, at most one a second (a starved guest stalls often: the count says how often)
        if worst < self._quiet_s or now - self._stall_alarm_at < 1.0:
            return
        self._stall_alarm_at = now
        where = [f"thread {name} held the node's lock {held * 1000:.0f} ms{_work_said(work)}"
                 for name, held, work in holds]
        if late_s > self._interval_s:
            where.append(f"the loop woke {late_s * 1000:.0f} ms late: the process itself was "
                         "held up (stopped, starved of CPU, or its VM paused)")
        self._alarm(f"the node's loop was held up {worst * 1000:.0f} ms (its heart beats "
                    f"stopped meanwhile; {self.loop_stalls} stall(s) of over one heart-beat "
                    f"interval so far): {'; '.join(where)}")

    def _report(self, event: dict, keep: bool = False) -> None:
        """Tell the peer on oam (the node's own message, not the application's). KEEP: a
        message the peer must get (a resync's request or end): queued in the core while the
        link is down and sent when it is back; otherwise (an alarm) dropped then."""
        stream = self.session.streams[Channel.OAM]
        if stream.link is None and not keep:
            return
        _, actions = self.session.submit(Channel.OAM, bytes([OAM_SYSTEM]) +
                                         json.dumps(event).encode(), Commit.ASYNC)
        self._run(actions)

    # ---- status -----------------------------------------------------------------------------
    def digest(self) -> dict:
        """CRC32C of P.mem and of every disk, taken between two transactions."""
        with self._lock:
            return {"pmem": crc32c(self._pmem),
                    "disks": {d.config.name: d.digest() for d in self._disks},
                    "pmem_last_applied": self.session.streams[Channel.PMEM].local_applied,
                    "disk_last_applied": self.session.streams[Channel.DISK].local_applied}

    def _channel_status(self, ch: Channel) -> dict:
        st = self._sess(self._carrier, ch).streams[ch].status()
        link = self._port.links[ch] if self._port else None
        if link is not None:
            # The receives on the VI's queue (posted, or completed and not yet taken): the
            # link's credits when healthy. Fewer on a connected link is a lost receive, which
            # breaks the link at the peer's next message when none is left.
            st["receives_posted"] = len(link.vi.recvq)
        if link is None or not link.up:
            st["state"] = "error" if link is not None and link.lost else "connecting"
            if link is not None and link.lost:
                st["error"] = link.lost
        return st

    def _fabric_status(self, i: int, f, now: float) -> dict:
        port = self._ports[i] if i < len(self._ports) else None
        ups = [ln.up for ln in port.links.values()] if port else []
        heard = self._hb_heard[i]
        doing, since = self._reconnect_doing[i]
        return {"name": f.name, "rdma_device": f.rdma_device,
                "state": "up" if ups and all(ups) else ("connecting" if any(ups) else "down"),
                "carrier": bool(port) and i == self._carrier,
                "active": bool(port) and i == self._carrier,
                "heard_ms_ago": None if heard is None else round((now - heard) * 1000, 1),
                # the reconnect thread: the channels it has to connect, what it is doing
                # and for how long (a step that lasts is where it is blocked)
                "reconnect": {"pending": sorted(ch.name.lower() for fab, ch in self._reconnect
                                                if fab == i),
                              "doing": doing, "for_ms": round((now - since) * 1000, 1)}}

    def status(self) -> dict:
        with self._lock:
            s = self.session.streams
            now = time.monotonic()
            pm = s[Channel.PMEM]
            dk = s[Channel.DISK]
            return {
                "node": self.config.name, "peer": self.config.peer, "role": self.role,
                "epoch": self.session.epoch,
                # the contract's "config" is the replicated configuration's state (below)
                "config_file": str(self.config.source) if self.config.source else None,
                "uptime_s": round(time.monotonic() - self._started, 3),
                "fabrics": [self._fabric_status(i, f, now)
                            for i, f in enumerate(self.config.fabrics)],
                "fabric_switches": self.fabric_switches,
                "port_downs": self.port_downs,
                "loop_stalls": self.loop_stalls,
                "longest_stall_ms": round(self.longest_stall_ms, 1),
                "stale_frames": self.stale_frames,
                "channels": {ch.name.lower(): self._channel_status(ch) for ch in CHANNELS},
                "pmem": {"size": len(self._pmem),
                         "in_flight": pm.next_txid - 1 - pm.received_txid,
                         "last_committed": pm.next_txid - 1,
                         "last_applied": max(pm.local_applied, pm.applied_txid),
                         **({"persisted": {**self.pmem_store.status(),
                                           "restored": self.pmem_restored}}
                            if self.pmem_store is not None else {})},
                "disks": {d.config.name: {"path": str(d.path), "size": d.size,
                                          "writes": d.writes, "bytes": d.bytes,
                                          "in_flight": dk.next_txid - 1 - dk.received_txid,
                                          "last_applied": max(dk.local_applied,
                                                              dk.applied_txid)}
                          for d in self._disks},
                "config": {"applied": self.config_applied,
                           "inconsistent": self.inconsistent
                           or s[Channel.CONFIG].inconsistent},
                "heartbeats": dict(self.heartbeats),
                "alarms": list(self.alarms),
                **({"failover": self.failover.status()} if self.failover is not None else {}),
                **({"audit": self.auditor.status()} if getattr(self, "auditor", None) else {}),
            }
