"""Profile ``read_chunk_size``: a pull reads in its own size, a push writes in chunk_size (on
rxe 1 MiB writes copy faster than 64 KiB ones, 1 MiB reads slower). Soft provider, this host."""

from __future__ import annotations

import dataclasses
import os

import test_gso_fabrics_soft as fab
from test_gso_fabrics_soft import _own_ports_and_links, gso_once  # noqa: F401

from hsp_rdma.core import gso
from hsp_rdma.core.profiles import load_profiles, pick_profile
from hsp_rdma.ha.switchover import HEADER_SPACE, Engine

WRITE, READ = 32 << 10, 4 << 10


def _chunks(length: int, size: int) -> int:
    return -(-length // size)


def test_a_pull_reads_in_read_chunk_size_and_a_push_writes_in_chunk_size(monkeypatch):
    prof = dataclasses.replace(pick_profile("soft:a", load_profiles()), prime_grants=False,
                               chunk_size=WRITE, read_chunk_size=READ)
    monkeypatch.setattr(fab, "pick_profile", lambda *_a: prof)
    a, b = fab.pair()
    try:
        assert (a.chunk_size, a.read_chunk_size) == (WRITE, READ)
        payload = a.image.capacity - HEADER_SPACE
        counted = []
        for mode in (gso.GsoMode.PULL, gso.GsoMode.PUSH):
            a.mode = b.mode = mode
            data = os.urandom(len(b.image.pmem))
            b.image.pmem[:] = data
            a.reports.clear()
            b.reports.clear()
            gso_once(a, b)
            assert [r.outcome for r in a.reports + b.reports] == ["completed", "completed"], \
                [(r.role, r.reason) for r in a.reports + b.reports]
            assert bytes(a.image.pmem) == data
            # a pull counts the standby's reads, a push the active's writes
            counted.append((a if mode is gso.GsoMode.PULL else b).reports[0].writes)
            a, b = b, a  # the next switch-over goes back
        pull_reads, push_writes = counted
        assert pull_reads == _chunks(payload, READ), (pull_reads, payload)
        assert push_writes in (_chunks(payload, WRITE), _chunks(payload, WRITE) + 1), \
            (push_writes, payload)
    finally:
        a.close()
        b.close()


def test_an_explicit_chunk_size_sizes_the_reads_too_unless_a_read_chunk_is_given():
    prof = dataclasses.replace(pick_profile("soft:a", load_profiles()), chunk_size=1 << 20,
                               read_chunk_size=64 << 10)
    assert prof.read_chunk == 64 << 10
    for kw, want in (({}, (1 << 20, 64 << 10)), ({"chunk_size": WRITE}, (WRITE, WRITE)),
                     ({"chunk_size": WRITE, "read_chunk_size": READ}, (WRITE, READ))):
        eng = Engine.open("soft:a", prof, 1 << 16, 256, serving=False, **kw)
        try:
            assert (eng.chunk_size, eng.read_chunk_size) == want, kw
        finally:
            eng.close()
