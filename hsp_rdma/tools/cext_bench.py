"""The cext beside perftest, same run, same lab pair: RDMA Write bandwidth and send/receive latency.

Method: for each size, ib_write_bw (-s SIZE -t DEPTH -n ITERS, rdma_cm -R) from node b to node a,
then the cext with the same size, depth and iterations: DEPTH signaled RDMA Writes in flight from
one registered buffer into the server's (address and rkey from the accept private data), each
completion refilled at once; MB/sec = SIZE x ITERS / (first post .. last completion) / 2^20, as
perftest counts (MB = 2^20 bytes). Then ib_send_lat (-s 2 -n LAT_ITERS) and the cext ping-pong
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

import argparse
import itertools
import json
import statistics
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hsp_rdma.cli.units import format_size, parse_size, size_arg
from hsp_rdma.errors import HspError

# Written by the server into the accept private data: magic, buffer address, rkey, length.
ACCEPT = struct.Struct("<4sQII")
ACCEPT_MAGIC = b"HCB1"
BW_GOAL = 0.9  # cext MB/s >= 0.9 x ib_write_bw
LAT_GOAL = 1.2  # cext half round trip <= 1.2 x ib_send_lat t_typical
LAT_BYTES = 2  # ib_send_lat's default size
INLINE_BYTES = 64  # asked at create_qp; ib_send_lat sends small messages inline too
BYTE_BUDGET = 32 << 20  # default iterations: about this much data per size (TCG is slow)
DEFAULT_PORT = 19870
RECVS_POSTED = 16
SIGNAL_EVERY = 8  # ping-pong sends: one in 8 signaled; its completion frees the 8 slots


# ---- guest side: one process per role and measurement ------------------------------------


def _emit(**ev: Any) -> None:
    print(json.dumps(ev), flush=True)


def _cm_wait(ch, kinds: tuple[int, ...], timeout_s: float, what: str):
    """The next rdma_cm event, which must be one of KINDS; RuntimeError otherwise."""
    from hsp_rdma.cext import verbs as cx

    ev = ch.get(int(timeout_s * 1000))
    if ev is None:
        raise RuntimeError(f"{what}: no rdma_cm event in {timeout_s:.0f} s")
    if ev[0] not in kinds:
        raise RuntimeError(f"{what}: got {cx.cm_event_str(ev[0])} (status {ev[1]})")
    return ev


class _Poller:
    """Completions from one CQ, busy-polled or slept for; a stall watchdog on both."""

    def __init__(self, cq, mode: str, stall_s: float):
        self.cq, self.event, self.stall_s = cq, mode == "event", stall_s

    def take(self) -> list[tuple]:
        """At least one completion (status checked), or RuntimeError after stall_s without."""
        from hsp_rdma.cext import verbs as cx

        deadline = time.monotonic() + self.stall_s
        while True:
            wcs = self.cq.poll(64)
            if not wcs and self.event:
                self.cq.arm()  # arm, then look again: a completion may beat the arming
                wcs = self.cq.poll(64)
                if not wcs:
                    self.cq.wait(int(max(deadline - time.monotonic(), 0.001) * 1000))
                    wcs = self.cq.poll(64)
            if wcs:
                for wc in wcs:
                    if wc[1] != cx.WC_SUCCESS:
                        raise RuntimeError(f"work request {wc[0]} completed with "
                                           f"{cx.wc_status_str(wc[1])}")
                return wcs
            if time.monotonic() > deadline:
                raise RuntimeError(f"no completion in {self.stall_s:.0f} s (rxe under TCG "
                                   "stalls now and then: run again)")


def _pattern(n: int) -> bytes:
    """What the client writes, so the server can see the writes landed."""
    return (bytes(range(1, 256)) * (n // 255 + 1))[:n]


def serve(args: argparse.Namespace) -> None:
    """Node a: listen, publish the buffer in the accept, then echo sends (lat) or wait."""
    from hsp_rdma.cext import verbs as cx

    size = args.size if args.mode == "write" else LAT_BYTES
    dev = cx.Device(args.device)
    pd = cx.PD(dev)
    buf = bytearray(max(size, 64))
    mr = cx.MR(pd, buf, cx.ACCESS_LOCAL_WRITE | cx.ACCESS_REMOTE_WRITE)
    cq = cx.CQ(dev, 2 * RECVS_POSTED + 2 * args.depth + 8)
    ch = cx.EventChannel()
    lid = cx.CMId(ch)
    lid.bind(args.ip, args.port)
    lid.listen(1)
    _emit(event="listening", ip=args.ip, port=args.port)
    ev = _cm_wait(ch, (cx.EV_CONNECT_REQUEST,), args.timeout, "waiting for the client")
    cid = ev[2]
    cid.create_qp(pd, cq, cq, RECVS_POSTED + 1, RECVS_POSTED + 1, 1, INLINE_BYTES)
    if args.mode == "lat":
        for i in range(RECVS_POSTED):
            cid.post_recv1(i, mr.addr, LAT_BYTES, mr.lkey)
    cid.accept(ACCEPT.pack(ACCEPT_MAGIC, mr.addr, mr.rkey, len(buf)), 7)
    _cm_wait(ch, (cx.EV_ESTABLISHED,), args.timeout, "accepting")
    if args.mode == "lat":
        poller = _Poller(cq, "busy", args.stall_s)  # ib_send_lat's server busy-polls too
        replies = in_flight = 0
        inline = cid.max_inline >= LAT_BYTES
        while replies < args.iters:
            for wc in poller.take():
                if wc[2] == cx.WC_RECV:
                    while in_flight >= RECVS_POSTED:  # keep the send queue from overflowing
                        in_flight -= SIGNAL_EVERY * sum(w[2] != cx.WC_RECV
                                                        for w in poller.take())
                    # the reply first, the receive posted again after: off the timed path
                    cid.post1(1 << 32, cx.WR_SEND, mr.addr, LAT_BYTES, mr.lkey,
                              signaled=replies % SIGNAL_EVERY == SIGNAL_EVERY - 1,
                              inline=inline)
                    cid.post_recv1(wc[0], mr.addr, LAT_BYTES, mr.lkey)
                    in_flight += 1
                    replies += 1
                else:
                    in_flight -= SIGNAL_EVERY
    _cm_wait(ch, (cx.EV_DISCONNECTED,), args.timeout, "waiting for the client to finish")
    if args.mode == "write" and buf[:size] != _pattern(size):
        raise RuntimeError("the client's writes did not land: the buffer lacks its pattern")
    _emit(event="done")
    ch.close()
    dev.close()


def client(args: argparse.Namespace) -> None:
    """Node b: connect, then time RDMA Writes (write) or send/receive round trips (lat)."""
    from hsp_rdma.cext import verbs as cx

    size = args.size if args.mode == "write" else LAT_BYTES
    dev = cx.Device(args.device)
    pd = cx.PD(dev)
    buf = bytearray(_pattern(max(size, 64)))
    mr = cx.MR(pd, buf, cx.ACCESS_LOCAL_WRITE)
    cq = cx.CQ(dev, 2 * RECVS_POSTED + 2 * args.depth + 8)
    ch = cx.EventChannel()
    cid = cx.CMId(ch)
    cid.resolve_addr(args.ip, args.peer, args.port, 5000)
    _cm_wait(ch, (cx.EV_ADDR_RESOLVED,), 10, f"resolving {args.peer}")
    cid.resolve_route(5000)
    _cm_wait(ch, (cx.EV_ROUTE_RESOLVED,), 10, f"route to {args.peer}")
    if cid.device_name != dev.name:
        raise RuntimeError(f"{args.peer} is reached through {cid.device_name}, not {dev.name}")
    cid.create_qp(pd, cq, cq, max(args.depth, RECVS_POSTED) + 1, RECVS_POSTED + 1, 1,
                  INLINE_BYTES)
    if args.mode == "lat":
        for i in range(RECVS_POSTED):
            cid.post_recv1(i, mr.addr, LAT_BYTES, mr.lkey)
    cid.connect(b"", 7, 7)
    ev = _cm_wait(ch, (cx.EV_ESTABLISHED,), args.timeout, f"connecting to {args.peer}")
    magic, raddr, rkey, rlen = ACCEPT.unpack_from(ev[4].ljust(ACCEPT.size, b"\0"))
    if magic != ACCEPT_MAGIC or rlen < size:
        raise RuntimeError(f"the server's accept data is not ours ({ev[4][:ACCEPT.size]!r})")
    if args.mode == "write":
        _emit(event="result", mode="write", **_write_bw(cid, _Poller(cq, args.poll, args.stall_s),
                                                        mr, size, raddr, rkey, args))
    else:
        _emit(event="result", mode="lat", **_ping_pong(cid, _Poller(cq, "busy", args.stall_s),
                                                       mr, args.iters))
    cid.disconnect()
    ch.close()
    dev.close()


def _write_bw(cid, poller: _Poller, mr, size: int, raddr: int, rkey: int,
              args: argparse.Namespace) -> dict[str, Any]:
    from hsp_rdma.cext import verbs as cx

    iters, depth = args.iters, args.depth
    sge = [(mr.addr, size, mr.lkey)]
    posted = done = 0
    t0 = time.perf_counter()
    while posted < min(depth, iters):
        cid.post_send(posted, cx.WR_RDMA_WRITE, sge, raddr, rkey)
        posted += 1
    while done < iters:
        done += len(poller.take())
        while posted < iters and posted - done < depth:
            cid.post_send(posted, cx.WR_RDMA_WRITE, sge, raddr, rkey)
            posted += 1
    secs = time.perf_counter() - t0
    return {"bytes": size, "iterations": iters, "depth": depth, "seconds": secs,
            "MBps": size * iters / secs / (1 << 20), "poll": args.poll}


def _ping_pong(cid, poller: _Poller, mr, iters: int) -> dict[str, Any]:
    from hsp_rdma.cext import verbs as cx

    addr, lkey = mr.addr, mr.lkey
    inline = cid.max_inline >= LAT_BYTES  # as ib_send_lat does
    in_flight = 0
    used = -1  # the receive the last reply took: posted again once the next send is out
    stamps: list[int] = []
    for i in range(iters):
        while in_flight >= RECVS_POSTED:
            in_flight -= SIGNAL_EVERY * sum(w[2] != cx.WC_RECV for w in poller.take())
        stamps.append(time.perf_counter_ns())
        cid.post1(1 << 32, cx.WR_SEND, addr, LAT_BYTES, lkey,
                  signaled=i % SIGNAL_EVERY == SIGNAL_EVERY - 1, inline=inline)
        in_flight += 1
        if used >= 0:
            cid.post_recv1(used, addr, LAT_BYTES, lkey)
        used = -1
        while used < 0:
            for wc in poller.take():
                if wc[2] == cx.WC_RECV:
                    used = wc[0]
                else:
                    in_flight -= SIGNAL_EVERY
    stamps.append(time.perf_counter_ns())
    half = sorted((b - a) / 2000 for a, b in itertools.pairwise(stamps))
    return {"bytes": LAT_BYTES, "iterations": iters, "inline": inline, "t_min_us": half[0],
            "t_typical_us": statistics.median(half), "t_avg_us": statistics.fmean(half),
            "p99_us": half[min(len(half) - 1, int(len(half) * 0.99))], "t_max_us": half[-1]}


def guest_main(argv: list[str]) -> int:
    """`serve` / `client` roles; one JSON line per event, errors as {"event": "error"}."""
    p = argparse.ArgumentParser(prog="python -m hsp_rdma.cext.bench")
    p.add_argument("role", choices=("serve", "client"))
    p.add_argument("--mode", choices=("write", "lat"), required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--ip", required=True, help="this node's IPv4 on the device")
    p.add_argument("--peer", help="client: the server's IPv4")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--size", type=parse_size, default=65536)
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--poll", choices=("busy", "event"), default="busy")
    p.add_argument("--timeout", type=float, default=60.0, help="rdma_cm waits [s]")
    p.add_argument("--stall-s", type=float, default=20.0, help="no completion for this long "
                   "fails the run [s]")
    args = p.parse_args(argv)
    if args.role == "client" and not args.peer:
        p.error("client needs --peer")
    try:
        (serve if args.role == "serve" else client)(args)
    except (HspError, RuntimeError, OSError, ValueError) as exc:  # one JSON line, exit 1
        _emit(event="error", role=args.role, error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


# ---- host side: the lab, perftest and the cext, back to back --------------------------------


@dataclass
class _GuestRun:
    """One guest role: its job and the JSON events it printed so far."""

    node: str
    job: Any = None
    events: list[dict] = field(default_factory=list)
    _partial: bytes = b""

    def feed(self, chunk: bytes) -> None:
        self._partial += chunk
        *lines, self._partial = self._partial.split(b"\n")
        self.events += [json.loads(ln) for ln in lines if ln.startswith(b"{")]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]


def _cext_pair(lab, fabric: str, mode: str, size: int, depth: int, iters: int, poll: str,
               port: int, timeout: float) -> dict[str, Any]:
    """Server role on node a, client on node b; the client's result event."""
    from hsp_rdma.errors import LabError

    info = lab.info()
    a, b = info["a"][fabric], info["b"][fabric]
    common = ["--mode", mode, "--port", str(port), "--size", str(size), "--depth", str(depth),
              "--iters", str(iters), "--timeout", str(timeout)]
    srv, cli = _GuestRun("a"), _GuestRun("b")
    srv.job = lab.spawn("a", [sys.executable, "-m", "hsp_rdma.cext.bench", "serve", "--device",
                              a["rdma_dev"], "--ip", a["ipv4"], *common],
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
    cli.job = lab.spawn("b", [sys.executable, "-m", "hsp_rdma.cext.bench", "client", "--device",
                              b["rdma_dev"], "--ip", b["ipv4"], "--peer", a["ipv4"],
                              "--poll", poll, *common],
                        timeout=timeout + 30, on_stdout=cli.feed)
    cres = cli.job.wait()
    if not cres.ok:
        srv.job.kill()
    sres = srv.job.wait()
    if cres.ok and not srv.of("done") and not srv.of("error"):
        srv.events.append({"event": "error", "error": f"server exited {sres.rc} without "
                           f"finishing: {sres.stderr.strip()[-300:]}"})
    errors = [f"node {r.node}: {e['error']}" for r in (cli, srv) for e in r.of("error")]
    result = cli.of("result")
    if errors or not result:
        detail = "; ".join(errors) or (cres.stderr + sres.stderr).strip()[-600:]
        raise LabError(f"cext {mode} run ({format_size(size)}) failed: {detail}")
    return result[0]


def default_iters(size: int, depth: int) -> int:
    """About BYTE_BUDGET bytes per size, at least 4 x DEPTH writes."""
    return max(BYTE_BUDGET // size, 4 * depth)


def auto_poll(device: str) -> str:
    """How the writer waits: the device's hw profile's ``completion_wait`` (busy on real NICs
    and rxe; asleep on the completion channel on siw, whose kernel threads a busy writer
    starves); busy, perftest's way, when no profile matches."""
    from hsp_rdma.core.profiles import load_profiles, pick_profile
    from hsp_rdma.errors import ConfigError

    try:
        return pick_profile(device, load_profiles()).completion_wait
    except ConfigError:
        return "busy"


def run_bench(lab, fabric: str = "x", sizes: tuple[int, ...] = (64 << 10, 1 << 20),
              depth: int = 16, iters: int = 0, lat_iters: int = 1000, poll: str = "auto",
              port: int = DEFAULT_PORT, rounds: int = 1,
              step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Baseline and cext back to back for each size, then both latencies, ROUNDS times;
    medians over the rounds and their ratios in the result dict."""
    from hsp_rdma.lab import perftest

    step = step or (lambda _msg: None)
    info = lab.info()
    device = info["b"][fabric]["rdma_dev"]
    if poll == "auto":
        poll = auto_poll(device)
    ports = itertools.count(port)  # one per cext run: iWARP listeners hold theirs a while
    bw: dict[int, list[tuple[float, float]]] = {s: [] for s in sizes}
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
            ours = _cext_pair(lab, fabric, "write", size, depth, n, poll, next(ports), timeout)
            bw[size].append((ours["MBps"], base.row["bw_avg_MBps"]))
            notes += base.notes
            retries += base.retries
        step(f"{tag}ib_send_lat -s {LAT_BYTES} -n {lat_iters}")
        base = perftest.run(lab, "ib_send_lat", fabric,
                            ("-s", str(LAT_BYTES), "-n", str(lat_iters)), timeout=lat_timeout)
        step(f"{tag}cext send/receive ping-pong {LAT_BYTES} B x {lat_iters}")
        ours = _cext_pair(lab, fabric, "lat", LAT_BYTES, depth, lat_iters, "busy", next(ports),
                          lat_timeout)
        lat.append((ours["t_typical_us"], base.row["t_typical_us"], ours))
        notes += base.notes
        retries += base.retries
    rows = []
    for size, pairs in bw.items():
        c = statistics.median(p[0] for p in pairs)
        b = statistics.median(p[1] for p in pairs)
        rows.append({"bytes": size, "iterations": iters or default_iters(size, depth),
                     "cext_MBps": round(c, 2), "baseline_ib_write_bw_MBps": round(b, 2),
                     "ratio": round(c / b, 3), "goal": BW_GOAL, "met": c >= BW_GOAL * b,
                     "per_round": [{"cext_MBps": round(p[0], 2),
                                    "baseline_ib_write_bw_MBps": p[1]} for p in pairs]})
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The orchestrator's options (shared with `hsp-bench cext`)."""
    from hsp_rdma.cli.common import bounded
    from hsp_rdma.lab import FABRICS, RDMA_KINDS

    def sizes(text: str) -> tuple[int, ...]:
        one = size_arg(64, 1 << 30, "--sizes")
        return tuple(one(s) for s in text.split(",") if s.strip())

    p.add_argument("--lab", choices=RDMA_KINDS, default="rxe",
                   help="soft device of the lab (default rxe)")
    p.add_argument("--lab-id", default="cextbench", help="lab to use or boot (default cextbench)")
    p.add_argument("--sizes", type=sizes, default=(64 << 10, 1 << 20),
                   help="RDMA Write sizes, comma-separated (default 64KiB,1MiB)")
    p.add_argument("--depth", type=bounded(int, 1, 64, "--depth"), default=16,
                   help="writes in flight, also perftest's -t (default 16)")
    p.add_argument("--iters", type=bounded(int, 0, 1_000_000, "--iters"), default=0,
                   help="writes per size, also perftest's -n (default: about 32 MiB per size)")
    p.add_argument("--lat-iters", type=bounded(int, 10, 100_000, "--lat-iters"), default=1000,
                   help="round trips, also ib_send_lat's -n (default 1000)")
    p.add_argument("--bw-poll", choices=("auto", "busy", "event"), default="auto",
                   help="how the cext writer waits for completions: auto (default) = as the "
                        "device's hw profile says (completion_wait: busy on real NICs and rxe, event on siw)")
    p.add_argument("--rounds", type=bounded(int, 1, 20, "--rounds"), default=1,
                   help="repeat baseline + cext this often; medians reported (default 1)")
    p.add_argument("--fabric", choices=FABRICS, default="x")
    p.add_argument("--port", type=bounded(int, 1024, 65000, "--port"), default=DEFAULT_PORT,
                   help="first rdma_cm port of the cext runs (one per run)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a goal (bandwidth >= 0.9x, latency <= 1.2x) is missed")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def bench_lab(args: argparse.Namespace, console) -> dict[str, Any]:
    """Boot the lab if it is down (and end it after), run the bench with a progress display."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from hsp_rdma.errors import LabError
    from hsp_rdma.lab import Lab

    if args.iters and args.iters < args.depth:
        raise LabError(f"--iters {args.iters} is below --depth {args.depth}: perftest needs "
                       "at least DEPTH iterations")
    lab = Lab(args.lab_id)
    booted = False
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=True) as prog:
            task = prog.add_task("", total=None)
            booted = lab.ensure_up(args.lab, 2,
                                   lambda msg: prog.update(task, description=msg))
            return run_bench(lab, args.fabric, args.sizes, args.depth, args.iters,
                             args.lat_iters, args.bw_poll, args.port, args.rounds,
                             step=lambda msg: prog.update(task, description=msg))
    finally:
        if booted:
            lab.down()


def show(r: dict[str, Any], console) -> None:
    from rich.markup import escape
    from rich.table import Table

    rounds = f", median of {r['rounds']} rounds" if r["rounds"] > 1 else ""
    t = Table(title=f"RDMA Write: cext vs ib_write_bw ({r['device']}, depth {r['depth']}, "
                    f"same run{rounds})")
    for col in ("#bytes", "#iterations", "ib_write_bw BW average [MB/sec]",
                "cext BW average [MB/sec]", "ratio", "goal"):
        t.add_column(escape(col), justify="right")
    for row in r["write_bw"]:
        t.add_row(str(row["bytes"]), str(row["iterations"]),
                  f"{row['baseline_ib_write_bw_MBps']:.2f}", f"{row['cext_MBps']:.2f}",
                  f"{row['ratio']:.2f}", ("[green]" if row["met"] else "[red]")
                  + f">= {row['goal']}")
    console.print(t)
    lat = r["latency"]
    inline = "inline" if lat.get("inline") else "not inline"
    t2 = Table(title=f"send/receive half round trip: cext vs ib_send_lat ({lat['bytes']} B "
                     f"{inline}, {lat['iterations']} iterations)")
    for col in ("#bytes", "#iterations", "ib_send_lat t_typical [usec]",
                "cext t_typical [usec]", "ratio", "goal"):
        t2.add_column(escape(col), justify="right")
    t2.add_row(str(lat["bytes"]), str(lat["iterations"]),
               f"{lat['baseline_ib_send_lat_typical_us']:.2f}", f"{lat['cext_half_rtt_us']:.2f}",
               f"{lat['ratio']:.2f}", ("[green]" if lat["met"] else "[red]")
               + f"<= {lat['goal']}")
    console.print(t2)
    if r["rounds"] > 1:
        for row in r["write_bw"]:
            console.print(f"[dim]{row['bytes']} B per round (ib_write_bw / cext MB/sec): "
                          + ", ".join(f"{p['baseline_ib_write_bw_MBps']:.1f} / "
                                      f"{p['cext_MBps']:.1f}" for p in row["per_round"]))
        console.print("[dim]latency per round (ib_send_lat / cext t_typical usec): "
                      + ", ".join(f"{p['baseline_ib_send_lat_typical_us']:.0f} / "
                                  f"{p['cext_half_rtt_us']['t_typical_us']:.0f}"
                                  for p in lat["per_round"]))
    for note in r["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"[dim]method: {r['method']}[/]")


def goals_met(r: dict[str, Any]) -> bool:
    return all(row["met"] for row in r["write_bw"]) and r["latency"]["met"]


def run_args(args: argparse.Namespace) -> int:
    """The orchestrator behind both `python -m hsp_rdma.cext.bench` and `hsp-bench cext`."""
    from hsp_rdma.cli.common import EXIT_FAILED, EXIT_OK, make_console

    console = make_console()
    r = bench_lab(args, console) | {"lab": args.lab}
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        show(r, console)
    return EXIT_FAILED if args.check and not goals_met(r) else EXIT_OK


def build_parser():
    from hsp_rdma.cli.common import EXIT_CODES_HELP, Parser

    p = Parser(prog="python -m hsp_rdma.cext.bench", description=__doc__,
               epilog=EXIT_CODES_HELP + "; roles run in the guests: 'serve' and 'client'",
               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["serve"], ["client"]):
        return guest_main(argv)
    from hsp_rdma.cli.common import run_cli

    args = build_parser().parse_args(argv)
    return run_cli("cext-bench", lambda: run_args(args))


if __name__ == "__main__":
    sys.exit(main())
