"""Registerable memory in shared memory: ``shared_buffer(size)``, an ``mmap`` backed by a memfd.

Any provider registers it as it registers any buffer (for the verbs provider it is just page-
aligned shared memory, as ``mmap.mmap(-1, size)`` is). The soft provider recognises it: a peer
process on the same host that was proven to be the peer (the soft handshake), and that RDMA-
writes into or RDMA-reads from a region registered over it, is granted a mapping of exactly
that region (write access only if the region allows remote writes), so its later writes and
reads are one copy straight into or out of our memory, with no message, as on a NIC.

Layout of the memfd: page 0 is the allocation's grant table (written by the owner only, mapped
read-only by grantees), the buffer follows it. The table has one slot (rkey, rights) per granted
registration; deregistering a region clears its slot, and a grantee looks at its slot before
every write or read (a cleared or changed slot: it goes the message way, where the owner refuses
it as deregistered).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import threading
import weakref

PAGE = mmap.PAGESIZE
SLOT = struct.Struct("<II")  # rkey, rights (1: remote write, 2: remote read)
SLOTS = PAGE // SLOT.size
MEMFD_NAME = "hsp-via-shm"


class Allocation:
    """One shared_buffer: its memfd, the buffer (weakly: the caller owns it), the grant table."""

    def __init__(self, size: int):
        self.fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, PAGE + size)
            self.table = mmap.mmap(self.fd, PAGE, offset=0)
            buf = mmap.mmap(self.fd, size, offset=PAGE)
        except BaseException:
            os.close(self.fd)
            raise
        self.size = size
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        self.ref = weakref.ref(buf)
        self.used: set[int] = set()
        self.lock = threading.Lock()
        self.buf = buf  # (dropped by shared_buffer once the caller holds it)
        self.closed = False

    def live(self) -> bool:
        b = self.ref()
        return b is not None and not b.closed

    def claim(self, rkey: int, rights: int) -> int:
        """A free slot, now (RKEY, RIGHTS); -1 if the table is full."""
        with self.lock:
            for i in range(SLOTS):
                if i not in self.used:
                    self.used.add(i)
                    SLOT.pack_into(self.table, i * SLOT.size, rkey, rights)
                    return i
        return -1

    def release(self, slot: int) -> None:
        with self.lock:
            if slot in self.used and not self.table.closed:
                SLOT.pack_into(self.table, slot * SLOT.size, 0, 0)
                self.used.discard(slot)

    def close(self) -> None:
        """Once (an fd number is never closed twice: by then it may be another file's)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        try:
            self.table.close()
        except BufferError:
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


_lock = threading.Lock()
_allocs: dict[int, Allocation] = {}  # by base address


def _forget(base: int, alloc: Allocation) -> None:
    """ALLOC's buffer was freed. Its record goes only if it is still the one at BASE: a
    buffer closed by its owner but freed later (the cycle collector) may find a newer, live
    buffer mapped at the same address, whose record must stay."""
    with _lock:
        if _allocs.get(base) is alloc:
            del _allocs[base]
    alloc.close()


def shared_buffer(size: int) -> mmap.mmap:
    """A zeroed, page-aligned, writable buffer of SIZE bytes in shared memory (a memfd), to
    register like any buffer. It stays usable as long as the caller holds it."""
    if size <= 0:
        raise ValueError(f"a shared buffer needs a positive size, not {size}")
    a = Allocation(size)
    buf, a.buf = a.buf, None
    with _lock:
        old = _allocs.pop(a.base, None)  # (an earlier one at this address is unmapped)
        _allocs[a.base] = a
    if old is not None:
        old.close()
    weakref.finalize(buf, _forget, a.base, a)
    return buf


def lookup(addr: int, length: int) -> tuple[Allocation, int] | None:
    """(allocation, offset of ADDR in its buffer) if [ADDR, ADDR+LENGTH) lies in a live
    shared_buffer, else None."""
    with _lock:
        for base, a in _allocs.items():
            if base <= addr and addr + length <= base + a.size:
                return (a, addr - base) if a.live() else None
    return None


__all__ = ["PAGE", "SLOT", "SLOTS", "Allocation", "lookup", "shared_buffer"]
