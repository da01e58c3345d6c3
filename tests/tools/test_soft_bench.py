"""hsp-bench gso --provider soft on this host, small: two gso_node processes over soft VIs,
memcpy and the Unix-socket ping-pong in the same run; the CLI refuses lab/peer options."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from hsp_rdma.cli import bench
from hsp_rdma.cli.bench_soft import show
from hsp_rdma.cli.common import EXIT_USAGE, make_console
from hsp_rdma.tools import soft_bench
from hsp_rdma.via.providers import soft


def test_soft_gso_bench_runs_two_nodes_and_both_baselines(monkeypatch, capsys):
    monkeypatch.setenv("HSP_VIA_SOFT_PORT_BASE", str(soft.random_port_base()))
    args = argparse.Namespace(size=1 << 20, runs=2, chunk=0, depth=0, profiles=None,
                              mode="push", lat_iters=200)
    [r] = soft_bench.bench_gso_soft(args)
    assert r["provider"] == "soft" and r["profile"] == "soft" and r["runs"] == 2
    assert r["image_bytes"] >= 1 << 20 and len(r["per_run"]) == 2
    assert r["stop_and_copy_MBps"] > 0 and r["baseline_memcpy_MBps"] > 0
    assert r["ratio_vs_memcpy"] == pytest.approx(
        r["stop_and_copy_MBps"] / r["baseline_memcpy_MBps"], abs=0.002)
    rt = r["round_trip"]
    assert rt["iterations"] == 200 and rt["bytes"] == 64
    assert 0 < rt["unix_socket"]["t_min_us"] <= rt["unix_socket"]["t_typical_us"]
    assert 0 < rt["soft_vi"]["t_min_us"] <= rt["soft_vi"]["t_typical_us"]
    assert rt["met"] == (rt["ratio"] <= rt["goal"])
    for floor in ("soft_vi_one_thread", "unix_socket_one_thread"):
        assert 0 < rt[floor]["t_min_us"] <= rt[floor]["t_typical_us"]
    assert rt["floor_ratio"] == pytest.approx(
        rt["soft_vi_one_thread"]["t_typical_us"] / rt["unix_socket"]["t_typical_us"], abs=0.01)
    w = r["rdma_write"]
    assert w["MBps"] > 0 and w["best_MBps"] >= w["MBps"] and w["direct_writes"] > 0
    assert "ib_write_bw" not in json.dumps({k: v for k, v in r.items() if k != "method"})
    out = io.StringIO()
    show(r, make_console(file=out, width=200))
    text = out.getvalue()
    assert "memcpy, one core [MB/sec]" in text and "AF_UNIX socket" in text
    assert "RDMA Write alone" in text
    assert "stop-and-copy per run [MB/sec]: " in text and " over 2 runs" in text
    assert "both ends in one thread (floor)" in text and "floor: soft's own work" in text
    assert "method:" in text


@pytest.mark.parametrize("extra", [["--lab", "rxe"], ["--peer", "10.0.0.1"],
                                   ["--device", "mlx5_0"]])
def test_soft_provider_refuses_lab_and_peer_options(extra, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.build_parser().parse_args(["gso", "--provider", "soft", *extra])
    assert exc.value.code == EXIT_USAGE
    assert "make(s) no sense with --provider soft" in capsys.readouterr().err


def test_verbs_stays_the_default_and_lab_defaults_to_rxe():
    args = bench.build_parser().parse_args(["gso"])
    assert (args.provider, args.lab) == ("verbs", "rxe")
    assert bench.build_parser().parse_args(["gso", "--lab", "siw"]).lab == "siw"
