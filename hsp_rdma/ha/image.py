"""The state image a Graceful Switch Over copies: header | protected memory | application blob.

The active keeps its protected memory (P.mem) inside the registered image buffer, so the copy
needs no staging; at freeze time only the application blob is copied in after it. The header
(written last, just before the marker) binds the epoch, the lengths and a digest of the rest.
"""

from __future__ import annotations

import hashlib
import struct
import time
import zlib
from dataclasses import dataclass

from hsp_rdma.core import frames
from hsp_rdma.core.gso import DigestAlgo
from hsp_rdma.errors import HspError
from hsp_rdma.via.shm import shared_buffer

try:
    from hsp_rdma.cext.crc32c import crc32c as _crc32c_native
except ImportError:  # not built: the pure-Python reference (slow, but correct)
    _crc32c_native = None

MAGIC = b"HSPIMAGE"
IMAGE_VERSION = 1
HEADER = struct.Struct("<8sHHIQQQ32s")  # magic, version, digest algo, flags, epoch,
#                                          pmem length, blob length, digest (zero padded)
HEADER_SPACE = 128  # the payload starts here: cache-line aligned, room to grow the header


class ImageError(HspError):
    """An image cannot be built or is not what was announced; says which field."""


_CRC32C_HW: bool | None = None  # the compiled CRC32C's path, once measured


def crc32c_hardware() -> bool:
    """Whether the compiled CRC32C's SSE4.2 path is the faster one here, measured once.

    A CPU that announces SSE4.2 is not always fast at it: a QEMU TCG guest emulates the crc32
    instruction at ~100 MiB/s, slower than the slice-by-8 table path (~660 MiB/s there);
    on the host the instruction is ~4x faster than the table. Both paths give the same value.
    """
    global _CRC32C_HW
    if _CRC32C_HW is None:
        if _crc32c_native is None:
            _CRC32C_HW = False
        else:
            sample = bytes(256 << 10)
            best = {}
            for hw in (True, False, True, False):
                t0 = time.perf_counter()
                _crc32c_native(sample, 0, hw)
                dt = time.perf_counter() - t0
                best[hw] = min(best.get(hw, dt), dt)
            _CRC32C_HW = best[True] <= best[False]
    return _CRC32C_HW


class Digest:
    """Incremental digest over the header fields and the payload, per DigestAlgo."""

    def __init__(self, algo: DigestAlgo):
        self.algo = algo
        if algo is DigestAlgo.BLAKE2B_256:
            self._h = hashlib.blake2b(digest_size=32)
        elif algo in (DigestAlgo.CRC32, DigestAlgo.CRC32C):
            self._crc = 0
            self._hw = algo is DigestAlgo.CRC32C and crc32c_hardware()
        else:
            raise ImageError(f"digest {algo!r} is not supported for images: use one of "
                             f"{', '.join(a.name for a in DigestAlgo)}")

    def update(self, data) -> None:
        if self.algo is DigestAlgo.BLAKE2B_256:
            self._h.update(data)
        elif self.algo is DigestAlgo.CRC32C:
            self._crc = (_crc32c_native(data, self._crc, self._hw) if _crc32c_native
                         else frames.crc32c(data, self._crc))
        else:
            self._crc = zlib.crc32(data, self._crc)

    def digest(self) -> bytes:
        if self.algo is DigestAlgo.BLAKE2B_256:
            return self._h.digest()
        return self._crc.to_bytes(4, "little").ljust(32, b"\0")


def _bound_fields(epoch: int, pmem_len: int, blob_len: int) -> bytes:
    return struct.pack("<QQQ", epoch, pmem_len, blob_len)


class StateImage:
    """The active's image buffer (page-aligned, to be registered) and its P.mem view."""

    def __init__(self, pmem_size: int, blob_capacity: int):
        if pmem_size < 0 or blob_capacity < 0:
            raise ImageError("image sizes must not be negative")
        self.pmem_size = pmem_size
        self.blob_capacity = blob_capacity
        self.capacity = HEADER_SPACE + pmem_size + blob_capacity
        # shared memory: over the soft provider a same-host peer writes into it directly
        self.buf = shared_buffer(self.capacity)
        self.pmem = memoryview(self.buf)[HEADER_SPACE:HEADER_SPACE + pmem_size]
        self.length = 0  # of the image; 0 until load_blob()

    def load_blob(self, blob: bytes) -> int:
        """Copy the frozen application blob after P.mem; returns the image length."""
        if len(blob) > self.blob_capacity:
            raise ImageError(f"the application blob has {len(blob)} bytes, more than the "
                             f"{self.blob_capacity} reserved for it")
        at = HEADER_SPACE + self.pmem_size
        self.buf[at:at + len(blob)] = blob
        self.blob_len = len(blob)
        self.length = at + len(blob)
        return self.length

    def header(self, epoch: int, digest: bytes, algo: DigestAlgo) -> bytes:
        return HEADER.pack(MAGIC, IMAGE_VERSION, int(algo), 0, epoch, self.pmem_size,
                           self.blob_len, digest)

    def digest_start(self, epoch: int, algo: DigestAlgo) -> Digest:
        d = Digest(algo)
        d.update(_bound_fields(epoch, self.pmem_size, self.blob_len))
        return d

    def landing_digest(self, epoch: int, algo: DigestAlgo) -> tuple[Digest, bytes]:
        """(digest, bound fields) for a payload landing in this buffer, its header already
        there: digest chunk by chunk, then give (algo, bound, digest()) to ``verify``."""
        _m, _v, _a, _f, _ep, pmem_len, blob_len, _d = HEADER.unpack_from(self.buf)
        bound = _bound_fields(epoch, pmem_len, blob_len)
        d = Digest(algo)
        d.update(bound)
        return d, bound

    def close(self) -> None:
        self.pmem.release()
        self.buf.close()


@dataclass(frozen=True)
class Verified:
    ok: bool
    reason: str
    pmem_len: int = 0
    blob_len: int = 0


def verify(region, epoch: int, image_length: int, algo: DigestAlgo,
           landed: tuple[DigestAlgo, bytes, bytes] | None = None,
           expected: bytes | None = None) -> Verified:
    """Check a copied image in REGION against what Start-GSO announced.

    ``landed`` = (algo, bound fields, digest) of a digest already taken over REGION's payload
    chunk by chunk as each chunk landed (a pull: the standby's own reads are the only writes
    into REGION); it stands for digesting the payload again when it was taken with the
    header's epoch and lengths, else the payload is digested here as without it.
    ``expected``: the digest to match (a pull: the one the active sent in Digest), instead of
    the one in the header.
    """
    if image_length < HEADER_SPACE or image_length > len(region):
        return Verified(False, f"announced length {image_length} does not fit the region "
                               f"of {len(region)} bytes")
    magic, version, algo_v, _flags, ep, pmem_len, blob_len, digest = HEADER.unpack_from(region)
    if magic != MAGIC:
        return Verified(False, "no image header (bad magic)")
    if version != IMAGE_VERSION:
        return Verified(False, f"image version {version}, expected {IMAGE_VERSION}")
    if ep != epoch:
        return Verified(False, f"image of epoch {ep}, expected {epoch} (stale image)")
    if algo_v != int(algo):
        return Verified(False, f"image digest algorithm {algo_v}, announced {int(algo)}")
    if HEADER_SPACE + pmem_len + blob_len != image_length:
        return Verified(False, f"image length {HEADER_SPACE + pmem_len + blob_len}, "
                               f"announced {image_length}")
    bound = _bound_fields(ep, pmem_len, blob_len)
    if landed is not None and landed[0] is algo and landed[1] == bound:
        computed = landed[2]
    else:
        d = Digest(algo)
        d.update(bound)
        d.update(memoryview(region)[HEADER_SPACE:image_length])
        computed = d.digest()
    if computed != (digest if expected is None else expected):
        return Verified(False, "digest mismatch: the image is not what the active sent")
    return Verified(True, "ok", pmem_len, blob_len)
