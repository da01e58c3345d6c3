"""The soft provider's same-host grant when the shared buffer's allocation was closed under it
(host, no lab).

hsp_rdma.via.shm forgets a shared_buffer when its mmap object is collected. A buffer that was
closed but is still held in a reference cycle (an engine closed at the end of a test) is
collected later, by the cyclic GC, at any time; its finalizer then forgets, and closes,
whatever allocation lies at its address by then: a newer, live shared_buffer mapped where the
old one was (its memfd and grant table closed under it). The owner of a region on that buffer
must not answer a write's grant request from the closed allocation: it raised there, the
provider took that for a failed frame and the VI went to ERROR. That is how the GSO soft test
'x pulled while resting' aborted in CI (its standby's NIC broke on the image write's grant
request, the active's writes were flushed): only in a long pytest process, where a GC comes
while a later test's engines run. shm's finalizer now forgets only its own allocation (the
second test); the provider's guard against a closed allocation stays (the first).
"""

from __future__ import annotations

import gc

import pytest
from test_via_soft_shm import PAGE, Pair, expect, ok

from hsp_rdma import via
from hsp_rdma.via.providers import soft


class _Cycle:
    """Holds a buffer in a reference cycle: freed only by the cyclic GC, as an engine is."""

    def __init__(self, buf) -> None:
        self.buf, self.me = buf, self


def _at_a_reused_address(size: int):
    """A new shared_buffer of SIZE at the address of an earlier one that is closed and not yet
    collected (held in a cycle; the caller keeps the GC off until it collects on purpose)."""
    seen: set[int] = set()
    for _ in range(4096):  # (the kernel gives a freed range back at once, unless another
        # thread of this process maps meanwhile: a long pytest run has many; 64 missed once)
        buf = via.shared_buffer(size)
        addr = via.address_of(buf)
        if addr in seen:
            return buf
        seen.add(addr)
        buf.close()
        _Cycle(buf)
    pytest.fail("no shared_buffer was mapped again at a freed address in 4096 tries")


def test_a_write_into_a_buffer_whose_allocation_was_closed_lands_as_a_frame(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    enabled = gc.isenabled()
    gc.disable()
    try:
        p = Pair(target=_at_a_reused_address(4 * PAGE))
        try:
            region = p.h.mr
            assert region.shm is not None, "the region should lie in a shared_buffer"
            alloc = region.shm[0]
            gc.collect()  # the old buffers' finalizers run now
            closed = alloc.table.closed  # (shm forgot the live buffer's allocation)
            for i in range(3):
                d = p.write(PAGE + 64 * i, 64, src_off=64 * i)
                assert ok(d), f"write {i}: status 0x{d.status:x} ({getattr(d, 'reason', '')})"
            assert p.ovi.state is via.ViState.CONNECTED, p.ovi.why_error
            assert p.pvi.state is via.ViState.CONNECTED, p.pvi.why_error
            assert not p.errors, [(e.code, e.message) for e in p.errors]
            if closed:  # nothing granted from a closed allocation: the writes stayed frames
                assert not p.pvi.conn.grants
                assert "shm_grants_tx" not in p.counters(p.own)
            expect(p, {PAGE: bytes(p.src[:192])})
        finally:
            p.close()
    finally:
        if enabled:
            gc.enable()


def test_a_live_buffer_keeps_its_allocation_when_an_old_one_at_its_address_is_collected(
        ) -> None:
    """The root fix (via/shm.py): the finalizer of a buffer collected late forgets and closes
    only its own allocation, never the live one mapped at the same address since."""
    from hsp_rdma.via import shm

    enabled = gc.isenabled()
    gc.disable()
    try:
        buf = _at_a_reused_address(4 * PAGE)
        addr = via.address_of(buf)
        found = shm.lookup(addr, 4 * PAGE)
        assert found is not None
        alloc = found[0]
        gc.collect()  # the old buffers' finalizers run now
        assert not alloc.closed and not alloc.table.closed
        assert shm.lookup(addr, 4 * PAGE) == (alloc, 0)
        buf.close()
        del buf
        gc.collect()
        assert alloc.closed and shm.lookup(addr, 1) is None
    finally:
        if enabled:
            gc.enable()
