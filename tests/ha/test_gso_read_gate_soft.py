"""A pull's read registration is made at Start-GSO, before the freeze, on a link that serves
no RDMA Reads until the seal (``via.serve_reads``); the registration is gone and the link
serves reads again once the GSO ended, however it ended (a completed pull: in
test_gso_prime_soft). Soft provider, this host; the lab tests the same on rxe (and that siw,
which has no such gate, registers at the seal)."""

from __future__ import annotations

import time

import test_gso_fabrics_soft as fab
from test_gso_fabrics_soft import _own_ports_and_links  # noqa: F401

from hsp_rdma import via
from hsp_rdma.core import gso


def test_a_pull_registers_at_start_gso_and_the_link_refuses_reads_until_the_seal():
    a, b = fab.pair()  # a standby, b active
    try:
        a.mode = b.mode = gso.GsoMode.PULL
        a.drop_ready = True  # the standby never answers: the active stays before the freeze
        b.request_gso()
        assert b.machine.state is gso.GsoState.PRE_GSO
        handle = b._read_handle
        assert handle is not None and b._gated_vi is b.vi and not b.vi.serves_reads
        # The standby (or anything on the link) reads the image with the very handle Sealed
        # would bring: refused, nothing of the running image lands.
        dst = a.image.buf
        dst[:4096] = bytes(4096)
        b.image.buf[:4096] = b"\x5a" * 4096
        read = via.VipDescriptor(
            control=via.VIP_CONTROL_OP_RDMAREAD,
            segments=[via.DataSegment(via.address_of(dst), a.image_handle, 4096)],
            address=via.AddressSegment(via.address_of(b.image.buf), int(handle)))
        via.VipPostSend(a.vi, read)
        while (d := via.VipSendWait(a.vi, 10000)) is not read:
            pass  # (the standby's own control messages, not yet reaped)
        assert d.status & via.VIP_STATUS_ERROR_MASK, hex(d.status)
        assert bytes(dst[:4096]) == bytes(4096)
        assert any("serves no RDMA Reads" in e.message for e in b.nic.errors), \
            [e.message for e in b.nic.errors]
        # The GSO ends (the link broke, or the ready timer): the registration goes, the link
        # serves reads again, the application was never frozen.
        end = time.monotonic() + 20
        b.serve(until=lambda: bool(b.reports) or time.monotonic() > end)
        assert [r.outcome for r in b.reports] == ["aborted"], b.reports
        assert b._read_handle is None and b._gated_vi is None and b.vi.serves_reads
        assert not b.reports[0].stop_t, "frozen before the standby was ready"
    finally:
        a.close()
        b.close()

