"""State images: what the active seals is what the standby verifies; anything else is named."""

from __future__ import annotations

import pytest

from hsp_rdma.core.gso import DigestAlgo
from hsp_rdma.ha.image import HEADER_SPACE, ImageError, StateImage, verify


def seal(img: StateImage, epoch: int, algo: DigestAlgo, chunk: int = 4096) -> None:
    """Digest and header as the engine's copy does (switchover.Engine._copy), minus the writes."""
    digest = img.digest_start(epoch, algo)
    with memoryview(img.buf) as view:
        for off in range(HEADER_SPACE, img.length, chunk):
            digest.update(view[off:min(off + chunk, img.length)])
    hdr = img.header(epoch, digest.digest(), algo)
    img.buf[:len(hdr)] = hdr


@pytest.fixture(params=[DigestAlgo.CRC32, DigestAlgo.CRC32C, DigestAlgo.BLAKE2B_256])
def sealed(request):
    img = StateImage(pmem_size=8192, blob_capacity=1000)
    img.pmem[:5] = b"hello"
    length = img.load_blob(b"app-state")
    seal(img, 7, request.param)
    region = bytearray(16384)
    region[:length] = img.buf[:length]
    yield img, region, length, request.param
    img.close()


def test_verified_image_round_trips(sealed) -> None:
    _img, region, length, algo = sealed
    v = verify(region, 7, length, algo)
    assert v.ok and (v.pmem_len, v.blob_len) == (8192, 9)
    assert region[HEADER_SPACE:HEADER_SPACE + 5] == b"hello"


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda r, n: r.__setitem__(HEADER_SPACE + 100, 1), "digest mismatch"),
        (lambda r, n: r.__setitem__(0, 0), "bad magic"),
    ],
)
def test_corruption_is_detected(sealed, mutate, why) -> None:
    _img, region, length, algo = sealed
    mutate(region, length)
    v = verify(region, 7, length, algo)
    assert not v.ok and why in v.reason


def test_stale_epoch_length_and_algo_are_refused(sealed) -> None:
    _img, region, length, algo = sealed
    assert "stale image" in verify(region, 8, length, algo).reason
    assert "announced" in verify(region, 7, length - 1, algo).reason
    other = DigestAlgo.BLAKE2B_256 if algo is DigestAlgo.CRC32 else DigestAlgo.CRC32
    assert "digest algorithm" in verify(region, 7, length, other).reason
    assert "does not fit" in verify(region[:100], 7, length, algo).reason


def test_blob_larger_than_reserved_is_refused() -> None:
    img = StateImage(pmem_size=0, blob_capacity=4)
    with pytest.raises(ImageError, match="more than the 4 reserved"):
        img.load_blob(b"12345")
    img.close()


def test_crc32c_digest_is_the_castagnoli_crc_of_fields_and_payload(sealed) -> None:
    """CRC32C images carry CRC-32C (the frames' CRC) over the bound fields then the payload,
    whichever path of the compiled CRC the timing picked."""
    import struct

    from hsp_rdma.core.frames import crc32c
    from hsp_rdma.ha.image import HEADER

    _img, region, length, algo = sealed
    if algo is not DigestAlgo.CRC32C:
        pytest.skip("CRC32C only")
    fields = struct.pack("<QQQ", 7, 8192, 9)
    want = crc32c(bytes(region[HEADER_SPACE:length]), crc32c(fields))
    assert HEADER.unpack_from(region)[7] == want.to_bytes(4, "little").ljust(32, b"\0")


def test_landed_digest_stands_for_the_payload_only_when_it_matches(sealed) -> None:
    """verify(landed=...) (a pull's digest taken chunk by chunk as the reads landed) is used
    only with the header's epoch and lengths and the announced algo; a landed digest that
    disagrees with the header is a mismatch, never a pass."""
    img, region, length, algo = sealed
    d, bound = img.landing_digest(7, algo)
    with memoryview(img.buf) as view:
        for off in range(HEADER_SPACE, length, 1000):
            d.update(view[off:min(off + 1000, length)])
    good = d.digest()
    assert verify(region, 7, length, algo, (algo, bound, good)).ok
    bad = bytes([good[0] ^ 1]) + good[1:]
    v = verify(region, 7, length, algo, (algo, bound, bad))
    assert not v.ok and "digest mismatch" in v.reason
    # taken with other bound fields or another algo: ignored, the payload is digested again
    assert verify(region, 7, length, algo, (algo, b"other", bad)).ok
    region[HEADER_SPACE + 3] ^= 0xFF
    other = DigestAlgo.BLAKE2B_256 if algo is not DigestAlgo.BLAKE2B_256 else DigestAlgo.CRC32
    assert "digest mismatch" in verify(region, 7, length, algo, (other, bound, good)).reason


def test_crc32c_paths_agree() -> None:
    """The timing only picks a path: both give the same digest."""
    native = pytest.importorskip("hsp_rdma.cext.crc32c")
    from hsp_rdma.ha.image import crc32c_hardware

    data = bytes(range(256)) * 300
    assert isinstance(crc32c_hardware(), bool)
    assert native.crc32c(data, 5, True) == native.crc32c(data, 5, False)
