"""The event-driven RDMA Write reference: a plain pyverbs writer, run on the active node.

`python -m hsp_rdma.tools.pyverbs_writer --ip B --peer A --port P --size S --depth D --iters N`
connects to a cext_peer server (which publishes its buffer's address and rkey in the accept
private data), keeps DEPTH signaled writes of SIZE in flight (write i goes to offset
i x SIZE mod REGION on both sides, so with --region it moves a fresh region like the GSO's copy
does, not one small buffer again and again) and sleeps on its completion
channel between completions, as an application that does not spin would. With --landed-read,
the last write's completion is followed by an 8-byte RDMA Read of the server's buffer, and the
time runs to that read's completion: on iWARP a write completes once TCP took it, and the read's
response comes only after every earlier write landed (the GSO's push ends the same way there).
perftest cannot do
this for RDMA Write ("Events feature not available on WRITE verb"), and in a 1-vCPU lab guest
a busy poller takes the CPU the soft device needs, so this is the honest reference beside
ib_write_bw. It uses Debian's pyverbs only (of hsp_rdma just the stdlib-only wire constants
it shares with the server); one JSON line out.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import time

from hsp_rdma.tools.writer_wire import ACCEPT, ACCEPT_MAGIC, chunks_in, pattern


def _event(ch, want: int, what: str):
    import pyverbs.cm_enums as ce
    from pyverbs.cmid import CMEvent

    ev = CMEvent(ch)
    kind, name = ev.event_type, ev.event_str()
    data = ev.private_data if kind == ce.RDMA_CM_EVENT_ESTABLISHED else None
    ev.ack_cm_event()
    if kind != want:
        raise RuntimeError(f"{what}: expected rdma_cm event {want}, got {name}")
    return data


def write_bw(ip: str, peer: str, port: int, size: int, depth: int, iters: int,
             region: int = 0, landed_read: bool = False) -> dict:
    import pyverbs.cm_enums as ce
    import pyverbs.enums as e
    from pyverbs.cmid import CMID, AddrInfo, CMEventChannel, ConnParam
    from pyverbs.cq import CQ, CompChannel
    from pyverbs.mr import MR
    from pyverbs.qp import QPCap, QPInitAttr

    ch = CMEventChannel()
    cid = CMID(creator=ch, port_space=ce.RDMA_PS_TCP)
    cid.resolve_addr(AddrInfo(src=ip, dst=peer, dst_service=str(port),
                              port_space=ce.RDMA_PS_TCP), 5000)
    _event(ch, ce.RDMA_CM_EVENT_ADDR_RESOLVED, f"resolving {peer}")
    cid.resolve_route(5000)
    _event(ch, ce.RDMA_CM_EVENT_ROUTE_RESOLVED, f"route to {peer}")
    cc = CompChannel(cid.context)
    cq = CQ(cid.context, 2 * depth + 8, None, cc, 0)
    cap = QPCap(max_send_wr=depth + 1, max_recv_wr=1, max_send_sge=1, max_recv_sge=1)
    cid.create_qp(QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap))
    region = region or size
    # pyverbs posts a write from an MR's start: one MR per slice of the local region
    data = pattern(region)
    mrs = []
    for k in range(chunks_in(region, size)):
        mr = MR(cid.pd, size, e.IBV_ACCESS_LOCAL_WRITE)
        mr.write(data[k * size:(k + 1) * size], size, 0)  # the server checks they landed
        mrs.append(mr)
    cid.connect(ConnParam(resources=1, depth=1, retry=6))
    data = _event(ch, ce.RDMA_CM_EVENT_ESTABLISHED, f"connecting to {peer}")
    magic, raddr, rkey, rlen = ACCEPT.unpack_from(bytes(data or b"").ljust(ACCEPT.size, b"\0"))
    if magic != ACCEPT_MAGIC or rlen < region:
        raise RuntimeError(f"the server's accept data is not a cext_peer's ({bytes(data)[:16]!r})")
    rmr = MR(cid.pd, 8, e.IBV_ACCESS_LOCAL_WRITE)  # where the landed read lands
    posted = done = 0
    waits = 0
    t0 = time.perf_counter()
    slices = len(mrs)
    while posted < min(depth, iters):
        k = posted % slices
        cid.post_write(mrs[k], size, raddr + k * size, rkey, e.IBV_SEND_SIGNALED)
        posted += 1
    last_t = t0
    while done < iters + landed_read:
        n, wcs = cq.poll(depth)
        if not n:
            cq.req_notify()
            n, wcs = cq.poll(depth)  # a completion may beat the arming
            if not n:
                cc.get_cq_event(cq)
                cq.ack_events(1)
                waits += 1
                continue
        for wc in wcs:
            if wc.status != e.IBV_WC_SUCCESS:
                raise RuntimeError(f"RDMA {'Read' if done >= iters else 'Write'} completed "
                                   f"with status {wc.status}")
        done += n
        if done == iters:  # the last write completed; the landed read, if asked, follows
            last_t = time.perf_counter()
            if landed_read:
                cid.post_read(rmr, 8, raddr, rkey, e.IBV_SEND_SIGNALED)
        while posted < iters and posted - done < depth:
            k = posted % slices
            cid.post_write(mrs[k], size, raddr + k * size, rkey, e.IBV_SEND_SIGNALED)
            posted += 1
    secs = time.perf_counter() - t0
    cid.disconnect()
    return {"bytes": size, "iterations": iters, "depth": depth, "seconds": secs,
            "MBps": size * iters / secs / (1 << 20), "sleeps": waits, "region": region,
            "landed_read": landed_read,
            # the landed read's share: last write completed .. the read completed
            "landed_read_ms": round((secs - (last_t - t0)) * 1000, 2) if landed_read else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hsp_rdma.tools.pyverbs_writer",
                                description=__doc__.splitlines()[0])
    p.add_argument("--ip", required=True, help="this node's IPv4 on the device")
    p.add_argument("--peer", required=True, help="the cext_peer server's IPv4")
    p.add_argument("--port", type=int, required=True, help="the server's rdma_cm port")
    p.add_argument("--size", type=int, required=True, help="bytes per RDMA Write")
    p.add_argument("--depth", type=int, default=16, help="writes in flight (default 16)")
    p.add_argument("--iters", type=int, required=True, help="writes in all")
    p.add_argument("--region", type=int, default=0,
                   help="bytes the writes tile, a multiple of --size (default: --size)")
    p.add_argument("--landed-read", action="store_true",
                   help="end with an 8-byte RDMA Read behind the writes, timed with them")
    p.add_argument("--watchdog", type=float, default=300.0,
                   help="exit with tracebacks after this many seconds (default 300)")
    args = p.parse_args(argv)
    # pyverbs' get_cq_event blocks in C with no timeout: only a C-level watchdog ends a hang.
    faulthandler.dump_traceback_later(args.watchdog, exit=True)
    try:
        res = write_bw(args.ip, args.peer, args.port, args.size, args.depth, args.iters,
                       args.region, args.landed_read)
    except Exception as exc:  # noqa: BLE001 - one JSON line for the orchestrator, exit 1
        print(json.dumps({"event": "error", "role": "pyverbs",
                          "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"event": "result", "mode": "write", "poll": "event", **res}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
