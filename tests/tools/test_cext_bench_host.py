"""The cext bench (hsp_rdma.tools.cext_bench, `hsp-bench cext`) on the host: option bounds at parse time, and the JSON a run reports
(perftest and the guest roles replaced by stand-ins; no number here is a measurement)."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
from rich.console import Console

from hsp_rdma.cli import bench as cli_bench
from hsp_rdma.cli.common import EXIT_USAGE
from hsp_rdma.lab import perftest
from hsp_rdma.tools import cext_bench as bench


def parse(argv: list[str]):
    return cli_bench.build_parser().parse_args(["cext", *argv])


def test_defaults_and_sizes() -> None:
    args = parse([])
    assert (args.lab, args.lab_id, args.sizes, args.depth) == ("rxe", "cextbench",
                                                              (65536, 1 << 20), 16)
    args = parse(["--sizes", "4KiB, 2MiB", "--lab", "siw"])
    assert args.sizes == (4096, 2 << 20) and args.lab == "siw"


@pytest.mark.parametrize("argv", [["--sizes", "12"], ["--sizes", "64KB"], ["--depth", "0"],
                                  ["--lat-iters", "5"], ["--lab", "mlx5"]])
def test_bad_options_exit_64(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == EXIT_USAGE


def test_hsp_bench_has_the_cext_subcommand() -> None:
    args = cli_bench.build_parser().parse_args(["cext", "--sizes", "1MiB", "--json"])
    assert args.cmd == "cext" and args.sizes == (1 << 20,) and args.json


def test_default_iterations_cover_the_depth() -> None:
    assert bench.default_iters(64 << 10, 16) == 512
    assert bench.default_iters(1 << 30, 16) == 64


class _FakeLab:
    def info(self) -> dict:
        node = {"x": {"ipv4": "10.77.1.1", "rdma_dev": "rxe0", "gid_index": 1}}
        return {"a": node, "b": node, "rdma": "rxe"}


def test_json_shape_and_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_perftest(lab, tool, fabric, args, timeout=0):
        row = {"bw_avg_MBps": 20.0} if tool == "ib_write_bw" else {"t_typical_us": 300.0}
        return SimpleNamespace(row=row, retries=0, notes=[])

    def fake_pair(lab, fabric, mode, size, depth, iters, poll, port, timeout, writer="cext"):
        if mode == "write":
            return {"MBps": 19.0 if writer == "cext" else 25.0}
        return {"t_min_us": 250.0, "t_typical_us": 330.0, "t_avg_us": 340.0, "p99_us": 900.0,
                "t_max_us": 2000.0}

    monkeypatch.setattr(perftest, "run", fake_perftest)
    monkeypatch.setattr(bench, "run_writer_pair", fake_pair)
    r = json.loads(json.dumps(bench.run_bench(_FakeLab(), sizes=(65536, 1 << 20), rounds=3)))
    assert [row["bytes"] for row in r["write_bw"]] == [65536, 1 << 20]
    row = r["write_bw"][0]
    # both ratios; the goal holds against the faster reference (pyverbs here: 19 < 0.9 x 25)
    assert row["ratio"] == pytest.approx(0.95) and row["ratio_to_pyverbs"] == pytest.approx(0.76)
    assert row["reference_pyverbs_event_MBps"] == 25.0 and not row["met"]
    assert {"cext_MBps", "baseline_ib_write_bw_MBps", "ratio", "iterations"} <= row.keys()
    lat = r["latency"]
    assert lat["ratio"] == pytest.approx(1.1) and lat["met"]
    assert lat["cext_half_rtt_us"] == 330.0 and lat["baseline_ib_send_lat_typical_us"] == 300.0
    assert r["device"] == "rxe0" and r["depth"] == 16 and "2^20" in r["method"]
    assert len(row["per_round"]) == 3 and len(lat["per_round"]) == 3
    assert not bench.goals_met(r)
    out = io.StringIO()
    cli_bench.show_cext(r, Console(file=out, width=200))
    assert "pyverbs event BW average [MB/sec]" in out.getvalue()
