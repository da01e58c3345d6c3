"""hsp-bench: stop-and-copy bandwidth and switch-over blackout beside perftest, same run, same pair.

`hsp-bench gso --lab rxe|siw` runs in the built-in two-node lab (booting it if needed);
`hsp-bench gso --peer` and `hsp-bench serve` run it on two real hosts; `hsp-bench gso --provider
soft` on this host over the software VIA provider (hsp_rdma.cli.bench_soft).
`hsp-bench cext` compares the Cython bindings with ib_write_bw / ib_send_lat and with an
event-driven pyverbs writer. `hsp-bench disk --vs drbd` puts disk replication beside DRBD 8.4
(hsp_rdma.cli.bench_disk). `hsp-bench fabric` pulls the carrier fabric and times each traffic
stop beside the same run's ack gaps (hsp_rdma.cli.bench_fabric). Each prints its method; the
work is in hsp_rdma.tools.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from hsp_rdma.cli import bench_disk, bench_fabric, bench_ifa, bench_soft
from hsp_rdma.cli.common import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_OK,
    Parser,
    RawDescriptionHelpFormatter,
    add_lab_id,
    blackout_goal,
    bounded,
    copy_spread,
    goal_cell,
    literal,
    make_console,
    run_cli,
    table,
)
from hsp_rdma.core.profiles import MAX_QUEUE_DEPTH
from hsp_rdma.lab import FABRICS, RDMA_KINDS
from hsp_rdma.tools import cext_bench, gso_bench
from hsp_rdma.tools.cext_peer import DEFAULT_PORT
from hsp_rdma.units import format_size, size_arg

console = make_console()


def ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an IPv4 address") from None


LAB_IDS = {"gso": "bench", "cext": "cextbench"}  # each lab subcommand's own lab by default


def build_parser() -> Parser:
    p = Parser(prog="hsp-bench", description=__doc__, epilog=EXIT_CODES_HELP,
               formatter_class=RawDescriptionHelpFormatter)
    add_lab_id(p, None, "the lab gso, cext and disk use or boot; also accepted after the "
               "subcommand (default: gso bench, cext cextbench, disk diskbench)")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    g = sub.add_parser("gso", help="stop-and-copy and blackout of a Graceful Switch Over")
    g.add_argument("--lab", choices=RDMA_KINDS, default=None,
                   help="soft device of the built-in lab (default: rxe)")
    g.add_argument("--provider", choices=("verbs", "soft"), default="verbs",
                   help="verbs: RDMA devices (lab or --peer); soft: the software VIA provider, "
                        "two processes on this host beside memcpy and a Unix-socket ping-pong")
    g.add_argument("--peer", metavar="ADDRESS", type=ipv4,
                   help="two real hosts: the IPv4 of the host running 'hsp-bench serve' "
                   "(then --device and --local-ip are needed, --lab is ignored)")
    g.add_argument("--device", help="with --peer: this host's RDMA device (e.g. mlx5_0)")
    g.add_argument("--local-ip", type=ipv4, help="with --peer: this host's IPv4 on that device")
    add_lab_id(g, LAB_IDS["gso"], "the lab to use, booted (and ended) when it is down",
               subcommand=True)
    g.add_argument("--size", type=size_arg(4096, 1 << 30, "--size"), default=16 << 20,
                   help="state image (P.mem) size, e.g. 16MiB (default: 16MiB)")
    g.add_argument("--runs", type=bounded(int, 1, 1000, "--runs"), default=5,
                   help="switch-overs, alternating direction")
    g.add_argument("--chunk", type=size_arg(4096, 1 << 30, "--chunk"), default=0,
                   help="RDMA Write size, and a pull's RDMA Read size (default: the "
                        "device's hw profile, chunk_size and read_chunk_size)")
    g.add_argument("--depth", type=bounded(int, 1, MAX_QUEUE_DEPTH, "--depth"), default=0,
                   help="writes in flight, at most what a VI carries besides the control "
                        "frames (default: the device's hw profile)")
    g.add_argument("--fabric", choices=FABRICS, default="x",
                   help="the lab fabric the GSO and ib_write_bw run on")
    g.add_argument("--profiles", metavar="DIR",
                   help="a directory of hw profiles searched before the installed ones")
    g.add_argument("--mode", choices=("push", "pull", "both"), default="push",
                   help="the data path: push (the active RDMA-writes the image), pull (the "
                        "standby RDMA-reads it) or both, one after the other in the same lab "
                        "run, one result per mode (default: %(default)s)")
    g.add_argument("--fabrics", choices=("1", "2", "both"), default="1",
                   help="push over fabric x alone (1), striped across x and y (2: both nodes "
                        "open both fabrics, the copy's writes spread over a VI on each), or "
                        "both, one after the other in the same lab run (default: %(default)s)")
    g.add_argument("--keep", action="store_true", help="leave the lab up")
    g.add_argument("--check", action="store_true",
                   help="exit 1 when a printed goal is missed (copy >= 0.95 x the pyverbs "
                        "reference; each run's blackout - copy - verify, their median, <= 20 ms)")
    g.add_argument("--json", action="store_true", help="one JSON object on stdout")
    cx = sub.add_parser("cext", help="cext RDMA Write bandwidth and send/receive latency beside "
                        "ib_write_bw and ib_send_lat, same run")
    add_cext_arguments(cx)
    bench_disk.add_parser(sub)
    bench_ifa.add_parser(sub)
    bench_fabric.add_parser(sub)
    sv = sub.add_parser("serve", help="the standby side of 'gso --peer' on two real hosts")
    sv.add_argument("--device", required=True, help="this host's RDMA device")
    sv.add_argument("--local-ip", required=True, type=ipv4,
                    help="this host's IPv4 on that device")
    for opt in ("--size", "--runs", "--chunk", "--depth", "--profiles"):
        sv._add_action(next(a for a in g._actions if opt in a.option_strings))
    sv.add_argument("--wait", type=bounded(float, 1, 86400, "--wait"), default=600.0,
                    help="seconds from the start until the peer's 'hsp-bench gso --peer' "
                         "connects its GSO runs (its ib_write_bw baseline comes first)")
    p.checks.append(bench_soft.joint_problem)
    p.checks.append(_joint_problem)
    p.checks.append(bench_disk.joint_problem)
    p.checks.append(bench_fabric.joint_problem)
    p.checks.append(bench_ifa.joint_problem)
    return p


def _joint_problem(args: argparse.Namespace) -> str | None:
    """What is wrong across options, found once they are all parsed (exit 64)."""
    if args.cmd == "gso" and args.lab is None:
        args.lab = "rxe"  # (None until here: --provider soft refuses an explicit --lab)
    if args.cmd == "gso" and args.peer and not (args.device and args.local_ip):
        return "--peer needs --device and --local-ip"
    if args.cmd == "gso" and args.fabrics != "1" and (args.peer or args.provider == "soft"):
        return (f"--fabrics {args.fabrics} runs in the lab (--lab rxe|siw), whose nodes have "
                "fabrics x and y; on two real hosts run gso_node with --y-device, "
                "--y-local-ip, --y-peer-ip and --stripe")
    if args.cmd == "gso" and args.fabrics != "1" and (args.mode != "push"
                                                      or args.fabric != "x"):
        return (f"--fabrics {args.fabrics} stripes a push from fabric x across x and y: use "
                "--mode push and --fabric x (a pull's reads run on one VI)")
    if args.cmd == "gso" and args.peer and args.mode != "push":
        return (f"--mode {args.mode} runs in the lab (--lab rxe|siw): a pull's copy is timed "
                "on the standby, whose events stay on the other host; use --mode push with "
                "--peer")
    if args.cmd == "cext" and args.iters and args.iters < args.depth:
        return (f"--iters {args.iters} is below --depth {args.depth}: perftest needs at least "
                "DEPTH iterations")
    if args.cmd == "serve" and hasattr(args, "lab_id"):
        return "--lab-id is for gso and cext: serve runs on this real host, not in a lab"
    return None


def add_cext_arguments(p: Parser) -> None:
    """`hsp-bench cext`'s options."""
    def sizes(text: str) -> tuple[int, ...]:
        one = size_arg(64, 1 << 30, "--sizes")
        return tuple(one(s) for s in text.split(",") if s.strip())

    p.add_argument("--lab", choices=RDMA_KINDS, default="rxe",
                   help="soft device of the lab")
    add_lab_id(p, LAB_IDS["cext"], "the lab to use, booted (and ended) when it is down",
               subcommand=True)
    p.add_argument("--sizes", type=sizes, default=(64 << 10, 1 << 20),
                   help="RDMA Write sizes, comma-separated (default: 64KiB,1MiB)")
    p.add_argument("--depth", type=bounded(int, 1, 64, "--depth"), default=16,
                   help="writes in flight, also perftest's -t")
    p.add_argument("--iters", type=bounded(int, 0, 1_000_000, "--iters"), default=0,
                   help="writes per size, also perftest's -n; at least --depth (default: "
                        "about 32 MiB per size)")
    p.add_argument("--lat-iters", type=bounded(int, 10, 100_000, "--lat-iters"), default=1000,
                   help="round trips, also ib_send_lat's -n")
    p.add_argument("--bw-poll", choices=("auto", "busy", "event"), default="auto",
                   help="how the cext writer waits for completions: auto (default) = as the "
                        "device's hw profile says (completion_wait: busy on real NICs and rxe, event on siw)")
    p.add_argument("--rounds", type=bounded(int, 1, 20, "--rounds"), default=1,
                   help="repeat baseline + cext this often; medians reported")
    p.add_argument("--fabric", choices=FABRICS, default="x",
                   help="the lab fabric the runs use")
    p.add_argument("--profiles", metavar="DIR",
                   help="a directory of hw profiles searched before the installed ones "
                        "(for --bw-poll auto)")
    p.add_argument("--port", type=bounded(int, 1024, 65000, "--port"), default=DEFAULT_PORT,
                   help="first rdma_cm port of the cext runs (one per run)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a goal (bandwidth >= 0.9x the faster reference, latency "
                        "<= 1.2x) is missed")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def cext_lab(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """The cext bench (tools.cext_bench.bench_lab) with a progress display."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False),
                  TimeElapsedColumn(), console=console, transient=True) as prog:
        task = prog.add_task("", total=None)
        return cext_bench.bench_lab(args, step=lambda msg: prog.update(task, description=msg))


def ref_cell(r: dict[str, Any]) -> str:
    """The pyverbs reference's cell: the mean of its runs before and after the switch-overs,
    and the two runs."""
    ref, runs = r.get("reference_event_MBps"), r.get("reference_event_runs_MBps")
    if not ref:
        return "-"
    return f"{ref:.2f}" + (f" ({runs[0]:.2f} / {runs[1]:.2f})" if runs else "")


def show(r: dict[str, Any], out: Console | None = None) -> None:
    """The GSO bench's tables, on OUT (this module's console unless told)."""
    out = console if out is None else out
    ref = r.get("reference_event_MBps")
    mode = r.get("mode", "push")
    read = r.get("baseline_ib_read_bw_MBps")
    striped = ", striped over fabrics x and y" if r.get("fabrics") == 2 else ""
    t = table(f"GSO stop-and-copy ({mode}{striped}) vs ib_write_bw and an "
              f"event-driven pyverbs writer ({r['device']}, profile {r['profile']}, same run)",
              "#bytes", "chunk", "depth", "ib_write_bw [MB/sec]",
              "pyverbs event, mean (before / after) [MB/sec]",
              "stop-and-copy [MB/sec]", "ratio to ib_write_bw", "ratio to pyverbs",
              f"goal: >= {r.get('copy_goal', 0.95)} x pyverbs",
              *(("read chunk", "ib_read_bw [MB/sec]", "ratio to ib_read_bw") if read else ()))
    t.add_row(str(r["image_bytes"]), str(r["chunk"]), str(r["queue_depth"]),
              f"{r['baseline_ib_write_bw_MBps']:.2f}", ref_cell(r),
              f"{r['stop_and_copy_MBps']:.2f}", f"{r['ratio']:.2f}",
              f"{r['ratio_vs_event']:.2f}" if ref else "-",
              goal_cell("met" if r["copy_goal_met"] else "missed", r["copy_goal_met"])
              if ref else "- (no reference on real hosts)",
              *((str(r.get("read_chunk") or r["chunk"]), f"{read:.2f}",
                 f"{r['ratio_vs_ib_read_bw']:.2f}") if read else ()))
    out.print(t)
    spread = copy_spread(r)
    if spread is not None:
        out.print(spread)
    b = r["blackout_ms"]
    wait = ("Sealed, then reads the image" if mode == "pull"
            else f"the marker: {r.get('marker_wait', '?')}")
    heads, cells = blackout_goal(r)
    t2 = table(f"switch-over blackout over {r['runs']} runs ({mode}; the standby waits for "
               f"{wait})", "t_min [msec]", "t_typical [msec]",
               "99% [msec]", "t_max [msec]", "standby verify [msec]", *heads)
    t2.add_row(f"{b['min']:.1f}", f"{b['p50']:.1f}", f"{b['p99']:.1f}", f"{b['max']:.1f}",
               f"{r['verify_ms_p50']:.1f}" if r["verify_ms_p50"] is not None else "-", *cells)
    out.print(t2)
    phases = r.get("phases_ms") or {}
    if phases:
        t3 = table("where the time goes (per phase, over the completed runs)", "phase",
                   "t_typical [msec]", "t_max [msec]")
        for name in ("freeze", "copy", "marker", "seal", "await_done", "pull", "verify",
                     "resume"):
            if name in phases:
                t3.add_row(name, f"{phases[name]['p50']:.2f}", f"{phases[name]['max']:.2f}")
        dig = r.get("digest_ms")
        if dig:
            # pull: the active digests in a thread after Sealed, while the standby reads
            label = "digest (beside the pull)" if mode == "pull" else "digest (part of copy)"
            t3.add_row(label, f"{dig['p50']:.2f}", f"{dig['max']:.2f}")
        bdig = r.get("standby_digest_ms")
        if bdig:
            t3.add_row("standby digest (part of pull)", f"{bdig['p50']:.2f}",
                       f"{bdig['max']:.2f}")
        out.print(t3)
    out.print(Text(f"method: {r['method']}", style="dim"))


def show_modes(results: list[dict[str, Any]], out: Console | None = None) -> None:
    """Push beside pull, measured in the same lab run (--mode both)."""
    out = console if out is None else out
    t = table("push vs pull, same run", "mode", "stop-and-copy [MB/sec]", "ratio to pyverbs",
              "blackout t_typical [msec]", "blackout t_max [msec]")
    for r in results:
        ratio = r["ratio_vs_event"]
        t.add_row(r["mode"], f"{r['stop_and_copy_MBps']:.2f}",
                  f"{ratio:.2f}" if ratio is not None else "-",
                  f"{r['blackout_ms']['p50']:.1f}", f"{r['blackout_ms']['max']:.1f}")
    out.print(t)


def show_fabrics(results: list[dict[str, Any]], out: Console | None = None) -> None:
    """One fabric beside two (the push striped across x and y), same run (--fabrics both)."""
    out = console if out is None else out
    t = table("one fabric vs two (push), same run", "fabrics", "copy went over",
              "stop-and-copy [MB/sec]", "ratio to pyverbs (one fabric)", "writes on y",
              "blackout t_typical [msec]", "blackout t_max [msec]")
    for r in results:
        ratio, share = r["ratio_vs_event"], r.get("stripe_share")
        t.add_row(str(r.get("fabrics", 1)), ", ".join(r.get("fabrics_used") or ["?"]),
                  f"{r['stop_and_copy_MBps']:.2f}", f"{ratio:.2f}" if ratio is not None else "-",
                  f"{share:.0%}" if share is not None else "-",
                  f"{r['blackout_ms']['p50']:.1f}", f"{r['blackout_ms']['max']:.1f}")
    out.print(t)
    if len(results) == 2 and results[0]["stop_and_copy_MBps"]:
        gain = results[1]["stop_and_copy_MBps"] / results[0]["stop_and_copy_MBps"]
        out.print(Text(f"two fabrics / one: {gain:.2f} x the copy rate; the hw profile's "
                       f"stripe = {'true' if gain > 1 else 'false'} keeps the faster",
                       style="dim"))


def show_cext(r: dict[str, Any], console: Console) -> None:
    """The cext bench's tables."""
    rounds = f", median of {r['rounds']} rounds" if r["rounds"] > 1 else ""
    t = table(f"RDMA Write: cext vs ib_write_bw and an event-driven pyverbs writer "
              f"({r['device']}, depth {r['depth']}, cext waits: {r['bw_poll']}, "
              f"same run{rounds})", "#bytes", "#iterations", "ib_write_bw BW average [MB/sec]",
              "pyverbs event BW average [MB/sec]", "cext BW average [MB/sec]",
              "ratio to ib_write_bw", "ratio to pyverbs", "goal")
    for row in r["write_bw"]:
        t.add_row(str(row["bytes"]), str(row["iterations"]),
                  f"{row['baseline_ib_write_bw_MBps']:.2f}",
                  f"{row['reference_pyverbs_event_MBps']:.2f}", f"{row['cext_MBps']:.2f}",
                  f"{row['ratio']:.2f}", f"{row['ratio_to_pyverbs']:.2f}",
                  goal_cell(f">= {row['goal']} x the faster", row["met"]))
    console.print(t)
    lat = r["latency"]
    inline = "inline" if lat.get("inline") else "not inline"
    t2 = table(f"send/receive half round trip: cext vs ib_send_lat ({lat['bytes']} B "
               f"{inline}, {lat['iterations']} iterations)", "#bytes", "#iterations",
               "ib_send_lat t_typical [usec]", "cext t_typical [usec]", "ratio", "goal")
    t2.add_row(str(lat["bytes"]), str(lat["iterations"]),
               f"{lat['baseline_ib_send_lat_typical_us']:.2f}", f"{lat['cext_half_rtt_us']:.2f}",
               f"{lat['ratio']:.2f}", goal_cell(f"<= {lat['goal']}", lat["met"]))
    console.print(t2)
    if r["rounds"] > 1:
        for row in r["write_bw"]:
            console.print(Text(
                f"{row['bytes']} B per round (ib_write_bw / pyverbs / cext MB/sec): "
                + ", ".join(f"{p['baseline_ib_write_bw_MBps']:.1f} / "
                            f"{p['reference_pyverbs_event_MBps']:.1f} / {p['cext_MBps']:.1f}"
                            for p in row["per_round"]), style="dim"))
        console.print(Text(
            "latency per round (ib_send_lat / cext t_typical usec): "
            + ", ".join(f"{p['baseline_ib_send_lat_typical_us']:.0f} / "
                        f"{p['cext_half_rtt_us']['t_typical_us']:.0f}"
                        for p in lat["per_round"]), style="dim"))
    for note in r["notes"]:
        console.print(Text.assemble(("note:", "yellow"), f" {note}"))
    console.print(Text(f"method: {r['method']}", style="dim"))


def run_cext(args: argparse.Namespace) -> int:
    """`hsp-bench cext`: the bench, its tables or JSON, the goals as the exit code."""
    r = cext_lab(args, console) | {"lab": args.lab}
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        show_cext(r, console)
    return EXIT_FAILED if args.check and not cext_bench.goals_met(r) else EXIT_OK


def run_gso(args: argparse.Namespace) -> int:
    """`hsp-bench gso`: the bench with a progress bar, its tables or JSON; --check's verdict."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                  TextColumn("{task.completed}/{task.total} GSO", markup=False),
                  TimeElapsedColumn(), console=console, transient=True) as prog:
        task = prog.add_task("", total=args.runs * len(gso_bench.modes_of(args))
                             * len(gso_bench.fabric_counts(args)))

        def step(msg: str) -> None:
            prog.update(task, description=msg)

        if args.peer:
            results = [gso_bench.bench_gso_peer(args, step=step)]
        else:
            results = gso_bench.bench_gso_lab(args, step=step,
                                              on_gso=lambda n: prog.update(task, completed=n))
    if args.json:  # one object per mode: a list when both ran
        print(json.dumps(results[0] if len(results) == 1 else results, indent=1))
    else:
        for r in results:
            show(r)
        if len(gso_bench.modes_of(args)) > 1:
            show_modes(results)
        if len(gso_bench.fabric_counts(args)) > 1:
            show_fabrics(results)
    met = all(gso_bench.goals_met(r) for r in results)
    return EXIT_FAILED if args.check and not met else EXIT_OK


def serve(args: argparse.Namespace) -> int:
    """`hsp-bench serve`: the standby side on two real hosts."""
    profile = gso_bench.profile_for(args.device, args.profiles)  # a wrong device fails here
    console.print(f"serving: {args.runs} GSO(s) of {format_size(args.size)} at "
                  f"{args.local_ip}, and ib_write_bw servers on {args.device} (profile "
                  f"{profile.name}) for the peer's baseline until they are done; waiting up "
                  f"to {args.wait:g} s for the peer")
    with console.status(Text("")) as status:
        r = gso_bench.serve_peer(args, step=literal(status.update))
    console.print(f"served {r['served']} GSO(s) and {r['baseline_runs']} ib_write_bw run(s)"
                  + (f"; errors: {r['errors']}" if r["errors"] else ""))
    return EXIT_OK if r["served"] and not r["errors"] else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.cmd == "cext":
            return run_cext(args)
        if args.cmd == "serve":
            return serve(args)
        if args.cmd == "disk":
            return bench_disk.run(args, console)
        if args.cmd == "interface-a":
            return bench_ifa.run(args, console)
        if args.cmd == "fabric":
            return bench_fabric.run(args, console)
        if args.provider == "soft":
            return bench_soft.run(args, console)
        return run_gso(args)

    return run_cli("hsp-bench", body)


if __name__ == "__main__":
    sys.exit(main())
