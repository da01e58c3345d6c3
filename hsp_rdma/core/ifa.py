"""Interface A as a sans-IO protocol: framed channels with credits, fragments, acks, re-sends.

No sockets, clocks or threads: the engine (``hsp_rdma.ha.node``) feeds what happened
(``Connected``, ``Disconnected``, ``FrameReceived``, ``Applied``, ``ApplyFailed``) and carries
out the actions that come back (``Send``, ``Deliver``, ``Progress``, ``Alarm``), as in
``core/gso.py``. One ``Session`` per peer (n+1: one per protected active), one ``Stream`` per
channel inside it, one ``Link`` per connection of a stream.

Session, stream, link. What must survive a reconnect or a move to the other fabric lives in the
``Stream`` (sequence numbers, transaction ids, the unacknowledged queue, the reassembly buffer,
the receive and apply positions); what belongs to one queue pair lives in its ``Link``
(credits, the per-link frame counter). A new connection, on fabric x again or on y, gets a new
Link; the Stream re-sends what the peer had not acknowledged, so the standby applies each
transaction exactly once whatever fabric carried it. Sequence numbers are per pair session and
channel, never per fabric.

Frames (``core/frames.py`` header; ``type`` is one of ``FrameType``). Every payload starts with
the link-control block ``CTRL`` = (link_seq u32, grant u32, ack_seq u64, ack_applied u64):
- ``link_seq`` counts frames on this link from 1; RC delivers each once and in order, so any
  other value is a replay or a gap (refused, counted; nothing from it is used).
- ``grant``: receive credits returned (piggy-backed on every frame).
- ``ack_seq``: the highest stream sequence received in order (cumulative; prunes the peer's
  unacknowledged queue and answers commit mode ``received``).
- ``ack_applied``: the highest transaction id applied (answers commit mode ``applied``).
``HELLO`` (first frame on every new link, both ways) carries CTRL and the session's
``incarnation`` (u64, random per Session): its ack_seq tells the peer where to resume, so
re-sent frames start exactly after what arrived; an incarnation other than the one the peer
knew says this side is a new process (it restarted): the peer's stream emits
``PeerRestarted`` and takes nothing more from that link (its engine starts a new session). ``CREDIT`` carries
only CTRL (explicit credits / acks). ``DATA`` carries CTRL, then ``DATA_HDR`` (txid u64,
flags u8), then one fragment of a message; a message is the fragments from ``FIRST`` to
``LAST``, each its own stream sequence number. ``WANT_RECEIVED`` / ``WANT_APPLIED`` on the last
fragment ask for an immediate ack (commit modes received / applied); ``async`` asks for none.
The received ack leaves before the message is applied (it precedes the ``Deliver``); the
applied ack leaves when ``Applied`` is fed.

Credits. Each side posts ``credits`` receives per channel link (the engine re-posts a buffer
as soon as its completion is fed in), so a sender starts with ``credits`` and spends one per
frame of any type. DATA may use all but the last credit; the last one is kept for a frame
that *returns* credits (CREDIT), so both sides can never be stuck with zero credits each. A
CREDIT frame goes out when an ack is wanted, when the credits to return reach half the window,
or when the peer (by our exact count: window + granted - frames received) holds none; since
every frame returns all pending credits, credits cannot circulate one at a time for ever. With
credits a send always finds a posted receive, so the VIA rule "an empty receive queue breaks
the connection" never fires in normal operation.

Bad input. A received buffer is checked in this order and refused with one cause (counted per
stream in ``refused``): ``truncated``, ``bad_magic``, ``too_big`` (header length beyond a receive
buffer), ``bad_length``, ``bad_crc``, ``version``, ``wrong_channel``, ``bad_type``,
``reflected`` (a frame of this node's own direction: its type's top bit says which side sent
it, when the sessions were given sides), ``wrong_epoch`` (a DATA frame of another epoch on
any channel but ``health``), ``replayed`` / ``out_of_order`` (link_seq, then stream sequence),
``bad_ack``, ``bad_fragment``, ``too_big`` (a message beyond ``max_message``). Nothing is
applied from a refused frame. A refusal that leaves a stream unable to continue (a frame of
the right link order that breaks fragment order) also emits ``Alarm``; the engine reports it
on oam and reconnects the channel, and the re-send repairs it.

Transactions. Only a complete message is delivered (``Deliver``), in transaction-id order,
once. The message bodies (P.mem writes, disk writes and flushes, configuration commands) are
encoded by ``encode_pmem`` / ``encode_disk`` / ``encode_config`` (and an audit's digests by
``encode_audit``: it travels on the channel it audits, so it is a fence in that stream) and
decoded with bounds checks;
the engine applies a delivered transaction as one step of its loop, so a failover or switch-over
(same loop) never sees half of one.
"""

from __future__ import annotations

import enum
import json
import random
import struct
from collections import deque
from dataclasses import dataclass, field

from hsp_rdma.core import frames as _frames
from hsp_rdma.core.frames import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_EPOCH,
    PROTOCOL_VERSION,
    Channel,
    crc32c,
)

CTRL = struct.Struct("<IIQQ")  # link_seq, grant, ack_seq, ack_applied
DATA_HDR = struct.Struct("<QB")  # txid, flags
INCARNATION = struct.Struct("<Q")  # after CTRL in a HELLO: the sending session's incarnation
OVERHEAD = HEADER_SIZE + CTRL.size + DATA_HDR.size  # bytes of a DATA frame besides the chunk
_CRC_OFFSET = HEADER_SIZE - 4
_HEAD = struct.Struct(HEADER.format[:-1])  # the header up to its crc field
_ZERO_CRC = b"\0\0\0\0"
_DATA_AT = HEADER_SIZE + CTRL.size  # where DATA_HDR starts in a frame
_CHUNK_AT = _DATA_AT + DATA_HDR.size
# the compiled CRC straight (frames.crc32c's dispatch is one more call per use), called as
# _crc(data, crc, _HW): _HW picks its SSE4.2 path or its slice-by-8 table path (same value)
_crc = _frames._crc32c_native if _frames.NATIVE_CRC32C else (lambda d, c=0, _hw=True: crc32c(d, c))
_HW = True
MIN_CREDITS = 4
DEFAULT_MAX_MESSAGE = 64 << 20


class FrameType(enum.IntEnum):
    HELLO = 1
    CREDIT = 2
    DATA = 3


class Flag(enum.IntFlag):
    FIRST = 1
    LAST = 2
    WANT_RECEIVED = 4
    WANT_APPLIED = 8


class Commit(enum.IntEnum):
    """Commit modes, DRBD's protocols: ASYNC = A (sent), RECEIVED = B, APPLIED = C."""

    ASYNC = 1
    RECEIVED = 2
    APPLIED = 3

    @classmethod
    def parse(cls, name: str | Commit) -> Commit:
        if isinstance(name, Commit):
            return name
        try:
            return cls[str(name).upper()]
        except KeyError:
            raise ValueError(f"commit mode {name!r} is not one of async, received, applied") from None


def use_crc32c_hardware(hardware: bool) -> None:
    """Which path of the compiled CRC32C every frame's CRC takes from now on: the CPU's SSE4.2
    instruction (the default) or the slice-by-8 table. Both give the same value; the engine
    picks the faster one it measured (``ha.image.crc32c_hardware``): a QEMU TCG guest
    announces SSE4.2 but emulates its crc32 instruction, measured there at 26 MB/s against
    the table's hundreds (a 4 KiB frame's CRC 150 us, a 64 KiB frame's 2.5 ms, per side)."""
    global _HW
    _HW = bool(hardware)


# Flag and Commit as plain ints on the per-frame paths (enum operators cost a call each)
_FIRST, _LAST, _WANT_RECEIVED, _WANT_APPLIED = 1, 2, 4, 8
_WANT = {1: 0, 2: _WANT_RECEIVED, 3: _WANT_APPLIED}  # Commit -> flag on the last fragment
_HELLO, _CREDIT, _DATA = 1, 2, 3
_DIR = 0x8000  # in a frame's type: sent by the session of side 1 (see Session's ``side``)
FRAME_DIR = _DIR

CAUSES = ("truncated", "bad_magic", "too_big", "bad_length", "bad_crc", "version",
          "wrong_channel", "bad_type", "reflected", "wrong_epoch", "replayed", "out_of_order", "bad_ack",
          "bad_fragment")


# ---- events (fed in) ------------------------------------------------------------------------
@dataclass(slots=True)
class Connected:
    """A new link of CHANNEL is up with ``credits`` receives posted on each side."""

    channel: Channel


@dataclass(slots=True)
class Disconnected:
    """CHANNEL's link broke (VI in ERROR, flushed completion, cm event); unacked data stays."""

    channel: Channel


@dataclass(slots=True)
class FrameReceived:
    """A receive completed on CHANNEL's link with DATA (its buffer is re-posted by the engine)."""

    channel: Channel
    data: bytes | bytearray | memoryview


@dataclass(slots=True)
class Applied:
    """The engine applied transaction TXID of CHANNEL (fed right after its ``Deliver``)."""

    channel: Channel
    txid: int


@dataclass(slots=True)
class ApplyFailed:
    """The engine could not apply TXID: the standby is inconsistent from here on."""

    channel: Channel
    txid: int
    why: str


Event = Connected | Disconnected | FrameReceived | Applied | ApplyFailed


# ---- actions (carried out by the engine) ----------------------------------------------------
@dataclass(slots=True)
class Send:
    """Post DATA as one send on CHANNEL's current link (a credit was already spent)."""

    channel: Channel
    data: bytes


@dataclass(slots=True)
class Deliver:
    """A complete message TXID arrived: apply it, then feed ``Applied`` (or ``ApplyFailed``).

    Always the last action of its list. A transaction asking for ``received`` has its ack
    (and whatever else ``pump`` sends) before the Deliver in the same list, so it leaves
    before the apply; the frames due after the apply (credits, applied acks) come from
    ``Applied``.
    """

    channel: Channel
    txid: int
    message: bytes


@dataclass(slots=True)
class Progress:
    """CHANNEL's sender watermarks moved: transactions up to each id are sent / received /
    applied by the peer. The engine wakes the commits waiting on them."""

    channel: Channel
    sent: int
    received: int
    applied: int


@dataclass(slots=True)
class Alarm:
    channel: Channel
    cause: str
    text: str


@dataclass(slots=True)
class PeerRestarted:
    """CHANNEL's peer opened this link with another incarnation than the one this session
    knew: the peer is a new process (it restarted), its numbering starts again and nothing
    this session keeps for it means anything. The engine starts a new Session for the pair
    and connects every channel again."""

    channel: Channel


Action = Send | Deliver | Progress | Alarm | PeerRestarted


class Refused(Exception):
    def __init__(self, cause: str, text: str = ""):
        super().__init__(text or cause)
        self.cause = cause


# ---- per-link state (one queue pair) --------------------------------------------------------
@dataclass(slots=True)
class Link:
    window: int  # receives posted per side at connect
    credits: int  # sends we may still post
    to_return: int = 0  # receives consumed since we last granted
    granted: int = 0  # credits we returned in total
    consumed: int = 0  # frames of this link taken (each cost the peer one credit)
    sent: int = 0  # frames sent on this link (link_seq of the last)
    received: int = 0  # frames accepted in link order
    synced: bool = False  # the peer's HELLO arrived
    ack_wanted: bool = False

    def peer_credits(self) -> int:
        """What the peer may still send us, by exact count (an upper bound while in flight)."""
        return self.window + self.granted - self.consumed


@dataclass(slots=True)
class _Pending:
    seq: int
    txid: int
    flags: int
    chunk: bytes


@dataclass(slots=True)
class Stats:
    sent_msgs: int = 0
    sent_bytes: int = 0
    recv_msgs: int = 0
    recv_bytes: int = 0
    frames_sent: int = 0
    frames_resent: int = 0
    refused: dict[str, int] = field(default_factory=dict)


class Stream:
    """One channel of one pair session: the sending half and the receiving half."""

    def __init__(self, channel: Channel, session: Session):
        self.channel = Channel(channel)
        self._ch = int(self.channel)
        self._epochless = self.channel == Channel.HEALTH  # heart beats: any epoch (see _accept)
        self.session = session
        self.link: Link | None = None
        self.peer_incarnation: int | None = None  # the peer's, from its first HELLO
        self.stats = Stats()
        # sending half
        self.next_seq = 1
        self.next_txid = 1
        self.queue: deque[_Pending] = deque()  # not yet sent on the current link
        self.unacked: deque[_Pending] = deque()  # sent, not yet acknowledged as received
        self.ends: deque[tuple[int, int]] = deque()  # (txid, seq of its LAST), not yet acked
        self.sent_txid = 0
        self.received_txid = 0
        self.applied_txid = 0
        self.peer_ack_seq = 0
        self.max_seq_sent = 0
        # receiving half
        self.recv_next = 1  # the stream sequence expected next
        self.partial: tuple[int, int, list[bytes], int] | None = None  # txid, flags, chunks, size
        self.delivered_txid = 0
        self.local_applied = 0  # highest txid we applied (acked to the peer)
        self.want_applied: set[int] = set()
        self.inconsistent = False

    # ---- sending ---------------------------------------------------------------------------
    def submit(self, message: bytes | bytearray | memoryview, commit: Commit) -> int:
        """Queue MESSAGE as one transaction; its txid. Frames go out on ``pump``."""
        size = len(message)
        if size > self.session.max_message:
            raise ValueError(f"a message of {size} bytes exceeds the limit of "
                             f"{self.session.max_message}: split the transaction")
        chunk = self.session.chunk
        txid = self.next_txid
        self.next_txid += 1
        want = _WANT[commit if type(commit) is Commit else Commit.parse(commit)]
        if size <= chunk:  # one fragment: the common case, no slicing
            seq = self.next_seq
            self.queue.append(_Pending(seq, txid, _FIRST | _LAST | want, bytes(message)))
            self.ends.append((txid, seq))
            self.next_seq = seq + 1
        else:
            mv = memoryview(message)
            offsets = range(0, size, chunk)
            last = len(offsets) - 1
            for i, off in enumerate(offsets):
                flags = (_FIRST if i == 0 else 0) | (_LAST | want if i == last else 0)
                self.queue.append(_Pending(self.next_seq, txid, flags,
                                           bytes(mv[off:off + chunk])))
                if i == last:
                    self.ends.append((txid, self.next_seq))
                self.next_seq += 1
        self.stats.sent_msgs += 1
        self.stats.sent_bytes += size
        return txid

    def _ctrl(self, link: Link) -> bytes:
        link.sent += 1
        link.credits -= 1
        grant, link.to_return = link.to_return, 0
        link.granted += grant
        link.ack_wanted = False
        return CTRL.pack(link.sent, grant, self.recv_next - 1, self.local_applied)

    def _frame(self, ftype: int, seq: int, body: bytes) -> bytes:
        head = _HEAD.pack(MAGIC, PROTOCOL_VERSION, self._ch, ftype | self.session.dir,
                          self.session.epoch, seq,
                          len(body))
        hw = _HW
        crc = _crc(body, _crc(_ZERO_CRC, _crc(head, 0, hw), hw), hw)
        return b"".join((head, crc.to_bytes(4, "little"), body))

    def pump(self) -> list[Action]:
        """Frames the credits allow now, and an explicit CREDIT frame when one is due."""
        link = self.link
        out: list[Action] = []
        if link is None:
            return out
        sent_before = self.sent_txid
        queue = self.queue
        if queue and link.synced and link.credits >= 2:
            stats = self.stats
            ch = self.channel
            while queue and link.credits >= 2:
                p = queue.popleft()
                body = b"".join((self._ctrl(link), DATA_HDR.pack(p.txid, p.flags), p.chunk))
                out.append(Send(ch, self._frame(_DATA, p.seq, body)))
                self.unacked.append(p)
                stats.frames_sent += 1
                if p.seq <= self.max_seq_sent:
                    stats.frames_resent += 1
                else:
                    self.max_seq_sent = p.seq
                if p.flags & _LAST:
                    self.sent_txid = p.txid
        if link.credits >= 1 and (link.ack_wanted or link.to_return > 0 and (
                link.to_return >= max(2, link.window // 2) or link.peer_credits() <= 0)):
            out.append(Send(self.channel, self._frame(_CREDIT, 0, self._ctrl(link))))
        if self.sent_txid != sent_before:
            out.append(self._progress())
        return out

    def _progress(self) -> Progress:
        return Progress(self.channel, self.sent_txid, self.received_txid, self.applied_txid)

    def _on_acks(self, ack_seq: int, ack_applied: int) -> bool:
        moved = False
        if ack_seq > self.peer_ack_seq:
            self.peer_ack_seq = ack_seq
            while self.unacked and self.unacked[0].seq <= ack_seq:
                self.unacked.popleft()
            while self.ends and self.ends[0][1] <= ack_seq:
                self.received_txid = self.ends.popleft()[0]
                moved = True
        if ack_applied > self.applied_txid:
            self.applied_txid = ack_applied
            moved = True
        return moved

    # ---- links -----------------------------------------------------------------------------
    def connected(self) -> list[Action]:
        window = self.session.credits
        self.link = link = Link(window=window, credits=window)
        # Everything not acknowledged goes again, in order, after the peer's HELLO says where
        # it stands; frames it already has are dropped then (their seq <= its ack_seq).
        if self.unacked:
            self.queue.extendleft(reversed(self.unacked))
            self.unacked.clear()
        return [Send(self.channel, self._frame(_HELLO, 0, self._ctrl(link)
                                               + INCARNATION.pack(self.session.incarnation)))]

    def disconnected(self) -> list[Action]:
        self.link = None
        return []

    # ---- receiving -------------------------------------------------------------------------
    def _refuse(self, cause: str) -> None:
        self.stats.refused[cause] = self.stats.refused.get(cause, 0) + 1

    def received(self, data: bytes | bytearray | memoryview) -> list[Action]:
        out: list[Action] = []
        try:
            out.extend(self._accept(self.link, data))
        except Refused as r:
            self._refuse(r.cause)
            if self.link is not None:
                # a live RC link carries each frame once, intact and in order: anything else
                # means the link cannot be trusted; the engine reconnects and the re-send heals
                out.append(Alarm(self.channel, r.cause, f"{self.channel.name.lower()}: frame "
                                 f"refused ({r}); reconnect the channel"))
        if out and isinstance(out[-1], Deliver):
            # Commit mode received: the ack goes out before the Deliver is carried out, so
            # the peer's "received" never waits for our apply. Otherwise the frames due are
            # built when Applied comes (right after the Deliver): an engine that feeds
            # Applied while carrying out this list still posts them in order.
            if self.link is not None and self.link.ack_wanted:
                deliver = out.pop()
                out.extend(self.pump())
                out.append(deliver)
            return out
        out.extend(self.pump())
        return out

    def _accept(self, link: Link | None, data) -> list[Action]:
        session = self.session
        buf = data if type(data) is bytes else bytes(data)
        n = len(buf)
        if n < HEADER_SIZE:
            raise Refused("truncated")
        magic, version, channel, ftype, epoch, seq, length, crc = HEADER.unpack_from(buf)
        if magic != MAGIC:
            raise Refused("bad_magic")
        if length > session.buffer_size - HEADER_SIZE:
            raise Refused("too_big")
        if n - HEADER_SIZE < length:
            raise Refused("truncated")
        if n - HEADER_SIZE > length:
            raise Refused("bad_length")
        mv = memoryview(buf)
        hw = _HW
        if _crc(mv[HEADER_SIZE:], _crc(_ZERO_CRC, _crc(mv[:_CRC_OFFSET], 0, hw), hw), hw) != crc:
            raise Refused("bad_crc")
        if version != PROTOCOL_VERSION:
            raise Refused("version")
        if channel != self.channel:
            raise Refused("wrong_channel")
        ftype ^= session.peer_dir
        if ftype != _DATA and ftype != _CREDIT and ftype != _HELLO:
            raise Refused("reflected" if session.dir != session.peer_dir and (ftype ^ _DIR) in (
                _DATA, _CREDIT, _HELLO) else "bad_type")
        # The epoch guards what a frame writes: a replication DATA frame of another epoch is
        # refused. HELLO and CREDIT frames (link set-up and flow control) and the heart beats
        # of HEALTH (whose payload carries the sender's epoch for the failure detector) pass
        # whatever their epoch: that is how two nodes of different epochs meet and learn it.
        if epoch != session.epoch and ftype == _DATA and not self._epochless:
            raise Refused("wrong_epoch")
        if length < CTRL.size or (ftype == _DATA and length < CTRL.size + DATA_HDR.size):
            raise Refused("bad_length")
        link_seq, grant, ack_seq, ack_applied = CTRL.unpack_from(buf, HEADER_SIZE)
        if link is None:
            raise Refused("out_of_order", "no link is up on this channel")
        if link_seq != link.received + 1:
            raise Refused("replayed" if link_seq <= link.received else "out_of_order")
        if (ftype == _HELLO) == link.synced:
            raise Refused("out_of_order", "HELLO opens a link, once")
        if ftype == _HELLO:
            if length < CTRL.size + INCARNATION.size:
                raise Refused("bad_length")
            incarnation = INCARNATION.unpack_from(buf, HEADER_SIZE + CTRL.size)[0]
            if self.peer_incarnation is None:
                self.peer_incarnation = incarnation
            elif incarnation != self.peer_incarnation:
                # a new process at the other end: its acks and numbers are not ours to judge
                self.peer_incarnation = incarnation
                return [PeerRestarted(self.channel)]
        if ack_seq >= self.next_seq or ack_applied >= self.next_txid or grant > link.window:
            raise Refused("bad_ack")
        # A frame of this link, in order: the peer spent a credit on it, we return one.
        link.received += 1
        link.consumed += 1
        link.to_return += 1
        link.credits += grant
        out: list[Action] = []
        if (ack_seq > self.peer_ack_seq or ack_applied > self.applied_txid) and \
                self._on_acks(ack_seq, ack_applied):
            out.append(self._progress())
        if ftype == _HELLO:
            link.synced = True
            # the peer has everything up to ack_seq: drop it from what goes again
            while self.queue and self.queue[0].seq <= ack_seq:
                self.queue.popleft()
            return out
        if ftype == _CREDIT:
            if seq != 0:
                raise Refused("bad_fragment", "a CREDIT frame carries sequence 0")
            return out
        if out:
            return out + self._data(seq, buf)
        return self._data(seq, buf)

    def _data(self, seq: int, buf: bytes) -> list[Action]:
        if seq < self.recv_next:
            raise Refused("replayed")
        if seq > self.recv_next:
            raise Refused("out_of_order")
        txid, flags = DATA_HDR.unpack_from(buf, _DATA_AT)
        chunk = buf[_CHUNK_AT:]
        partial = self.partial
        if flags & ~0xF:
            raise Refused("bad_fragment", f"unknown flags 0x{flags:x}")
        if flags == _FIRST | _LAST | flags & 0xC and partial is None:
            # a whole message in one frame: the common case, no reassembly
            if txid != self.delivered_txid + 1:
                raise Refused("bad_fragment", f"transaction {txid} starts out of order "
                              f"(delivered up to {self.delivered_txid})")
            size = len(chunk)
            if size > self.session.max_message:
                raise Refused("too_big")
            self.recv_next += 1
            return self._complete(txid, flags, size, chunk)
        if flags & _FIRST:
            if partial is not None or txid != self.delivered_txid + 1:
                raise Refused("bad_fragment", f"transaction {txid} starts out of order "
                              f"(delivered up to {self.delivered_txid})")
            partial = (txid, flags, [], 0)
        elif partial is None or partial[0] != txid:
            raise Refused("bad_fragment", f"a middle fragment of transaction {txid} without "
                          "its first")
        ptx, _pflags, chunks, size = partial
        size += len(chunk)
        if size > self.session.max_message:
            raise Refused("too_big")
        chunks.append(chunk)
        self.recv_next += 1
        if not flags & _LAST:
            self.partial = (ptx, flags, chunks, size)
            return []
        self.partial = None
        return self._complete(txid, flags, size,
                              chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _complete(self, txid: int, flags: int, size: int, message: bytes) -> list[Action]:
        link = self.link
        assert link is not None
        self.delivered_txid = txid
        stats = self.stats
        stats.recv_msgs += 1
        stats.recv_bytes += size
        if flags & _WANT_RECEIVED:
            link.ack_wanted = True
        if flags & _WANT_APPLIED:
            self.want_applied.add(txid)
        return [Deliver(self.channel, txid, message)]

    def applied(self, txid: int) -> list[Action]:
        self.local_applied = max(self.local_applied, txid)
        if txid in self.want_applied:
            self.want_applied.discard(txid)
            if self.link is not None:
                self.link.ack_wanted = True
        return self.pump()

    def status(self) -> dict:
        link = self.link
        s = self.stats
        return {
            "state": "connected" if link is not None and link.synced else
                     ("connecting" if link is not None else "down"),
            "sent_msgs": s.sent_msgs, "sent_bytes": s.sent_bytes,
            "recv_msgs": s.recv_msgs, "recv_bytes": s.recv_bytes,
            "credits": link.credits if link is not None else 0,
            "refused": dict(s.refused),
            # beyond the contract, kept few (hsp status shows each as a column):
            "resent": s.frames_resent,  # frames sent again after a reconnect
            "unacked": len(self.queue) + len(self.unacked),  # frames the peer has not acked
            "assembling_bytes": self.partial[3] if self.partial else 0,  # held, not applied
        }


class Session:
    """One pair session: the streams of every channel, one epoch, the sizes both sides agree on.

    ``buffer_size`` is one receive buffer (header included), ``credits`` the receives posted
    per channel link, ``max_message`` the largest message reassembled.
    """

    def __init__(self, epoch: int, buffer_size: int, credits: int,
                 channels: tuple[Channel, ...] = tuple(Channel),
                 max_message: int = DEFAULT_MAX_MESSAGE, side: int | None = None,
                 incarnation: int | None = None):
        # this session's incarnation, in every HELLO: a peer that sees another one knows this
        # side restarted (PeerRestarted)
        self.incarnation = random.getrandbits(64) if incarnation is None else incarnation
        if side not in (None, 0, 1):
            raise ValueError(f"side should be 0 or 1 (or None), got {side!r}")
        # side: 0 for the node whose name sorts first, 1 for the other; each marks the frames
        # it sends, and one that comes back marked as its own (a reflected or forged frame)
        # is refused: on the wire a frame carries no sender, and both sides number from 1
        self.dir = 0 if side is None else side * _DIR
        self.peer_dir = 0 if side is None else (1 - side) * _DIR
        if not 0 <= epoch <= MAX_EPOCH:
            raise ValueError(f"epoch should be between 0 and {MAX_EPOCH}, got {epoch}")
        if buffer_size < OVERHEAD + 64:
            raise ValueError(f"a receive buffer of {buffer_size} bytes is too small: at least "
                             f"{OVERHEAD + 64}")
        if buffer_size - HEADER_SIZE > (1 << 20):
            raise ValueError(f"a receive buffer holds at most {(1 << 20) + HEADER_SIZE} bytes")
        if credits < MIN_CREDITS:
            raise ValueError(f"credits should be at least {MIN_CREDITS}, got {credits}")
        self.epoch = epoch
        self.buffer_size = buffer_size
        self.chunk = buffer_size - OVERHEAD
        self.credits = credits
        self.max_message = max_message
        self.streams = {Channel(c): Stream(Channel(c), self) for c in channels}

    def set_epoch(self, epoch: int) -> None:
        """A promotion raised the cluster epoch: from now on only frames of EPOCH are taken."""
        if not 0 <= epoch <= MAX_EPOCH:
            raise ValueError(f"epoch should be between 0 and {MAX_EPOCH}, got {epoch}")
        self.epoch = epoch

    def submit(self, channel: Channel, message: bytes | bytearray | memoryview,
               commit: Commit | str = Commit.APPLIED) -> tuple[int, list[Action]]:
        stream = self.streams[channel]  # a Channel or its int (IntEnum: the same key)
        txid = stream.submit(message, commit if type(commit) is Commit else Commit.parse(commit))
        return txid, stream.pump()

    def feed(self, event: Event) -> list[Action]:
        stream = self.streams[event.channel]
        kind = type(event)
        if kind is FrameReceived:
            return stream.received(event.data)
        if kind is Applied:
            return stream.applied(event.txid)
        if isinstance(event, ApplyFailed):
            stream.inconsistent = True
            return [Alarm(stream.channel, "apply_failed",
                          f"transaction {event.txid} could not be applied: {event.why}"),
                    *stream.applied(event.txid)]
        if isinstance(event, Connected):
            return stream.connected()
        if isinstance(event, Disconnected):
            return stream.disconnected()
        raise TypeError(f"not an Interface A event: {event!r}")


# ---- transaction bodies ---------------------------------------------------------------------
class TxKind(enum.IntEnum):
    PMEM = 1
    DISK_WRITE = 2
    DISK_FLUSH = 3
    CONFIG = 4
    DISK_WRITE_FLUSH = 5  # DISK_WRITE's body; the standby makes the disk stable after it
    AUDIT = 6  # the active's digests of some chunks of one region (``encode_audit``)


_TX = struct.Struct("<BI")  # kind, count
_PMEM_W = struct.Struct("<QI")  # offset, length
_DISK_W = struct.Struct("<HQI")  # disk index, offset, length
_FLUSH = struct.Struct("<H")
_AUDIT = struct.Struct("<QHIQ")  # audit id, target, chunk size, first chunk; then u32 CRCs
AUDIT_PMEM = 0xFFFF  # an audit's target: P.mem (else the index of a disk)
AUDIT_MAX_CHUNK = 1 << 24  # bytes of one audited chunk, at most
AUDIT_MAX_CHUNKS = 1 << 16  # digests in one audit transaction, at most
_TX_KINDS = {int(k): k for k in TxKind}


class TxError(ValueError):
    """A delivered message is not a well-formed transaction body."""


def encode_pmem(writes: list[tuple[int, bytes]]) -> bytes:
    parts = [_TX.pack(TxKind.PMEM, len(writes))]
    for off, data in writes:
        parts += [_PMEM_W.pack(off, len(data)), bytes(data)]
    return b"".join(parts)


def encode_disk(writes: list[tuple[int, int, bytes]], flush: bool = False) -> bytes:
    """Disk writes as one transaction; FLUSH: the disk is made stable after them (a flush
    carried in the same transaction: one commit for a synchronous write, not two)."""
    parts = [_TX.pack(TxKind.DISK_WRITE_FLUSH if flush else TxKind.DISK_WRITE, len(writes))]
    for disk, off, data in writes:
        parts += [_DISK_W.pack(disk, off, len(data)), bytes(data)]
    return b"".join(parts)


def encode_flush(disk: int) -> bytes:
    return _TX.pack(TxKind.DISK_FLUSH, 1) + _FLUSH.pack(disk)


def encode_config(command: dict) -> bytes:
    return _TX.pack(TxKind.CONFIG, 1) + json.dumps(command, sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class AuditRequest:
    """One audit transaction: the active's CRC32C of chunks ``first`` .. ``first + len(crcs)
    - 1`` (each ``chunk`` bytes, the region's last one possibly shorter) of ``target``
    (``AUDIT_PMEM`` or a disk index), taken at this point of the channel's stream."""

    audit_id: int
    target: int
    chunk: int
    first: int
    crcs: tuple[int, ...]


def audit_digests(data: bytes | bytearray | memoryview, chunk: int) -> list[int]:
    """CRC32C of each CHUNK-byte slice of DATA (the last one possibly shorter): both sides of
    an audit digest with this (the CRC path the frames use, see ``use_crc32c_hardware``)."""
    mv = memoryview(data)
    hw = _HW
    return [_crc(mv[off:off + chunk], 0, hw) for off in range(0, len(mv), chunk)]


def encode_audit(audit_id: int, target: int, chunk: int, first: int,
                 crcs: list[int] | tuple[int, ...]) -> bytes:
    if not 0 < len(crcs) <= AUDIT_MAX_CHUNKS:
        raise ValueError(f"an audit transaction carries 1 to {AUDIT_MAX_CHUNKS} digests, "
                         f"not {len(crcs)}")
    if not 0 < chunk <= AUDIT_MAX_CHUNK:
        raise ValueError(f"an audit chunk is 1 to {AUDIT_MAX_CHUNK} bytes, not {chunk}")
    return b"".join((_TX.pack(TxKind.AUDIT, len(crcs)),
                     _AUDIT.pack(audit_id, target, chunk, first),
                     struct.pack(f"<{len(crcs)}I", *crcs)))


def _decode_audit(message: bytes, count: int, pmem_size: int,
                  disk_sizes: tuple[int, ...]) -> AuditRequest:
    pos = _TX.size
    if pos + _AUDIT.size > len(message):
        raise TxError("truncated audit header")
    audit_id, target, chunk, first = _AUDIT.unpack_from(message, pos)
    pos += _AUDIT.size
    if not 0 < count <= AUDIT_MAX_CHUNKS:
        raise TxError(f"audit {audit_id} carries {count} digests (1 to {AUDIT_MAX_CHUNKS})")
    if len(message) != pos + 4 * count:
        raise TxError(f"audit {audit_id}: {len(message) - pos} bytes of digests, "
                      f"{4 * count} announced")
    if not 0 < chunk <= AUDIT_MAX_CHUNK:
        raise TxError(f"audit {audit_id}: a chunk of {chunk} bytes (1 to {AUDIT_MAX_CHUNK})")
    if target == AUDIT_PMEM:
        size, what = pmem_size, "P.mem"
    elif target < len(disk_sizes):
        size, what = disk_sizes[target], f"disk {target}"
    else:
        raise TxError(f"audit {audit_id} of disk {target}, which does not exist")
    if (first + count - 1) * chunk >= size:
        raise TxError(f"audit {audit_id}: chunks {first}..{first + count - 1} of {chunk} "
                      f"bytes go beyond {what} ({size} bytes)")
    return AuditRequest(audit_id, target, chunk, first,
                        struct.unpack_from(f"<{count}I", message, pos))


def decode_tx(message: bytes, pmem_size: int = 1 << 62,
              disk_sizes: tuple[int, ...] = ()) -> tuple[TxKind, list]:
    """(kind, items) of MESSAGE, every offset checked against the region sizes given.

    Items: PMEM [(offset, bytes)], DISK_WRITE and DISK_WRITE_FLUSH [(disk, offset, bytes)],
    DISK_FLUSH [disk], CONFIG [dict], AUDIT [AuditRequest].
    """
    if len(message) < _TX.size:
        raise TxError("transaction shorter than its header")
    kind, count = _TX.unpack_from(message)
    pos = _TX.size
    mv = memoryview(message)
    items: list = []
    known = _TX_KINDS.get(kind)  # (a dict: the enum's constructor is a call per apply)
    if known is None:
        raise TxError(f"unknown transaction kind {kind}")
    kind = known
    if kind is TxKind.PMEM:
        for _ in range(count):
            if pos + _PMEM_W.size > len(message):
                raise TxError("truncated P.mem write header")
            off, ln = _PMEM_W.unpack_from(message, pos)
            pos += _PMEM_W.size
            if pos + ln > len(message) or off + ln > pmem_size:
                raise TxError(f"P.mem write {off}+{ln} outside the message or the region "
                              f"({pmem_size} bytes)")
            items.append((off, mv[pos:pos + ln]))
            pos += ln
    elif kind is TxKind.DISK_WRITE or kind is TxKind.DISK_WRITE_FLUSH:
        for _ in range(count):
            if pos + _DISK_W.size > len(message):
                raise TxError("truncated disk write header")
            disk, off, ln = _DISK_W.unpack_from(message, pos)
            pos += _DISK_W.size
            if disk >= len(disk_sizes) or pos + ln > len(message) or off + ln > disk_sizes[disk]:
                raise TxError(f"disk write {disk}:{off}+{ln} outside the message or the disk")
            items.append((disk, off, mv[pos:pos + ln]))
            pos += ln
    elif kind is TxKind.DISK_FLUSH:
        if count != 1 or pos + _FLUSH.size > len(message):
            raise TxError("bad flush")
        (disk,) = _FLUSH.unpack_from(message, pos)
        if disk >= len(disk_sizes):
            raise TxError(f"flush of disk {disk}, which does not exist")
        pos += _FLUSH.size
        items.append(disk)
    elif kind is TxKind.AUDIT:
        items.append(_decode_audit(message, count, pmem_size, disk_sizes))
        pos = len(message)
    else:
        try:
            items.append(json.loads(bytes(mv[pos:])))
        except ValueError as exc:
            raise TxError(f"configuration command is not JSON: {exc}") from None
        pos = len(message)
    if pos != len(message):
        raise TxError(f"{len(message) - pos} bytes after the transaction's last item")
    return kind, items
