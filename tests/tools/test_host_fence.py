"""The soft drills' fence agent and device (hsp_rdma.tools.drills.host_fence), on the host: two
`sleep` processes stand for the nodes. off/status as before; DRBD's outdate-peer: outdate and
unoutdate with arbitration by the asker (nodename=), marks in DIR/fence-state.json under an
flock, so agents run at once are served one after the other and the first wins."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsp_rdma.ha.fence import FenceAgent

AGENT = [sys.executable, "-m", "hsp_rdma.tools.drills.host_fence"]


@pytest.fixture
def nodes(tmp_path):
    """Nodes a and b: one process each, its pid in DIR/NODE.pid; yields (dir, {node: proc})."""
    procs = {}
    for n in "ab":
        procs[n] = subprocess.Popen(["sleep", "60"])
        (tmp_path / f"{n}.pid").write_text(str(procs[n].pid))
    yield tmp_path, procs
    for p in procs.values():
        p.kill()
        p.wait()


def start(folder: Path, action: str, plug: str, asker: str | None = None) -> subprocess.Popen:
    lines = [f"action={action}", f"plug={plug}", f"dir={folder}",
             *([f"nodename={asker}"] if asker else [])]
    p = subprocess.Popen(AGENT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdin.write("\n".join(lines) + "\n")
    p.stdin.close()
    return p


def fence(folder: Path, action: str, plug: str, asker: str | None = None):
    p = start(folder, action, plug, asker)
    out, err = p.stdout.read(), p.stderr.read()
    return p.wait(10), out, err


def test_off_and_status_as_before(nodes) -> None:
    folder, procs = nodes
    assert fence(folder, "status", "a")[:2] == (0, "Status: ON\n")
    rc, out, _ = fence(folder, "off", "a", "b")
    assert rc == 0 and f"Powered OFF (node a, pid {procs['a'].pid})" in out
    assert procs["a"].wait(5) == -9
    assert fence(folder, "status", "a")[:2] == (0, "Status: OFF\n")
    rc, _, err = fence(folder, "explode", "a")
    assert rc == 1 and "not supported (off, status, monitor, outdate, unoutdate)" in err


def test_outdated_node_may_not_fence_its_outdater_may_and_clears_the_mark(nodes) -> None:
    folder, procs = nodes
    rc, out, _ = fence(folder, "outdate", "b", "a")
    assert rc == 0 and "node b is Outdated (by a)" in out
    assert procs["b"].poll() is None  # the node keeps running
    for action, plug in (("off", "a"), ("outdate", "a"), ("unoutdate", "b")):
        rc, _, err = fence(folder, action, plug, "b")
        assert rc == 1 and "node b is Outdated (by a): it may not fence" in err, err
    assert procs["a"].poll() is None
    assert fence(folder, "status", "b", "b")[:2] == (0, "Status: ON (Outdated by a)\n")
    assert json.loads((folder / "fence-state.json").read_text())["outdated"]["b"]["by"] == "a"
    rc, out, _ = fence(folder, "unoutdate", "b", "a")
    assert rc == 0 and "node b is no longer Outdated" in out
    assert fence(folder, "status", "b")[:2] == (0, "Status: ON\n")
    assert fence(folder, "off", "a", "b")[0] == 0  # b is no longer Outdated
    rc, _, err = fence(folder, "off", "b", "a")  # a is off now
    assert rc == 1 and "node a was powered off (by b) and has not been on since" in err
    assert procs["b"].poll() is None


def test_the_outdating_node_still_fences_and_a_dead_node_is_outdated_too(nodes) -> None:
    folder, procs = nodes
    assert fence(folder, "outdate", "b", "a")[0] == 0
    rc, out, _ = fence(folder, "off", "b", "a")
    assert rc == 0 and "Powered OFF (node b" in out and procs["b"].wait(5) == -9
    assert fence(folder, "unoutdate", "b", "a")[0] == 0
    assert fence(folder, "outdate", "b", "a")[0] == 0  # dead: the mark is what matters
    assert fence(folder, "unoutdate", "b", "a")[0] == 0


def test_a_node_powered_off_may_fence_again_once_it_runs_again(nodes) -> None:
    folder, procs = nodes
    assert fence(folder, "off", "b", "a")[0] == 0
    assert "powered off (by a)" in fence(folder, "outdate", "a", "b")[2]
    procs["b"].wait(5)
    procs["b"] = subprocess.Popen(["sleep", "60"])  # the drill starts node b again
    (folder / "b.pid").write_text(str(procs["b"].pid))
    rc, out, _ = fence(folder, "outdate", "a", "b")
    assert rc == 0 and "node a is Outdated (by b)" in out
    assert json.loads((folder / "fence-state.json").read_text())["off"] == {}


def test_crossing_requests_are_served_one_by_one_the_first_wins(nodes) -> None:
    """Each node asks to fence the other at the same moment (the link is down, both alive):
    the flock makes them take turns; the second finds its asker powered off, so is refused."""
    folder, procs = nodes
    with open(folder / "fence-state.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        agents = {"a": start(folder, "off", "b", "a"), "b": start(folder, "off", "a", "b")}
        time.sleep(0.5)
        assert all(p.poll() is None for p in agents.values())  # both wait for the lock
    rcs = {n: p.wait(10) for n, p in agents.items()}
    errs = {n: p.stderr.read() for n, p in agents.items()}
    assert sorted(rcs.values()) == [0, 1], (rcs, errs)
    winner = min(rcs, key=rcs.get)
    loser = "b" if winner == "a" else "a"
    assert f"node {loser} was powered off (by {winner})" in errs[loser]
    assert procs[loser].wait(5) == -9 and procs[winner].poll() is None


def test_bad_options_and_unreadable_marks_are_refused_clearly(nodes) -> None:
    folder, _ = nodes
    assert "plug= and dir= are needed" in fence(folder, "off", "")[2]
    assert "nodename='a b' is not a node name" in fence(folder, "outdate", "b", "a b")[2]
    assert "no pid for node c" in fence(folder, "off", "c", "a")[2]
    (folder / "fence-state.json").write_text("{half")
    rc, _, err = fence(folder, "outdate", "b", "a")
    assert rc == 1 and "fence marks" in err and "unreadable" in err and "Traceback" not in err


def test_through_fence_agent_run(nodes) -> None:
    """As the engine calls it: FenceAgent.run(..., nodename=) and a refusal's reason."""
    folder, _ = nodes
    agent = FenceAgent.parse(" ".join(AGENT), [f"dir={folder}"])
    res = agent.run("outdate", "b", 10, nodename="a")
    assert res.ok and res.detail == "outdate b: Success: node b is Outdated (by a)"
    res = agent.run("off", "a", 10, nodename="b")
    assert not res.ok and res.detail.endswith("exited 1: fence_hsp_host: off a: node b is "
                                              "Outdated (by a): it may not fence")
