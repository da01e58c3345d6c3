"""Run an Interface A pair in the lab: one node process per guest, a workload on the active,
JSON events per line on stdout (collected live by ``tools.guest.GuestRun``).

The workload is a pure function of (seed, k) (``make_tx``), so a test can rebuild on the host
the image any prefix of transactions leaves, and check that a standby holds exactly a prefix
of whole transactions. Shared by the lab tests and ``hsp-bench interface-a``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

MiB = 1 << 20
MODES = ("async", "received", "applied")


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def tx_size(rng: random.Random, max_size: int) -> int:
    """Log-uniform from 16 B to MAX_SIZE: small and large transactions alike."""
    return round(2 ** rng.uniform(4, max(4.0, max_size.bit_length() - 1)))


def make_tx(seed: int, k: int, pmem_size: int, disk_size: int, max_size: int,
            pmem_only: bool = False) -> dict:
    """Transaction K of the workload SEED: {"target", "mode", "writes": [(off, bytes)]}."""
    rng = random.Random(seed * 1_000_003 + k)
    target = "pmem" if pmem_only or not disk_size or rng.random() < 0.5 else "disk"
    mode = MODES[k % 3]
    region = pmem_size if target == "pmem" else disk_size
    writes = []
    for _ in range(rng.randint(1, 3) if target == "pmem" else 1):
        n = min(tx_size(rng, max_size), region)
        off = rng.randrange(0, region - n + 1)
        writes.append((off, rng.randbytes(n)))
    return {"target": target, "mode": mode, "writes": writes}


def pmem_image(seed: int, upto: int, pmem_size: int, max_size: int) -> bytes:
    """P.mem after pmem-only transactions 1..UPTO of SEED (for the kill test's check)."""
    img = bytearray(pmem_size)
    for k in range(1, upto + 1):
        for off, data in make_tx(seed, k, pmem_size, 0, max_size, pmem_only=True)["writes"]:
            img[off:off + len(data)] = data
    return bytes(img)


def _config(args):
    from hsp_rdma.ha.config import (
        DiskConfig,
        FabricConfig,
        NodeConfig,
        ReplicationConfig,
        TimeoutsConfig,
    )
    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    disks = ()
    if args.disk_size:
        disks = (DiskConfig("data", state / "data.img", args.disk_size),)
    return NodeConfig(
        name=args.name, peer=args.peer_name, role=args.role, state_dir=state,
        fabrics=(FabricConfig("x", args.device, args.local, args.peer),),
        pmem_size=args.pmem, disks=disks,
        replication=ReplicationConfig(commit="applied", message_size=args.message_size,
                                      credits=args.credits),
        timeouts=TimeoutsConfig(commit=args.commit_timeout, connect=args.connect_timeout))


def _standby(node, args) -> int:
    from hsp_rdma.core.frames import Channel
    from hsp_rdma.ha.node import NodeError
    emit("ready", role="standby")
    last = time.monotonic()
    # This pair runs no failover engine; its standby takes heart-beat silence as the end of
    # the active, as the engine's detector would. A killed active's rdma_cm normally sends a
    # DREQ (the link goes down at once), but one full lab run saw no disconnect reach the
    # standby (rxe), which then waited out the test's 400 s.
    beats, beat_t = node.heartbeats["received"], time.monotonic()
    while True:
        try:
            msg = node.oam.recv(timeout=0.2)
        except NodeError:
            msg = None
        if msg == b"digest?":
            node.oam.send(json.dumps(node.digest()).encode())
        elif msg == b"cpu?":
            node.oam.send(json.dumps(cpu_now(node)).encode())
        elif msg == b"quit":
            emit("end", status=node.status(), digest=node.digest(),
                 config=node.applied_config)
            return 0
        st = node.session.streams[Channel.PMEM].link
        now = time.monotonic()
        if node.heartbeats["received"] != beats:
            beats, beat_t = node.heartbeats["received"], now
        silent = now - beat_t > args.silence_s
        if st is None or silent:  # the active is gone (killed): what do we hold?
            emit("final", digest=node.digest(), status=node.status(),
                 why="link down" if st is None else f"no heart beat in {args.silence_s:g} s")
            return 0
        if time.monotonic() - last > 2:
            last = time.monotonic()
            emit("status", status=node.status())


def cpu_now(node) -> dict:
    """CPU seconds so far: the whole process and the node's loop thread alone."""
    t = os.times()
    loop = time.clock_gettime(time.pthread_getcpuclockid(node._thread.ident))
    return {"process_s": t.user + t.system, "loop_s": loop, "wall_s": time.monotonic(),
            "heartbeats_sent": node.heartbeats["sent"],
            "heartbeats_received": node.heartbeats["received"]}


def percentiles(samples: list[float]) -> dict:
    """perftest's latency words: min, median (typical), average, p99, p99.9, max."""
    s = sorted(samples)
    n = len(s)

    def at(q: float) -> float:
        return round(s[min(n - 1, int(q * n))], 1)

    return {"iterations": n, "min": round(s[0], 1), "p50": at(0.5),
            "avg": round(sum(s) / n, 1), "p99": at(0.99), "p99_9": at(0.999),
            "max": round(s[-1], 1)}


def _bench(node, args) -> int:
    """Commit latency per mode, transactions/s per size, CPU per second at fixed rates."""
    size = node.pmem.size
    latency = {}
    for mode in MODES:
        samples = []
        for i in range(args.warmup + args.lat_iters):
            t0 = time.perf_counter()
            with node.pmem.transaction(commit=mode) as t:
                t.write((i * 64) % size, b"L" * 64)
            if i >= args.warmup:
                samples.append((time.perf_counter() - t0) * 1e6)
        latency[mode] = percentiles(samples)
        emit("phase", name=f"latency {mode}", **latency[mode])
    throughput = {}
    for n_bytes in (64, 4096, 65536):
        payload = os.urandom(n_bytes)
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < args.tput_s:
            with node.pmem.transaction(commit="async") as t:
                t.write((n * n_bytes) % (size - n_bytes), payload)
            n += 1
        node.sync()  # counted: every transaction is applied on the standby
        dt = time.monotonic() - t0
        throughput[str(n_bytes)] = {"tx": n, "seconds": round(dt, 3),
                                    "tx_per_s": round(n / dt, 1),
                                    "MBps": round(n * n_bytes / dt / 1e6, 2)}
        emit("phase", name=f"throughput {n_bytes} B", **throughput[str(n_bytes)])
    cpu = {}
    for rate in args.rates:
        node.oam.send(b"cpu?")
        theirs0 = json.loads(node.oam.recv(timeout=30))
        mine0 = cpu_now(node)
        n, t0 = 0, time.monotonic()
        while rate == 0 and time.monotonic() - t0 < args.cpu_s:  # idle: heart beats only
            time.sleep(max(0.0, args.cpu_s - (time.monotonic() - t0)))
        while rate:
            now = time.monotonic()
            if now - t0 >= args.cpu_s:
                break
            due = t0 + n / rate
            if due > now:
                time.sleep(due - now)
            with node.pmem.transaction(commit="async") as t:
                t.write((n * 64) % size, b"C" * 64)
            n += 1
        node.sync()
        mine1 = cpu_now(node)
        node.oam.send(b"cpu?")
        theirs1 = json.loads(node.oam.recv(timeout=30))
        dt = mine1["wall_s"] - mine0["wall_s"]
        dts = theirs1["wall_s"] - theirs0["wall_s"]
        cpu[str(rate)] = {
            "target_tx_per_s": rate, "achieved_tx_per_s": round(n / dt, 1),
            "active_process": round(100 * (mine1["process_s"] - mine0["process_s"]) / dt, 2),
            "active_loop": round(100 * (mine1["loop_s"] - mine0["loop_s"]) / dt, 2),
            "standby_process": round(
                100 * (theirs1["process_s"] - theirs0["process_s"]) / dts, 2),
            "standby_loop": round(100 * (theirs1["loop_s"] - theirs0["loop_s"]) / dts, 2),
            "seconds": round(dt, 3),
            "heartbeat_interval_ms": node.config.timeouts.heartbeat_interval,
            "active_heartbeats_per_s": round(
                (mine1["heartbeats_sent"] - mine0["heartbeats_sent"]) / dt, 1),
            "standby_heartbeats_per_s": round(
                (theirs1["heartbeats_sent"] - theirs0["heartbeats_sent"]) / dts, 1)}
        emit("phase", name=f"cpu at {rate} tx/s", **cpu[str(rate)])
    node.oam.send(b"quit")
    emit("bench", latency=latency, throughput=throughput, cpu=cpu)
    time.sleep(0.5)
    return 0


def _active(node, args) -> int:
    if args.bench:
        return _bench(node, args)
    disk = node.disk.get("data")
    acked = []
    for k in range(1, args.txs + 1):
        tx = make_tx(args.seed, k, args.pmem, args.disk_size, args.max_size,
                     pmem_only=args.pmem_only)
        t0 = time.perf_counter()
        if tx["target"] == "pmem":
            with node.pmem.transaction(commit=tx["mode"]) as t:
                for off, data in tx["writes"]:
                    t.write(off, data)
            txid = t.txid
        else:
            ((off, data),) = tx["writes"]
            txid = disk.write(off, data, commit=tx["mode"])
        us = (time.perf_counter() - t0) * 1e6
        acked.append(k)
        emit("acked", k=k, txid=txid, target=tx["target"], mode=tx["mode"],
             bytes=sum(len(d) for _, d in tx["writes"]), us=round(us, 1))
        if k in args.hold_at:
            _hold(args, k)
        if args.kill_mid_tx and k == args.kill_mid_tx:
            _kill_mid_big_tx(node, args, k + 1)
        if args.sync_every and k % args.sync_every == 0:
            # a configuration change rides along, applied in order on the standby; with
            # --config-fail the last one is a command the standby cannot apply
            bad = args.config_fail and k + args.sync_every > args.txs
            node.config_change({"set": "k", "value": k, **({"unknown": 1} if bad else {})})
            node.sync()
            mine = node.digest()
            node.oam.send(b"digest?")
            theirs = json.loads(node.oam.recv(timeout=60))
            emit("compare", k=k, active=mine, standby=theirs)
    node.oam.send(b"quit")
    time.sleep(0.5)
    emit("end", status=node.status(), digest=node.digest(), oam_events=list(node.oam.events))
    return 0


def _hold(args, k: int) -> None:
    """Stop the workload after transaction K until the file <hold-file>.K appears (a test
    looks at both nodes meanwhile); at most 120 s."""
    path = Path(f"{args.hold_file}.{k}")
    emit("holding", k=k, until=str(path))
    deadline = time.monotonic() + 120
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _kill_mid_big_tx(node, args, k: int) -> None:
    """Start transaction K (1 MiB or more: many fragments) and SIGKILL this process once
    three of its fragments are posted: the standby holds a part of it, never applied."""
    from hsp_rdma.core import ifa
    from hsp_rdma.core.frames import Channel
    sent = {"n": 0}

    def hook(act: ifa.Send) -> None:
        if act.channel == Channel.PMEM and len(act.data) > 1024:
            sent["n"] += 1
            if sent["n"] > 3:
                emit("killing", k=k, fragments_posted=3)
                os.kill(os.getpid(), signal.SIGKILL)

    node.before_send = hook
    tx = make_tx(args.seed, k, args.pmem, 0, args.max_size, pmem_only=True)
    with node.pmem.transaction(commit="async") as t:
        for off, data in tx["writes"]:
            t.write(off, data)
        t.write(0, os.urandom(2 * MiB))  # make sure it spans many fragments
    time.sleep(30)
    emit("not_killed")
    sys.exit(3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--peer-name", required=True)
    p.add_argument("--role", choices=("active", "standby"), required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--local", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--pmem", type=int, default=4 * MiB)
    p.add_argument("--disk-size", type=int, default=4 * MiB)
    p.add_argument("--message-size", type=int, default=64 * 1024)
    p.add_argument("--credits", type=int, default=16)
    p.add_argument("--silence-s", type=float, default=10.0,
                   help="standby: end (final) after this long without a heart beat")
    p.add_argument("--commit-timeout", type=int, default=30000)
    p.add_argument("--connect-timeout", type=int, default=120000)
    p.add_argument("--txs", type=int, default=30)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-size", type=int, default=MiB)
    p.add_argument("--sync-every", type=int, default=10)
    p.add_argument("--pmem-only", action="store_true")
    p.add_argument("--config-fail", action="store_true",
                   help="the last configuration change is one the standby refuses")
    p.add_argument("--kill-mid-tx", type=int, default=0,
                   help="after this many transactions, SIGKILL in the middle of the next")
    p.add_argument("--hold-at", type=lambda t: [int(x) for x in t.split(",") if x], default=[],
                   help="after these transactions, wait for the file <hold-file>.K")
    p.add_argument("--hold-file", default="/tmp/ifa-hold")
    b = p.add_argument_group("bench (hsp-bench interface-a)")
    b.add_argument("--bench", action="store_true", help="run the bench instead of --txs")
    b.add_argument("--warmup", type=int, default=50)
    b.add_argument("--lat-iters", type=int, default=1000)
    b.add_argument("--tput-s", type=float, default=3.0)
    b.add_argument("--cpu-s", type=float, default=5.0)
    b.add_argument("--rates", type=lambda t: [int(x) for x in t.split(",")], default=[1000, 10000])
    args = p.parse_args(argv)
    if args.pmem_only:
        args.disk_size = 0
    from hsp_rdma.ha.node import Node
    applied_config: list[dict] = []

    def on_config(cmd: dict) -> None:
        if set(cmd) - {"set", "value"}:
            raise ValueError(f"unknown keys {sorted(set(cmd) - {'set', 'value'})}")
        applied_config.append(cmd)

    node = Node(_config(args), on_config=on_config)
    node.applied_config = applied_config
    t0 = time.monotonic()
    node.start()
    emit("started", role=args.role, connect_s=round(time.monotonic() - t0, 3),
         control_socket=str(node.config.socket_path))
    try:
        return _standby(node, args) if args.role == "standby" else _active(node, args)
    finally:
        node.close()


if __name__ == "__main__":
    sys.exit(main())
