"""The cext bench's two roles, run on the nodes (lab guests): `python -m hsp_rdma.tools.cext_peer
serve|client ...`. One JSON object per line on stdout; an error is {"event": "error"}.

RDMA Write: DEPTH signaled writes in flight from one registered buffer into the server's
(address and rkey from the accept private data), each completion refilled at once. Ping-pong:
2-byte sends (one in 8 signaled, inline when granted) with receives pre-posted, busy-polled on
both sides as ib_send_lat does.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from typing import Any

from hsp_rdma.cext import verbs as cx
from hsp_rdma.errors import HspError
from hsp_rdma.tools.writer_wire import ACCEPT, ACCEPT_MAGIC, chunks_in, pattern
from hsp_rdma.units import parse_size

LAT_BYTES = 2  # ib_send_lat's default size
INLINE_BYTES = 64  # asked at create_qp; ib_send_lat sends small messages inline too
DEFAULT_PORT = 19870
RECVS_POSTED = 16
SIGNAL_EVERY = 8  # ping-pong sends: one in 8 signaled; its completion frees the 8 slots


def _emit(**ev: Any) -> None:
    print(json.dumps(ev), flush=True)


def _cm_wait(ch, kinds: tuple[int, ...], timeout_s: float, what: str):
    """The next rdma_cm event, which must be one of KINDS; RuntimeError otherwise."""
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


def serve(args: argparse.Namespace) -> None:
    """Node a: listen, publish the buffer in the accept, then echo sends (lat) or wait."""
    size = args.size if args.mode == "write" else LAT_BYTES
    region = max(args.region, size)
    dev = cx.Device(args.device)
    pd = cx.PD(dev)
    buf = bytearray(max(region, 64))
    # readable too: the pyverbs reference's landed read (on iWARP) reads 8 bytes of it
    mr = cx.MR(pd, buf, cx.ACCESS_LOCAL_WRITE | cx.ACCESS_REMOTE_WRITE | cx.ACCESS_REMOTE_READ)
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
    landed = min(args.iters, region // size) * size  # write i lands at i x size mod region
    if args.mode == "write" and buf[:landed] != pattern(landed):
        raise RuntimeError("the client's writes did not land: the buffer lacks its pattern")
    _emit(event="done")
    ch.close()
    dev.close()


def client(args: argparse.Namespace) -> None:
    """Node b: connect, then time RDMA Writes (write) or send/receive round trips (lat)."""
    size = args.size if args.mode == "write" else LAT_BYTES
    region = max(args.region, size)
    dev = cx.Device(args.device)
    pd = cx.PD(dev)
    buf = bytearray(pattern(max(region, 64)))
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
    if magic != ACCEPT_MAGIC or rlen < region:
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
    iters, depth = args.iters, args.depth
    n = chunks_in(max(args.region, size), size)  # write i goes to offset (i mod n) x size
    sges = [[(mr.addr + k * size, size, mr.lkey)] for k in range(n)]
    posted = done = 0
    t0 = time.perf_counter()
    while posted < min(depth, iters):
        k = posted % n
        cid.post_send(posted, cx.WR_RDMA_WRITE, sges[k], raddr + k * size, rkey)
        posted += 1
    while done < iters:
        done += len(poller.take())
        while posted < iters and posted - done < depth:
            k = posted % n
            cid.post_send(posted, cx.WR_RDMA_WRITE, sges[k], raddr + k * size, rkey)
            posted += 1
    secs = time.perf_counter() - t0
    return {"bytes": size, "iterations": iters, "depth": depth, "seconds": secs,
            "MBps": size * iters / secs / (1 << 20), "poll": args.poll}


def _ping_pong(cid, poller: _Poller, mr, iters: int) -> dict[str, Any]:
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


def main(argv: list[str] | None = None) -> int:
    """`serve` / `client` roles; one JSON line per event, errors as {"event": "error"}."""
    p = argparse.ArgumentParser(prog="python -m hsp_rdma.tools.cext_peer")
    p.add_argument("role", choices=("serve", "client"))
    p.add_argument("--mode", choices=("write", "lat"), required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--ip", required=True, help="this node's IPv4 on the device")
    p.add_argument("--peer", help="client: the server's IPv4")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--size", type=parse_size, default=65536)
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--region", type=parse_size, default=0,
                   help="write: bytes the writes tile, a multiple of --size (default --size)")
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


if __name__ == "__main__":
    sys.exit(main())
