"""The compiled CRC32C (hsp_rdma/cext/crc32c.pyx) against the pure-Python reference."""

from __future__ import annotations

import array
import random

import pytest

from hsp_rdma.core import frames
from hsp_rdma.core.frames import crc32c_reference

native = pytest.importorskip("hsp_rdma.cext.crc32c")


@pytest.mark.parametrize("hardware", [True, False], ids=["sse42-or-table", "slice-by-8"])
def test_equal_to_reference_on_every_length_and_offset(hardware: bool) -> None:
    rng = random.Random(11)
    blob = rng.randbytes(4096 + 16)
    for length in range(4097):
        off = length % 11  # unaligned starts too
        data = blob[off:off + length]
        seed = rng.getrandbits(32) if length % 3 == 0 else 0
        assert native.crc32c(data, seed, hardware) == crc32c_reference(data, seed), (length, off)


def test_known_values_and_chaining() -> None:
    assert native.crc32c(b"123456789") == 0xE3069283
    assert native.crc32c(b"6789", native.crc32c(b"12345")) == 0xE3069283
    assert native.crc32c(b"") == 0


def test_buffer_kinds_and_large_buffers() -> None:
    rng = random.Random(3)
    big = rng.randbytes((1 << 20) + 5)  # above the no-GIL threshold, odd length
    ref = crc32c_reference(big)
    assert native.crc32c(big) == ref
    assert native.crc32c(bytearray(big)) == ref
    assert native.crc32c(memoryview(big)) == ref
    assert native.crc32c(big, 0, False) == ref
    assert native.crc32c(memoryview(big)[7:]) == crc32c_reference(big[7:])
    ints = array.array("I", range(100))
    assert native.crc32c(ints) == crc32c_reference(ints.tobytes())
    assert native.crc32c(memoryview(big)[::2]) == crc32c_reference(big[::2])  # strided: copied


def test_frames_uses_the_compiled_crc() -> None:
    assert frames.NATIVE_CRC32C
    assert frames.crc32c(b"123456789") == 0xE3069283


def test_the_interleaved_chains_join_on_every_block_boundary() -> None:
    """The hardware path runs three chains over blocks of 8192 (then 256) bytes and joins
    them: lengths and offsets around every boundary give the table path's value (itself
    checked against the reference above), chained or not."""
    if not native.HARDWARE:
        pytest.skip("this CPU has no SSE4.2 crc32: only the table path runs")
    rng = random.Random(5)
    blob = rng.randbytes(3 * 8192 * 2 + 3 * 256 * 3 + 64)
    lengths = {n + d for n in (3 * 256, 6 * 256, 3 * 8192, 6 * 8192, 3 * 8192 + 3 * 256)
               for d in range(-9, 10)} | {rng.randrange(len(blob) - 16) for _ in range(200)}
    for length in sorted(lengths):
        off = length % 13
        data = blob[off:off + length]
        seed = rng.getrandbits(32)
        want = native.crc32c(data, seed, False)
        assert native.crc32c(data, seed, True) == want, (length, off)
        cut = rng.randrange(length + 1)
        assert native.crc32c(data[cut:], native.crc32c(data[:cut], seed)) == want, (length, cut)
