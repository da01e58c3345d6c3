"""The failover engine (ha/failover_engine.py) over the soft VIA provider, on this host: two
nodes in one process. The active goes away (its node closed: every connection drops, no
goodbye) -> the standby suspects it after the heart-beat timeout, fences it through the
configured fence action (a program, fence-agents convention), persists the bumped epoch,
promotes and serves. Without a fence action: an alarm, no promotion. An active that is alive
but silent (a lying fence) is refused at its old epoch and stops serving."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from pair_helpers import start_nodes

from hsp_rdma.ha.config import load_node_config
from hsp_rdma.ha.failover_engine import FailoverEngine
from hsp_rdma.ha.node import Node, NodeError
from hsp_rdma.tools.lab_config import write_node_configs
from hsp_rdma.via.providers import soft

INFO = {"a": {"x": {"rdma_dev": "soft:a", "ipv4": "127.0.0.1"}},
        "b": {"x": {"rdma_dev": "soft:b", "ipv4": "127.0.0.2"}}}
TIMEOUTS = {"connect": 20000, "heartbeat_interval": 50, "heartbeat_timeout": 400,
            "commit": 3000}


def fence_script(tmp_path: Path) -> Path:
    """A fence agent that records its stdin (key=value lines) and says done."""
    path = tmp_path / "fence_record"
    path.write_text(f"#!/bin/sh\ncat >> {tmp_path}/fence.log\necho '---' >> "
                    f"{tmp_path}/fence.log\necho 'Success: Powered OFF'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def start_pair(tmp_path: Path, monkeypatch, fence: bool) -> dict[str, Node]:
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    choices = {"pmem_size": "256 KiB", "timeouts": TIMEOUTS}
    if fence:
        choices["fence"] = {"action": str(fence_script(tmp_path)), "timeout": 5000}
    paths = write_node_configs(INFO, tmp_path, **choices)
    nodes = {n: Node(load_node_config(p)) for n, p in paths.items()}
    for n in nodes.values():
        FailoverEngine(n)
    errors = start_nodes(nodes.values())
    assert not errors, errors
    return nodes


@pytest.fixture
def closing():
    nodes: list[Node] = []
    yield nodes
    for n in nodes:
        try:
            n.close()
        except Exception:  # noqa: BLE001, S110 - already closed by the test
            pass


def wait_until(pred, timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.01)
    return time.monotonic() - t0


def test_killed_active_is_fenced_and_the_standby_promotes(tmp_path, monkeypatch, closing):
    nodes = start_pair(tmp_path, monkeypatch, fence=True)
    a, b = nodes["a"], nodes["b"]
    closing.extend((b, a))
    for i in range(20):
        with a.pmem.transaction(commit="applied") as tx:
            tx.write(i * 8, i.to_bytes(8, "little"))
    wait_until(lambda: b.status()["heartbeats"]["received"] >= 3)
    assert b.status()["failover"]["state"] == "STANDBY"
    with pytest.raises(NodeError, match="does not serve"), \
        b.pmem.transaction(commit="async") as tx:
        tx.write(0, b"x")
    a.close()  # the active dies: its connections drop, no goodbye
    took = wait_until(lambda: b.failover.serving, timeout=10)
    st = b.status()
    fo = st["failover"]
    assert st["role"] == "active" and fo["state"] == "ACTIVE_ALONE", fo
    assert fo["epoch"] == 3 and st["epoch"] == 3  # b has rank 1: the next odd epoch
    assert json.loads((tmp_path / "node-state/b/failover/gso-epoch.json").read_text())[
        "epoch"] == 3  # persisted before use
    assert [r["ok"] for r in fo["fence_runs"]] == [True]
    said = (tmp_path / "fence.log").read_text()
    assert "action=off" in said and "plug=a" in said
    whats = [e["what"] for e in fo["events"]]
    assert whats.index("suspected") < whats.index("fencing") < whats.index("fence_result") \
        < whats.index("persisted") < whats.index("active"), whats
    assert 0.3 < took < 5, took  # the 400 ms timeout, not at once on the link loss
    # b serves alone: what a committed is there, and new transactions are acknowledged
    assert b.pmem.read(19 * 8, 8) == (19).to_bytes(8, "little")
    with b.pmem.transaction(commit="applied") as tx:
        tx.write(4096, b"after")
    assert b.pmem.read(4096, 5) == b"after"


def test_no_fence_action_raises_an_alarm_and_does_not_promote(tmp_path, monkeypatch, closing):
    nodes = start_pair(tmp_path, monkeypatch, fence=False)
    a, b = nodes["a"], nodes["b"]
    closing.extend((b, a))
    wait_until(lambda: b.status()["heartbeats"]["received"] >= 3)
    a.close()
    wait_until(lambda: b.status()["failover"]["state"] == "IN_DOUBT")
    time.sleep(1.0)  # well past the timeout: still no promotion
    st = b.status()
    assert st["role"] == "standby" and not st["failover"]["serving"]
    assert st["failover"]["epoch"] == 1 and st["failover"]["fence_runs"] == []
    assert "no fence action is configured" in st["failover"]["alarm"]
    assert any("no fence action is configured" in al for al in st["alarms"])
    with pytest.raises(NodeError, match="does not serve"), \
        b.pmem.transaction(commit="async") as tx:
        tx.write(0, b"x")


def test_a_returning_old_active_is_refused_and_stops_serving(tmp_path, monkeypatch, closing):
    """Node a stays alive but stops sending heart beats (a paused sender); the fence 'confirms'
    without doing anything (a lying fence). b promotes at epoch 3; a's frames of epoch 1 are
    refused by b (its heart beats are not: they carry no write), and a, seeing epoch 3, stops
    serving: never two that commit."""
    nodes = start_pair(tmp_path, monkeypatch, fence=True)
    a, b = nodes["a"], nodes["b"]
    closing.extend((b, a))
    wait_until(lambda: b.status()["heartbeats"]["received"] >= 3)
    real = a.send_heartbeat
    a.send_heartbeat = lambda now, fabric=None: None  # silent, alive
    wait_until(lambda: b.failover.serving, timeout=10)
    assert b.status()["failover"]["epoch"] == 3
    a.send_heartbeat = real  # a "resumes"
    wait_until(lambda: not a.failover.serving, timeout=5)
    sa = a.status()["failover"]
    assert sa["state"] in ("DEMOTING", "WAIT_PEER", "SYNC_TARGET", "STANDBY_PAIR"), sa
    assert a.status()["role"] == "standby"
    with pytest.raises(NodeError, match="does not serve"), \
        a.pmem.transaction(commit="applied") as tx:
        tx.write(0, b"stale")
    # heart beats cross epochs (they carry no write): b hears a again, a standby of its
    # epoch now; b goes on serving, a's write never reached it
    heard = b.status()["heartbeats"]["received"]
    wait_until(lambda: b.status()["heartbeats"]["received"] > heard + 3, timeout=5)
    assert b.failover.serving
    assert b.status()["failover"]["state"] in ("ACTIVE_ALONE", "SYNC_SOURCE")
    assert b.pmem.read(0, 5) != b"stale"


def test_an_active_that_lost_its_standby_outdates_it_then_serves_alone(
        tmp_path, monkeypatch, closing):
    """The standby goes away; the active asks the fence device to outdate it (DRBD's
    outdate-peer: it may no longer take over), then acknowledges alone and marks what it
    wrote in its dirty bitmap, persisted."""
    nodes = start_pair(tmp_path, monkeypatch, fence=True)
    a, b = nodes["a"], nodes["b"]
    closing.extend((b, a))
    wait_until(lambda: a.status()["heartbeats"]["received"] >= 3)
    b.close()
    wait_until(lambda: a.status()["failover"]["serving_alone"])
    st = a.status()
    assert st["role"] == "active" and st["failover"]["state"] == "ACTIVE_ALONE"
    assert st["failover"]["fence_runs"] == []  # outdated, not powered off
    said = (tmp_path / "fence.log").read_text()
    assert "action=outdate" in said and "plug=b" in said and "nodename=a" in said, said
    for i, mode in enumerate(("applied", "received", "async")):
        t0 = time.monotonic()
        with a.pmem.transaction(commit=mode) as tx:
            tx.write(8192 * i, mode.encode())
        assert time.monotonic() - t0 < 1.0
    dirty = a.status()["failover"]["dirty"]
    assert dirty["on"] and dirty["dirty_blocks"]["pmem"] == 3, dirty
    # persisted: the 1 MiB extent they lie in (all of this 256 KiB P.mem); a node that
    # crashed now would come back with every page of it dirty, a superset of the 3
    from hsp_rdma.core.bitmap import DirtyBitmap
    from hsp_rdma.ha.resync import EXTENT, DirtyTracker
    saved = DirtyBitmap.from_bytes((tmp_path / "node-state/a/failover/pmem.bitmap").read_bytes())
    assert saved.granularity == EXTENT and saved.dirty_blocks == 1
    back = DirtyTracker(a, tmp_path / "node-state/a/failover")
    assert back.maps["pmem"].dirty_blocks == 256 * 1024 // 4096


def test_an_active_that_cannot_outdate_its_lost_standby_refuses_commits(
        tmp_path, monkeypatch, closing):
    """``[fence] outdate = false``: the standby may be the one that takes over with what it
    had, so every commit is refused at once with the reason (not acknowledged alone)."""
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    paths = write_node_configs(INFO, tmp_path, pmem_size="256 KiB", timeouts=TIMEOUTS,
                               fence={"action": str(fence_script(tmp_path)), "timeout": 5000,
                                      "outdate": False})
    nodes = {n: Node(load_node_config(p)) for n, p in paths.items()}
    for n in nodes.values():
        FailoverEngine(n)
    assert not start_nodes(nodes.values())
    a, b = nodes["a"], nodes["b"]
    closing.extend((b, a))
    wait_until(lambda: a.status()["heartbeats"]["received"] >= 3)
    b.close()
    wait_until(lambda: a.status()["failover"]["state"] == "ACTIVE_ALONE")
    for mode in ("applied", "received", "async"):
        t0 = time.monotonic()
        with pytest.raises(NodeError, match="outdate is false"), \
                a.pmem.transaction(commit=mode) as tx:
            tx.write(0, mode.encode())
        assert time.monotonic() - t0 < 1.0  # at once, not after the commit timeout


def test_a_peer_slow_to_send_its_first_heart_beat_is_not_suspected(tmp_path, monkeypatch,
                                                                    closing):
    """The standby's first heart beat comes 3 timeouts after the pair connected (in the lab: a
    siw channel whose first message waited for a reconnect): the active judges nothing until
    it hears the peer (before: it suspected a live standby one timeout after its own start and
    refused its first commits)."""
    real, t0 = Node.send_heartbeat, time.monotonic()

    def late(self: Node, now: float, fabric: str | None = None) -> None:
        if self.config.name == "b" and time.monotonic() - t0 < 1.2:
            return
        real(self, now, fabric)

    monkeypatch.setattr(Node, "send_heartbeat", late)
    nodes = start_pair(tmp_path, monkeypatch, fence=True)
    a, b = nodes["a"], nodes["b"]
    closing.extend((b, a))
    wait_until(lambda: time.monotonic() - t0 > 1.5 and a.status()["heartbeats"]["received"] > 3)
    fo = a.status()["failover"]
    assert fo["state"] == "ACTIVE" and not fo["alarm"], fo
    whats = [e["what"] for e in fo["events"]]
    assert "suspected" not in whats and "detector" in whats, whats
    with a.pmem.transaction(commit="applied") as tx:
        tx.write(0, b"first")
    assert b.pmem.read(0, 5) == b"first"
