"""Dirty bitmaps against a model (a set of block numbers): marks, clears, runs from a cursor,
resync take/ack with blocks written again in flight, persistence and damaged input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsp_rdma.core.bitmap import HEADER, BitmapError, DirtyBitmap

GRANULARITIES = st.sampled_from([1, 8, 512, 4096])


def model_runs(dirty: set[int], blocks: int, cursor: int) -> list[tuple[int, int]]:
    order = [b for b in range(cursor, blocks)] + [b for b in range(cursor)]
    runs: list[tuple[int, int]] = []
    prev = None
    for b in order:
        if b not in dirty:
            prev = None
            continue
        if prev is not None and b == prev + 1 and b != cursor:
            first, count = runs[-1]
            runs[-1] = (first, count + 1)
        else:
            runs.append((b, 1))
        prev = b
    return runs


@st.composite
def region_and_ops(draw):
    g = draw(GRANULARITIES)
    blocks = draw(st.integers(0, 70))
    size = max(0, blocks * g - draw(st.integers(0, g - 1))) if blocks else 0
    rng = st.integers(0, size)
    ops = draw(st.lists(st.tuples(st.sampled_from(["mark", "clear"]), rng, rng), max_size=12))
    return g, size, [(op, min(a, b), abs(a - b)) for op, a, b in ops]


@given(region_and_ops(), st.data())
@settings(max_examples=300, deadline=None)
def test_marks_and_clears_match_a_model(case, data):
    g, size, ops = case
    bm = DirtyBitmap(size, g)
    dirty: set[int] = set()
    for op, offset, length in ops:
        if op == "mark":
            bm.mark(offset, length)
            if length:
                dirty |= set(range(offset // g, (offset + length - 1) // g + 1))
        else:
            bm.clear(offset, length)
            # Only blocks covered wholly are cleared (the region's last block may be short).
            dirty -= {b for b in range(bm.blocks)
                      if offset <= b * g and min((b + 1) * g, size) <= offset + length}
    assert bm.dirty_blocks == len(dirty)
    assert {b for b in range(bm.blocks) if bm.is_dirty(b)} == dirty
    cursor = data.draw(st.integers(0, bm.blocks))
    assert list(bm.runs(cursor)) == model_runs(dirty, bm.blocks, cursor)
    assert bm.out_of_sync == sum(min((b + 1) * g, size) - b * g for b in dirty)
    back = DirtyBitmap.from_bytes(bm.to_bytes())
    assert back == bm and back.dirty_blocks == bm.dirty_blocks


@given(region_and_ops(), st.lists(st.tuples(st.integers(1, 9), st.booleans(),
                                             st.integers(0, 10 ** 6)), max_size=15))
@settings(max_examples=300, deadline=None)
def test_resync_sends_every_dirty_block_and_never_clears_a_newer_write(case, steps):
    # A resync (take, ack) interleaved with new writes and link losses: every block the peer
    # acknowledged as it was *taken* is clean only if it was not written again in between;
    # nothing else is ever cleared.
    g, size, ops = case
    bm = DirtyBitmap(size, g)
    for op, offset, length in ops:
        if op == "mark":
            bm.mark(offset, length)
    if not bm.blocks:
        return
    dirty = {b for b in range(bm.blocks) if bm.is_dirty(b)}
    in_flight: dict[int, bool] = {}
    for take_n, lose_link, write_at in steps:
        for first, count in bm.take(take_n):
            for b in range(first, first + count):
                assert b in dirty and b not in in_flight
                in_flight[b] = False
        block = write_at % bm.blocks
        bm.mark(*bm.byte_range(block, 1))
        dirty.add(block)
        if block in in_flight:
            in_flight[block] = True
        if lose_link:
            bm.abandon()
            in_flight.clear()
            continue
        for b, again in sorted(in_flight.items()):
            bm.ack(b, 1)
            if not again:
                dirty.discard(b)
        in_flight.clear()
        assert {b for b in range(bm.blocks) if bm.is_dirty(b)} == dirty
    # Finishing the resync: take/ack until clean, in at most one pass per dirty block.
    for _ in range(bm.blocks + 1):
        taken = bm.take(bm.blocks)
        for first, count in taken:
            bm.ack(first, count)
        if not taken:
            break
    assert bm.dirty_blocks == 0


def test_an_interrupted_resync_resumes_at_its_cursor():
    bm = DirtyBitmap(100 * 4096)
    bm.mark(0, 100 * 4096)
    first = bm.take(30)
    assert first == [(0, 30)]
    bm.ack(0, 20)           # the peer had acknowledged 20 blocks when the link went
    bm.abandon()
    restored = DirtyBitmap.from_bytes(bm.to_bytes())   # and the active restarted
    assert restored.cursor == 30 and restored.dirty_blocks == 80
    # The next pass starts at block 30, then comes back for the 10 blocks never acknowledged.
    assert list(restored.runs(restored.cursor)) == [(30, 70), (20, 10)]
    assert restored.take(75) == [(30, 70), (20, 5)]


def test_a_block_written_while_in_flight_is_sent_again():
    bm = DirtyBitmap(8 * 4096)
    bm.mark(4096, 1)
    assert bm.take(8) == [(1, 1)]
    bm.mark(4096 + 100, 10)      # new write to the block whose old copy is on the wire
    bm.ack(1, 1)
    assert bm.is_dirty(1) and bm.in_flight == 0
    assert bm.take(8) == [(1, 1)]
    bm.ack(1, 1)
    assert bm.dirty_blocks == 0


def test_merge_and_full_resync():
    source, target = DirtyBitmap(64 * 4096), DirtyBitmap(64 * 4096)
    source.mark(0, 4096)
    target.mark(10 * 4096, 8192)  # what the returning old active wrote alone
    source |= target
    assert list(source.runs()) == [(0, 1), (10, 2)]
    source.set_all()
    assert source.dirty_blocks == 64 and source.out_of_sync == 64 * 4096
    with pytest.raises(BitmapError, match="different regions"):
        source |= DirtyBitmap(64 * 4096, 512)


def test_large_region_is_fast_enough():
    # 1 TiB at 4 KiB: 268 M blocks, a 32 MiB bitmap; a mark and a scan stay cheap.
    bm = DirtyBitmap(1 << 40)
    bm.mark(123 << 30, 1 << 20)
    assert list(bm.runs()) == [((123 << 30) // 4096, 256)]
    assert bm.take(1000) == [((123 << 30) // 4096, 256)]


@pytest.mark.parametrize("granularity", [0, 3, 4095, -4096])
def test_bad_granularity_says_what_is_allowed(granularity):
    with pytest.raises(BitmapError, match="power of two"):
        DirtyBitmap(4096, granularity)


def test_bad_ranges_and_acks_are_refused():
    bm = DirtyBitmap(4 * 4096)
    with pytest.raises(BitmapError, match="outside the region"):
        bm.mark(3 * 4096, 4097)
    with pytest.raises(BitmapError, match="never taken"):
        bm.ack(0, 1)
    with pytest.raises(BitmapError, match="cursor"):
        list(bm.runs(5))


def test_damaged_persisted_bitmaps_are_refused():
    bm = DirtyBitmap(20 * 4096)
    bm.mark(0, 3 * 4096)
    data = bm.to_bytes()
    with pytest.raises(BitmapError, match="truncated"):
        DirtyBitmap.from_bytes(data[:5])
    with pytest.raises(BitmapError, match="truncated"):
        DirtyBitmap.from_bytes(data[:-1])
    with pytest.raises(BitmapError, match="bad magic"):
        DirtyBitmap.from_bytes(b"X" + data[1:])
    for i in range(HEADER.size, len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            with pytest.raises(BitmapError):
                DirtyBitmap.from_bytes(bytes(flipped))
