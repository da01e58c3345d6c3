"""Profile ``prime_grants`` over the soft provider on this host: when the link comes up each
side writes zero bytes into the peer's image and marker, the provider's same-host grant comes
then, and the first switch-over's writes are direct copies into the standby's memory (before,
they went as frames the standby copied: 18-40 ms against 4-7 for the later ones)."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
import test_gso_fabrics_soft as fab
from test_gso_fabrics_soft import _own_ports_and_links, gso_once  # noqa: F401

from hsp_rdma.core import gso
from hsp_rdma.core.profiles import PACKAGED_PROFILE_DIR, load_profiles, pick_profile


def test_the_soft_profile_primes_and_the_verbs_profiles_do_not():
    profiles = load_profiles(PACKAGED_PROFILE_DIR)
    assert pick_profile("soft:a", profiles).prime_grants is True
    assert pick_profile("rxe0", profiles).prime_grants is False
    assert pick_profile("siw0", profiles).prime_grants is False


@pytest.mark.parametrize("prime", [True, False], ids=["primed", "not-primed"])
def test_the_first_switch_over_writes_straight_into_the_standby_when_primed(monkeypatch, prime):
    prof = dataclasses.replace(pick_profile("soft:a", load_profiles()), prime_grants=prime)
    monkeypatch.setattr(fab, "pick_profile", lambda *_a: prof)
    a, b = fab.pair()
    try:
        conn = b.vi.conn
        # primed: both of the standby's regions granted before any switch-over
        # (the grants come back as frames the progress threads take: allow them a moment)
        want = sorted([int(a.image_handle), int(a.marker_handle)]) if prime else []
        end = time.monotonic() + 5
        while sorted(conn.grants) != want and time.monotonic() < end:
            time.sleep(0.01)
        assert sorted(conn.grants) == want, conn.grants
        data = os.urandom(len(b.image.pmem))
        b.image.pmem[:] = data
        before = dict(b.nic.counters)
        gso_once(a, b)
        assert [r.outcome for r in a.reports + b.reports] == ["completed", "completed"], \
            [(r.role, r.reason) for r in a.reports + b.reports]
        assert bytes(a.image.pmem) == data  # the image arrived either way
        direct = b.nic.counters["shm_writes_tx"] - before.get("shm_writes_tx", 0)
        writes = b.reports[0].writes + 1  # the data writes and the header; the marker
        if prime:
            assert direct == writes, (direct, writes)
        else:
            assert direct < writes, (direct, writes)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("prime", [True, False], ids=["primed", "not-primed"])
def test_a_pull_reads_a_small_first_chunk_alone_then_straight_from_the_active(monkeypatch,
                                                                              prime):
    """A pull's read registration is new at each switch-over: primed, the standby's first
    read (4 KiB) goes alone, its answer brings the grant, and the rest of the image is read
    straight out of the active's memory."""
    prof = dataclasses.replace(pick_profile("soft:a", load_profiles()), prime_grants=prime)
    monkeypatch.setattr(fab, "pick_profile", lambda *_a: prof)
    a, b = fab.pair()
    try:
        b.mode = gso.GsoMode.PULL
        data = os.urandom(len(b.image.pmem))
        b.image.pmem[:] = data
        gso_once(a, b)
        assert [r.outcome for r in a.reports + b.reports] == ["completed", "completed"], \
            [(r.role, r.reason) for r in a.reports + b.reports]
        assert bytes(a.image.pmem) == data
        # registered for read at Start-GSO (the link serving no reads until the seal), and
        # nothing of it left open once the GSO ended
        assert b.reports[0].read_registered == "start-gso" and "seal" in b.reports[0].phases_ms()
        assert b._read_handle is None and b._gated_vi is None and b.vi.serves_reads
        reads = a.reports[0].writes  # (the standby's RDMA Reads, for a pull)
        direct = a.nic.counters["shm_reads"]
        assert (reads, direct) == ((2, 1) if prime else (1, 0)), (reads, direct)
    finally:
        a.close()
        b.close()
