"""The tables as printed: perftest's units in brackets and user text stay as written
(rich markup is off in every console the CLIs make), goal cells keep their colour."""

from __future__ import annotations

import io
import json

import pytest
from rich.text import Text

from hsp_rdma.cli import bench, demo, lab
from hsp_rdma.cli.common import EXIT_FAILED, literal, make_console, run_cli
from hsp_rdma.errors import HspError, UsageError
from hsp_rdma.tools import cext_bench, gso_bench

ODD = "[/x] [red]mlx5[/red] :smile:"  # what a user or a device might put in a string


def printed(show, *args) -> str:
    out = io.StringIO()
    show(*args, make_console(file=out, width=200))
    return out.getvalue()


GSO = {
    "device": ODD, "profile": "rxe", "image_bytes": 16781312, "chunk": 1 << 20,
    "queue_depth": 4, "baseline_ib_write_bw_MBps": 20.5, "stop_and_copy_MBps": 18.25,
    "ratio": 0.89, "runs": 5, "blackout_ms": {"min": 900.0, "p50": 950.0, "p99": 990.0,
                                              "max": 999.0},
    "blackout_goal_ms": 800.0, "blackout_goal_met": False, "verify_ms_p50": 12.0,
    "overhead_ms": {"p50": 28.0, "max": 41.0}, "blackout_slack_ms": 20.0,
    "method": "freeze .. done [ms]", "mode": "push", "reference_event_MBps": 22.0,
    "reference_event_runs_MBps": [21.5, 22.5],
    "ratio_vs_event": 0.83, "copy_goal": 0.95, "copy_goal_met": False,
    "marker_wait": "yield", "per_run": [{"epoch": e, "copy_MBps": v, "blackout_ms": 950.0,
                                         "copy_ms": 880.0}
                                        for e, v in ((1, 17.5), (2, 18.25), (3, 21.0))],
    "phases_ms": {"freeze": {"p50": 1.5, "max": 2.0}, "copy": {"p50": 880.0, "max": 900.0},
                  "verify": {"p50": 12.0, "max": 13.0}},
}
CEXT = {
    "rounds": 2, "device": ODD, "depth": 16, "bw_poll": "busy", "notes": ["retried [1/3]"],
    "method": "MB = 2^20 bytes [perftest]",
    "write_bw": [{"bytes": 65536, "iterations": 512, "baseline_ib_write_bw_MBps": 20.0,
                  "reference_pyverbs_event_MBps": 25.0, "cext_MBps": 19.0, "ratio": 0.95,
                  "ratio_to_pyverbs": 0.76, "goal": 0.9, "met": False,
                  "per_round": [{"baseline_ib_write_bw_MBps": 20.0,
                                 "reference_pyverbs_event_MBps": 25.0, "cext_MBps": 19.0}] * 2}],
    "latency": {"bytes": 2, "iterations": 1000, "inline": True,
                "baseline_ib_send_lat_typical_us": 300.0, "cext_half_rtt_us": 330.0,
                "ratio": 1.1, "goal": 1.2, "met": True,
                "per_round": [{"baseline_ib_send_lat_typical_us": 300.0,
                               "cext_half_rtt_us": {"t_typical_us": 330.0}}] * 2},
}
DEMO = {
    "rdma": "rxe", "boot_s": 6.1,
    "transfers": [{"fabric": "x", "device": ODD, "ib_write_bw_MBps": 30.0,
                   "ib_send_lat_typical_us": 250.0, "ib_send_lat_p99_us": 900.0,
                   "retries": 0}],
    "cable_pull": {"y_MBps_with_x_pulled": 28.0, "x_failed_while_pulled": True},
    "gso": {"steps": [{"epoch": 1, "from": "b", "to": "a", "counter_at_freeze": 41,
                       "counter_at_resume": 41, "pmem_identical": True,
                       "image_bytes": 16781312, "copy_MBps": 17.0, "blackout_ms": 990.0}]},
    "bench": GSO,
    "drill": {"name": "kill-[x]", "passed": False, "acknowledged": 770, "lost": 1,
              "two_actives": False, "blackout_ms": 3866.2, "detect_ms": 1047.0,
              "resync_bytes": 0, "audit_repairs": 0, "failures": ["[red]1 lost"]},
}
STATUS = {
    "lab_id": "default", "rdma": "siw", "kver": "6.1.0-[x]", "up": True,
    "nodes": {"a": {"state": "running", "qemu_pid": 4242, "uptime_s": 61.4,
                    "links": {"x": "up", "y": "down"}, "ready": True},
              "b": {"state": "killed", "qemu_pid": None, "uptime_s": None,
                    "links": {"x": "up", "y": "up"}, "ready": False}},
}


def test_gso_tables_keep_units_and_user_text() -> None:
    text = printed(bench.show, GSO)
    for word in ("ib_write_bw [MB/sec]", "stop-and-copy [MB/sec]", "t_min [msec]",
                 "t_typical [msec]", "99% [msec]", "28.0 (max 41.0)", "missed",
                 "pyverbs event, mean (before / after) [MB/sec]", "22.00 (21.50 / 22.50)",
                 "t_max [msec]",
                 ODD, "method: freeze .. done [ms]",
                 "stop-and-copy per run [MB/sec]: 17.50 .. 21.00 over 3 runs"):
        assert word in text, word


def test_cext_tables_keep_units_and_user_text() -> None:
    text = printed(bench.show_cext, CEXT)
    for word in ("ib_write_bw BW average [MB/sec]", "pyverbs event BW average [MB/sec]",
                 "cext BW average [MB/sec]", "ib_send_lat t_typical [usec]",
                 "cext t_typical [usec]", ODD, "note: retried [1/3]",
                 "method: MB = 2^20 bytes [perftest]", ">= 0.9 x the faster", "<= 1.2"):
        assert word in text, word


def test_demo_tables_keep_units_and_user_text() -> None:
    out = io.StringIO()
    console = make_console(file=out, width=200)
    demo.show(DEMO, console)
    demo.show_gso(DEMO, console)
    text = out.getvalue()
    for word in ("ib_write_bw 64 KiB [MB/sec]", "ib_send_lat 2 B typical [usec]", "99% [usec]",
                 "copy [MB/sec]", "blackout [msec]", "t_min [msec]", ODD,
                 "unplanned failover: drill kill-[x] (rxe)", "detect [msec]", "3866",
                 "kill-[x]: [red]1 lost"):
        assert word in text, word


def test_lab_status_table_keeps_units() -> None:
    out = io.StringIO()
    make_console(file=out, width=200).print(lab.status_table(STATUS))
    text = out.getvalue()
    assert "uptime [s]" in text and "kernel 6.1.0-[x]" in text and "x:up y:down" in text


def test_goal_cells_are_coloured_by_the_verdict() -> None:
    class Grab:
        def __init__(self) -> None:
            self.printed: list = []

        def print(self, thing, **_kw) -> None:
            self.printed.append(thing)

    grab = Grab()
    bench.show_cext(CEXT, grab)
    bw, lat = grab.printed[:2]
    assert [(str(c), c.style) for c in bw.columns[-1].cells] == [(">= 0.9 x the faster", "red")]
    assert [(str(c), c.style) for c in lat.columns[-1].cells] == [("<= 1.2", "green")]
    grab = Grab()
    bench.show(GSO, grab)
    tables = [t for t in grab.printed if hasattr(t, "columns")]  # (the lines between: Text)
    # the blackout's verdict: the runs' median overhead (28 ms) against 20 ms
    assert [(str(c), c.style) for c in tables[1].columns[-1].cells] == [("missed", "red")]


def test_status_and_progress_texts_are_literal() -> None:
    console = make_console(file=io.StringIO(), width=100)
    with console.status(Text("")) as status:
        literal(status.update)("[/x] would end a markup tag")  # a str here would raise


def test_run_cli_prints_the_error_as_written(capsys) -> None:
    def fail() -> int:
        raise HspError("device '[/x]' [red]gone")

    assert run_cli("hsp-bench", fail) == EXIT_FAILED
    assert capsys.readouterr().err == "hsp-bench: device '[/x]' [red]gone\n"

    def misuse() -> int:
        raise UsageError("lab id '[/x]' is not valid")

    assert run_cli("hsp-lab", misuse) == 64


def test_gso_run_prints_tables_and_checks_the_goal(monkeypatch: pytest.MonkeyPatch,
                                                   capsys) -> None:
    def fake_bench(args, step, on_gso):
        step("[/x] booting")  # progress texts from below are shown as written
        on_gso(1)
        return [GSO]

    out = io.StringIO()
    monkeypatch.setattr(bench, "console", make_console(file=out, width=200))
    monkeypatch.setattr(gso_bench, "bench_gso_lab", fake_bench)
    args = bench.build_parser().parse_args(["gso", "--check"])
    assert bench.run_gso(args) == EXIT_FAILED  # the goal in GSO is missed
    assert "t_min [msec]" in out.getvalue()
    args = bench.build_parser().parse_args(["gso", "--json"])
    assert bench.run_gso(args) == 0
    assert json.loads(capsys.readouterr().out)["device"] == ODD


def test_the_fixtures_goals_are_what_the_cells_say() -> None:
    assert not cext_bench.goals_met(CEXT) and not gso_bench.goals_met(GSO)


def test_gso_both_modes_print_one_result_per_mode(monkeypatch: pytest.MonkeyPatch,
                                                  capsys) -> None:
    pull = GSO | {"mode": "pull", "stop_and_copy_MBps": 15.0, "ratio_vs_event": 0.68,
                  "baseline_ib_read_bw_MBps": 16.0, "ratio_vs_ib_read_bw": 0.94,
                  "phases_ms": {"seal": {"p50": 40.0, "max": 41.0},
                                "pull": {"p50": 900.0, "max": 950.0}}}
    out = io.StringIO()
    monkeypatch.setattr(bench, "console", make_console(file=out, width=250))
    monkeypatch.setattr(gso_bench, "bench_gso_lab", lambda args, step, on_gso: [GSO, pull])
    assert bench.run_gso(bench.build_parser().parse_args(["gso", "--mode", "both"])) == 0
    text = out.getvalue()
    assert "push vs pull, same run" in text and "ib_read_bw [MB/sec]" in text
    assert "seal" in text and "Sealed, then reads the image" in text
    assert bench.run_gso(bench.build_parser().parse_args(["gso", "--mode", "both",
                                                          "--json"])) == 0
    assert [r["mode"] for r in json.loads(capsys.readouterr().out)] == ["push", "pull"]


def test_gso_fabrics_both_prints_one_fabric_beside_two(monkeypatch: pytest.MonkeyPatch,
                                                      capsys) -> None:
    one = GSO | {"fabrics": 1, "fabrics_used": ["x"], "stripe_share": None}
    two = GSO | {"fabrics": 2, "fabrics_used": ["x+y"], "stripe_share": 0.499,
                 "stop_and_copy_MBps": GSO["stop_and_copy_MBps"] * 0.86}
    out = io.StringIO()
    monkeypatch.setattr(bench, "console", make_console(file=out, width=250))
    monkeypatch.setattr(gso_bench, "bench_gso_lab", lambda args, step, on_gso: [one, two])
    assert bench.run_gso(bench.build_parser().parse_args(["gso", "--fabrics", "both"])) == 0
    text = out.getvalue()
    assert "one fabric vs two (push), same run" in text and "striped over fabrics x and y" in text
    assert "50%" in text and "two fabrics / one: 0.86 x" in text and "stripe = false" in text
    assert bench.run_gso(bench.build_parser().parse_args(["gso", "--fabrics", "both",
                                                          "--json"])) == 0
    assert [r["fabrics"] for r in json.loads(capsys.readouterr().out)] == [1, 2]


@pytest.mark.parametrize("argv,says", [
    (["gso", "--fabrics", "2", "--mode", "pull"], "use --mode push and --fabric x"),
    (["gso", "--fabrics", "both", "--fabric", "y"], "use --mode push and --fabric x"),
    (["gso", "--fabrics", "2", "--provider", "soft"], "runs in the lab"),
])
def test_gso_fabrics_refuses_what_cannot_stripe(argv, says, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.build_parser().parse_args(argv)
    assert exc.value.code == 64 and says in capsys.readouterr().err
