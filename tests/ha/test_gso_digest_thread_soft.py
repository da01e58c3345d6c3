"""The image digest taken in a worker thread beside the copy (profile ``digest_thread``), over
the soft provider on this host. Push: the active's, beside its writes; the standby verifies it
and takes over with the active's P.mem; a wrong digest from the thread is refused as the
inline one is (the active thaws). Pull: the standby's, following its reads as they land; the
same outcomes; a cancelled or unfed one frees the worker. The soft profile turns the thread on
(measured: `hsp-bench gso --provider soft`)."""

from __future__ import annotations

import os
import threading
import time

import pytest
from test_gso_fabrics_soft import _own_ports_and_links, gso_once, pair  # noqa: F401

from hsp_rdma.core import gso
from hsp_rdma.core.gso import DigestAlgo
from hsp_rdma.core.profiles import PACKAGED_PROFILE_DIR, load_profiles, pick_profile
from hsp_rdma.ha import switchover
from hsp_rdma.ha.image import Digest


def test_the_soft_profile_takes_the_digest_in_a_thread():
    assert pick_profile("soft:a", load_profiles(PACKAGED_PROFILE_DIR)).digest_thread is True
    assert pick_profile("rxe0", load_profiles(PACKAGED_PROFILE_DIR)).digest_thread is False


def _threaded_pair():
    a, b = pair()
    for eng in (a, b):
        eng.digest_thread = True
    return a, b


def _gso_carries_pmem(a, b) -> None:
    """One GSO from b to a completes: a serves with b's P.mem, b never thawed."""
    data = os.urandom(len(b.image.pmem))
    b.image.pmem[:] = data
    thawed = []
    b.app.thaw = lambda: thawed.append(1)
    gso_once(a, b)
    assert [r.outcome for r in a.reports + b.reports] == ["completed", "completed"], \
        [(r.role, r.reason) for r in a.reports + b.reports]
    assert bytes(a.image.pmem) == data
    assert a.machine.serving and not b.machine.serving and not thawed


def _wrong_digest_refused(a, b) -> None:
    """b's digest is made wrong: a refuses the image, both abort, b thaws and serves on."""
    b.corrupt_image = True
    thawed = []
    b.app.thaw = lambda: thawed.append(1)
    gso_once(a, b)
    assert [r.outcome for r in a.reports + b.reports] == ["aborted", "aborted"], \
        [(r.role, r.outcome, r.reason) for r in a.reports + b.reports]
    assert "digest" in a.reports[0].reason.lower(), a.reports[0].reason
    assert b.machine.serving and not a.machine.serving and thawed == [1]


def test_a_push_digested_in_a_thread_verifies_and_carries_pmem():
    a, b = _threaded_pair()
    try:
        _gso_carries_pmem(a, b)
        assert b.reports[0].digest_s > 0  # the thread's time, reported
        assert [j.epoch for j in b._digest_jobs] == [b.reports[0].epoch]
    finally:
        a.close()
        b.close()


def test_a_wrong_digest_from_the_thread_is_refused_and_the_active_thaws():
    a, b = _threaded_pair()
    try:
        _wrong_digest_refused(a, b)
    finally:
        a.close()
        b.close()


def _followers(monkeypatch) -> list:
    """Every _PullDigest the engines start (the worker's digest of a pull)."""
    made: list = []

    class Recorded(switchover._PullDigest):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            made.append(self)

    monkeypatch.setattr(switchover, "_PullDigest", Recorded)
    return made


def _pulling_pair():
    a, b = _threaded_pair()
    for eng in (a, b):
        eng.mode = gso.GsoMode.PULL
        eng.read_chunk_size = 8192  # many reads: the worker follows them as they land
    return a, b


def test_a_pull_digested_by_the_worker_as_the_reads_land_verifies_and_carries_pmem(
        monkeypatch):
    made = _followers(monkeypatch)
    a, b = _pulling_pair()
    try:
        _gso_carries_pmem(a, b)
        assert a.reports[0].writes > 4  # (the standby's reads)
        [f] = made
        assert f.done and not f.error and a.reports[0].digest_s == f.busy_s > 0
    finally:
        a.close()
        b.close()


def test_a_pull_whose_digest_differs_from_the_workers_is_refused_and_the_active_thaws(
        monkeypatch):
    made = _followers(monkeypatch)
    a, b = _pulling_pair()
    try:
        _wrong_digest_refused(a, b)  # (the active's Digest: the worker's must not match it)
        assert len(made) == 1 and made[0].done
    finally:
        a.close()
        b.close()


@pytest.fixture
def worker():
    w = switchover._DigestWorker("test-digest")
    yield w
    w.stop()


def _follower(worker, idle_s: float) -> switchover._PullDigest:
    """A pull's digest on WORKER over a 64 KiB image, nothing landed yet."""
    buf = bytearray(64 << 10)
    return switchover._PullDigest(worker, buf, Digest(DigestAlgo.CRC32C), 128, len(buf),
                                  time.monotonic, idle_s=idle_s)


def _worker_free(worker: switchover._DigestWorker) -> bool:
    ran = threading.Event()
    worker.submit(ran.set)
    return ran.wait(5)


def test_a_cancelled_pull_digest_frees_the_worker_at_once(worker):
    f = _follower(worker, idle_s=30)
    f.advance(4096)
    f.cancel()  # (the link was lost: no more reads land)
    f.join(5)
    assert f.done and not f.error
    assert _worker_free(worker)


def test_a_pull_digest_nobody_feeds_gives_up_and_says_so(worker):
    f = _follower(worker, idle_s=0.2)
    f.join(5)
    assert f.done and "no read landed" in f.error
    assert _worker_free(worker)
