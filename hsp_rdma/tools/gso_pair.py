"""Run a GSO pair in the lab: gso_node on both nodes, their JSON events collected live.

Shared by hsp-bench, scripts/demo and the lab tests, so that what the tests check is what
the bench measures.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from hsp_rdma.errors import LabError
from hsp_rdma.lab import Lab
from hsp_rdma.tools.guest import GuestRun


@dataclass
class PairResult:
    standby: GuestRun
    active: GuestRun
    rc: dict[str, int]
    stderr: dict[str, str]


def start_pair(lab: Lab, pmem: int, runs: int, fabric: str = "x", chunk: int = 0,
               depth: int = 0, timeout: float = 300.0, extra_a: tuple[str, ...] = (),
               extra_b: tuple[str, ...] = (),
               on_event: Callable[[str, dict], None] | None = None,
               profiles: str | None = None) -> tuple[GuestRun, GuestRun]:
    """Node a starts as standby (listens), node b as active (connects) on FABRIC. PROFILES:
    a user's hw-profile directory (the guests see the host's files at the same paths)."""
    info = lab.info()
    runs_by_node = {}
    for node, role_args in (("a", ["--name", "a"]),
                            ("b", ["--name", "b", "--serving", "--peer-ip",
                                   info["a"][fabric]["ipv4"]])):
        f = info[node][fabric]
        argv = [sys.executable, "-m", "hsp_rdma.ha.gso_node", *role_args,
                "--device", f["rdma_dev"], "--local-ip", f["ipv4"], "--pmem", str(pmem),
                "--runs", str(runs), *(("--chunk", str(chunk)) if chunk else ()),
                *(("--depth", str(depth)) if depth else ()),
                *(("--profiles", profiles) if profiles else ()),
                *(extra_a if node == "a" else extra_b)]
        run = runs_by_node[node] = GuestRun(node, on_event=on_event)
        run.job = lab.spawn(node, argv, timeout=timeout, on_stdout=run.feed)
        if node == "a":
            _wait_listening(lab)
    return runs_by_node["a"], runs_by_node["b"]


def _wait_listening(lab: Lab) -> None:
    # rdma_cm has no "listening" event to wait on from outside: give the listener a moment
    # (TCG guests start Python in ~1 s); the connector retries nothing, so be generous.
    time.sleep(2.5)


def finish_pair(standby: GuestRun, active: GuestRun, timeout: float | None = None) -> PairResult:
    rc, err = {}, {}
    for run in (active, standby):
        try:
            res = run.job.wait(timeout)
            rc[run.name], err[run.name] = res.rc, res.stderr
        except LabError as exc:
            rc[run.name], err[run.name] = -1, str(exc)
    return PairResult(standby, active, rc, err)


def run_pair(lab: Lab, pmem: int, runs: int, **kw) -> PairResult:
    a, b = start_pair(lab, pmem, runs, **kw)
    return finish_pair(a, b)
