"""`hsp-bench fabric --lab rxe|siw` (or `--provider soft`): the traffic stop each time the
carrier fabric is pulled, beside the same run's ack gaps with nothing pulled (issue 13; the
work is in hsp_rdma.tools.fabric_bench)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.text import Text

from hsp_rdma.cli.common import EXIT_FAILED, EXIT_OK, Parser, add_lab_id, bounded, goal_cell, table
from hsp_rdma.ha.config import COMMIT_MODES
from hsp_rdma.lab import RDMA_KINDS
from hsp_rdma.tools import fabric_bench
from hsp_rdma.tools.drills.scenario import MAX_RATE

LAB_ID = "fabricbench"


def add_parser(sub: argparse._SubParsersAction) -> Parser:
    p = sub.add_parser("fabric", help="dual fabric: the traffic stop when the carrier fabric "
                       "is pulled, beside the same run's ack gaps")
    p.add_argument("--lab", choices=RDMA_KINDS, default=None,
                   help="soft device of the built-in lab (default: rxe)")
    p.add_argument("--provider", choices=("verbs", "soft"), default="verbs",
                   help="verbs: the lab's RDMA devices; soft: the software VIA provider, two "
                        "node processes on this host (a pull: its link emulation)")
    add_lab_id(p, LAB_ID, "the lab to use, booted (and ended) when it is down", subcommand=True)
    p.add_argument("--pulls", type=bounded(int, fabric_bench.MIN_PULLS, fabric_bench.MAX_PULLS,
                                           "--pulls"), default=6,
                   help="pulls in all, alternating x and y (each pulls the carrier)")
    p.add_argument("--both", action="store_true",
                   help="pull (and plug) the fabric on both nodes (default: the active's only)")
    p.add_argument("--warm", type=bounded(float, fabric_bench.WARM_S, 120, "--warm"),
                   default=fabric_bench.WARM_S, metavar="SECONDS",
                   help="after a plug, wait this long (the fabric warm again) before the "
                        "next pull")
    p.add_argument("--rate", type=bounded(int, 1, MAX_RATE, "--rate"), default=200,
                   help="the ledger workload's transactions per second")
    p.add_argument("--commit", choices=COMMIT_MODES, default="applied",
                   help="the workload's commit mode")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when the goal (median stop <= 2 heart-beat intervals) is "
                        "missed or not measured")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p


def joint_problem(args: argparse.Namespace) -> str | None:
    """What is wrong across `fabric`'s options (exit 64), or None."""
    if args.cmd != "fabric":
        return None
    if args.provider == "soft" and args.lab is not None:
        return (f"--lab {args.lab} makes no sense with --provider soft: its two nodes run as "
                "two processes on this host; drop --lab, or use --provider verbs")
    if args.lab is None:
        args.lab = "rxe"
    return None


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def show(r: dict[str, Any], console: Console) -> None:
    where = f"{r['rdma']}" + (f", lab {r['lab_id']}" if r["lab_id"] else "")
    t = table(f"traffic stop per pull of the carrier ({where}; {r['pulled']}; "
              f"{r['rate_tx_per_s']} tx/s asked, "
              f"{'-' if r['achieved_tx_per_s'] is None else round(r['achieved_tx_per_s'])} "
              f"acknowledged; commit {r['commit']})", "#", "pulled", "at [sec]",
              "stop [msec]", "clock", "carrier moves")
    for s in r["stops"]:
        t.add_row(str(s["pull"]), s["what"], "-" if s["at_s"] is None else f"{s['at_s']:.1f}",
                  "no stop measured" if s["stop_ms"] is None else f"{s['stop_ms']:.1f}",
                  s["clock"], Text("; ".join(s["switches"]) or "none told", justify="left"))
    console.print(t)
    st, b = r["stop_ms"] or {}, r["baseline"] or {}
    t2 = table(f"stop vs the same run's ack gaps with nothing pulled (heart-beat interval "
               f"{r['heartbeat_interval_ms']} ms)", "", "#samples", "t_min [msec]",
               "t_typical [msec]", "99% [msec]", "t_max [msec]",
               f"goal: t_typical <= {r['goal_ms']} ms (2 heart beats)")
    measured = sum(1 for s in r["stops"] if s["stop_ms"] is not None)
    t2.add_row("stop per pull", f"{measured} of {r['pulls']}", _ms(st.get("min")),
               _ms(st.get("p50")), "-", _ms(st.get("max")),
               "not measured" if r["goal_met"] is None
               else goal_cell("met" if r["goal_met"] else "missed", r["goal_met"]))
    t2.add_row(f"baseline ack gap ({b.get('clock', '-')})", str(b.get("gaps", 0)), "-",
               _ms(b.get("p50_ms")), _ms(b.get("p99_ms")), _ms(b.get("max_ms")), "")
    console.print(t2)
    if r.get("stop_vs_baseline") is not None:
        console.print(Text(f"ratio: median stop / median baseline ack gap = "
                           f"{r['stop_vs_baseline']:.2f}"))
    if b.get("max_at_s") is not None:
        after = b.get("max_after_plug_s")
        console.print(Text(f"the longest baseline gap began {b['max_at_s']:.1f} s after the "
                           "first step, " + ("before the first pull" if after is None
                                            else f"{after:.1f} s after the plug before it")))
    console.print(Text(f"acknowledged {r['acknowledged']}, lost {r['lost']}, failover "
                       f"{'yes' if r['failover'] else 'no'}, carrier moves (node that moved "
                       f"most) {r['fabric_switches']}"))
    if r.get("fabrics_at_end"):
        console.print(Text("fabrics when the nodes stopped: " + "; ".join(
            f"{n}: " + ", ".join(f"{f} {st}" for f, st in fabs.items())
            for n, fabs in r["fabrics_at_end"].items())))
    for note in r["notes"]:
        console.print(Text.assemble(("note:", "yellow"), f" {note}"))
    console.print(Text(f"method: {r['method']}", style="dim"))


def run(args: argparse.Namespace, console: Console) -> int:
    """`hsp-bench fabric`: the bench, its tables or JSON; --check's verdict."""
    with console.status(Text("")) as status:
        r = fabric_bench.bench(args.provider, args.lab, args.lab_id, args.pulls, args.both,
                               args.rate, args.commit, step=lambda m: status.update(Text(m)),
                               warm_s=args.warm)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        show(r, console)
    return EXIT_FAILED if args.check and not r["goal_met"] else EXIT_OK
