"""The cext beside perftest, same run, same lab pair: RDMA Write bandwidth and send/receive latency.

Method: for each size, ib_write_bw (-s SIZE -t DEPTH -n ITERS, rdma_cm -R) from node b to node a,
then the cext with the same size, depth and iterations: DEPTH signaled RDMA Writes in flight from
one registered buffer into the server's (address and rkey from the accept private data), each
completion refilled at once; MB/sec = SIZE x ITERS / (first post .. last completion) / 2^20, as
perftest counts (MB = 2^20 bytes); then the event-driven reference, a plain pyverbs writer with
the same size, depth and iterations that sleeps on its completion channel (perftest busy-polls,
and in a 1-vCPU guest a busy poller takes the CPU the soft device needs, so ib_write_bw alone
flatters a sleeping writer). Both ratios are reported; the goal holds against the faster
reference. Then ib_send_lat (-s 2 -n LAT_ITERS) and the cext ping-pong
of 2-byte sends (one in 8 signaled) with receives pre-posted: one sample per round trip (post .. reply received),
half round trip reported, t_typical = median as in perftest. perftest busy-polls; the cext
writer waits as the device's hw profile says (completion_wait: busy on real NICs and rxe,
asleep on the completion channel on siw; --bw-poll busy|event forces one). The latency
ping-pong busy-polls on both sides, as ib_send_lat does.
The ping-pong sends are inline (IBV_SEND_INLINE) when the device grants it, as ib_send_lat's
are; the result says which. With --rounds R the whole sequence runs R times and the medians
are compared.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from hsp_rdma.core.profiles import load_profiles, pick_profile
from hsp_rdma.errors import ConfigError, LabError
from hsp_rdma.lab import Lab, perftest
from hsp_rdma.tools.cext_peer import DEFAULT_PORT, LAT_BYTES
from hsp_rdma.tools.guest import GuestRun
from hsp_rdma.units import format_size

BW_GOAL = 0.9  # cext MB/s >= 0.9 x ib_write_bw
LAT_GOAL = 1.2  # cext half round trip <= 1.2 x ib_send_lat t_typical
BYTE_BUDGET = 32 << 20  # default iterations: about this much data per size (TCG is slow)


def run_writer_pair(lab, fabric: str, mode: str, size: int, depth: int, iters: int,
                    poll: str, port: int, timeout: float,
                    writer: str = "cext", region: int = 0,
                    landed_read: bool = False) -> dict[str, Any]:
    """Server role on node a, client on node b; the client's result event. WRITER "pyverbs"
    runs the event-driven pyverbs reference as the client (RDMA Write only). REGION: the
    bytes the writes tile (write i at offset i x SIZE mod REGION); SIZE alone when 0.
    LANDED_READ: the pyverbs writer ends with a read behind its writes, timed with them."""
    info = lab.info()
    a, b = info["a"][fabric], info["b"][fabric]
    common = ["--mode", mode, "--port", str(port), "--size", str(size), "--depth", str(depth),
              "--iters", str(iters), "--timeout", str(timeout),
              *(("--region", str(region)) if region else ())]
    srv, cli = GuestRun("a"), GuestRun("b")
    srv.job = lab.spawn("a", [sys.executable, "-m", "hsp_rdma.tools.cext_peer", "serve",
                              "--device", a["rdma_dev"], "--ip", a["ipv4"], *common],
                        timeout=timeout + 30, on_stdout=srv.feed)
    deadline = time.monotonic() + 60
    while not srv.of("listening"):
        res = srv.job.poll()
        if res is not None or time.monotonic() > deadline:
            if res is None:
                srv.job.kill()
            err = "; ".join(e["error"] for e in srv.of("error")) or (
                res.stderr.strip()[-400:] if res else "no 'listening' in 60 s")
            raise LabError(f"cext {mode} server on node a did not start: {err}")
        time.sleep(0.05)
    if writer == "pyverbs":
        argv = [sys.executable, "-m", "hsp_rdma.tools.pyverbs_writer", "--ip", b["ipv4"],
                "--peer", a["ipv4"], "--port", str(port), "--size", str(size), "--depth",
                str(depth), "--iters", str(iters), "--watchdog", str(timeout),
                *(("--region", str(region)) if region else ()),
                *(("--landed-read",) if landed_read else ())]
    else:
        argv = [sys.executable, "-m", "hsp_rdma.tools.cext_peer", "client", "--device",
                b["rdma_dev"], "--ip", b["ipv4"], "--peer", a["ipv4"], "--poll", poll, *common]
    cli.job = lab.spawn("b", argv, timeout=timeout + 30, on_stdout=cli.feed)
    cres = cli.job.wait()
    if not cres.ok:
        srv.job.kill()
    sres = srv.job.wait()
    if cres.ok and not srv.of("done") and not srv.of("error"):
        srv.events.append({"event": "error", "error": f"server exited {sres.rc} without "
                           f"finishing: {sres.stderr.strip()[-300:]}"})
    errors = [f"node {r.name}: {e['error']}" for r in (cli, srv) for e in r.of("error")]
    result = cli.of("result")
    if errors or not result:
        detail = "; ".join(errors) or (cres.stderr + sres.stderr).strip()[-600:]
        raise LabError(f"{writer} {mode} run ({format_size(size)}) failed: {detail}")
    return result[0]


def default_iters(size: int, depth: int) -> int:
    """About BYTE_BUDGET bytes per size, at least 4 x DEPTH writes."""
    return max(BYTE_BUDGET // size, 4 * depth)


def auto_poll(device: str, profiles: str | None = None) -> str:
    """How the writer waits: the device's hw profile's ``completion_wait`` (busy on real NICs
    and rxe; asleep on the completion channel on siw, whose kernel threads a busy writer
    starves); busy, perftest's way, when no profile matches."""
    found = load_profiles(user_dir=profiles)  # a bad --profiles is an error, not "busy"
    try:
        return pick_profile(device, found).completion_wait
    except ConfigError:
        return "busy"


def run_bench(lab, fabric: str = "x", sizes: tuple[int, ...] = (64 << 10, 1 << 20),
              depth: int = 16, iters: int = 0, lat_iters: int = 1000, poll: str = "auto",
              port: int = DEFAULT_PORT, rounds: int = 1,
              step: Callable[[str], None] | None = None,
              profiles: str | None = None) -> dict[str, Any]:
    """Baseline and cext back to back for each size, then both latencies, ROUNDS times;
    medians over the rounds and their ratios in the result dict."""
    step = step or (lambda _msg: None)
    info = lab.info()
    device = info["b"][fabric]["rdma_dev"]
    if poll == "auto":
        poll = auto_poll(device, profiles)
    ports = itertools.count(port)  # one per cext run: iWARP listeners hold theirs a while
    bw: dict[int, list[tuple[float, float, float]]] = {s: [] for s in sizes}
    lat: list[tuple[float, float, dict]] = []
    notes: list[str] = []
    retries = 0
    lat_timeout = 60 + lat_iters * 0.01
    for rnd in range(rounds):
        tag = f"[{rnd + 1}/{rounds}] " if rounds > 1 else ""
        for size in sizes:
            n = iters or default_iters(size, depth)
            timeout = 60 + size * n / 1e6  # 1 MB/s is far below anything the lab has shown
            step(f"{tag}ib_write_bw -s {size} -t {depth} -n {n}")
            base = perftest.run(lab, "ib_write_bw", fabric,
                                ("-s", str(size), "-t", str(depth), "-n", str(n)),
                                timeout=timeout)
            step(f"{tag}cext RDMA Write {format_size(size)} x {n}, depth {depth}")
            ours = run_writer_pair(lab, fabric, "write", size, depth, n, poll, next(ports),
                                   timeout)
            step(f"{tag}pyverbs event-driven RDMA Write {format_size(size)} x {n}, "
                 f"depth {depth}")
            ref = run_writer_pair(lab, fabric, "write", size, depth, n, "event", next(ports),
                                  timeout, writer="pyverbs")
            bw[size].append((ours["MBps"], base.row["bw_avg_MBps"], ref["MBps"]))
            notes += base.notes
            retries += base.retries
        step(f"{tag}ib_send_lat -s {LAT_BYTES} -n {lat_iters}")
        base = perftest.run(lab, "ib_send_lat", fabric,
                            ("-s", str(LAT_BYTES), "-n", str(lat_iters)), timeout=lat_timeout)
        step(f"{tag}cext send/receive ping-pong {LAT_BYTES} B x {lat_iters}")
        ours = run_writer_pair(lab, fabric, "lat", LAT_BYTES, depth, lat_iters, "busy",
                               next(ports), lat_timeout)
        lat.append((ours["t_typical_us"], base.row["t_typical_us"], ours))
        notes += base.notes
        retries += base.retries
    rows = []
    for size, pairs in bw.items():
        c = statistics.median(p[0] for p in pairs)
        b = statistics.median(p[1] for p in pairs)
        pv = statistics.median(p[2] for p in pairs)
        rows.append({"bytes": size, "iterations": iters or default_iters(size, depth),
                     "cext_MBps": round(c, 2), "baseline_ib_write_bw_MBps": round(b, 2),
                     "reference_pyverbs_event_MBps": round(pv, 2),
                     "ratio": round(c / b, 3), "ratio_to_pyverbs": round(c / pv, 3),
                     # the goal holds against the faster of the two references
                     "goal": BW_GOAL, "met": c >= BW_GOAL * max(b, pv),
                     "per_round": [{"cext_MBps": round(p[0], 2),
                                    "baseline_ib_write_bw_MBps": p[1],
                                    "reference_pyverbs_event_MBps": round(p[2], 2)}
                                   for p in pairs]})
    c = statistics.median(x[0] for x in lat)
    b = statistics.median(x[1] for x in lat)
    latency = {"bytes": LAT_BYTES, "iterations": lat_iters, "cext_half_rtt_us": round(c, 2),
               "baseline_ib_send_lat_typical_us": round(b, 2), "ratio": round(c / b, 3),
               "goal": LAT_GOAL, "met": c <= LAT_GOAL * b,
               "inline": all(x[2].get("inline", False) for x in lat),
               "per_round": [{"cext_half_rtt_us": {k: round(x[2][k], 2) for k in (
                   "t_min_us", "t_typical_us", "t_avg_us", "p99_us", "t_max_us")},
                   "baseline_ib_send_lat_typical_us": x[1]} for x in lat]}
    return {"rdma": info["rdma"], "device": device, "fabric": fabric, "depth": depth,
            "bw_poll": poll, "rounds": rounds, "write_bw": rows, "latency": latency,
            "baseline_retries": retries, "notes": notes,
            "method": " ".join(__doc__.split("Method: ", 1)[1].split())}


def bench_lab(args, step: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """ARGS: `hsp-bench cext`'s options. Boots the lab if it is down (and ends it after),
    then run_bench; STEP names each phase."""
    lab = Lab(args.lab_id)
    booted = False
    try:
        booted = lab.ensure_up(args.lab, 2, step)
        return run_bench(lab, args.fabric, args.sizes, args.depth, args.iters, args.lat_iters,
                         args.bw_poll, args.port, args.rounds, step=step,
                         profiles=args.profiles)
    finally:
        if booted:
            lab.down()


def goals_met(r: dict[str, Any]) -> bool:
    return all(row["met"] for row in r["write_bw"]) and r["latency"]["met"]


