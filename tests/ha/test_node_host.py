"""The node engine's logic that needs no RDMA, on the host: how a delivered transaction is
applied (P.mem, disk, flush, configuration, oam), what a failure to apply does, and the status
it serves on its control socket (status_contract.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsp_rdma.core import ifa
from hsp_rdma.core.frames import Channel, crc32c
from hsp_rdma.ha.config import DiskConfig, FabricConfig, NodeConfig
from hsp_rdma.ha.control import control_request
from hsp_rdma.ha.node import OAM_APP, OAM_EVENTS_KEPT, OAM_SYSTEM, Node


@pytest.fixture
def node(tmp_path: Path):
    cfg = NodeConfig(name="a", peer="b", role="standby", state_dir=tmp_path,
                     fabrics=(FabricConfig("x", "rxe0", "10.0.0.1", "10.0.0.2"),),
                     pmem_size=1 << 16,
                     disks=(DiskConfig("data", tmp_path / "data.img", 1 << 16),),
                     source=tmp_path / "a.toml")
    seen: list[dict] = []

    def on_config(cmd: dict) -> None:
        if "bad" in cmd:
            raise ValueError("cannot apply 'bad'")
        seen.append(cmd)

    n = Node(cfg, on_config=on_config)
    n.seen_config = seen
    yield n
    if n._control is not None:
        n._control.close()


def deliver(node: Node, ch: Channel, txid: int, message: bytes):
    return node._apply(ifa.Deliver(ch, txid, message))


def test_pmem_disk_and_flush_transactions_are_applied(node: Node) -> None:
    ev = deliver(node, Channel.PMEM, 1, ifa.encode_pmem([(0, b"abc"), (100, b"xyz")]))
    assert ev == ifa.Applied(Channel.PMEM, 1)
    assert node.pmem.read(0, 3) == b"abc" and node.pmem.read(100, 3) == b"xyz"
    assert deliver(node, Channel.DISK, 1, ifa.encode_disk([(0, 4096, b"D" * 10)])) == \
        ifa.Applied(Channel.DISK, 1)
    assert deliver(node, Channel.DISK, 2, ifa.encode_flush(0)) == ifa.Applied(Channel.DISK, 2)
    assert node.disk["data"].read(4096, 10) == b"D" * 10
    assert node.digest()["disks"]["data"] == crc32c(node.disk["data"].read(0, 1 << 16))


def test_a_transaction_outside_the_region_is_refused_whole(node: Node) -> None:
    before = node.pmem.read(0, 1 << 16)
    ev = deliver(node, Channel.PMEM, 1, ifa.encode_pmem([(0, b"ok"), ((1 << 16) - 1, b"xx")]))
    assert isinstance(ev, ifa.ApplyFailed) and "outside" in ev.why
    assert node.pmem.read(0, 1 << 16) == before  # not even the first write


def test_configuration_applies_in_order_and_a_failure_marks_inconsistent(node: Node) -> None:
    assert deliver(node, Channel.CONFIG, 1, ifa.encode_config({"x": 1})) == \
        ifa.Applied(Channel.CONFIG, 1)
    ev = deliver(node, Channel.CONFIG, 2, ifa.encode_config({"bad": 1}))
    assert isinstance(ev, ifa.ApplyFailed) and "cannot apply" in ev.why
    assert node.seen_config == [{"x": 1}]
    st = node.status()
    assert st["config"] == {"applied": 1, "inconsistent": True}


def test_oam_routes_application_and_node_messages(node: Node) -> None:
    deliver(node, Channel.OAM, 1, bytes([OAM_APP]) + b"hello")
    deliver(node, Channel.OAM, 2, bytes([OAM_SYSTEM]) + b'{"alarm": "x"}')
    assert node.oam.recv(timeout=1) == b"hello"
    assert list(node.oam.events) == [{"alarm": "x"}]
    # kept: the last OAM_EVENTS_KEPT; a reader's cursor counts every one received
    new, seen = node.oam.since(0)
    assert new == [{"alarm": "x"}] and seen == 1
    for i in range(OAM_EVENTS_KEPT + 5):
        node.oam.keep({"n": i})
    assert len(node.oam.events) == OAM_EVENTS_KEPT
    new, seen2 = node.oam.since(seen)
    assert seen2 == seen + OAM_EVENTS_KEPT + 5
    assert new[0] == {"n": 5} and new[-1] == {"n": OAM_EVENTS_KEPT + 4}  # the oldest gone
    assert node.oam.since(seen2) == ([], seen2)


def test_status_has_the_contract_shape_and_is_served(node: Node, tmp_path: Path) -> None:
    node._start_control()
    st = control_request(tmp_path / "control.sock", "status")
    assert st["ok"] is True
    for key, kind in (("node", str), ("peer", str), ("role", str), ("epoch", int),
                      ("uptime_s", float), ("fabrics", list), ("channels", dict),
                      ("pmem", dict), ("disks", dict), ("config", dict), ("alarms", list)):
        assert isinstance(st[key], kind), key
    assert st["config_file"] == str(tmp_path / "a.toml")
    assert set(st["channels"]) == {"health", "oam", "pmem", "disk", "config"}
    for ch in st["channels"].values():
        assert ch["state"] in ("connected", "connecting", "error")
        for k in ("sent_msgs", "sent_bytes", "recv_msgs", "recv_bytes", "credits"):
            assert isinstance(ch[k], int)
        assert isinstance(ch["refused"], dict)
    assert set(st["pmem"]) >= {"size", "in_flight", "last_committed", "last_applied"}
    assert set(st["disks"]["data"]) >= {"path", "size", "writes", "bytes", "in_flight",
                                        "last_applied"}
    reconnect = st["fabrics"][0].pop("reconnect")
    assert st["fabrics"] == [{"name": "x", "rdma_device": "rxe0", "state": "down",
                              "carrier": False, "active": False, "heard_ms_ago": None}]
    assert reconnect["pending"] == [] and reconnect["doing"] == "not started"
    assert reconnect["for_ms"] >= 0
    assert st["fabric_switches"] == 0
    assert control_request(tmp_path / "control.sock", "digest")["pmem"] == crc32c(bytes(1 << 16))
