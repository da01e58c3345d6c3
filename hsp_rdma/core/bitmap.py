"""Dirty bitmaps: which blocks of a replicated disk or of P.mem the peer does not have.

One bit per block of ``granularity`` bytes (4 KiB disk blocks, the page size for P.mem). While
the peer is away the active marks every byte range it writes; on reconnect the resync walks
the dirty runs from a cursor, so a resync interrupted by another link loss resumes where it
stopped, not from the start. Pure computation: persistence is ``to_bytes``/``from_bytes``, the
engine writes the bytes.

Clear-on-ack. The resync ``take``s dirty blocks (they become *in flight*: still dirty), sends
them, and ``ack``s them when the peer has them; only then are their bits cleared. A block
written again while in flight is *redirtied*: its ack leaves the bit set, so the newer data is
sent again (the block read for the resync may predate that write). A link lost mid-resync
leaves every unacknowledged block dirty (``abandon``): nothing is ever cleared on hope.
DRBD's words: ``out_of_sync`` bytes, a ``SyncSource`` walks the bitmap, a ``SyncTarget`` merges
its own bitmap into the request (``|=``) when it wrote what the source never saw.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from typing import Self

MAGIC = b"HSPBMAP1"
# magic, granularity, size (bytes), cursor (block), crc32 of the bits; then the bits.
HEADER = struct.Struct("<8sIQQI")
_NONZERO = re.compile(rb"[^\x00]")
_NOT_FULL = re.compile(rb"[^\xff]")


class BitmapError(ValueError):
    """A bitmap cannot be built or read as asked; the message says what is wrong."""


class DirtyBitmap:
    """One bit per ``granularity`` bytes of a region of ``size`` bytes; all clean at first."""

    __slots__ = ("_bits", "_count", "_in_flight", "blocks", "cursor", "granularity", "size")

    def __init__(self, size: int, granularity: int = 4096):
        if granularity < 1 or granularity & (granularity - 1):
            raise BitmapError(f"bitmap granularity should be a power of two (4096 for disk "
                              f"blocks, the page size for P.mem), got {granularity}")
        if size < 0:
            raise BitmapError(f"bitmap region size should be >= 0 bytes, got {size}")
        self.size = size
        self.granularity = granularity
        self.blocks = -(-size // granularity)
        self.cursor = 0  # where the next resync pass starts (block number), persisted
        self._bits = bytearray(-(-self.blocks // 8))
        self._count = 0
        self._in_flight: dict[int, bool] = {}  # block -> written again since it was taken

    # ------------------------------------------------------------------ queries
    @property
    def dirty_blocks(self) -> int:
        """How many blocks are dirty (in flight included)."""
        return self._count

    @property
    def out_of_sync(self) -> int:
        """Bytes the peer may lack (DRBD's ``out-of-sync``): dirty blocks, the last one cut."""
        if not self._count:
            return 0
        total = self._count * self.granularity
        if self.is_dirty(self.blocks - 1):
            total -= self.blocks * self.granularity - self.size
        return total

    @property
    def in_flight(self) -> int:
        """Blocks taken by the resync and not acknowledged yet."""
        return len(self._in_flight)

    def is_dirty(self, block: int) -> bool:
        self._check_block(block)
        return bool(self._bits[block >> 3] >> (block & 7) & 1)

    def byte_range(self, first: int, count: int) -> tuple[int, int]:
        """(offset, length) in the region of ``count`` blocks from ``first`` (last one cut)."""
        offset = first * self.granularity
        return offset, min(count * self.granularity, self.size - offset)

    def runs(self, cursor: int = 0) -> Iterator[tuple[int, int]]:
        """Dirty runs ``(first_block, count)`` from ``cursor`` to the end, then from block 0
        up to ``cursor``: one pass over the region, starting where a resync stopped. A run
        that spans the cursor comes as two runs."""
        if not 0 <= cursor <= self.blocks:
            raise BitmapError(f"bitmap cursor should be between 0 and {self.blocks}, "
                              f"got {cursor}")
        yield from self._runs(cursor, self.blocks)
        yield from self._runs(0, cursor)

    def _runs(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        bits = self._bits
        block = lo
        while block < hi:
            if not self._bit(block):
                if block & 7 == 0:  # skip clean bytes at C speed
                    m = _NONZERO.search(bits, block >> 3)
                    if m is None:
                        return
                    if m.start() << 3 > block:
                        block = m.start() << 3
                        continue
                block += 1
                continue
            first = block
            while block < hi:
                if block & 7 == 0:
                    m = _NOT_FULL.search(bits, block >> 3)
                    full_to = (m.start() if m else len(bits)) << 3
                    if full_to > block:
                        block = min(full_to, hi)
                        continue
                if not self._bit(block):
                    break
                block += 1
            yield first, block - first

    # ------------------------------------------------------------------ changes
    def mark(self, offset: int, length: int) -> None:
        """The byte range ``[offset, offset + length)`` was written: its blocks are dirty."""
        lo, hi = self._blocks_touched(offset, length)
        if lo == hi:
            return
        self._fill(lo, hi, True)
        if self._in_flight:
            for block in self._in_flight:
                if lo <= block < hi:
                    self._in_flight[block] = True

    def clear(self, offset: int, length: int) -> None:
        """The peer has ``[offset, offset + length)``: clear the blocks it covers *wholly*
        (a block partly covered may hold other changes; it stays dirty)."""
        self._check_range(offset, length)
        g = self.granularity
        lo = -(-offset // g)
        end = offset + length
        hi = self.blocks if end == self.size else end // g
        if lo < hi:
            self._fill(lo, hi, False)

    def set_all(self) -> None:
        """Everything is dirty: a full resync (a peer with no bitmap to go by)."""
        self._fill(0, self.blocks, True)
        for block in self._in_flight:
            self._in_flight[block] = True

    def __ior__(self, other: DirtyBitmap) -> Self:
        """Merge ``other``'s dirty blocks (same size and granularity) into this one."""
        if (other.size, other.granularity) != (self.size, self.granularity):
            raise BitmapError(f"cannot merge a bitmap of {other.size} bytes at "
                              f"{other.granularity} B into one of {self.size} bytes at "
                              f"{self.granularity} B: they describe different regions")
        for first, count in other.runs():
            self._fill(first, first + count, True)
            for block in self._in_flight:
                if first <= block < first + count:
                    self._in_flight[block] = True
        return self

    # ------------------------------------------------------------------ resync
    def take(self, max_blocks: int) -> list[tuple[int, int]]:
        """The next dirty runs from ``cursor`` (at most ``max_blocks`` blocks, not already
        in flight), now in flight; ``cursor`` moves past them. Send them, then ``ack``."""
        if max_blocks < 1:
            raise BitmapError(f"take at least 1 block, got {max_blocks}")
        taken: list[tuple[int, int]] = []
        left = max_blocks
        for first, count in self.runs(self.cursor):
            block, end = first, first + count
            while block < end and left:
                if block in self._in_flight:
                    block += 1
                    continue
                start = block
                while block < end and left and block not in self._in_flight:
                    self._in_flight[block] = False
                    block += 1
                    left -= 1
                taken.append((start, block - start))
                self.cursor = block % self.blocks if self.blocks else 0
            if not left:
                break
        return taken

    def ack(self, first: int, count: int) -> None:
        """The peer has the blocks ``[first, first + count)`` as taken: clear those not
        written again since (those stay dirty and are sent again)."""
        self._check_block(first)
        self._check_block(first + count - 1)
        for block in range(first, first + count):
            redirtied = self._in_flight.pop(block, None)
            if redirtied is None:
                raise BitmapError(f"block {block} was acknowledged but never taken: "
                                  "ack only what take() returned")
            if not redirtied:
                self._fill(block, block + 1, False)

    def abandon(self) -> None:
        """The resync stopped (link lost): blocks in flight stay dirty, the cursor stays."""
        self._in_flight.clear()

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        """Header (size, granularity, cursor, CRC-32 of the bits) then the bits."""
        bits = bytes(self._bits)
        return HEADER.pack(MAGIC, self.granularity, self.size, self.cursor,
                           zlib.crc32(bits)) + bits

    @classmethod
    def from_bytes(cls, data: bytes) -> DirtyBitmap:
        """The bitmap ``to_bytes`` wrote (nothing in flight); damage is a BitmapError."""
        if len(data) < HEADER.size:
            raise BitmapError(f"bitmap data is {len(data)} bytes, shorter than its "
                              f"{HEADER.size}-byte header: truncated")
        magic, granularity, size, cursor, crc = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise BitmapError("not a dirty bitmap (bad magic): wrong file, or damaged")
        bm = cls(size, granularity)
        bits = data[HEADER.size:]
        if len(bits) != len(bm._bits):
            raise BitmapError(f"bitmap of {size} bytes at {granularity} B needs "
                              f"{len(bm._bits)} bytes of bits, has {len(bits)}: truncated")
        if zlib.crc32(bits) != crc:
            raise BitmapError("bitmap bits fail their CRC-32: damaged; resync in full")
        if not 0 <= cursor <= bm.blocks:
            raise BitmapError(f"bitmap cursor {cursor} is beyond its {bm.blocks} blocks")
        if bm.blocks & 7 and bits and bits[-1] >> (bm.blocks & 7):
            raise BitmapError("bitmap has bits set past its last block: damaged")
        bm._bits[:] = bits
        bm._count = sum(b.bit_count() for b in bits)
        bm.cursor = cursor
        return bm

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DirtyBitmap):
            return NotImplemented
        return ((self.size, self.granularity, self._bits)
                == (other.size, other.granularity, other._bits))

    def __repr__(self) -> str:
        return (f"DirtyBitmap(size={self.size}, granularity={self.granularity}, "
                f"dirty_blocks={self._count}, cursor={self.cursor})")

    # ------------------------------------------------------------------ bits
    def _bit(self, block: int) -> int:
        return self._bits[block >> 3] >> (block & 7) & 1

    def _fill(self, lo: int, hi: int, value: bool) -> None:
        bits = self._bits
        block = lo
        while block < hi and block & 7:
            self._set_bit(block, value)
            block += 1
        whole_hi = hi & ~7
        if block < whole_hi:
            a, b = block >> 3, whole_hi >> 3
            before = sum(x.bit_count() for x in bits[a:b])
            bits[a:b] = (b"\xff" if value else b"\x00") * (b - a)
            self._count += (8 * (b - a) - before) if value else -before
            block = whole_hi
        while block < hi:
            self._set_bit(block, value)
            block += 1

    def _set_bit(self, block: int, value: bool) -> None:
        i, mask = block >> 3, 1 << (block & 7)
        was = self._bits[i] & mask
        if value and not was:
            self._bits[i] |= mask
            self._count += 1
        elif not value and was:
            self._bits[i] &= ~mask
            self._count -= 1

    def _blocks_touched(self, offset: int, length: int) -> tuple[int, int]:
        self._check_range(offset, length)
        if length == 0:
            return 0, 0
        return offset // self.granularity, (offset + length - 1) // self.granularity + 1

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise BitmapError(f"byte range [{offset}, {offset + length}) is outside the "
                              f"region of {self.size} bytes")

    def _check_block(self, block: int) -> None:
        if not 0 <= block < self.blocks:
            raise BitmapError(f"block {block} is outside the bitmap's {self.blocks} blocks")
