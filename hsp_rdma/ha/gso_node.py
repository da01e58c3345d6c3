"""One node of a GSO pair, as a process: `python -m hsp_rdma.ha.gso_node --device rxe0 ...`.

Runs a demo application (a transaction counter and a table in P.mem), switches over back and
forth `--runs` times with its peer, and prints one JSON line per event on stdout for the
orchestrator (hsp-bench, the tests). `--inject` makes it misbehave on purpose for the drills.
When a GSO ends without a switch and this node serves (again), the application runs
`--transactions` more and says so ("serving"), so a drill sees it thawed, not only reported.
P.mem's CRC is taken after each GSO ("pmem"), off the blackout: the application is frozen
(active) or has not run yet (new active) at that point.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import zlib

from hsp_rdma.core import gso
from hsp_rdma.core.profiles import load_profiles, pick_profile, profile_dirs
from hsp_rdma.errors import GsoRefused, HspError
from hsp_rdma.ha.fence import FenceAgent
from hsp_rdma.ha.switchover import (
    CONNECT_TIMEOUT_S,
    KEEPALIVE_S,
    Application,
    Engine,
    FabricLink,
    PeerLeft,
)
from hsp_rdma.units import size_arg

COUNTER = struct.Struct("<Q")
DIGESTS = {"crc32": gso.DigestAlgo.CRC32, "crc32c": gso.DigestAlgo.CRC32C,
           "blake2b": gso.DigestAlgo.BLAKE2B_256}
INJECTIONS = ("none", "stale-marker", "no-ready", "bad-version", "bad-digest", "hold-verify",
              "replay-old-start")
HOLD_VERIFY_S = 3.0  # --inject hold-verify: a window after the marker for a drill's fault


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


class DemoApp:
    """A counter of committed transactions at P.mem[0:8]; each transaction also stamps a
    table row, so a lost or torn byte shows in the P.mem CRC."""

    def __init__(self, name: str):
        self.name = name
        self.pmem = None
        self.running = False
        self.frozen_at: int | None = None  # the counter when the last freeze happened

    def attach(self, pmem: memoryview) -> None:
        self.pmem = pmem

    @property
    def counter(self) -> int:
        return COUNTER.unpack_from(self.pmem, 0)[0]

    def transact(self, n: int) -> None:
        rows = (len(self.pmem) - 8) // 64
        for _ in range(n):
            c = self.counter + 1
            if rows:
                row = 8 + (c % rows) * 64
                self.pmem[row:row + 8] = COUNTER.pack(c)
            COUNTER.pack_into(self.pmem, 0, c)

    def crc(self) -> int:
        return zlib.crc32(self.pmem)

    def freeze(self) -> bytes:
        self.running = False
        self.frozen_at = self.counter
        emit("frozen", counter=self.counter)
        return json.dumps({"counter": self.counter, "from": self.name}).encode()

    def thaw(self) -> None:
        """The GSO ended without a switch (or the standby was fenced): serve again."""
        self.running = True
        emit("thawed", counter=self.counter)

    def resume(self, pmem: memoryview, blob: bytes) -> None:
        meta = json.loads(blob.rstrip(b"\0"))
        self.running = True
        emit("resumed", counter=self.counter, blob_counter=meta["counter"],
             blob_from=meta["from"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gso_node", description=__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--local-ip", required=True)
    p.add_argument("--peer-ip", help="connect to this peer (else listen)")
    p.add_argument("--y-device", help="fabric y: this node's rdma device there (the link "
                   "comes up on x or y, and again on either when it breaks while no GSO runs)")
    p.add_argument("--y-local-ip", help="fabric y: this node's IPv4 there")
    p.add_argument("--y-peer-ip", help="fabric y: the peer's IPv4 there (with --peer-ip)")
    p.add_argument("--stripe", action=argparse.BooleanOptionalAction, default=None,
                   help="with fabric y: stripe a push's copy across x and y (both nodes; "
                        "default: the hw profile's stripe)")
    p.add_argument("--serving", action="store_true", help="start as the active")
    p.add_argument("--pmem", type=size_arg(64, 1 << 34, "--pmem"), default=16 << 20)
    p.add_argument("--blob", type=size_arg(0, 1 << 24, "--blob"), default=4096)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--chunk", type=size_arg(512, 1 << 30, "--chunk"), default=0,
                   help="a push's write size, and a pull's read size unless --read-chunk "
                        "(default: the hw profile's chunk_size and read_chunk_size)")
    p.add_argument("--read-chunk", type=size_arg(512, 1 << 30, "--read-chunk"), default=0,
                   help="a pull's RDMA Read size (default: --chunk, else the hw profile's)")
    p.add_argument("--depth", type=int, default=0)
    p.add_argument("--digest", choices=("crc32", "crc32c", "blake2b"), default=None,
                   help="the image digest (default: the hw profile's digest)")
    p.add_argument("--mode", choices=("push", "pull"), default="push",
                   help="how this node's GSOs move the image: push (it RDMA-writes it into "
                        "the standby) or pull (the standby RDMA-reads it); the standby "
                        "follows the active's choice")
    p.add_argument("--transactions", type=int, default=1000)
    p.add_argument("--inject", choices=INJECTIONS, default="none")
    p.add_argument("--fence-agent", metavar="CMD",
                   help="fence action for the peer, fence-agents convention (options on stdin)")
    p.add_argument("--fence-opt", metavar="KEY=VALUE", action="append", default=[],
                   help="an option line for the fence agent (repeatable), e.g. ip=10.0.0.9")
    p.add_argument("--peer-name", help="the peer's name for the fence agent's plug=")
    p.add_argument("--state-dir", metavar="DIR",
                   help="persist the GSO epochs here (fsync'd before they are acted on)")
    p.add_argument("--profiles", metavar="DIR",
                   help="a directory of hw profiles searched before the installed ones")
    p.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S,
                   help="seconds to connect and exchange Hello with the peer, attempts "
                        "retried meanwhile (default %(default)s)")
    p.add_argument("--ready-timeout", type=float, default=2.0)
    p.add_argument("--gso-timeout", type=float, default=60.0)
    p.add_argument("--copy-timeout", type=float, default=60.0)
    p.add_argument("--done-timeout", type=float, default=10.0)
    p.add_argument("--fence-timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    if bool(args.y_device) != bool(args.y_local_ip) or \
            bool(args.y_peer_ip) != bool(args.peer_ip and args.y_device):
        p.error("fabric y needs --y-device and --y-local-ip, and --y-peer-ip exactly when "
                "--peer-ip is given")
    if args.stripe and not args.y_device:
        p.error("--stripe needs fabric y (--y-device, --y-local-ip): a stripe is a second VI "
                "on the fabric the link is not on")
    if not args.connect_timeout > 0:
        p.error(f"--connect-timeout should be more than 0 seconds, not {args.connect_timeout}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = pick_profile(args.device, load_profiles(user_dir=args.profiles),
                           searched=profile_dirs(args.profiles))
    fence = FenceAgent.parse(args.fence_agent, args.fence_opt) if args.fence_agent else None
    app = DemoApp(args.name)
    timeouts = gso.Timeouts(ready=args.ready_timeout, copy=args.copy_timeout,
                            done=args.done_timeout, fence=args.fence_timeout,
                            gso=args.gso_timeout)
    eng = Engine.open(args.device, profile, args.pmem, args.blob, serving=args.serving,
                      timeouts=timeouts, app=Application(freeze=app.freeze, thaw=app.thaw,
                                                         resume=app.resume),
                      chunk_size=args.chunk, queue_depth=args.depth, fence=fence,
                      peer_name=args.peer_name, state_dir=args.state_dir,
                      read_chunk_size=args.read_chunk)
    eng.on_alarm = lambda why: emit("alarm", reason=why, serving=eng.machine.serving)
    eng.on_connect_failed = lambda why: emit("connect_retry", reason=why)
    eng.digest_algo = DIGESTS[args.digest or profile.digest]
    eng.mode = gso.GsoMode[args.mode.upper()]
    app.attach(eng.image.pmem)
    links = [FabricLink("x", args.device, args.local_ip, args.peer_ip)]
    if args.y_device:
        eng.add_fabric("y", args.y_device)
        eng.keepalive_s = KEEPALIVE_S
        links.append(FabricLink("y", args.y_device, args.y_local_ip, args.y_peer_ip))
        eng.stripe = profile.stripe if args.stripe is None else args.stripe

    def connected(hello) -> None:
        emit("connected", profile=profile.name, chunk=eng.chunk_size,
             read_chunk=eng.read_chunk_size, depth=eng.queue_depth,
             peer_region=hello.region_size, serving=eng.machine.serving,
             epoch=eng.machine.epoch, seen=eng.machine.seen,
             marker_wait=profile.marker_poll.mode.value, fabric=eng.fabric,
             stripe=eng.striped, stripe_note=eng.stripe_note)

    def serve(until) -> None:
        """serve UNTIL; with two fabrics, a link lost while no GSO runs is connected again
        (on the other fabric first) and served on."""
        while True:
            try:
                eng.serve(until=until)
                return
            except PeerLeft as exc:
                if len(links) < 2 or eng.peer_goodbye is not None:
                    raise
                emit("link_gone", reason=str(exc), fabric=eng.fabric)
                connected(eng.connect_fabrics(links, args.connect_timeout, last=eng.fabric))

    def fresh() -> bool:  # heard from lately (or gone: serve connects it again)
        return eng.silent_s() <= 2 * eng.keepalive_s or not eng.link_up

    try:
        if args.serving:
            # Fill the state once, so the copy moves real, checkable bytes.
            eng.image.pmem[:] = bytes(range(256)) * (args.pmem // 256) + bytes(args.pmem % 256)
            COUNTER.pack_into(eng.image.pmem, 0, 0)
            app.running = True
        if args.inject == "bad-version":
            eng.hello_version = 99
        connected(eng.connect_fabrics(links, args.connect_timeout))
        if args.inject == "no-ready":
            eng.drop_ready = True
        if args.inject == "stale-marker":
            eng.stale_marker_first = True
        if args.inject == "bad-digest":
            eng.corrupt_image = True
        if args.inject == "replay-old-start":
            eng.replay_stale_first = True
        if args.inject == "hold-verify":
            eng.hold_verify_s = HOLD_VERIFY_S
        eng.on_marker = lambda value: emit("marker_seen", value=value)
        done = 0
        while done < args.runs:
            if eng.machine.serving:
                app.transact(args.transactions)
                if len(links) > 1:  # a link heard from lately (one lost: connected again)
                    serve(lambda: fresh() and eng.link_up)
                emit("request", epoch=eng.machine.seen + 1, counter=app.counter,
                     fabric=eng.fabric)
                try:
                    eng.request_gso()
                except GsoRefused as exc:
                    emit("refused", reason=str(exc))
                    return 1
            before = len(eng.reports)
            serve(lambda n=before: len(eng.reports) > n)
            rep = eng.reports[-1]
            done += 1
            emit("gso", epoch=rep.epoch, outcome=rep.outcome, role=rep.role, mode=rep.mode,
                 fabric=eng.fabric,
                 reason=rep.reason, image_bytes=rep.image_bytes, writes=rep.writes,
                 copy_s=rep.copy_end_t - rep.copy_start_t, copy_MBps=rep.copy_MBps,
                 blackout_s=rep.blackout_s, verify_s=rep.verify_s, resume_s=rep.resume_s,
                 digest_s=rep.digest_s, digest_wait_s=rep.digest_wait_s,
                 phases_ms=rep.phases_ms(), serving=eng.machine.serving, alarm=eng.alarm,
                 stale_ignored=eng.machine.stale_ignored,
                 markers_ignored=eng.markers_ignored, fence=eng.fence_results,
                 link_error=eng.link_error, relinks=rep.relinks, fabrics=rep.fabrics,
                 stripe_writes=rep.stripe_writes, header_behind=rep.header_behind,
                 read_registered=rep.read_registered, landed_by=rep.landed_by,
                 landed_read_ms=(round((rep.copy_end_t - rep.header_t) * 1000, 2)
                                 if rep.landed_by == "read" and rep.header_t else None))
            took_over = rep.role == "standby" and rep.outcome == "completed"
            if (rep.role == "active" and rep.stop_t) or took_over:
                emit("pmem", epoch=rep.epoch, role=rep.role, counter=app.counter,
                     pmem_crc=app.crc())
            if rep.outcome != "completed":
                if eng.machine.serving:
                    app.transact(args.transactions)  # thawed: the application serves
                    emit("serving", counter=app.counter)
                if len(links) < 2:
                    break
                # two fabrics: the link comes up again (on the other fabric) for the next run
        emit("end", serving=eng.machine.serving, counter=app.counter, gsos=done)
        return 0
    except HspError as exc:
        emit("error", error=str(exc), serving=eng.machine.serving)
        print(f"gso_node {args.name}: {exc}", file=sys.stderr)
        return 1
    finally:
        eng.close()


if __name__ == "__main__":
    sys.exit(main())
