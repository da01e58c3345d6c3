"""The cext bench in the lab on rxe and siw: a tiny run completes with the server having seen
every write land, reports perftest, the pyverbs reference and the cext side by side with
ratios that are what the figures say, and the latencies in perftest's order (performance
itself is the bench's business, not this test's)."""

from __future__ import annotations

import json

import pytest

from hsp_rdma.lab import Lab
from hsp_rdma.tools import cext_bench as bench

pytestmark = pytest.mark.lab


def test_tiny_run_reports_cext_and_baseline(lab: Lab) -> None:
    r = json.loads(json.dumps(bench.run_bench(lab, sizes=(64 << 10,), depth=4, iters=32,
                                              lat_iters=50)))
    # run_bench raises unless both writers' servers found the written pattern in their buffer
    (row,) = r["write_bw"]
    assert row["bytes"] == 65536 and row["iterations"] == 32
    c, b, pv = (row["cext_MBps"], row["baseline_ib_write_bw_MBps"],
                row["reference_pyverbs_event_MBps"])
    assert min(c, b, pv) > 0
    assert row["ratio"] == pytest.approx(c / b, rel=0.01)
    assert row["ratio_to_pyverbs"] == pytest.approx(c / pv, rel=0.01)
    assert row["met"] == (c >= bench.BW_GOAL * max(b, pv))
    lat = r["latency"]
    assert lat["iterations"] == 50
    assert lat["ratio"] == pytest.approx(lat["cext_half_rtt_us"]
                                         / lat["baseline_ib_send_lat_typical_us"], rel=0.01)
    (one,) = lat["per_round"]
    ours = one["cext_half_rtt_us"]
    assert 0 < ours["t_min_us"] <= ours["t_typical_us"] <= ours["p99_us"] <= ours["t_max_us"]
    assert ours["t_typical_us"] == pytest.approx(lat["cext_half_rtt_us"], abs=0.01)
    rdma = lab.info()["rdma"]
    assert r["device"] == f"{rdma}0" and r["depth"] == 4 and "pyverbs" in r["method"]
    # the writer waits as the device's profile says: busy on rxe, asleep on siw
    assert r["bw_poll"] == {"rxe": "busy", "siw": "event"}[rdma]
