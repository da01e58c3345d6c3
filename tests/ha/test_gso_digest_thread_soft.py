"""A push's image digest taken in a worker thread beside the copy (profile ``digest_thread``),
over the soft provider on this host: the standby verifies it and takes over with the active's
P.mem; a wrong digest from the thread is refused as the inline one is (the active thaws); the
soft profile turns the thread on (measured: `hsp-bench gso --provider soft`)."""

from __future__ import annotations

import os

from test_gso_fabrics_soft import _own_ports_and_links, gso_once, pair  # noqa: F401

from hsp_rdma.core.profiles import PACKAGED_PROFILE_DIR, load_profiles, pick_profile


def test_the_soft_profile_takes_the_digest_in_a_thread():
    assert pick_profile("soft:a", load_profiles(PACKAGED_PROFILE_DIR)).digest_thread is True
    assert pick_profile("rxe0", load_profiles(PACKAGED_PROFILE_DIR)).digest_thread is False


def _threaded_pair():
    a, b = pair()
    for eng in (a, b):
        eng.digest_thread = True
    return a, b


def test_a_push_digested_in_a_thread_verifies_and_carries_pmem():
    a, b = _threaded_pair()
    try:
        data = os.urandom(len(b.image.pmem))
        b.image.pmem[:] = data
        thawed = []
        b.app.thaw = lambda: thawed.append(1)
        gso_once(a, b)
        assert [r.outcome for r in a.reports + b.reports] == ["completed", "completed"], \
            [(r.role, r.reason) for r in a.reports + b.reports]
        assert bytes(a.image.pmem) == data
        assert a.machine.serving and not b.machine.serving and not thawed
        assert b.reports[0].digest_s > 0  # the thread's time, reported
        assert [j.epoch for j in b._digest_jobs] == [b.reports[0].epoch]
    finally:
        a.close()
        b.close()


def test_a_wrong_digest_from_the_thread_is_refused_and_the_active_thaws():
    a, b = _threaded_pair()
    try:
        b.corrupt_image = True
        thawed = []
        b.app.thaw = lambda: thawed.append(1)
        gso_once(a, b)
        assert [r.outcome for r in a.reports + b.reports] == ["aborted", "aborted"], \
            [(r.role, r.outcome, r.reason) for r in a.reports + b.reports]
        assert "digest" in a.reports[0].reason.lower(), a.reports[0].reason
        assert b.machine.serving and not a.machine.serving and thawed == [1]
    finally:
        a.close()
        b.close()
