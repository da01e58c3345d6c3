"""hsp-bench: stop-and-copy bandwidth and switch-over blackout beside perftest, same run, same pair.

`hsp-bench gso --lab rxe|siw` runs in the built-in two-node lab (booting it if needed).
Method: ib_write_bw with the GSO's chunk size and queue depth gives the baseline; then the
demo application switches over back and forth --runs times with a state image of --size.
Stop-and-copy MB/s = image bytes / (first data write posted .. last completed) on the active.
Blackout = the active's freeze .. the active's receipt of "done" (sent by the standby after
it resumed), so it is an upper bound of the real blackout, on one clock.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hsp_rdma.cli.common import EXIT_CODES_HELP, EXIT_FAILED, EXIT_OK, Parser, bounded, run_cli
from hsp_rdma.cli.units import format_size, size_arg
from hsp_rdma.core.profiles import load_profiles, pick_profile
from hsp_rdma.errors import HspError, LabError
from hsp_rdma.ha.gso_pair import finish_pair, start_pair
from hsp_rdma.lab import RDMA_KINDS, Lab, perftest

console = Console(highlight=False, stderr=False)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (perftest's way): no interpolation between runs."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def build_parser() -> Parser:
    p = Parser(prog="hsp-bench", description=__doc__, epilog=EXIT_CODES_HELP,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    g = sub.add_parser("gso", help="stop-and-copy and blackout of a Graceful Switch Over")
    g.add_argument("--lab", choices=RDMA_KINDS, default="rxe",
                   help="soft device of the built-in lab (default rxe)")
    g.add_argument("--lab-id", default="bench")
    g.add_argument("--size", type=size_arg(4096, 1 << 30, "--size"), default=16 << 20,
                   help="state image (P.mem) size, e.g. 16MiB (default 16MiB)")
    g.add_argument("--runs", type=bounded(int, 1, 1000, "--runs"), default=5,
                   help="switch-overs, alternating direction (default 5)")
    g.add_argument("--chunk", type=size_arg(4096, 1 << 30, "--chunk"), default=0,
                   help="RDMA Write size (default: the device's hw profile)")
    g.add_argument("--depth", type=bounded(int, 1, 1024, "--depth"), default=0,
                   help="writes in flight (default: the device's hw profile)")
    g.add_argument("--fabric", choices=("x", "y"), default="x")
    g.add_argument("--keep", action="store_true", help="leave the lab up")
    g.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p


def bench_gso_lab(args) -> dict:
    lab = Lab(args.lab_id)
    st = lab.status()
    if st["up"] and st.get("rdma") != args.lab:
        raise LabError(f"lab '{args.lab_id}' is up with {st.get('rdma')}, not {args.lab}: "
                       f"'hsp-lab --lab-id {args.lab_id} down' or pick another --lab-id")
    booted = False
    if not st["up"]:
        with console.status(f"booting the lab ({args.lab})"):
            lab.up(rdma=args.lab)
        booted = True
    try:
        info = lab.info()
        device = info["b"][args.fabric]["rdma_dev"]
        profile = pick_profile(device, load_profiles())
        chunk = args.chunk or profile.chunk_size
        depth = args.depth or profile.queue_depth
        iters = max(args.size // chunk, 50)
        with console.status(f"baseline: ib_write_bw -s {chunk} -t {depth} -n {iters}"):
            base = perftest.run(lab, "ib_write_bw", args.fabric,
                                ("-s", str(chunk), "-t", str(depth), "-n", str(iters)),
                                timeout=600)
        gsos: list[dict] = []
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                      console=console, transient=True) as prog:
            task = prog.add_task(f"GSO of {format_size(args.size)}", total=args.runs)

            def on_event(node: str, ev: dict) -> None:
                if ev["event"] == "gso" and ev["role"] == "active":
                    gsos.append(ev)
                    prog.update(task, completed=len(gsos))

            a, b = start_pair(lab, args.size, args.runs, fabric=args.fabric, chunk=chunk,
                              depth=depth, timeout=120 + args.runs * (5 + args.size / 2e6),
                              on_event=on_event)
            while a.job.poll() is None or b.job.poll() is None:
                time.sleep(0.1)
            res = finish_pair(a, b)
        failed = [e for e in a.of("gso") + b.of("gso") if e["outcome"] != "completed"]
        errors = [e["error"] for e in a.of("error") + b.of("error")]
        if errors or failed or len(gsos) != args.runs:
            raise HspError("GSO runs failed: " + "; ".join(
                errors + [f"epoch {e['epoch']}: {e['outcome']} ({e['reason']})" for e in failed]
                + [f"rc {res.rc}", res.stderr.get("a", "")[-300:], res.stderr.get("b", "")[-300:]]))
        mbps = [e["copy_MBps"] for e in gsos]
        blk = [e["blackout_s"] * 1000 for e in gsos]
        base_bw = base.row["bw_avg_MBps"]
        copy_bw = statistics.median(mbps)
        return {
            "state_bytes": args.size, "image_bytes": gsos[0]["image_bytes"],
            "stop_and_copy_MBps": round(copy_bw, 2),
            "baseline_ib_write_bw_MBps": base_bw,
            "ratio": round(copy_bw / base_bw, 3) if base_bw else None,
            "blackout_ms": {"min": round(min(blk), 1), "p50": round(statistics.median(blk), 1),
                            "p99": round(percentile(blk, 99), 1), "max": round(max(blk), 1)},
            "blackout_goal_ms": round(args.size / (base_bw * 1e6) * 1000 + 20, 1),
            "verify_ms_p50": round(statistics.median(
                e["verify_s"] * 1000 for e in a.of("gso") + b.of("gso")
                if e["role"] == "standby"), 1),
            "runs": args.runs, "device": device, "profile": profile.name, "chunk": chunk,
            "queue_depth": depth, "baseline_retries": base.retries, "lab": args.lab,
            "per_run": [{"epoch": e["epoch"], "copy_MBps": round(e["copy_MBps"], 2),
                         "blackout_ms": round(e["blackout_s"] * 1000, 1)} for e in gsos],
            "method": __doc__.split("Method: ", 1)[1].strip(),
        }
    finally:
        if booted and not args.keep:
            lab.down()


def show(r: dict) -> None:
    t = Table(title=f"GSO stop-and-copy vs ib_write_bw ({r['device']}, profile {r['profile']}, "
                    f"same run)")
    for col in ("#bytes", "chunk", "depth", "ib_write_bw [MB/sec]", "stop-and-copy [MB/sec]",
                "ratio"):
        t.add_column(col, justify="right")
    t.add_row(str(r["image_bytes"]), str(r["chunk"]), str(r["queue_depth"]),
              f"{r['baseline_ib_write_bw_MBps']:.2f}", f"{r['stop_and_copy_MBps']:.2f}",
              f"{r['ratio']:.2f}")
    console.print(t)
    b = r["blackout_ms"]
    t2 = Table(title=f"switch-over blackout over {r['runs']} runs")
    for col in ("t_min [msec]", "t_typical [msec]", "99% [msec]", "t_max [msec]",
                "goal: size/baseline + 20 [msec]", "standby verify [msec]"):
        t2.add_column(col, justify="right")
    t2.add_row(f"{b['min']:.1f}", f"{b['p50']:.1f}", f"{b['p99']:.1f}", f"{b['max']:.1f}",
               f"{r['blackout_goal_ms']:.1f}", f"{r['verify_ms_p50']:.1f}")
    console.print(t2)
    console.print(f"[dim]method: {r['method']}[/]")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        r = bench_gso_lab(args)
        if args.json:
            print(json.dumps(r, indent=1))
        else:
            show(r)
        return EXIT_OK if r["ratio"] else EXIT_FAILED

    return run_cli("hsp-bench", body)


if __name__ == "__main__":
    sys.exit(main())
