"""`hsp-bench disk --lab rxe|siw --vs drbd [--provider verbs|soft|both]`: disk replication
beside DRBD 8.4 on one lab pair, same run, identical RAM disks, ours over the verbs provider
and/or the soft VIA provider (TCP, as DRBD); the parsing, tables and exit codes (the work is in
hsp_rdma.tools.drbd_bench)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from hsp_rdma.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Parser,
    add_lab_id,
    bounded,
    goal_cell,
    table,
)
from hsp_rdma.errors import LabUnavailable
from hsp_rdma.lab import FABRICS, RDMA_KINDS
from hsp_rdma.tools import drbd_bench
from hsp_rdma.units import format_size, size_arg

LAB_ID = "diskbench"
DRBD_WORD = {"async": "A", "received": "B", "applied": "C"}  # our commit mode, DRBD's protocol
NOT_BUILT = "not built yet"
PROVIDER_CHOICES = {"verbs": ("verbs",), "soft": ("soft",), "both": drbd_bench.PROVIDERS}
SOFT_LABEL = "hsp_rdma soft/TCP"


def add_parser(sub: argparse._SubParsersAction) -> Parser:
    """`hsp-bench disk` on hsp-bench's subcommands."""
    d = drbd_bench.DiskWorkload()  # the defaults
    p = sub.add_parser("disk", help="disk replication vs DRBD 8.4: 4 KiB sync write latency, "
                       "1 MiB x 8 bandwidth, resync, same lab pair and RAM disks")
    p.add_argument("--lab", choices=RDMA_KINDS, default="rxe", help="soft device of the lab")
    p.add_argument("--vs", choices=("drbd",), default="drbd",
                   help="what ours is compared with (DRBD 8.4, the guest kernel's)")
    add_lab_id(p, LAB_ID, "the lab to use, booted (and ended) when it is down",
               subcommand=True)
    p.add_argument("--ops", type=bounded(int, 50, 100_000, "--ops"), default=d.ops_4k,
                   metavar="N",
                   help="4 KiB synchronous writes per run (fio, iodepth 1, direct, sync)")
    p.add_argument("--bulk", type=size_arg(1 << 20, 1 << 30, "--bulk"), metavar="SIZE",
                   default=d.bytes_1m,
                   help=f"bytes written as 1 MiB writes, 8 in flight (default: "
                        f"{format_size(d.bytes_1m)})")
    p.add_argument("--resync", type=size_arg(1 << 20, 1 << 30, "--resync"), metavar="SIZE",
                   default=d.resync_bytes,
                   help=f"bytes written while disconnected, then resynced (default: "
                        f"{format_size(d.resync_bytes)})")
    p.add_argument("--disk-size", type=size_arg(16 << 20, 384 << 20, "--disk-size"), metavar="SIZE",
                   default=d.disk_bytes,
                   help=f"each RAM disk (two per node: DRBD's and ours; the guests have 1 GiB) "
                        f"(default: {format_size(d.disk_bytes)})")
    p.add_argument("--fabric", choices=FABRICS, default="x",
                   help="the lab fabric DRBD and ours replicate over")
    p.add_argument("--provider", choices=tuple(PROVIDER_CHOICES), default="both",
                   help="the VIA provider our node pair runs on: verbs (the lab's soft RDMA "
                        "device), soft (the software VIA provider, VIPL over TCP between the "
                        "nodes, DRBD's transport), or both (default: one lab boot and one "
                        "DRBD run give both rows side by side, which is the comparison the "
                        "bench exists for; each provider adds about a third to the run)")
    p.add_argument("--keep", action="store_true", help="leave the lab up (when it booted it)")
    p.add_argument("--check", action="store_true",
                   help=f"exit 1 when a goal of a measured provider is missed (verbs: our "
                        f"applied 4 KiB t_typical <= {drbd_bench.APPLIED_4K_GOAL} x DRBD "
                        f"protocol C's, our resync >= {drbd_bench.RESYNC_GOAL} x DRBD's; soft, "
                        f"issue 14: our applied 4 KiB t_typical < "
                        f"{drbd_bench.SOFT_APPLIED_4K_GOAL} x DRBD C's and our applied 1 MiB "
                        f"BW >= {drbd_bench.SOFT_BW_GOAL} x DRBD C's); 69 while our side is "
                        "not built")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p


def workload(args: argparse.Namespace) -> drbd_bench.DiskWorkload:
    return drbd_bench.DiskWorkload(ops_4k=args.ops, bytes_1m=args.bulk,
                                   resync_bytes=args.resync, disk_bytes=args.disk_size,
                                   fabric=args.fabric)


def joint_problem(args: argparse.Namespace) -> str | None:
    """Sizes that do not fit together (exit 64), named with their options."""
    if args.cmd != "disk":
        return None
    problem = workload(args).problem()
    if problem:
        return f"{problem}: adjust --disk-size, --bulk, --resync or --ops"
    if args.fabric != "x":
        return (f"our disk replication (--provider {args.provider}) runs on fabric x only "
                f"(the node opens fabric x; fabric y comes with issue 13), not "
                f"{args.fabric}: use --fabric x")
    return None


def _ratio(x: float, ref: float) -> str:
    if not ref:
        return "-"
    v = x / ref
    return f"{v:.2f}" if v >= 0.1 else f"{v:.3f}"


def show(r: dict[str, Any], out: Console) -> None:
    """The disk bench's tables on OUT."""
    w = r["workload"]
    c = r["drbd"]["C"]
    t = table(f"disk writes, same run, same RAM disks ({r['rdma']} lab, fabric {r['fabric']}, "
              f"brd {format_size(w['disk_bytes'])}): {w['ops_4k']} x 4 KiB sync (iodepth 1, "
              f"direct), {format_size(w['bytes_1m'])} as 1 MiB x {w['depth_1m']} in flight",
              "replication", "mode", "4KiB t_typical [usec]", "4KiB 99% [usec]",
              "t_typical / DRBD C", f"1MiB x {w['depth_1m']} BW [MB/sec]", "BW / DRBD C",
              "goal")

    def row(name: str, mode: str, f: dict[str, Any], goal: Text | str = "-") -> None:
        t.add_row(name, mode, f"{f['write4k_p50_us']:.1f}", f"{f['write4k_p99_us']:.1f}",
                  _ratio(f["write4k_p50_us"], c["write4k_p50_us"]), f"{f['write1m_MBps']:.2f}",
                  _ratio(f["write1m_MBps"], c["write1m_MBps"]), goal)

    row("plain brd", "none", r["raw"])
    for proto, f in r["drbd"].items():
        row("DRBD 8.4", f"protocol {proto}", f)
    goals = r.get("goals") or {}
    providers = r.get("providers") or ["verbs"]
    verbs_label = f"hsp_rdma verbs/{r['rdma']}" if "soft" in providers else "hsp_rdma"
    if r.get("hsp"):
        for mode, f in r["hsp"].items():
            g = goals.get("applied_4k_p50_vs_drbd_C") if mode == "applied" else None
            row(verbs_label, f"{mode} (~{DRBD_WORD.get(mode, '?')})", f,
                goal_cell(f"<= {g['goal']} x DRBD C", g["met"]) if g else "-")
    elif "verbs" in providers:
        t.add_row(verbs_label, NOT_BUILT, "-", "-", "-", "-", "-", "-")
    if r.get("hsp_soft"):
        for mode, f in r["hsp_soft"].items():
            g4 = goals.get("soft_applied_4k_p50_vs_drbd_C") if mode == "applied" else None
            gb = goals.get("soft_applied_1m_MBps_vs_drbd_C") if mode == "applied" else None
            cell: Text | str = "-"
            if g4 and gb:
                cell = Text.assemble(goal_cell(f"4KiB < {g4['goal']} x C", g4["met"]), ", ",
                                     goal_cell(f"BW >= {gb['goal']} x C", gb["met"]))
            row(SOFT_LABEL, f"{mode} (~{DRBD_WORD.get(mode, '?')})", f, cell)
    elif "soft" in providers:
        t.add_row(SOFT_LABEL, NOT_BUILT, "-", "-", "-", "-", "-", "-")
    out.print(t)
    rs = r["resync"]
    d = rs["drbd"]
    h = rs.get("hsp")
    wbw = rs.get("ib_write_bw")
    ours = (f"; ours: {format_size(h.get('disk_bytes', 0))} of disk + "
            f"{format_size(h.get('pmem_bytes', 0))} of P.mem written while the active's "
            f"fabric was pulled, resync_rate {format_size(h['resync_rate'])}/s (set high: "
            "not the limit)") if h and "resync_rate" in h else ""
    t2 = table(f"resync after a disconnect: {format_size(w['resync_bytes'])} written on the "
               f"primary while disconnected (DRBD: c-plan-ahead 0, resync-rate 500M){ours}",
               "replication", "mode", "handshake [msec]",
               "reconnect .. UpToDate [msec]", "resync [MB/sec]", "sync phase [MB/sec]",
               "/ DRBD", "/ ib_write_bw", "goal")
    t2.columns[1].no_wrap = True  # "not built yet" on one line in a 120-column log
    ref = wbw["MBps"] if wbw else 0.0
    t2.add_row("DRBD 8.4", f"protocol {d['protocol']}",
               f"{d['handshake_s'] * 1e3:.0f}" if d.get("handshake_s") is not None else "-",
               f"{d['seconds'] * 1e3:.0f}", f"{d['MBps']:.2f}",
               f"{d['sync_only_MBps']:.2f}" if d.get("sync_only_MBps") else "-", "1.00",
               _ratio(d["MBps"], ref), "-")
    if h:
        g = goals.get("resync_vs_drbd")
        t2.add_row("hsp_rdma", "SyncSource (a)",
                   f"{h['handshake_s'] * 1e3:.0f}" if h.get("handshake_s") is not None
                   else "-",
                   f"{h['seconds'] * 1e3:.0f}" if "seconds" in h else "-", f"{h['MBps']:.2f}",
                   f"{h['sync_only_MBps']:.2f}" if h.get("sync_only_MBps") else "-",
                   _ratio(h["MBps"], d["MBps"]), _ratio(h["MBps"], ref),
                   goal_cell(f">= {g['goal']} x DRBD", g["met"]) if g else "-")
    else:
        t2.add_row("hsp_rdma", NOT_BUILT if not (r.get("hsp") or r.get("hsp_soft"))
                   else "no resync measured",
                   "-", "-", "-", "-", "-", "-", "-")
    if wbw:
        t2.add_row("ib_write_bw", f"{format_size(wbw['bytes'])} x {wbw['depth']} in flight",
                   "-", "-", f"{wbw['MBps']:.2f}", "-", _ratio(wbw["MBps"], d["MBps"]),
                   "1.00", "-")
    out.print(t2)
    if h and "plug_to_done_s" in h:
        out.print(Text(f"our resync: {h['bytes']} bytes in {h['blocks']} blocks; fabric pulled "
                       f"{h['pulled_s']:.1f} s (written alone in {h['written_alone_s']:.1f} s);"
                       f" plug .. resync_done seen by the host {h['plug_to_done_s']:.1f} s "
                       f"(channels reconnecting included); heart-beat interval "
                       f"{h['heartbeat_interval_ms']} ms (the resync steps at each)"
                       + (f"; {format_size(h['tx_bytes'])} transactions, at most "
                          f"{format_size(h['in_flight_max'])} unapplied"
                          if "in_flight_max" in h else "")
                       + (f"; interrupted {h['interruptions']} times (the source suspected "
                          "the target mid-resync and resumed from its bitmap), the last run "
                          f"{h['last_run_bytes']} bytes at {h['last_run_MBps']:.2f} MB/sec"
                          if h.get("interruptions") else "")
                       + (f"; the target asked again during it ({h['requests_during']} x)"
                          if h.get("requests_during") else "")))
    tcp = r["tcp"]
    out.print(Text(f"TCP on the same wire, a -> b: 4 KiB round trip t_typical "
                   f"{tcp['rtt_4k_p50_us']:.1f} usec, 99% {tcp['rtt_4k_p99_us']:.1f} usec "
                   f"({tcp['round_trips']} round trips); one stream of "
                   f"{format_size(w['bytes_1m'])} {tcp['stream_MBps']:.2f} MB/sec"))
    for note in r["notes"]:
        out.print(Text.assemble(("note:", "yellow"), f" {note}"))
    out.print(Text(f"method: {r['method']}", style="dim"))


def run(args: argparse.Namespace, console: Console) -> int:
    """`hsp-bench disk`: the bench with a progress display, its tables or JSON, --check."""
    ours = drbd_bench.find_ours()
    if args.check and ours is None:
        raise LabUnavailable("--check compares our disk replication with DRBD, and ours "
                             "(node.disk) is not built yet: run without --check")
    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False),
                  TimeElapsedColumn(), console=console, transient=True) as prog:
        task = prog.add_task("", total=None)
        r = drbd_bench.bench_in_lab(args.lab, args.lab_id, workload(args), ours, args.keep,
                                    step=lambda msg: prog.update(task, description=msg),
                                    providers=PROVIDER_CHOICES[args.provider])
    r = r | {"lab": args.lab, "vs": args.vs, "provider": args.provider}
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        show(r, console)
    return EXIT_FAILED if args.check and not drbd_bench.goals_met(r) else EXIT_OK
