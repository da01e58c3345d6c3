"""`hsp-bench interface-a`'s idle row, host pieces: the heart-beat cost (CPU ms per second and
% of one core, per node, with the interval) from the 0 tx/s row, the idle row always measured
first, --rates taking 0, and the tables labelling it."""

from __future__ import annotations

import argparse
import io

import pytest

from hsp_rdma.cli import bench_ifa
from hsp_rdma.cli.common import make_console
from hsp_rdma.errors import LabError
from hsp_rdma.tools import ifa_bench

IDLE = {"target_tx_per_s": 0, "achieved_tx_per_s": 0.0, "active_process": 0.84,
        "active_loop": 0.31, "standby_process": 0.77, "standby_loop": 0.29, "seconds": 5.0,
        "heartbeat_interval_ms": 100, "active_heartbeats_per_s": 10.0,
        "standby_heartbeats_per_s": 9.8}
BUSY = dict(IDLE, target_tx_per_s=1000, achieved_tx_per_s=990.0, active_loop=2.5,
            standby_loop=2.1, active_process=9.0, standby_process=3.0)


def test_heartbeat_cost_from_the_idle_row() -> None:
    hb = ifa_bench.heartbeat_cpu(IDLE)
    assert hb["heartbeat_interval_ms"] == 100 and hb["seconds"] == 5.0
    assert hb["active"] == {"loop_ms_per_s": 3.1, "loop_percent": 0.31,
                            "process_ms_per_s": 8.4, "process_percent": 0.84,
                            "heartbeats_per_s": 10.0}
    assert hb["standby"]["loop_ms_per_s"] == 2.9 and hb["standby"]["heartbeats_per_s"] == 9.8


def test_heartbeat_cost_only_from_the_idle_row() -> None:
    with pytest.raises(LabError, match="idle row"):
        ifa_bench.heartbeat_cpu(BUSY)


def test_the_idle_row_is_measured_first_always() -> None:
    assert ifa_bench.cpu_rates((1000, 10000)) == (0, 1000, 10000)
    assert ifa_bench.cpu_rates((1000, 0)) == (0, 1000)
    assert ifa_bench.cpu_rates((0,)) == (0,)


def test_rates_take_zero_and_refuse_negatives() -> None:
    assert bench_ifa._rates("0,1000") == (0, 1000)
    with pytest.raises(argparse.ArgumentTypeError, match="between 0"):
        bench_ifa._rates("-1")


def test_tables_label_the_idle_row_and_the_heartbeat_cost() -> None:
    r = {"lab": "rxe",
         "commit_us": {"applied": {"iterations": 10, "min": 1.0, "p50": 2.0, "avg": 2.0,
                                   "p99": 3.0, "p99_9": 3.0, "max": 3.0}},
         "baseline_ib_send_lat_us": {"t_min_us": 1.0, "t_typical_us": 1.0, "t_avg_us": 1.0,
                                     "p99_us": 1.0, "p99_9_us": 1.0, "t_max_us": 1.0},
         "ratio_applied_p50_vs_rtt": 1.0, "throughput": {},
         "cpu_percent": {"0": IDLE, "1000": BUSY}, "heartbeat_cpu": ifa_bench.heartbeat_cpu(IDLE),
         "goals": {"applied_p50_us": 2.0, "goal_us": 3.0, "latency_met": True,
                   "cpu_rate": 1000, "cpu_achieved_tx_per_s": 990.0, "cpu_met": True},
         "notes": [], "method": "m"}
    out = io.StringIO()
    bench_ifa.show(r, make_console(file=out, width=200))
    text = out.getvalue()
    assert "0 (idle: heart beats only)" in text
    assert "heart-beat interval 100 ms" in text
    active = next(ln for ln in text.splitlines() if "active (b)" in ln)
    assert "3.10" in active and "0.31" in active and "8.40" in active and "10.0" in active
    standby = next(ln for ln in text.splitlines() if "standby (a)" in ln)
    assert "2.90" in standby and "0.29" in standby


def test_interface_a_over_soft_runs_two_nodes_beside_a_unix_ping_pong(monkeypatch) -> None:
    """`hsp-bench interface-a --provider soft`, small: the node pair as two processes of this
    host, every mode's commits, the throughput sizes, the idle row and one rate, and the same
    run's Unix-socket baseline in perftest's words (half a round trip)."""
    from hsp_rdma.via.providers import soft
    monkeypatch.setenv("HSP_VIA_SOFT_PORT_BASE", str(soft.random_port_base()))
    args = argparse.Namespace(iters=200, tput_s=0.3, cpu_s=0.5, rates=(1000,))
    r = ifa_bench.bench_soft(args)
    assert r["lab"] == "soft provider, this host" and "baseline_ib_send_lat_us" not in r
    assert r["provider"] == "soft"
    base = r["baseline_unix_socket_us"]
    assert 0 < base["t_min_us"] <= base["t_typical_us"] <= base["t_max_us"]
    for mode in ("async", "received", "applied"):
        c = r["commit_us"][mode]
        assert c["iterations"] == 200 and 0 < c["min"] <= c["p50"] <= c["max"]
    # a commit acknowledged by the peer is at least one round trip of the bare socket
    assert r["commit_us"]["applied"]["min"] >= 2 * base["t_min_us"]
    assert r["ratio_applied_p50_vs_rtt"] == pytest.approx(
        r["commit_us"]["applied"]["p50"] / (2 * base["t_typical_us"]), abs=0.01)
    assert set(r["tx_per_s"]) == {"64", "4096", "65536"} and min(r["tx_per_s"].values()) > 0
    assert list(r["cpu_percent"]) == ["0", "1000"]
    assert r["cpu_percent"]["1000"]["achieved_tx_per_s"] > 500
    assert r["heartbeat_cpu"]["active"]["heartbeats_per_s"] > 0
    g = r["goals"]
    assert g["cpu_rate"] == 1000 and g["latency_met"] == (g["applied_p50_us"] <= g["goal_us"])
    assert "AF_UNIX" in r["method"] and "ib_send_lat" not in r["method"]
    out = io.StringIO()
    bench_ifa.show(r, make_console(file=out, width=200))
    text = out.getvalue()
    assert "Unix-socket ping-pong (RTT/2)" in text and "ib_send_lat" not in text
    assert "soft provider, this host" in text


def test_interface_a_soft_refuses_lab_and_verbs_defaults_to_rxe(capsys) -> None:
    from hsp_rdma.cli import bench
    from hsp_rdma.cli.common import EXIT_USAGE
    with pytest.raises(SystemExit) as exc:
        bench.build_parser().parse_args(["interface-a", "--provider", "soft", "--lab", "siw"])
    assert exc.value.code == EXIT_USAGE
    assert "--lab makes no sense with --provider soft" in capsys.readouterr().err
    args = bench.build_parser().parse_args(["interface-a"])
    assert (args.provider, args.lab) == ("verbs", "rxe")
    assert bench.build_parser().parse_args(["interface-a", "--lab", "siw"]).lab == "siw"
    assert bench.build_parser().parse_args(["interface-a", "--provider", "soft"]).lab is None


def test_a_pair_process_that_does_not_end_is_killed_and_named() -> None:
    import sys
    import time

    from hsp_rdma.errors import HspError
    from hsp_rdma.tools import soft_bench
    argvs = {"a": [sys.executable, "-c", "print('{\"event\": \"up\"}', flush=True)"],
             "b": [sys.executable, "-c", "import time; time.sleep(60)"]}
    t0 = time.monotonic()
    with pytest.raises(HspError, match="the node b gave no result in 1 s"):
        soft_bench.run_procs(argvs, {}, timeout=1.0, what="the node")
    assert time.monotonic() - t0 < 10
