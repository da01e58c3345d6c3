"""Interface A's commit path on this host over the soft VIA provider: two Nodes in one process
(127.0.0.1 / 127.0.0.2, as tests/ha/test_node_soft.py), commit latency per mode at 64 B,
process CPU per transaction (both nodes and the soft provider's threads: one process), a
synchronous 4 KiB disk write (write + flush as two commits, and write(flush=True) when the
engine has it) and async 1 MiB writes. Prints one JSON object.

    .venv/bin/python scripts/bench_ifa_soft.py [--n 2000]

Not a test: a figure for before/after comparisons of the engine (run under
``flock /tmp/hsp-bench.lock`` on a shared host)."""

from __future__ import annotations

import argparse
import inspect
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from hsp_rdma.ha.config import load_node_config
from hsp_rdma.ha.node import Node
from hsp_rdma.tools.lab_config import write_node_configs
from hsp_rdma.via.providers import soft

INFO = {"a": {"x": {"rdma_dev": "soft:a", "ipv4": "127.0.0.1"}},
        "b": {"x": {"rdma_dev": "soft:b", "ipv4": "127.0.0.2"}}}


def start_pair(tmp: Path) -> tuple[Node, Node]:
    soft.PORT_BASE = 20000 + random.randrange(20) * 1000
    paths = write_node_configs(INFO, tmp, pmem_size="1 MiB",
                               disks=[{"name": "data", "path": str(tmp / "data-NODE.img"),
                                       "size": "64 MiB"}],
                               timeouts={"connect": 20000, "commit": 20000})
    configs = {}
    for node, path in paths.items():
        path.write_text(path.read_text().replace("NODE", node))
        configs[node] = load_node_config(path)
        with open(tmp / f"data-{node}.img", "wb") as f:
            f.truncate(64 << 20)
    nodes = [Node(configs["a"]), Node(configs["b"])]
    threads = [threading.Thread(target=n.start) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    return nodes[0], nodes[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    out: dict = {"n": args.n, "commit_us": {}, "cpu_us_per_tx": {}}
    with tempfile.TemporaryDirectory() as d:
        active, standby = start_pair(Path(d))
        try:
            payload = b"p" * 64
            for mode in ("async", "received", "applied"):
                for _ in range(200):  # warm-up
                    with active.pmem.transaction(commit=mode) as tx:
                        tx.write(0, payload)
                active.sync()
                lat = []
                c0, w0 = time.process_time(), time.perf_counter()
                for i in range(args.n):
                    t = time.perf_counter()
                    with active.pmem.transaction(commit=mode) as tx:
                        tx.write((i * 64) % 4096, payload)
                    lat.append((time.perf_counter() - t) * 1e6)
                active.sync()
                c1, w1 = time.process_time(), time.perf_counter()
                out["commit_us"][mode] = {"p50": round(statistics.median(lat), 1),
                                          "p99": round(pct(lat, 0.99), 1),
                                          "min": round(min(lat), 1)}
                out["cpu_us_per_tx"][mode] = round((c1 - c0) / args.n * 1e6, 1)
                out.setdefault("tx_per_s", {})[mode] = round(args.n / (w1 - w0))
            disk = active.disk["data"]
            has_flush = "flush" in inspect.signature(disk.write).parameters
            block = b"d" * 4096
            for label in (["write+flush", "write(flush=True)"] if has_flush
                          else ["write+flush"]):
                lat = []
                for i in range(300):
                    t = time.perf_counter()
                    if label == "write+flush":
                        disk.write((i % 1000) * 4096, block, commit="async")
                        disk.flush(commit="applied")
                    else:
                        disk.write((i % 1000) * 4096, block, commit="applied", flush=True)
                    lat.append((time.perf_counter() - t) * 1e6)
                out.setdefault("disk_sync4k_applied_us", {})[label] = {
                    "p50": round(statistics.median(lat), 1), "p99": round(pct(lat, 0.99), 1)}
            mib = b"m" * (1 << 20)
            for mode in ("async", "applied"):
                t = time.perf_counter()
                for i in range(32):
                    disk.write((i % 32) << 20, mib, commit=mode)
                disk.flush(commit="applied")
                out.setdefault("disk_1m_MBps", {})[mode] = round(
                    32 / (time.perf_counter() - t), 1)
        finally:
            active.close()
            standby.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
