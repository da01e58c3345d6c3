"""Lab node configurations from a (faked) Lab.info(): each node's file loads with the node's
own loader, names its device and both nodes' addresses per fabric, and a bad choice is refused
before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsp_rdma.errors import ConfigError
from hsp_rdma.ha.config import load_node_config
from hsp_rdma.tools.lab_config import lab_node_configs, node_config_text, write_node_configs


def fabric(dev: str, ip: str) -> dict:
    return {"netdev": "eth", "ipv4": ip, "rdma_dev": dev, "gid_index": 1,
            "port_state": "4: ACTIVE"}


INFO = {"rdma": "rxe",
        "a": {"x": fabric("rxe0", "10.77.1.1"), "y": fabric("rxe1", "10.77.2.1")},
        "b": {"x": fabric("rxe0", "10.77.1.2"), "y": fabric("rxe1", "10.77.2.2")}}


def test_two_configs_that_mirror_each_other(tmp_path) -> None:
    paths = write_node_configs(INFO, tmp_path)
    assert paths == {n: tmp_path / "node-config" / f"{n}.toml" for n in "ab"}
    a, b = (load_node_config(paths[n]) for n in "ab")
    assert (a.name, a.peer, a.role, b.name, b.peer, b.role) == (
        "a", "b", "active", "b", "a", "standby")
    assert [(f.name, f.rdma_device, f.local, f.peer) for f in a.fabrics] == [
        ("x", "rxe0", "10.77.1.1", "10.77.1.2"), ("y", "rxe1", "10.77.2.1", "10.77.2.2")]
    assert [(f.local, f.peer) for f in b.fabrics] == [("10.77.1.2", "10.77.1.1"),
                                                      ("10.77.2.2", "10.77.2.1")]
    assert a.state_dir == tmp_path / "node-state" / "a" != b.state_dir
    assert a.socket_path == a.state_dir / "control.sock"
    assert a.pmem_size == b.pmem_size == 16 << 20


def test_one_fabric_lab_leaves_y_out(tmp_path) -> None:
    info = {"rdma": "siw", "a": {"x": fabric("siw0", "10.77.1.1")},
            "b": {"x": fabric("siw0", "10.77.1.2")}}
    cfg = load_node_config(write_node_configs(info, tmp_path)["b"])
    assert [f.name for f in cfg.fabrics] == ["x"] and cfg.fabrics[0].rdma_device == "siw0"


def test_choices_reach_the_files(tmp_path) -> None:
    paths = write_node_configs(
        INFO, tmp_path, active="b", pmem_size="1 MiB", port=7600,
        replication={"commit": "received", "credits": 8, "message_size": "16 KiB"},
        timeouts={"heartbeat_interval": 20, "heartbeat_timeout": 200},
        disks=[{"name": "data", "path": "/dev/ram0", "size": "8 MiB"}],
        fence={"action": "/usr/bin/fence_lab", "options": {"node": "a"}, "timeout": 5000})
    a = load_node_config(paths["a"])
    assert a.role == "standby" and load_node_config(paths["b"]).role == "active"
    assert a.pmem_size == 1 << 20 and {f.port for f in a.fabrics} == {7600}
    assert (a.replication.commit, a.replication.credits, a.replication.message_size) == (
        "received", 8, 16 << 10)
    assert a.timeouts.heartbeat_interval == 20 and a.disks[0].size == 8 << 20
    assert a.fence.options == (("node", "a"),) and a.fence.timeout == 5000


def test_a_bad_choice_is_refused_before_anything_is_written(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"a\.toml:\d+: field replication\.credits = 1"):
        write_node_configs(INFO, tmp_path, replication={"credits": 1})
    assert not (tmp_path / "node-config").exists()


def test_a_node_not_booted_is_named() -> None:
    with pytest.raises(ValueError, match="node b has no fabric x"):
        node_config_text({"a": INFO["a"], "rdma": "rxe"}, "a", Path("/s"))


def test_a_deep_lab_dir_gets_a_short_socket_path(tmp_path) -> None:
    deep = tmp_path / ("d" * 90)
    cfg = load_node_config(write_node_configs(INFO, deep)["a"])
    assert cfg.state_dir == deep / "node-state" / "a"
    assert len(str(cfg.socket_path)) < 40 and cfg.socket_path.name.endswith("-a.sock")


def test_from_a_lab_object(tmp_path) -> None:
    class FakeLab:
        dir = tmp_path / "labs" / "cfg"

        def info(self) -> dict:
            return INFO

    paths = lab_node_configs(FakeLab(), pmem_size=4096)
    assert load_node_config(paths["b"]).pmem_size == 4096
    assert paths["b"].parent == tmp_path / "labs" / "cfg" / "node-config"
