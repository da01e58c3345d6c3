"""`hsp-bench interface-a --lab rxe|siw`: Interface A's commit latency per mode beside
ib_send_lat, transactions/s per size and CPU per second at fixed rates, one lab pair, one run;
`--provider soft`: the same over the software VIA provider, two processes of this host, beside
a Unix-socket ping-pong (the work is in hsp_rdma.tools.ifa_bench)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.text import Text

from hsp_rdma.cli.common import EXIT_FAILED, EXIT_OK, Parser, add_lab_id, bounded, goal_cell, table
from hsp_rdma.lab import RDMA_KINDS
from hsp_rdma.tools import ifa_bench

LAB_ID = "ifabench"


def add_parser(sub: argparse._SubParsersAction) -> Parser:
    p = sub.add_parser("interface-a", help="Interface A: commit latency per mode beside "
                       "ib_send_lat, tx/s at 64 B/4 KiB/64 KiB, CPU at fixed rates")
    p.add_argument("--lab", choices=RDMA_KINDS, default=None,
                   help="soft device of the lab (default: rxe)")
    p.add_argument("--provider", choices=("verbs", "soft"), default="verbs",
                   help="verbs: the lab's RDMA devices, beside ib_send_lat; soft: the software "
                        "VIA provider, two processes on this host (no lab), beside a "
                        "Unix-socket ping-pong (default: %(default)s)")
    add_lab_id(p, LAB_ID, "the lab to use, booted (and ended) when it is down", subcommand=True)
    p.add_argument("--iters", type=bounded(int, 100, 100_000, "--iters"), default=1000,
                   help="commits per mode and ib_send_lat iterations (default: 1000)")
    p.add_argument("--tput-s", type=bounded(float, 0.5, 60, "--tput-s"), default=3.0,
                   help="seconds of transactions per size (default: 3)")
    p.add_argument("--cpu-s", type=bounded(float, 1, 120, "--cpu-s"), default=5.0,
                   help="seconds at each fixed rate (default: 5)")
    p.add_argument("--rates", type=_rates, default=(1000, 10000),
                   help="transaction rates for the CPU measure, comma-separated "
                        "(default: 1000,10000); an idle row (0 tx/s: heart beats only, "
                        "the heart-beat cost) is always measured first")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a goal is missed (applied median <= 1.5 x 2 x "
                        "ib_send_lat typical; loop CPU <= 3%% at the highest rate)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p


def joint_problem(args: argparse.Namespace) -> str | None:
    """What is wrong across interface-a's options (exit 64), or None."""
    if getattr(args, "cmd", None) != "interface-a":
        return None
    if args.provider == "soft" and args.lab is not None:
        return ("--lab makes no sense with --provider soft: its two nodes run as two processes "
                "on this host; drop --lab, or use --provider verbs")
    if args.provider == "verbs" and args.lab is None:
        args.lab = "rxe"
    return None


def _rates(text: str) -> tuple[int, ...]:
    try:
        rates = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of whole numbers "
                                         "like 1000,10000") from None
    if not rates or any(not 0 <= r <= 1_000_000 for r in rates):
        raise argparse.ArgumentTypeError("each rate should be between 0 (idle: heart beats "
                                         "only, always measured) and 1000000")
    return rates


def show(r: dict[str, Any], console: Console) -> None:
    t = table(f"Interface A commit latency, {ifa_bench.LAT_BYTES} B P.mem write ({r['lab']})",
              "mode", "#iterations", "t_min [usec]", "t_typical [usec]", "t_avg [usec]",
              "99% [usec]", "99.9% [usec]", "t_max [usec]")
    for mode, s in r["commit_us"].items():
        t.add_row(mode, str(s["iterations"]), f"{s['min']:.1f}", f"{s['p50']:.1f}",
                  f"{s['avg']:.1f}", f"{s['p99']:.1f}", f"{s['p99_9']:.1f}", f"{s['max']:.1f}")
    provider = r.get("provider", "verbs")
    soft = provider == "soft"
    b = r[ifa_bench.BASELINE_KEY[provider]]
    t.add_row("Unix-socket ping-pong (RTT/2)" if soft else "ib_send_lat (RTT/2)", "",
              f"{b['t_min_us']:.1f}", f"{b['t_typical_us']:.1f}", f"{b['t_avg_us']:.1f}",
              f"{b['p99_us']:.1f}", f"{b['p99_9_us']:.1f}", f"{b['t_max_us']:.1f}")
    console.print(t)
    g = r["goals"]
    console.print(Text.assemble(
        f"goal: applied median <= 1.5 x 2 x {'the ping-pong' if soft else 'ib_send_lat'} "
        "typical = ", f"{g['goal_us']:.1f} usec: ",
        goal_cell(f"{g['applied_p50_us']:.1f} usec (ratio to one round trip "
                  f"{r['ratio_applied_p50_vs_rtt']:.2f})", g["latency_met"])))
    t = table("Interface A throughput (async, then a sync)", "#bytes", "#transactions",
              "seconds", "tx/sec", "MB/sec")
    for size, s in r["throughput"].items():
        t.add_row(size, str(s["tx"]), f"{s['seconds']:.2f}", f"{s['tx_per_s']:.0f}",
                  f"{s['MBps']:.2f}")
    console.print(t)
    t = table("Node CPU per second [% of one core]", "target [tx/sec]", "achieved [tx/sec]",
              "active loop", "active process", "standby loop", "standby process")
    for c in r["cpu_percent"].values():
        rate = c["target_tx_per_s"]
        t.add_row("0 (idle: heart beats only)" if rate == 0 else str(rate),
                  f"{c['achieved_tx_per_s']:.0f}",
                  f"{c['active_loop']:.2f}", f"{c['active_process']:.2f}",
                  f"{c['standby_loop']:.2f}", f"{c['standby_process']:.2f}")
    console.print(t)
    hb = r.get("heartbeat_cpu")
    if hb:
        t = table(f"Heart-beat cost: CPU per second, idle pair (0 tx/s for {hb['seconds']} s), "
                  f"heart-beat interval {hb['heartbeat_interval_ms']} ms",
                  "node", "heart beats sent [/sec]", "loop [CPU ms/sec]", "loop [% of one core]",
                  "process [CPU ms/sec]", "process [% of one core]")
        for side in ("active", "standby"):
            h = hb[side]
            t.add_row(f"{side} ({'b' if side == 'active' else 'a'})",
                      f"{h['heartbeats_per_s']}", f"{h['loop_ms_per_s']:.2f}",
                      f"{h['loop_percent']:.2f}", f"{h['process_ms_per_s']:.2f}",
                      f"{h['process_percent']:.2f}")
        console.print(t)
    console.print(Text.assemble(
        f"goal: loop CPU <= {ifa_bench.CPU_GOAL_PERCENT}% at {g['cpu_rate']} tx/s "
        f"(achieved {g['cpu_achieved_tx_per_s']:.0f}): ",
        goal_cell("met" if g["cpu_met"] else "missed", g["cpu_met"])))
    for note in r["notes"]:
        console.print(Text.assemble(("note:", "yellow"), f" {note}"))
    console.print(Text(f"method: {r['method']}", style="dim"))


def run(args: argparse.Namespace, console: Console) -> int:
    with console.status(Text("")) as status:
        bench = ifa_bench.bench_soft if args.provider == "soft" else ifa_bench.bench_lab
        r = bench(args, step=lambda m: status.update(Text(m)))
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        show(r, console)
    met = r["goals"]["latency_met"] and r["goals"]["cpu_met"]
    return EXIT_FAILED if args.check and not met else EXIT_OK
