"""GSO to the n+1 standby host (issue 13), the host's side, without I/O: a session's guarded
GSO machine refuses a Start-GSO while another session serves or takes over (core/gso.py's own
refusal row: Abort BUSY, nothing stops, the epoch seen), the guard covers failover and GSO
both ways, and the memory of a session's GSO engine is counted and refused over the limit."""

from __future__ import annotations

import resource
from types import SimpleNamespace

import pytest
from test_standby_host_soft import configs

from hsp_rdma.core import gso
from hsp_rdma.core.failover import FoState
from hsp_rdma.ha import standby_host as sh
from hsp_rdma.ha.standby_host import (
    GuardedGsoMachine,
    StandbyHost,
    StandbyHostError,
    gso_memory,
    session_memory,
)

S = gso.GsoState


def start(epoch: int) -> gso.StartGso:
    return gso.StartGso(epoch, 4096, gso.DigestAlgo.CRC32)


def test_a_refused_start_gso_takes_the_machines_own_refusal_row() -> None:
    asked: list[int] = []
    m = GuardedGsoMachine.guarding(gso.GsoMachine.standby(epoch=3, region_size=1 << 20),
                                   lambda e: asked.append(e) or "busy for a")
    assert (m.epoch, m.seen, m.region_size) == (3, 3, 1 << 20)
    acts = m.feed(start(5), 1.0)
    # Abort(BUSY) back to the active, before anything stopped; the epoch is seen
    assert acts == [gso.SendMessage(gso.Abort(5, gso.AbortReason.BUSY))]
    assert m.state is S.NORMAL_STANDBY and m.seen == 5 and asked == [5]
    assert m.feed(start(5), 1.1) == [] and asked == [5]  # a duplicate: ignored, not asked
    # go-ahead: the GSO starts as in any standby
    m.guard = lambda e: None
    acts = m.feed(start(6), 1.2)
    assert m.state is S.START_GSO and isinstance(acts[0], gso.StopActivity)
    # a machine's own problem stays its own (image too large), the guard is not asked
    m2 = GuardedGsoMachine.guarding(gso.GsoMachine.standby(region_size=100),
                                    lambda e: pytest.fail("asked"))
    assert m2.feed(start(1), 0.0) == [gso.SendMessage(
        gso.Abort(1, gso.AbortReason.IMAGE_TOO_LARGE))]


def _engine(peer: str) -> SimpleNamespace:
    return SimpleNamespace(machine=gso.GsoMachine.standby(region_size=1 << 20),
                           discriminator=f"gso:{peer}-s".encode())


def test_the_guard_covers_gso_and_failover_both_ways(tmp_path) -> None:
    host = StandbyHost(configs(tmp_path, pmem="64 KiB"), gso=True)
    try:
        engines = {p: _engine(p) for p in ("a1", "a2", "a3")}
        for p, e in engines.items():
            host.attach_gso(p, e)
        with pytest.raises(StandbyHostError, match="has a GSO engine already"):
            host.attach_gso("a1", _engine("a1"))
        m1, m2 = engines["a1"].machine, engines["a2"].machine
        assert isinstance(m1, GuardedGsoMachine)
        # a1's GSO goes ahead (a claim), a2's Start-GSO meanwhile is refused: Abort BUSY
        assert m1.feed(start(1), 0.0)[0] == gso.StopActivity()
        assert m1.state is S.START_GSO
        assert m2.feed(start(1), 0.0) == [gso.SendMessage(gso.Abort(1, gso.AbortReason.BUSY))]
        want = ("n+1 standby already taking over for a1 (GSO state START_GSO); cannot take "
                "over for a2 (GSO refused: a2 keeps serving)")
        assert host.refusals[-1]["why"] == want and host.refusals[-1]["kind"] == "gso"
        # noted and alarmed on a2's failover engine, as a refused failover is
        note = [n for n in host.engines["a2"].history if n["what"] == "takeover_refused"][-1]
        assert note["why"] == want and note["gso_epoch"] == 1
        assert "a GSO from a2 is refused" in host.engines["a2"].alarm
        # a session in a GSO is taking over for the failover guard too
        assert host._guard("a3") == ("n+1 standby already taking over for a1 (GSO state "
                                     "START_GSO); cannot take over for a3")
        # once a1 serves after its GSO: "already active", in the failover refusal's words
        m1.state = S.NORMAL_ACTIVE
        assert host.active_session == "a1"
        assert host._guard("a3") == "n+1 standby already active for a1; cannot take over for a3"
        m2.feed(start(2), 0.0)
        assert host.refusals[-1]["why"].startswith(
            "n+1 standby already active for a1; cannot take over for a2")
        st = host.status()["host"]
        assert st["gso"]["a1"] == {"state": "NORMAL_ACTIVE", "epoch": 1}
        # and a failover taking over blocks a GSO
        m1.state = S.NORMAL_STANDBY
        host._claim = None
        host.engines["a3"].machine.state = FoState.FENCING
        assert m2.feed(start(3), 0.0)[0] == gso.SendMessage(gso.Abort(3, gso.AbortReason.BUSY))
        host.engines["a3"].machine.state = FoState.STANDBY
        assert m2.feed(start(4), 0.0)[0] == gso.StopActivity()  # nobody busy: goes ahead
    finally:
        host.close()


def test_a_gso_engine_needs_its_memory_counted(tmp_path) -> None:
    cfgs = configs(tmp_path, pmem="64 KiB")
    host = StandbyHost(cfgs, gso=["a1"])
    try:
        with pytest.raises(StandbyHostError, match="built without GSO for that session"):
            host.attach_gso("a2", _engine("a2"))
    finally:
        host.close()
    with pytest.raises(StandbyHostError, match="GSO asked for zz, which this host does not"):
        StandbyHost(cfgs, gso=["zz"])


def test_gso_memory_is_counted_and_refused_over_the_limit(tmp_path, monkeypatch) -> None:
    cfgs = configs(tmp_path)  # 16 MiB P.mem, one fabric
    g = gso_memory(cfgs[0])
    # image: 128 B header + 16 MiB + 4 KiB blob, whole pages; 2 marker pages; 8 KiB control
    assert g == {"image": 16 * 2**20 + 8192, "markers": 8192, "control": 8192, "blob": 4096,
                 "per_fabric": 16 * 2**20 + 3 * 8192}
    plain = session_memory(cfgs[0])
    with_gso = session_memory(cfgs[0], 4096)
    assert "gso" not in plain["pinned"]
    assert with_gso["pinned"]["total"] == plain["pinned"]["total"] + g["per_fabric"]
    assert with_gso["resident"] == plain["resident"] + g["per_fabric"]
    assert "GSO image" not in sh.describe_memory(cfgs[0])
    assert "+ GSO image 16392KiB + markers 8KiB + control 8KiB" in sh.describe_memory(cfgs[0], 4096)
    one, one_gso = plain["pinned"]["total"], with_gso["pinned"]["total"]
    limit = 3 * one + one // 2  # three sessions fit without GSO engines, not with them
    monkeypatch.setattr(sh.resource, "getrlimit",
                        lambda what: (limit, limit) if what == resource.RLIMIT_MEMLOCK
                        else resource.getrlimit(what))
    monkeypatch.setattr(sh, "_has_ipc_lock", lambda: False)
    monkeypatch.setattr(sh, "pinned_now", lambda: 0)
    StandbyHost(cfgs).close()
    with pytest.raises(StandbyHostError) as err:
        StandbyHost(cfgs, gso=True)
    text = str(err.value)
    assert "session for a2" in text and str(2 * one_gso) in text, text
    assert "with a GSO engine its image, 2 marker pages and 8 KiB of control" in text
    assert str(3 * one_gso) in text  # the limit to ask for
