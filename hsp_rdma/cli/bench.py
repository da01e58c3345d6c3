"""hsp-bench: stop-and-copy bandwidth and switch-over blackout beside perftest, same run, same pair.

`hsp-bench gso --lab rxe|siw` runs in the built-in two-node lab (booting it if needed).
`hsp-bench cext` compares the Cython bindings with ib_write_bw / ib_send_lat (its own method).
Method: ib_write_bw with the GSO's chunk size and queue depth gives the baseline; then the
demo application switches over back and forth --runs times with a state image of --size.
Stop-and-copy MB/s = image bytes / (first data write posted .. last completed) on the active.
Blackout = the active's freeze .. the active's receipt of "done" (sent by the standby after
it resumed), so it is an upper bound of the real blackout, on one clock.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import statistics
import subprocess
import sys
import time

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hsp_rdma.cext import bench as cext_bench
from hsp_rdma.cli.common import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_OK,
    Parser,
    bounded,
    make_console,
    run_cli,
)
from hsp_rdma.cli.units import format_size, size_arg
from hsp_rdma.core.profiles import load_profiles, pick_profile
from hsp_rdma.errors import HspError
from hsp_rdma.ha.gso_pair import finish_pair, start_pair
from hsp_rdma.lab import RDMA_KINDS, Lab, perftest

console = make_console()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (perftest's way): no interpolation between runs."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an IPv4 address") from None


def build_parser() -> Parser:
    p = Parser(prog="hsp-bench", description=__doc__, epilog=EXIT_CODES_HELP,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    g = sub.add_parser("gso", help="stop-and-copy and blackout of a Graceful Switch Over")
    g.add_argument("--lab", choices=RDMA_KINDS, default="rxe",
                   help="soft device of the built-in lab (default rxe)")
    g.add_argument("--peer", metavar="ADDRESS", type=ipv4,
                   help="two real hosts: the IPv4 of the host running 'hsp-bench serve' "
                   "(then --device and --local-ip are needed, --lab is ignored)")
    g.add_argument("--device", help="with --peer: this host's RDMA device (e.g. mlx5_0)")
    g.add_argument("--local-ip", type=ipv4, help="with --peer: this host's IPv4 on that device")
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
    cx = sub.add_parser("cext", help="cext RDMA Write bandwidth and send/receive latency beside "
                        "ib_write_bw and ib_send_lat, same run")
    cext_bench.add_arguments(cx)
    sv = sub.add_parser("serve", help="the standby side of 'gso --peer' on two real hosts")
    sv.add_argument("--device", required=True, help="this host's RDMA device")
    sv.add_argument("--local-ip", required=True, type=ipv4,
                    help="this host's IPv4 on that device")
    for opt in ("--size", "--runs", "--chunk", "--depth"):
        sv._add_action(next(a for a in g._actions if opt in a.option_strings))
    return p


def bench_gso_lab(args) -> dict:
    lab = Lab(args.lab_id)
    with console.status(f"lab '{args.lab_id}' ({args.lab})"):
        booted = lab.ensure_up(args.lab)
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
        return summarize(args, a.events + b.events, base.row["bw_avg_MBps"], base.retries,
                         device, profile.name, chunk, depth,
                         extra=f"rc {res.rc} {res.stderr.get('a', '')[-300:]}"
                               f" {res.stderr.get('b', '')[-300:]}") | {"lab": args.lab}
    finally:
        if booted and not args.keep:
            lab.down()


def summarize(args, events: list[dict], base_bw: float, base_retries: int, device: str,
              profile: str, chunk: int, depth: int, extra: str = "",
              expect: int | None = None) -> dict:
    """The bench's result from gso_node events (lab and real hosts alike). EXPECT is how
    many GSOs these events saw from the active side (on two hosts: this host's half)."""
    expect = args.runs if expect is None else expect
    gsos = [e for e in events if e["event"] == "gso" and e["role"] == "active"]
    failed = [e for e in events if e["event"] == "gso" and e["outcome"] != "completed"]
    errors = [e["error"] for e in events if e["event"] == "error"]
    if errors or failed or len(gsos) != expect:
        raise HspError("GSO runs failed: " + "; ".join(
            errors + [f"epoch {e['epoch']}: {e['outcome']} ({e['reason']})" for e in failed]
            + [f"{len(gsos)} of {expect} completed", extra]))
    copy_bw = statistics.median(e["copy_MBps"] for e in gsos)
    blk = [e["blackout_s"] * 1000 for e in gsos]
    verify = [e["verify_s"] * 1000 for e in events
              if e["event"] == "gso" and e["role"] == "standby"]
    return {
        "state_bytes": args.size, "image_bytes": gsos[0]["image_bytes"],
        "stop_and_copy_MBps": round(copy_bw, 2),
        "baseline_ib_write_bw_MBps": base_bw,
        "ratio": round(copy_bw / base_bw, 3) if base_bw else None,
        "blackout_ms": {"min": round(min(blk), 1), "p50": round(statistics.median(blk), 1),
                        "p99": round(percentile(blk, 99), 1), "max": round(max(blk), 1)},
        "blackout_samples": len(blk),
        "blackout_goal_ms": round(args.size / (base_bw * (1 << 20)) * 1000 + 20, 1),
        "verify_ms_p50": round(statistics.median(verify), 1) if verify else None,
        "runs": args.runs, "device": device, "profile": profile, "chunk": chunk,
        "queue_depth": depth, "baseline_retries": base_retries,
        "per_run": [{"epoch": e["epoch"], "copy_MBps": round(e["copy_MBps"], 2),
                     "blackout_ms": round(e["blackout_s"] * 1000, 1)} for e in gsos],
        "method": " ".join(__doc__.split("Method: ", 1)[1].split()),
    }


def _node_argv(args, chunk: int, depth: int, serving: bool) -> list[str]:
    argv = [sys.executable, "-m", "hsp_rdma.ha.gso_node", "--name", "local",
            "--device", args.device, "--local-ip", args.local_ip, "--pmem", str(args.size),
            "--runs", str(args.runs), "--chunk", str(chunk), "--depth", str(depth)]
    if serving:
        argv += ["--serving", "--peer-ip", args.peer]
    return argv


def _perftest_argv(args, chunk: int, depth: int) -> list[str]:
    iters = max(args.size // chunk, 50)
    return ["ib_write_bw", "-d", args.device, "-R", "-F", "-s", str(chunk), "-t", str(depth),
            "-n", str(iters)]


def _run_node(argv: list[str], timeout: float) -> list[dict]:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HspError(f"gso_node gave no result in {timeout:.0f} s") from exc
    events = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 and not any(e["event"] == "error" for e in events):
        raise HspError(f"gso_node exited {res.returncode}: {res.stderr.strip()[-500:]}")
    return events


def _real_params(args) -> tuple[str, int, int]:
    profile = pick_profile(args.device, load_profiles())
    return profile.name, args.chunk or profile.chunk_size, args.depth or profile.queue_depth


def bench_gso_peer(args) -> dict:
    """Active side on two real hosts: ib_write_bw to the peer, then the GSO runs."""
    profile, chunk, depth = _real_params(args)
    base = None
    for attempt in range(10):
        res = subprocess.run([*_perftest_argv(args, chunk, depth), args.peer],
                             capture_output=True, text=True, timeout=600, check=False)
        if res.returncode == 0:
            base = perftest.parse_table("ib_write_bw", res.stdout)
            break
        time.sleep(1)  # the peer's ib_write_bw server may not listen yet
    if base is None:
        raise HspError(f"ib_write_bw to {args.peer} failed: is 'hsp-bench serve' running "
                       f"there? {res.stderr.strip()[-300:]}")
    time.sleep(2)  # the peer starts its gso_node listener after its perftest server ends
    with console.status(f"{args.runs} GSO(s) of {format_size(args.size)} to {args.peer}"):
        events = _run_node(_node_argv(args, chunk, depth, True),
                           timeout=120 + args.runs * (5 + args.size / 2e6))
    # Runs alternate direction: this host is the active of runs 1, 3, 5 ...
    return summarize(args, events, base["bw_avg_MBps"], attempt, args.device, profile, chunk,
                     depth, expect=(args.runs + 1) // 2) | {"peer": args.peer}


def serve(args) -> int:
    """Standby side on two real hosts: an ib_write_bw server, then a gso_node listener."""
    _profile, chunk, depth = _real_params(args)
    console.print(f"serving: ib_write_bw server on {args.device}, then {args.runs} GSO(s) of "
                  f"{format_size(args.size)} at {args.local_ip}")
    res = subprocess.run(_perftest_argv(args, chunk, depth), capture_output=True, text=True,
                         timeout=600, check=False)
    if res.returncode != 0:
        raise HspError(f"ib_write_bw server failed: {res.stderr.strip()[-300:]}")
    events = _run_node(_node_argv(args, chunk, depth, False),
                       timeout=180 + args.runs * (5 + args.size / 2e6))
    done = [e for e in events if e["event"] == "gso"]
    errors = [e["error"] for e in events if e["event"] == "error"]
    console.print(f"served {len(done)} GSO(s)" + (f"; errors: {errors}" if errors else ""))
    return EXIT_OK if done and not errors else EXIT_FAILED


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
        if args.cmd == "cext":
            return cext_bench.run_args(args)
        if args.cmd == "serve":
            return serve(args)
        if args.peer:
            if not (args.device and args.local_ip):
                build_parser().error("--peer needs --device and --local-ip")
            r = bench_gso_peer(args)
        else:
            r = bench_gso_lab(args)
        if args.json:
            print(json.dumps(r, indent=1))
        else:
            show(r)
        return EXIT_OK if r["ratio"] else EXIT_FAILED

    return run_cli("hsp-bench", body)


if __name__ == "__main__":
    sys.exit(main())
