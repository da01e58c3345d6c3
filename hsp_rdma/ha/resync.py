"""Dirty tracking and resync of one node (issue 12: link loss without node loss), carried out
for the failover engine (``ha/failover_engine.py``), which decides when (the machine's
``StartDirtyTracking``/``StartResync``/``StopDirtyTracking``).

Dirty tracking. While the active serves alone, each transaction it acknowledges locally marks
the pages of P.mem and the 4 KiB blocks of each disk it wrote in a ``DirtyBitmap``
(``core/bitmap.py``), and the 1 MiB extents they lie in in a coarse one, which is written to
``<state_dir>/failover/<target>.bitmap`` (atomically, fsync'd) before the commit that dirtied a
new extent returns: a crash of the active during the outage forgets nothing (it comes back
with whole extents dirty), at one write per new extent, not per new block.

Resync, in the stream. The SyncSource sends each dirty block's *current* bytes as an ordinary
transaction on the block's own channel (a P.mem transaction on ``pmem``, a disk write on
``disk``), read under the node's lock: it is ordered with the application's transactions,
which go on being replicated meanwhile, and since transactions carry absolute bytes, a block
sent after a newer write simply carries that write too. A block is acknowledged (its bit
cleared, ``DirtyBitmap.ack``) once the standby *applied* its transaction; a block written again
while in flight stays dirty and goes again. Rate: ``[replication] resync_rate`` bytes per
second, at most ``IN_FLIGHT`` bytes unacknowledged. A link lost mid-resync abandons what was in
flight (it stays dirty) and the next resync goes on from the bitmap's cursor. At the end each
resynced disk is flushed on the standby (an applied flush), and the source says ``done``.

The two sides talk on ``oam`` with the node's own messages (``Node._report(keep=True)``:
queued in the core when the link is down, sent when it is back): the SyncTarget asks ``{"resync": "request", "full": bool}``
(full: it has nothing to go by, e.g. it restarted with an empty P.mem); the SyncSource answers
``{"resync": "done", "bytes": N}`` only after every resync transaction was applied there, so
the target is UpToDate again exactly when it has everything. A source that hears no request
in ``REQUEST_WAIT_S`` starts from its bitmap anyway (the peer may not have noticed the outage);
after the peer restarted it waits ``RESTARTED_REQUEST_WAIT_S``: a restarted peer always asks (for
everything), and a bitmap resync begun first would end in a ``done`` that answers nothing.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from hsp_rdma.core import ifa
from hsp_rdma.core.bitmap import BitmapError, DirtyBitmap
from hsp_rdma.core.frames import Channel
from hsp_rdma.core.ifa import Commit

PAGE = mmap.PAGESIZE
DISK_BLOCK = 4096
EXTENT = 1 << 20  # bytes per bit of the persisted map (DRBD's activity-log extent is 4 MiB)
TX_MAX = 64 << 10  # bytes of one resync transaction
IN_FLIGHT = 512 << 10  # resync bytes sent and not yet applied on the target: the
# application's transactions queue behind at most this much on their channel
REQUEST_WAIT_S = 2.0
RESTARTED_REQUEST_WAIT_S = 30.0  # after the peer restarted (a restarted guest on a slow host
# may take seconds to ask; a resync begun unasked would say done to nobody first)


class DirtyTracker:
    """The bitmaps of one node: ``pmem`` and ``disk<i>`` per replicated disk.

    Two per target, as DRBD keeps a bitmap and an activity log: ``maps``, one bit per page or
    4 KiB block, in memory (what the resync walks); ``extents``, one bit per ``EXTENT`` bytes,
    written to ``<state_dir>/failover/<target>.bitmap`` (fsync'd) before the commit that
    dirtied a new extent returns. A crash forgets no change: the node comes back with every
    block of every persisted extent dirty (a superset). Persisting the fine map on every new
    block cost seconds of stopped commits where the state directory is on a slow file system
    (the lab's 9p share: ~7 s for the ledger's first pages and journal blocks)."""

    def __init__(self, node, directory: Path):
        self.node = node
        self.dir = directory
        self.maps: dict[str, DirtyBitmap] = {}
        self.extents: dict[str, DirtyBitmap] = {}
        self.on = False
        self.persists = 0
        self.load_error = ""
        for name, size, gran in self._targets():
            path = self.dir / f"{name}.bitmap"
            fine = DirtyBitmap(size, gran)
            try:
                coarse = DirtyBitmap.from_bytes(path.read_bytes())
                if (coarse.size, coarse.granularity) != (size, EXTENT):
                    raise BitmapError(f"it describes {coarse.size} bytes at "
                                      f"{coarse.granularity} B, the region is {size} bytes at "
                                      f"{EXTENT} B")
                for first, count in coarse.runs():
                    off, length = coarse.byte_range(first, count)
                    fine.mark(off, length)
            except FileNotFoundError:
                coarse = DirtyBitmap(size, EXTENT)
            except (OSError, BitmapError) as exc:  # damaged: everything may differ
                self.load_error = f"{path}: {exc}; resync in full"
                coarse = DirtyBitmap(size, EXTENT)
                coarse.set_all()
                fine.set_all()
            self.maps[name], self.extents[name] = fine, coarse

    def _targets(self):
        yield "pmem", len(self.node.pmem.buf), PAGE
        for i, d in enumerate(self.node._disks):
            yield f"disk{i}", d.size, DISK_BLOCK

    @property
    def out_of_sync(self) -> int:
        return sum(bm.out_of_sync for bm in self.maps.values())

    def _mark(self, name: str, off: int, length: int, grown: set[str]) -> None:
        self.maps[name].mark(off, length)
        coarse = self.extents[name]
        before = coarse.dirty_blocks
        coarse.mark(off, length)
        if coarse.dirty_blocks != before:
            grown.add(name)

    def mark(self, message: bytes) -> None:
        """A transaction acknowledged alone: mark what it wrote; persist an extent map that
        grew (before the commit returns)."""
        node = self.node
        kind, items = ifa.decode_tx(message, len(node.pmem.buf), node._disk_sizes)
        grown: set[str] = set()
        if kind is ifa.TxKind.PMEM:
            for off, data in items:
                self._mark("pmem", off, len(data), grown)
        elif kind in (ifa.TxKind.DISK_WRITE, ifa.TxKind.DISK_WRITE_FLUSH):
            for disk, off, data in items:
                self._mark(f"disk{disk}", off, len(data), grown)
        for name in grown:
            self.save(name)

    def set_all(self) -> None:
        """Everything dirty (a full resync), persisted."""
        for name in self.maps:
            self.maps[name].set_all()
            self.extents[name].set_all()
        self.save_all()

    def settled(self) -> None:
        """The peer has everything: the persisted extents are clean again."""
        for name, coarse in self.extents.items():
            if self.maps[name].dirty_blocks == 0 and coarse.dirty_blocks:
                self.extents[name] = DirtyBitmap(coarse.size, coarse.granularity)
                self.save(name)

    def save(self, name: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{name}.bitmap"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(self.extents[name].to_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.persists += 1

    def save_all(self) -> None:
        for name in self.maps:
            self.save(name)

    def clean(self) -> bool:
        return all(bm.dirty_blocks == 0 for bm in self.maps.values())

    def status(self) -> dict:
        return {"on": self.on, "out_of_sync": self.out_of_sync,
                "dirty_blocks": {n: bm.dirty_blocks for n, bm in self.maps.items()},
                "dirty_extents": {n: bm.dirty_blocks for n, bm in self.extents.items()},
                "extent_bytes": EXTENT, "persisted_writes": self.persists,
                **({"load_error": self.load_error} if self.load_error else {})}


class ResyncSource:
    """The SyncSource's walk over the bitmaps; ``step`` from the node's loop (under its lock)."""

    def __init__(self, node, tracker: DirtyTracker, rate: int, started: float):
        self.node, self.tracker, self.rate = node, tracker, rate
        self.started = started
        self.answers: str | None = None  # the id of the target's request it answers
        self.pending: list[tuple[Channel, int, str, int, int, int]] = []
        self.in_flight = 0  # bytes of the pending ones (kept, not summed per send)
        # (channel, txid, bitmap name, first block, count, bytes)
        self.flushes: dict[int, int] = {}  # disk index -> txid of its final flush
        self.sent_bytes = 0
        self.sent_blocks = 0
        self.budget = 0.0
        self.last = started
        self.began = False
        self.done_sent = False

    def begin(self, full: bool) -> None:
        if full:
            self.tracker.set_all()
            self.flushes.clear()  # (a final flush already asked for comes after more writes)
        self.began = True


    def step(self, now: float) -> bool:
        """Send what the rate allows, take acknowledgements; True once everything is
        applied on the target (the caller then says done)."""
        node = self.node
        self.budget = min(self.budget + (now - self.last) * self.rate, float(IN_FLIGHT))
        self.last = now
        # acknowledgements: applied on the target
        keep = []
        for p in self.pending:
            ch, txid, name, first, count, size = p
            if node._marks[ch][2] >= txid:
                self.tracker.maps[name].ack(first, count)
                self.in_flight -= size
            else:
                keep.append(p)
        if len(keep) != len(self.pending):
            self.pending = keep
        if not self.began:
            return False
        for name, bm in self.tracker.maps.items():
            per_tx = max(1, TX_MAX // bm.granularity)
            while self.budget > 0 and self.in_flight < IN_FLIGHT:
                runs = bm.take(per_tx)
                if not runs:
                    break
                for first, count in runs:
                    off, length = bm.byte_range(first, count)
                    self._send(name, first, count, off, length)
                    self.budget -= length
        if not self.tracker.clean() or self.pending:
            return False
        if not node._disks:
            return True
        if not self.flushes:  # every block applied: make each disk stable on the target
            for i in range(len(node._disks)):
                txid, actions = node.session.submit(Channel.DISK, ifa.encode_flush(i),
                                                    Commit.APPLIED)
                node._run(actions)
                self.flushes[i] = txid
            return False
        return all(node._marks[Channel.DISK][2] >= t for t in self.flushes.values())

    def _send(self, name: str, first: int, count: int, off: int, length: int) -> None:
        node = self.node
        if name == "pmem":
            ch = Channel.PMEM
            message = ifa.encode_pmem([(off, bytes(node.pmem.buf[off:off + length]))])
        else:
            ch, disk = Channel.DISK, int(name[4:])
            data = os.pread(node._disks[disk].fd, length, off)
            message = ifa.encode_disk([(disk, off, data)])
        txid, actions = node.session.submit(ch, message, Commit.APPLIED)
        node._run(actions)
        self.pending.append((ch, txid, name, first, count, length))
        self.in_flight += length
        self.sent_bytes += length
        self.sent_blocks += count

    def abandon(self) -> None:
        """The link went: what was in flight stays dirty (sent again by the next resync; the
        persisted extents still cover it)."""
        for bm in self.tracker.maps.values():
            bm.abandon()
        self.pending.clear()
        self.in_flight = 0
        self.flushes.clear()

    def status(self, now: float) -> dict:
        return {"side": "SyncSource", "began": self.began,
                "out_of_sync": self.tracker.out_of_sync, "sent_bytes": self.sent_bytes,
                "sent_blocks": self.sent_blocks, "in_flight_bytes": self.in_flight,
                "resync_rate": self.rate, "seconds": round(now - self.started, 3)}
