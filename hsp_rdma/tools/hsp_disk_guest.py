"""Our side of `hsp-bench disk` inside one lab node: a node (ha/node.py) started from its TOML
file, whose one disk is the bench's RAM disk. The active runs fio's two jobs through
``node.disk``; the standby applies what comes until the active says ``quit`` on oam. Both
print one JSON object per line: their results, or {"event": "error", ...}.

The active's jobs, like drbd_bench's fio jobs on /dev/drbd0:
- 4 KiB sequential writes from offset 0, iodepth 1, each made durable as the commit mode
  says before the next starts: ``write(commit=MODE, flush=True)``, one transaction that the
  standby writes and fdatasyncs (and the active too) before it acknowledges in MODE: one
  round trip per write, as DRBD's protocol C needs, like fio's ``sync=1``. WARMUP writes
  first, not timed; then OPS timed, each sample from the call to its return [usec].
- 1 MiB sequential writes, DEPTH in flight (DEPTH threads, each blocking in
  ``write(commit=MODE)``, fio's libaio at iodepth DEPTH), BYTES in all, then
  ``flush(commit=MODE)``; timed from the first write to the flush's return.
Then ``node.sync()`` (everything applied on the standby), ``quit`` on oam, and both nodes
print their disk's CRC32C and write counters: the host compares them.

``--resync BYTES`` instead (tools/hsp_disk_bench.py's ``resync``): both nodes run the failover
engine (``ha/failover_engine.py``, the fence action of their TOML). The active says ``ready``,
then waits until it serves alone (the host pulled its fabric: the standby suspected, outdated
at the fence device, ``serving_alone``), writes BYTES of its disk as 1 MiB writes and
``--resync-pmem`` bytes of P.mem as 64 KiB transactions (acknowledged locally, marked in the
dirty bitmaps) and says ``written`` (with the out-of-sync count); the host plugs the fabric,
the channels come back, and the active waits for its engine's ``resync_done`` (SyncSource)
and prints the engine's resync notes (``resync``). Then ``node.sync()``, ``quit``, and both
print their digests of the disk and P.mem.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time

MB = 1 << 20
BLOCK = 4096
QUIT = b"quit"


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _end(node, disk: str) -> dict:
    """What the host compares: this node's disk digest, applied writes and bytes."""
    st = node.status()["disks"][disk]
    return {"digest": node.digest()["disks"][disk], "writes": st["writes"],
            "bytes": st["bytes"], "size": st["size"]}


def standby(node, disk: str, timeout: float) -> int:
    from hsp_rdma.core.frames import Channel
    from hsp_rdma.ha.node import NodeError

    emit("ready", role="standby")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = node.oam.recv(timeout=0.5)
        except NodeError:
            msg = None
        if msg == QUIT:
            emit("end", **_end(node, disk))
            return 0
        if node.session.streams[Channel.DISK].link is None:
            emit("error", error="the active went away before it said quit: "
                 + "; ".join(node.alarms[-3:]))
            return 1
    emit("error", error=f"the active did not say quit within {timeout:.0f} s")
    return 1


def _payload(rnd: bytes, k: int, size: int) -> bytes:
    """SIZE bytes unique to write K of this run (its number, then random bytes)."""
    start = (k * 8) % 4096
    return k.to_bytes(8, "little") + rnd[start:start + size - 8]


def active(node, disk_name: str, mode: str, ops: int, warmup: int, nbytes: int,
           depth: int) -> int:
    disk = node.disk[disk_name]
    if max(warmup, ops) * BLOCK > disk.size or nbytes > disk.size:
        emit("error", error=f"the jobs ({ops} x 4 KiB, {nbytes} bytes of 1 MiB writes) do not "
             f"fit on {disk.path} ({disk.size} bytes)")
        return 1
    rnd = os.urandom(MB + 4096)
    samples = []
    t_all = time.monotonic()
    for i in range(warmup + ops):
        data = _payload(rnd, i, BLOCK)
        off = (i - warmup if i >= warmup else i) * BLOCK
        t0 = time.perf_counter()
        disk.write(off, data, commit=mode, flush=True)
        if i >= warmup:
            samples.append(round((time.perf_counter() - t0) * 1e6, 1))
    emit("write4k", mode=mode, warmup=warmup, samples_us=samples,
         seconds=round(time.monotonic() - t_all, 3))

    count = nbytes // MB
    todo = itertools.count()  # next() on a count is atomic under the GIL
    failed: list[str] = []

    def writer() -> None:
        try:
            while not failed and (k := next(todo)) < count:
                disk.write(k * MB, _payload(rnd, warmup + ops + k, MB), commit=mode)
        except Exception as exc:  # noqa: BLE001 - reported as the bench's error
            failed.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=writer, name=f"bulk-{j}") for j in range(depth)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        emit("error", error=f"1 MiB writes: {failed[0]}")
        return 1
    disk.flush(commit=mode)
    seconds = time.perf_counter() - t0
    emit("write1m", mode=mode, bytes=count * MB, writes=count, depth=depth,
         seconds=round(seconds, 4))
    node.sync()  # whatever the mode, the standby applies everything before the digests
    node.oam.send(QUIT)
    emit("end", **_end(node, disk_name))
    return 0


RESYNC_NOTES = ("FabricSilent", "suspected", "outdating", "outdated", "FabricHeard",
                "resync_started", "resync_request", "resync_done", "unoutdated")
PMEM_TX = 64 << 10  # one P.mem transaction of the resync workload


def _end_all(node, disk: str) -> dict:
    """The disk's figures of ``_end`` and P.mem's digest."""
    return {**_end(node, disk), "pmem_digest": node.digest()["pmem"]}


def _notes(engine, whats: tuple[str, ...]) -> list[dict]:
    with engine.node._lock:
        return [dict(n) for n in engine.history if n["what"] in whats]


def resync_standby(node, disk: str, timeout: float) -> int:
    """Wait (through the outage) for the active's quit; then the digests."""
    from hsp_rdma.ha.node import NodeError

    emit("ready", role="standby")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = node.oam.recv(timeout=0.5)
        except NodeError:  # the link is pulled: the active comes back
            msg = None
            time.sleep(0.2)
        if msg == QUIT:
            emit("resync_notes", notes=_notes(node.failover, RESYNC_NOTES))
            emit("end", **_end_all(node, disk))
            return 0
    with node._lock:
        events = node.failover.status().get("events", [])[-6:]
    emit("error", error=f"the active did not say quit within {timeout:.0f} s; this node's "
         f"engine: {json.dumps(events)}")
    return 1


def _wait(pred, timeout: float, what: str, engine) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            with engine.node._lock:
                events = engine.status().get("events", [])[-8:]
            emit("error", error=f"{what} not within {timeout:.0f} s; the engine's last notes: "
                 + json.dumps(events))
            return False
        time.sleep(0.02)
    return True


def resync_active(node, engine, disk_name: str, nbytes: int, pmem_bytes: int,
                  timeout: float) -> int:
    disk = node.disk[disk_name]
    if nbytes > disk.size or nbytes % MB:
        emit("error", error=f"--resync {nbytes} must be whole MiB and fit on {disk.path} "
             f"({disk.size} bytes)")
        return 1
    if pmem_bytes > node.pmem.size or pmem_bytes % PMEM_TX:
        emit("error", error=f"--resync-pmem {pmem_bytes} must be a multiple of {PMEM_TX} and "
             f"fit in P.mem ({node.pmem.size} bytes)")
        return 1
    emit("ready", role="active")
    if not _wait(lambda: engine.alone_ok, timeout, "serving alone (the host pulls the fabric)",
                 engine):
        return 1
    emit("alone", notes=_notes(engine, RESYNC_NOTES))
    rnd = os.urandom(MB + 4096)
    t0 = time.perf_counter()
    for k in range(nbytes // MB):
        disk.write(k * MB, _payload(rnd, k + 1, MB), commit="applied")
    for k in range(pmem_bytes // PMEM_TX):
        with node.pmem.transaction(commit="applied") as tx:
            tx.write(k * PMEM_TX, _payload(rnd, k + 7, PMEM_TX))
    with node._lock:
        dirty = engine.dirty.status()
    emit("written", disk_bytes=nbytes, pmem_bytes=pmem_bytes,
         seconds=round(time.perf_counter() - t0, 3), dirty=dirty)

    def done() -> bool:
        return any(n["side"] == "SyncSource" for n in _notes(engine, ("resync_done",)))

    if not _wait(done, timeout, "resync_done (SyncSource) after the host plugs the fabric",
                 engine):
        return 1
    emit("resync", notes=_notes(engine, RESYNC_NOTES), resync_rate=engine.resync_rate,
         heartbeat_interval_ms=node.config.timeouts.heartbeat_interval)
    node.sync()
    node.oam.send(QUIT)
    emit("end", **_end_all(node, disk_name))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hsp_rdma.tools.hsp_disk_guest",
                                description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="this node's TOML file")
    p.add_argument("--disk", required=True, help="the [[disk]] name to write")
    p.add_argument("--mode", choices=("async", "received", "applied"), required=True)
    p.add_argument("--ops", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--bytes", type=int, default=128 * MB)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--timeout", type=float, default=600.0,
                   help="the standby's wait for the active's quit [s]")
    p.add_argument("--resync", type=int, default=0, metavar="BYTES",
                   help="the resync run instead (see above): disk bytes written alone")
    p.add_argument("--resync-pmem", type=int, default=0, metavar="BYTES",
                   help="with --resync: P.mem bytes written alone")
    args = p.parse_args(argv)
    from hsp_rdma.errors import HspError
    from hsp_rdma.ha.config import load_node_config
    from hsp_rdma.ha.node import Node

    try:
        config = load_node_config(args.config)
        if args.disk not in {d.name for d in config.disks}:
            raise HspError(f"{args.config} has no [[disk]] named {args.disk!r}")
        node = Node(config)
        engine = None
        if args.resync:
            from hsp_rdma.ha.failover_engine import FailoverEngine
            engine = FailoverEngine(node)
        t0 = time.monotonic()
        node.start()
    except (HspError, OSError) as exc:
        emit("error", error=f"starting the node: {exc}")
        return 1
    emit("started", role=config.role, connect_s=round(time.monotonic() - t0, 3),
         device=str(node.disk[args.disk].path), size=node.disk[args.disk].size)
    try:
        if engine is not None:
            if config.role == "standby":
                return resync_standby(node, args.disk, args.timeout)
            return resync_active(node, engine, args.disk, args.resync, args.resync_pmem,
                                 args.timeout)
        if config.role == "standby":
            return standby(node, args.disk, args.timeout)
        return active(node, args.disk, args.mode, args.ops, args.warmup, args.bytes,
                      args.depth)
    except (HspError, OSError) as exc:
        emit("error", error=f"{config.role}: {type(exc).__name__}: {exc}")
        return 1
    finally:
        node.close()


if __name__ == "__main__":
    sys.exit(main())
