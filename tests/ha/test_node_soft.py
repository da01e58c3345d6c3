"""Interface A's node engine over the soft VIA provider, on this host: two
``hsp_rdma.ha.node.Node``s (rdma_device "soft:a" / "soft:b", 127.0.0.1 / 127.0.0.2, configs
written by tools.lab_config and read by the node's own loader) in two threads of one process;
P.mem transactions in every commit mode (async, received, applied), a disk write and a
configuration change; after a sync both digests are equal."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from pair_helpers import start_nodes

from hsp_rdma.core.frames import Channel
from hsp_rdma.ha.config import load_node_config
from hsp_rdma.ha.node import Node, NodeError
from hsp_rdma.tools.lab_config import write_node_configs
from hsp_rdma.via.providers import soft

INFO = {"a": {"x": {"rdma_dev": "soft:a", "ipv4": "127.0.0.1"}},
        "b": {"x": {"rdma_dev": "soft:b", "ipv4": "127.0.0.2"}}}


@pytest.fixture
def pair(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    paths = write_node_configs(INFO, tmp_path, pmem_size="1 MiB",
                               disks=[{"name": "data", "path": str(tmp_path / "data-NODE.img"),
                                       "size": "256 KiB"}],
                               timeouts={"connect": 20000})
    configs = {}
    for node, path in paths.items():
        text = path.read_text().replace("NODE", node)  # each node its own disk file
        path.write_text(text)
        configs[node] = load_node_config(path)
        (tmp_path / f"data-{node}.img").write_bytes(bytes(256 << 10))
    assert configs["a"].fabrics[0].rdma_device == "soft:a"
    seen: list[dict] = []
    nodes = {"a": Node(configs["a"]), "b": Node(configs["b"], on_config=seen.append)}
    errors = start_nodes(nodes.values())
    try:
        assert not errors, errors
        yield nodes["a"], nodes["b"], seen
    finally:
        for n in nodes.values():
            n.close()


def test_node_engine_replicates_over_soft_in_every_commit_mode(pair) -> None:
    active, standby, seen = pair
    assert (active.role, standby.role) == ("active", "standby")
    rng = random.Random(7)
    for i in range(60):
        mode = ("async", "received", "applied")[i % 3]
        with active.pmem.transaction(commit=mode) as tx:
            for _ in range(rng.randrange(1, 4)):
                off = rng.randrange(0, (1 << 20) - 5000)
                tx.write(off, rng.randbytes(rng.randrange(1, 5000)))
        assert tx.txid == i + 1
    active.disk["data"].write(8192, b"D" * 4096, commit="applied")
    active.config_change({"set": "x", "to": 1})
    active.sync()
    assert seen == [{"set": "x", "to": 1}]
    da, db = active.digest(), standby.digest()
    assert da["pmem"] == db["pmem"] and da["disks"] == db["disks"]
    assert db["pmem_last_applied"] == 61  # 60 transactions and sync's empty one
    assert standby.pmem.read(0, 1 << 20) == active.pmem.read(0, 1 << 20)
    st = active.status()
    assert st["role"] == "active"


def test_a_synchronous_disk_write_is_one_commit(pair) -> None:
    active, standby, _seen = pair
    disk = active.disk["data"]
    before = active.session.streams[Channel.DISK].next_txid
    disk.write(4096, b"S" * 4096, commit="applied", flush=True)
    assert active.session.streams[Channel.DISK].next_txid == before + 1  # one transaction
    assert standby.disk["data"].read(4096, 4096) == b"S" * 4096


def test_a_dead_loop_fails_the_waiting_commit_at_once(pair) -> None:
    active, standby, _seen = pair
    gate = threading.Event()
    standby.on_config = lambda _cmd: gate.wait(30)  # the standby holds the apply
    result: list[BaseException | int] = []

    def commit() -> None:
        try:
            result.append(active.config_change({"held": 1}))
        except BaseException as exc:  # noqa: BLE001 - looked at below
            result.append(exc)

    t = threading.Thread(target=commit)
    t.start()
    time.sleep(0.3)
    assert not result, "the commit returned before the standby applied it"

    def boom() -> None:
        raise RuntimeError("injected failure")

    active._serve_requests = boom  # the loop calls it for the request put next
    active._requests.put(("lost", Channel.HEALTH, "test"))
    active._wake()
    t.join(3)
    gate.set()
    assert result and isinstance(result[0], NodeError), result
    assert "loop thread died" in str(result[0]) and "injected failure" in str(result[0])
    with pytest.raises(NodeError, match="loop thread died"):
        active.pmem.transaction().__exit__(None, None, None)


def test_a_held_up_loop_is_counted_and_names_the_thread_that_held_it(pair) -> None:
    """A thread that keeps the node's lock past a heart-beat interval stops the heart beats
    (the peer may fence this node for it: the rxe fabric bench once ended so, unexplained):
    the loop counts the stall and its alarm names the thread and how long it held."""
    active, _standby, _seen = pair
    seen: list[str] = []
    active.on_alarm = seen.append
    interval = active.heartbeat_interval_s
    assert active.status()["loop_stalls"] == 0

    def hog() -> None:
        with active._lock:
            time.sleep(3 * interval)
            active._lock.spent("send_wait", 2 * interval)  # what the hold says it did

    t = threading.Thread(target=hog, name="hog-thread")
    t.start()
    t.join()
    deadline = time.monotonic() + 5
    while not active.status()["loop_stalls"] and time.monotonic() < deadline:
        time.sleep(interval / 4)
    st = active.status()
    assert st["loop_stalls"] == 1 and st["longest_stall_ms"] >= 3 * interval * 1000 * 0.9
    (alarm,) = [a for a in st["alarms"] if "held up" in a]
    assert "thread hog-thread held the node's lock" in alarm, alarm
    assert f"({2 * interval * 1000:.0f} ms waiting for a send slot" in alarm, alarm
    assert alarm in seen  # the hook saw it as it was raised
    # holds shorter than an interval are no stall
    with active._lock:
        time.sleep(interval / 3)
    time.sleep(2 * interval)
    assert active.status()["loop_stalls"] == 1
    # the loop itself woke late (a stopped process, a paused VM): said so (alarms are at most
    # one a second: that clock is set back here)
    active._stall_alarm_at = float("-inf")
    with active._lock:
        active._check_stall(4 * interval)
    assert active.status()["loop_stalls"] == 2
    assert "the process itself was held up" in active.status()["alarms"][-1]


def slow_pmem_apply(node: Node, seconds: float) -> None:
    """NODE takes SECONDS to apply each P.mem transaction (a slow disk, a starved guest)."""
    real = node._apply

    def slow(act, fab=0):
        if act.channel is Channel.PMEM:
            time.sleep(seconds)
        return real(act, fab)

    node._apply = slow


def test_a_stream_of_frames_does_not_hold_the_loop_past_a_heart_beat(pair) -> None:
    """The standby applies slowly (15 ms a transaction, a slow disk or a starved guest) while
    the active sends a window of them at once. The loop takes frames for a quarter of a
    heart-beat interval per wake-up and comes back for the rest, so its heart beats go on and
    no stall is counted; taking the whole window in one hold (the old loop: ~0.5 s here) had
    the peer call it silent (CI's siw kill-active-rejoin, 2026-11-26)."""
    active, standby, _ = pair
    slow_pmem_apply(standby, 0.015)
    interval = standby.heartbeat_interval_s
    count = 40
    assert 0.015 * count > 4 * interval  # one hold for all of them would be a stall
    for i in range(count):
        with active.pmem.transaction(commit="async") as tx:
            tx.write(i * 64, bytes([i + 1]) * 64)
    deadline = time.monotonic() + 20
    while standby.pmem.read((count - 1) * 64, 1) != bytes([count]):
        assert time.monotonic() < deadline, "the standby did not apply the stream"
        time.sleep(0.01)
    st = standby.status()
    assert st["loop_stalls"] == 0, (st["longest_stall_ms"], st["alarms"][-3:])
    assert standby.pmem.read(0, count * 64) == active.pmem.read(0, count * 64)


def test_the_carrier_check_takes_waiting_frames_within_the_loops_budget(pair) -> None:
    """The twin of the test above: before it calls the carrier quiet, the loop takes the
    frames already in (it may itself have been held up). That too stops at a quarter
    interval, each queue giving at least one frame (enough to say its fabric was heard), and
    says frames were left; the loop takes the rest and every transaction is applied."""
    active, standby, _ = pair
    slow_pmem_apply(standby, 0.015)
    interval = standby.heartbeat_interval_s
    count = 24  # within the peer's credits: the sender needs no credit back meanwhile
    with standby._lock:  # the loop held up while a window of transactions comes in
        for i in range(count):
            with active.pmem.transaction(commit="async") as tx:
                tx.write(i * 64, bytes([i + 1]) * 64)
        time.sleep(0.5)  # (the soft provider's thread delivers them meanwhile)
        now = time.monotonic()
        standby._heard_at = [now - 60.0] * len(standby._heard_at)  # quiet for a minute
        t0 = time.monotonic()
        left = standby._check_carrier(now, standby._quiet_s, interval / 4)
        took = time.monotonic() - t0
    assert left, "every frame was taken in one call"
    assert took < interval / 4 + 0.1, f"the carrier check held the lock {took * 1000:.0f} ms"
    assert standby._heard_at[0] > now, "the fabric's frames did not count as heard"
    deadline = time.monotonic() + 20
    while standby.pmem.read((count - 1) * 64, 1) != bytes([count]):
        assert time.monotonic() < deadline, "the standby did not apply the stream"
        time.sleep(0.01)
    assert standby.pmem.read(0, count * 64) == active.pmem.read(0, count * 64)
