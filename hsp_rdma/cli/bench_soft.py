"""`hsp-bench gso --provider soft`: the GSO over the software VIA provider on this host, beside
a single-core memcpy and a Unix-socket ping-pong, same run (the work is in
hsp_rdma.tools.soft_bench)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.text import Text

from hsp_rdma.cli.common import EXIT_FAILED, EXIT_OK, blackout_goal, copy_spread, goal_cell, table
from hsp_rdma.tools import soft_bench

# What `--provider soft` cannot take (exit 64): the soft pair runs on this host.
NOT_WITH_SOFT = (("lab", "--lab"), ("peer", "--peer"), ("device", "--device"),
                 ("local_ip", "--local-ip"))


def joint_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with `gso --provider soft`'s options, or None."""
    if args.cmd != "gso" or getattr(args, "provider", "verbs") != "soft":
        return None
    given = [opt for dest, opt in NOT_WITH_SOFT if getattr(args, dest, None)]
    if given:
        return (f"{', '.join(given)} make(s) no sense with --provider soft: its two nodes run "
                "as two processes on this host (127.0.0.1/127.0.0.2); drop them, or use "
                "--provider verbs")
    return None


def show(r: dict[str, Any], console: Console) -> None:
    t = table(f"GSO stop-and-copy ({r['mode']}) over soft VIs vs memcpy ({r['device']}, "
              f"profile {r['profile']}, same run)", "#bytes", "chunk", "depth",
              "memcpy, one core [MB/sec]", "stop-and-copy [MB/sec]", "ratio to memcpy",
              f"goal: >= {r['copy_goal']} x memcpy")
    t.add_row(str(r["image_bytes"]), str(r["chunk"]), str(r["queue_depth"]),
              f"{r['baseline_memcpy_MBps']:.1f}", f"{r['stop_and_copy_MBps']:.1f}",
              f"{r['ratio_vs_memcpy']:.3f}",
              goal_cell("met" if r["copy_goal_met"] else "missed", r["copy_goal_met"]))
    w = r.get("rdma_write")
    if w:
        t.add_row("", str(w["chunk"]), "all", f"{r['baseline_memcpy_MBps']:.1f}",
                  f"{w['MBps']:.1f} (RDMA Write alone)", f"{w['ratio_vs_memcpy']:.3f}",
                  f"{w['direct_writes']} direct, {w['frame_writes']} frames")
    console.print(t)
    spread = copy_spread(r)
    if spread is not None:
        console.print(spread)
    b = r["blackout_ms"]
    heads, cells = blackout_goal(r)
    t2 = table(f"switch-over blackout over {r['runs']} runs", "t_min [msec]",
               "t_typical [msec]", "99% [msec]", "t_max [msec]", *heads)
    t2.add_row(f"{b['min']:.1f}", f"{b['p50']:.1f}", f"{b['p99']:.1f}", f"{b['max']:.1f}",
               *cells)
    console.print(t2)
    phases = r.get("phases_ms") or {}
    if phases:
        t3 = table("where the time goes (per phase)", "phase", "t_typical [msec]",
                   "t_max [msec]")
        for name, v in phases.items():
            t3.add_row(name, f"{v['p50']:.2f}", f"{v['max']:.2f}")
        dig = r.get("digest_ms")
        if dig:
            t3.add_row("digest (part of copy/seal)", f"{dig['p50']:.2f}", f"{dig['max']:.2f}")
        bdig = r.get("standby_digest_ms")
        if bdig:
            t3.add_row("standby digest (part of pull)", f"{bdig['p50']:.2f}",
                       f"{bdig['max']:.2f}")
        console.print(t3)
    rt = r["round_trip"]
    t4 = table(f"send/receive round trip, {rt['bytes']} B, {rt['iterations']} iterations "
               "(full round trips, not halved)", "path", "t_min [usec]", "t_typical [usec]",
               "t_avg [usec]", "99% percentile [usec]", "99.9% percentile [usec]",
               "t_max [usec]")
    for name, key in (("AF_UNIX socket ping-pong", "unix_socket"), ("soft VIs", "soft_vi"),
                      ("AF_UNIX, both ends in one thread (floor)", "unix_socket_one_thread"),
                      ("soft VIs, both ends in one thread (floor)", "soft_vi_one_thread")):
        s = rt.get(key)
        if s:
            t4.add_row(name, *(f"{s[k]:.2f}" for k in ("t_min_us", "t_typical_us", "t_avg_us",
                                                       "p99_us", "p99_9_us", "t_max_us")))
    console.print(t4)
    console.print(Text.assemble("round trip ratio (soft / Unix socket, t_typical): ",
                                goal_cell(f"{rt['ratio']:.2f} (goal <= {rt['goal']})",
                                          rt["met"])))
    if "floor_ratio" in rt:  # the CPU work alone, beside the goal's baseline
        console.print(Text(
            f"floor: soft's own work per round trip, both ends in one thread (no sleep, no "
            f"wake-up), is {rt['floor_ratio']:.2f} x the Unix-socket ping-pong's round trip"
            + (": above 1, the goal cannot be met on this host by waking faster"
               if rt["floor_ratio"] > rt["goal"] else ""), style="dim"))
    console.print(Text(f"method: {r['method']}", style="dim"))


def run(args: argparse.Namespace, console: Console) -> int:
    """The soft GSO bench with a status line; its tables or JSON; --check's verdict."""
    with console.status(Text("")) as status:
        results = soft_bench.bench_gso_soft(args, step=lambda m: status.update(Text(m)))
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=1))
    else:
        for r in results:
            show(r, console)
    met = all(soft_bench.goals_met(r) for r in results)
    return EXIT_FAILED if args.check and not met else EXIT_OK
