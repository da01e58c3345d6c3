"""The compiled copy (hsp_rdma/cext/memcopy.pyx) the soft provider's direct RDMA Write uses:
every size and alignment around its thresholds, plain and streaming, lands byte for byte and
writes nothing outside the destination."""

from __future__ import annotations

import mmap
import random

import pytest

native = pytest.importorskip("hsp_rdma.cext.memcopy")

SIZES = sorted({0, 1, 15, 16, 17, 63, 64, 65, 4095, 65535, 65536, 65537,
                262143, 262144, 262145, 262144 + 63, (1 << 20) + 5})


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streaming"])
def test_every_size_and_alignment_lands_exactly(streaming: bool) -> None:
    rng = random.Random(7)
    src = rng.randbytes(max(SIZES) + 64)
    for n in SIZES:
        for s_off, d_off in ((0, 0), (3, 0), (0, 5), (7, 13)):
            dst = bytearray(b"\xee" * (n + 64))
            native.copy(memoryview(dst)[d_off:d_off + n], memoryview(src)[s_off:s_off + n],
                        streaming)
            assert dst[d_off:d_off + n] == src[s_off:s_off + n], (n, s_off, d_off)
            assert dst[:d_off] == b"\xee" * d_off and dst[d_off + n:] == b"\xee" * (64 - d_off)


def test_into_a_shared_map_and_from_bytes() -> None:
    mm = mmap.mmap(-1, 1 << 20)
    data = random.Random(1).randbytes(1 << 20)
    native.copy(memoryview(mm), data, True)
    assert mm[:] == data
    mm.close()


def test_lengths_must_match_and_the_destination_be_writable() -> None:
    with pytest.raises(ValueError, match="3 bytes of destination for 5 of source"):
        native.copy(memoryview(bytearray(3)), b"hello")
    with pytest.raises((ValueError, TypeError, BufferError)):
        native.copy(b"immutable", b"hello wor")
