"""Start an Interface A pair (tools/ifa_pair.py) on the lab's two nodes: a standby on node a,
the active with its workload on node b, both on fabric x."""

from __future__ import annotations

import sys
import time

from hsp_rdma.lab import Lab
from hsp_rdma.tools.guest import GuestRun


def start_ifa_pair(lab: Lab, active_args: list[str], common: list[str] = (),
                   timeout: float = 300.0, tag: str = "ifa") -> tuple[GuestRun, GuestRun]:
    info = lab.info()
    runs = {}
    for node, peer, role, extra in (("a", "b", "standby", []), ("b", "a", "active", active_args)):
        f, pf = info[node]["x"], info[peer]["x"]
        argv = [sys.executable, "-m", "hsp_rdma.tools.ifa_pair", "--name", node,
                "--peer-name", peer, "--role", role, "--device", f["rdma_dev"],
                "--local", f["ipv4"], "--peer", pf["ipv4"],
                "--state-dir", f"/tmp/{tag}-{node}-{time.time_ns()}", *common, *extra]
        run = runs[node] = GuestRun(node)
        run.job = lab.spawn(node, argv, timeout=timeout, on_stdout=run.feed)
    return runs["a"], runs["b"]


def wait_both(runs: tuple[GuestRun, ...], timeout: float | None = None) -> dict[str, tuple]:
    out = {}
    for run in runs:
        res = run.job.wait(timeout)
        out[run.name] = (res.rc, res.stderr)
    return out
