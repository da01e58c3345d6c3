"""The GSO bench in the lab on rxe and siw: a tiny run (push, then pull) reports the copy beside
ib_write_bw and the event-driven pyverbs reference with ratios that are what the figures say,
every phase of the switch-over, and goals that follow from the printed numbers."""

from __future__ import annotations

import argparse
import json

import pytest

from hsp_rdma.lab import Lab
from hsp_rdma.tools import gso_bench

pytestmark = pytest.mark.lab


def test_tiny_gso_bench_reports_both_references_and_the_phases(lab: Lab) -> None:
    # 64 KiB chunks, not the profile's: perftest and the references take at least 50 writes
    # (50 MiB at rxe's 1 MiB: 40 s more). The profile's sizes reach gso_node in test_gso_lab.
    args = argparse.Namespace(lab=lab.info()["rdma"], lab_id=lab.lab_id, size=2 << 20, runs=2,
                              chunk=64 << 10, depth=0, fabric="x", keep=True, profiles=None,
                              mode="both")
    r, pull = json.loads(json.dumps(gso_bench.bench_gso_lab(args)))
    assert r["mode"] == "push" and r["runs"] == 2 and len(r["per_run"]) == 2
    copy, base, ref = (r["stop_and_copy_MBps"], r["baseline_ib_write_bw_MBps"],
                       r["reference_event_MBps"])
    assert min(copy, base, ref) > 0
    # the reference wrote a region of the image's size; the old one-buffer reference ran too
    assert r["reference_region_bytes"] == args.size and r["reference_one_chunk_event_MBps"] > 0
    assert r["ratio"] == pytest.approx(copy / base, rel=0.01)
    assert r["ratio_vs_event"] == pytest.approx(copy / ref, rel=0.01)
    # the reference ran before the push's switch-overs and after them; the copy's ratio is to
    # their mean, and the pull's runs are bracketed by the push's second and one more
    before, after = r["reference_event_runs_MBps"]
    assert min(before, after) > 0 and ref == pytest.approx((before + after) / 2, abs=0.01)
    assert r["copy_goal_met"] == (copy >= gso_bench.COPY_GOAL * ref)
    ph = r["phases_ms"]
    assert {"freeze", "copy", "marker", "await_done", "verify", "resume"} <= set(ph)
    assert all(0 <= p["p50"] <= p["max"] for p in ph.values())
    blk = r["blackout_ms"]
    assert blk["min"] == min(run["blackout_ms"] for run in r["per_run"])
    # the verdict is each run's own overhead (blackout - copy - verify), by its median
    assert r["blackout_goal_met"] == (r["overhead_ms"]["p50"] <= r["blackout_slack_ms"])
    assert r["marker_wait"] == {"rxe": "doorbell", "siw": "sleep 1000 us"}[args.lab]
    # the copy's end: the header's ack on RoCE; on iWARP (a write completes once TCP took
    # it) a read behind the header, and the reference ended with the same read
    if args.lab == "siw":
        assert r["landed_by"] == ["read"] and r["landed_read_ms"]["p50"] > 0
        assert r["reference_landed_read_ms"] > 0
    else:
        assert r["landed_by"] == ["ack"] and r["landed_read_ms"] is None
        assert r["reference_landed_read_ms"] is None
    assert r["profile"] == args.lab
    assert r["baseline_ib_read_bw_MBps"] is None and r["read_chunk"] is None
    assert r["chunk"] == 64 << 10
    # the pull, same lab run, same baselines: its copy is the standby's reads
    assert pull["mode"] == "pull" and len(pull["per_run"]) == 2
    assert pull["baseline_ib_write_bw_MBps"] == r["baseline_ib_write_bw_MBps"]
    read = pull["baseline_ib_read_bw_MBps"]
    assert read > 0 and pull["ratio_vs_ib_read_bw"] == pytest.approx(
        pull["stop_and_copy_MBps"] / read, rel=0.01)
    assert pull["read_chunk"] == 64 << 10  # (--chunk sets both sizes)
    assert pull["landed_by"] is None and pull["landed_read_ms"] is None
    assert pull["reference_event_runs_MBps"][0] == after
    assert {"seal", "await_done", "pull", "verify", "resume"} <= set(pull["phases_ms"])
    assert pull["blackout_ms"]["max"] >= pull["phases_ms"]["seal"]["max"] > 0
