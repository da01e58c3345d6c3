"""The cext bench in the lab on rxe and siw: a tiny run gives positive numbers on both sides
and the JSON fields the issue asks for (performance is the bench's business, not this test's)."""

from __future__ import annotations

import json

import pytest

from hsp_rdma.cext import bench
from hsp_rdma.lab import Lab

pytestmark = pytest.mark.lab


def test_tiny_run_reports_cext_and_baseline(lab: Lab) -> None:
    r = json.loads(json.dumps(bench.run_bench(lab, sizes=(64 << 10,), depth=4, iters=32,
                                              lat_iters=50)))
    (row,) = r["write_bw"]
    assert row["bytes"] == 65536 and row["iterations"] == 32
    assert row["cext_MBps"] > 0 and row["baseline_ib_write_bw_MBps"] > 0 and row["ratio"] > 0
    lat = r["latency"]
    assert lat["cext_half_rtt_us"] > 0 and lat["baseline_ib_send_lat_typical_us"] > 0
    assert lat["ratio"] > 0 and lat["iterations"] == 50
    assert r["device"] == f"{lab.info()['rdma']}0" and r["depth"] == 4 and r["method"]
