"""The DRBD side of `hsp-bench disk` in the lab: a short run on rxe gives sane figures (p50 <=
p99, MB/sec > 0, the resync completes with what was written out of sync) and leaves neither
brd nor drbd loaded. DRBD replicates over TCP, so the soft RDMA device changes nothing for it:
rxe alone is run, sharing the session's rxe lab."""

from __future__ import annotations

import pytest

from hsp_rdma.lab import NODES, Lab
from hsp_rdma.tools import drbd_bench as db

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("lab", ["rxe"], indirect=True)
def test_short_drbd_run_gives_sane_figures_and_cleans_up(lab: Lab) -> None:
    w = db.DiskWorkload(ops_4k=200, bytes_1m=16 << 20, resync_bytes=8 << 20,
                        disk_bytes=64 << 20)
    r = db.bench_disk_lab(lab, w=w)
    for name, f in [("raw", r["raw"]), *((f"DRBD {p}", r["drbd"][p]) for p in db.PROTOCOLS)]:
        assert f["write4k_ios"] == 200, name
        assert 0 < f["write4k_p50_us"] <= f["write4k_p99_us"], name
        assert f["write1m_MBps"] > 0, name
    # replication costs: protocol C waits for the peer on every write, the plain disk never
    assert r["drbd"]["C"]["write4k_p50_us"] > r["raw"]["write4k_p50_us"]
    rs = r["resync"]["drbd"]
    assert rs["bytes"] == 8 << 20 and rs["seconds"] > 0
    assert r["resync_MBps"]["drbd"] == pytest.approx(8 / rs["seconds"], rel=0.01)
    tcp = r["tcp"]
    assert tcp["stream_MBps"] == r["tcp_MBps"] > 0 and tcp["round_trips"] == 200
    assert 0 < tcp["rtt_4k_p50_us"] <= tcp["rtt_4k_p99_us"]
    assert r["hsp"] is None and r["goals"] is None
    assert any("not built yet" in n for n in r["notes"])
    for node in NODES:
        mods = lab.exec(node, ["cat", "/proc/modules"], check=True).stdout
        assert not any(ln.split()[0] in ("drbd", "brd") for ln in mods.splitlines()), node
