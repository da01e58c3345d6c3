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

END_WAIT_S = 60.0  # a killed node program's exit (its NIC's close waits for teardowns)
LIVE: list[GuestRun] = []  # started and not yet seen to end (finish_pair, stop_pair)


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
               profiles: str | None = None,
               stripe_on: str | None = None) -> tuple[GuestRun, GuestRun]:
    """Node a starts as standby (listens), node b as active (connects) on FABRIC. PROFILES:
    a user's hw-profile directory (the guests see the host's files at the same paths).
    STRIPE_ON: the other fabric, opened on both nodes, a push's copy striped across both."""
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
                *(_stripe_args(info, node, stripe_on) if stripe_on else ()),
                *(extra_a if node == "a" else extra_b)]
        run = runs_by_node[node] = GuestRun(node, on_event=on_event)
        run.job = lab.spawn(node, argv, timeout=timeout, on_stdout=run.feed)
        LIVE.append(run)
        if node == "a":
            _wait_listening(lab)
    return runs_by_node["a"], runs_by_node["b"]


def _stripe_args(info: dict, node: str, fabric: str) -> list[str]:
    """gso_node's options for a second fabric, FABRIC (gso_node calls it y), striped."""
    f = info[node][fabric]
    argv = ["--y-device", f["rdma_dev"], "--y-local-ip", f["ipv4"], "--stripe"]
    return argv + (["--y-peer-ip", info["a"][fabric]["ipv4"]] if node == "b" else [])


def _wait_listening(lab: Lab) -> None:
    # rdma_cm has no "listening" event to wait on from outside: give the listener a moment
    # (TCG guests start Python in ~1 s); the connector retries until its connect timeout.
    time.sleep(2.5)


def _ended(run: GuestRun) -> None:
    """Wait until RUN's node says its process ended (a kill is asked, not awaited)."""
    try:
        run.job.wait(END_WAIT_S)
    except LabError:
        pass  # the node went down (nothing runs there any more) or does not answer
    if run in LIVE:
        LIVE.remove(run)


def stop_pair(*runs: GuestRun) -> None:
    """Kill RUNS and wait until each has ended; ``stop_pair(*LIVE)`` after a test ends every
    pair it started, also one a failed assertion left running. A node program still running
    (or still exiting: its NIC closes last, after the connection's teardown, which on siw
    waits for the peer) keeps its rdma_cm listener bound, and the next pair's listener on
    that node would fail to bind the same port ("Address already in use")."""
    for run in runs:
        run.job.kill()
    for run in runs:
        _ended(run)


def finish_pair(standby: GuestRun, active: GuestRun, timeout: float | None = None) -> PairResult:
    """Wait for both; one that gives no result in TIMEOUT is killed and awaited (see
    stop_pair)."""
    rc, err = {}, {}
    for run in (active, standby):
        try:
            res = run.job.wait(timeout)
            rc[run.name], err[run.name] = res.rc, res.stderr
        except LabError as exc:
            rc[run.name], err[run.name] = -1, str(exc)
        _ended(run)  # after a timeout, wait() asked for the kill: await it
    return PairResult(standby, active, rc, err)


def run_pair(lab: Lab, pmem: int, runs: int, **kw) -> PairResult:
    a, b = start_pair(lab, pmem, runs, **kw)
    return finish_pair(a, b)
