"""Labs of more than two nodes (`hsp-lab up --nodes N`): names, addresses, ports, the memory
check, the fabric hub's switching (host, no guest), and one real 3-node rxe lab (marked lab):
every pair of nodes reaches each other over RDMA on both fabrics, and a fabric pulled on one
node cuts that node alone."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsp_rdma.errors import LabError, LabTimeout
from hsp_rdma.lab import ALL_NODES, MAX_NODES, NODES, Lab, fabric_plan, node_names
from hsp_rdma.lab.fenced import carry_out, serve_once
from hsp_rdma.lab.hub import Switch, parse_node_ports, serve
from hsp_rdma.lab.lab import (
    HUB_PORT_BASE,
    PORT_BASE,
    PORT_SLOTS,
    QEMU_OVERHEAD_MIB,
    check_memory,
    hub_ports,
    node_cost_mib,
)
from hsp_rdma.lab.perftest import _rping_ok, rping_pairs


def hsp_lab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hsp_rdma.cli.lab", *args],
                          capture_output=True, text=True, timeout=60, check=False)


# ---- names, addresses, ports, memory (pure) ----------------------------------------------
def test_node_names() -> None:
    assert node_names(2) == NODES == ("a", "b")
    assert node_names(3) == ("a", "b", "c")
    assert node_names(MAX_NODES) == ALL_NODES and len(ALL_NODES) == MAX_NODES
    for bad in (1, MAX_NODES + 1, 0, True, "3", 2.5):
        with pytest.raises(LabError, match=f"--nodes must be a whole number from 2 to {MAX_NODES}"):
            node_names(bad)


def test_fabric_plan_of_every_node_is_distinct() -> None:
    plans = [f for n in ALL_NODES for f in fabric_plan(n, "rxe", 2)]
    assert [f["ipv4"] for f in fabric_plan("c", "rxe", 2)] == ["10.77.1.3", "10.77.2.3"]
    assert len({f["ipv4"] for f in plans}) == len({f["mac"] for f in plans}) == 2 * MAX_NODES
    assert [f["ipv4"] for f in fabric_plan("b", "siw", 1)] == ["10.77.1.2"]


@given(st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True), min_size=1,
                max_size=20, unique=True))
def test_hub_ports_stay_in_their_own_range(lab_ids: list[str]) -> None:
    pair_range = range(PORT_BASE, PORT_BASE + PORT_SLOTS * 4)
    for lab_id in lab_ids:
        ports = hub_ports(lab_id)
        flat = [p for f in ports.values() for p in (f["hub"], *f["nodes"].values())]
        assert len(set(flat)) == len(flat) == 2 * (MAX_NODES + 1)
        assert all(HUB_PORT_BASE <= p < 60000 for p in flat)
        assert not any(p in pair_range for p in flat), "a two-node lab's ports are never taken"
        assert not set(flat) & {p for ps in Lab(lab_id).ports.values() for p in ps}


def test_two_lab_ids_get_different_hub_blocks() -> None:
    def flat(lab_id: str) -> set[int]:
        return {p for f in hub_ports(lab_id).values() for p in (f["hub"], *f["nodes"].values())}
    assert flat("one").isdisjoint(flat("two"))
    test_id = os.environ.get("HSP_TEST_LAB_ID", "pytest")  # the two labs the tests below boot
    assert flat(test_id + "-n3").isdisjoint(flat(test_id + "-n3x"))


def test_memory_check_names_the_cost_and_the_way_out() -> None:
    assert node_cost_mib(1024) == 1024 + QEMU_OVERHEAD_MIB
    check_memory(3, 1024, 3 * node_cost_mib(1024))  # just fits
    check_memory(8, 8192, None)  # the host does not say: no refusal on a guess
    with pytest.raises(LabError, match=r"8 nodes of 4096 MiB need up to 35328 MiB .*"
                       r"use --nodes 4 or fewer"):
        check_memory(8, 4096, 20000)


def test_bad_node_counts_are_refused_before_anything(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="--nodes must be a whole number from 2 to"):
        Lab("never-up", root=tmp_path).up(nodes=MAX_NODES + 1)
    assert not (tmp_path / "labs").exists()
    res = hsp_lab("up", "--nodes", str(MAX_NODES + 1))
    assert res.returncode == 64 and f"--nodes should be between 2 and {MAX_NODES}" in res.stderr
    res = hsp_lab("--lab-id", "never-up", "fault", "c", "kill")
    assert res.returncode == 64
    assert "unknown node 'c': lab 'never-up' has nodes a, b" in res.stderr
    assert "hsp-lab --lab-id never-up up --nodes N" in res.stderr


# ---- a lab of 3 as the fence device and status see it (state only, nothing booted) -----------
def _fake_three_node_lab(root: Path) -> Lab:
    lab = Lab("three", root=root)
    names = node_names(3)
    for n in names:
        (lab.node_dir(n) / "share" / "fence").mkdir(parents=True)
    lab.state_path.write_text(json.dumps({
        "lab_id": "three", "rdma": "rxe", "fabrics": 2, "kver": "6.1", "topology": "hub",
        "nodes": {n: {} for n in names},
        "links": {n: {"x": "up", "y": "up"} for n in names},
        "hubs": {"x": {"timeout_pid": None, "port": 1}, "y": {"timeout_pid": None, "port": 2}},
    }))
    return lab


def test_status_fault_and_fence_device_know_every_node(tmp_path: Path) -> None:
    lab = _fake_three_node_lab(tmp_path)
    assert lab.nodes == ("a", "b", "c")
    st_ = lab.status()
    assert list(st_["nodes"]) == ["a", "b", "c"] and st_["nodes"]["c"]["state"] == "dead"
    assert set(st_["hubs"]) == {"x", "y"} and not st_["hubs"]["x"]["alive"]
    with pytest.raises(LabError, match="node c is not running"):
        lab.fault("c", "link", "x", "down")
    with pytest.raises(LabError, match="unknown node 'd': the lab's nodes are a, b, c"):
        lab.fault("d", "kill")
    assert carry_out(lab, "status", "c") == {"ok": True, "power": "off", "outdated": False,
                                             "detail": "node c is off"}
    assert "the lab's nodes are a, b, c" in carry_out(lab, "off", "d")["detail"]
    req = lab.node_dir("c") / "share" / "fence" / "r1.req"  # asked from node c, about a
    req.write_text(json.dumps({"action": "status", "plug": "a"}))
    log = io.StringIO()
    assert serve_once(lab, log) == 1
    ans = json.loads(req.with_suffix(".ans").read_text())
    assert ans["power"] == "off" and json.loads(log.getvalue())["from"] == "c"


# ---- the hub: a learning switch ------------------------------------------------------------
def frame(dst: str, src: str, payload: bytes = b"x" * 50) -> bytes:
    return bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) \
        + b"\x08\x00" + payload


MAC = {n: f"52:54:00:77:01:0{i + 1}" for i, n in enumerate("abc")}
BCAST = "ff:ff:ff:ff:ff:ff"


def test_switch_floods_then_learns() -> None:
    sw = Switch({"a": 1, "b": 2, "c": 3})
    assert sw.route(1, frame(BCAST, MAC["a"])) == [2, 3]
    assert sw.route(2, frame(MAC["a"], MAC["b"])) == [1]  # a was learnt from its broadcast
    assert sw.route(1, frame(MAC["c"], MAC["a"])) == [2, 3]  # c unknown yet: flooded
    assert sw.route(3, frame(MAC["a"], MAC["c"])) == [1]
    assert sw.route(1, frame(MAC["c"], MAC["a"])) == [3]
    assert sw.route(9, frame(BCAST, MAC["a"])) == []  # not one of the lab's node ports
    assert sw.route(1, b"short") == []
    assert sw.stats() == {"frames_in": 5, "unicast": 3, "flooded": 2, "dropped": 2,
                          "send_errors": 0, "macs": 3}


@given(st.lists(st.tuples(st.sampled_from([1, 2, 3, 4]),
                          st.sampled_from([*MAC.values(), BCAST, "01:00:5e:00:00:01"]),
                          st.sampled_from(list(MAC.values()))), max_size=40))
def test_switch_never_sends_back_nor_outside(frames: list[tuple[int, str, str]]) -> None:
    sw = Switch({"a": 1, "b": 2, "c": 3})
    for port, dst, src in frames:
        out = sw.route(port, frame(dst, src))
        assert port not in out and set(out) <= {1, 2, 3}
        if port == 4:
            assert out == []
        elif int(dst[:2], 16) & 1:
            assert out == sorted({1, 2, 3} - {port})  # broadcast/multicast: every other node
        else:
            assert len(out) in (0, 1, 2)


def test_parse_node_ports() -> None:
    assert parse_node_ports("a=48001,b=48002,c=48003") == {"a": 48001, "b": 48002, "c": 48003}
    for bad, why in (("a=1", "two node ports"), ("a=x,b=2", "NAME=PORT"),
                     ("a=1,a=2", "repeats"), ("a=1,b=1", "repeats"), ("a=70000,b=1", "NAME=PORT")):
        with pytest.raises(ValueError, match=why):
            parse_node_ports(bad)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hub_forwards_between_loopback_nodes(tmp_path: Path) -> None:
    """serve() with three UDP sockets standing in for the nodes' QEMU netdevs."""
    nodes = {n: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for n in "abc"}
    for s in nodes.values():
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.3)
    ports = {n: s.getsockname()[1] for n, s in nodes.items()}
    hub_port = _free_udp_port()
    stop = threading.Event()
    done: list = []
    t = threading.Thread(target=lambda: done.append(
        serve(tmp_path, "x", hub_port, ports, should_run=lambda: not stop.is_set())))
    t.start()
    try:
        deadline = time.monotonic() + 5
        while not (tmp_path / "hub-x.json").exists():
            assert time.monotonic() < deadline, "the hub wrote no counters"
            time.sleep(0.01)

        def got(n: str) -> bytes | None:
            try:
                return nodes[n].recv(2048)
            except TimeoutError:
                return None

        hello = frame(BCAST, MAC["a"])
        nodes["a"].sendto(hello, ("127.0.0.1", hub_port))
        assert (got("b"), got("c"), got("a")) == (hello, hello, None)
        reply = frame(MAC["a"], MAC["c"])
        nodes["c"].sendto(reply, ("127.0.0.1", hub_port))
        assert (got("a"), got("b")) == (reply, None)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(hello, ("127.0.0.1", hub_port))  # not a node's port: dropped
            assert (got("a"), got("b"), got("c")) == (None, None, None)
    finally:
        stop.set()
        t.join(timeout=5)
        for s in nodes.values():
            s.close()
    assert not t.is_alive() and done[0].stats()["dropped"] == 1
    assert done[0].stats()["unicast"] == 1 and done[0].stats()["flooded"] == 1


# ---- a real lab of three (rxe) ---------------------------------------------------------------
@pytest.fixture(scope="module")
def three_nodes(lab_artefacts):
    """Its own boot: nodes a, b, c on rxe, fabrics x and y, each a shared segment."""
    lab = Lab(os.environ.get("HSP_TEST_LAB_ID", "pytest") + "-n3")
    try:
        if lab.running():
            lab.down()
        lab.up(rdma="rxe", fabrics=2, nodes=3)
    except LabError as exc:
        lab.down()
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"lab cannot run (CI=true, so this fails): {exc}", pytrace=False)
        pytest.skip(f"lab cannot run: {exc}")
    try:
        yield lab
    finally:
        lab.down()


# What rping 44's client printed in CI (stop 23): three pings, then the teardown race.
_PINGS = "".join(f"ping data: rdma-ping-{i}: ABCDEFG\n" for i in range(3))
_RACE = "client DISCONNECT EVENT...\nrdma_get_cm_event: Bad file descriptor\n"


def test_rping_teardown_race_is_forgiven_only_after_every_ping() -> None:
    assert _rping_ok(0, _PINGS, 3) == (True, None)
    ok, note = _rping_ok(255, _PINGS + _RACE, 3)
    assert ok and "teardown race" in note and "3 pings" in note
    # fewer pings than asked, another exit code, another error, a timeout: not ok
    assert _rping_ok(255, _PINGS.split("\n", 1)[1] + _RACE, 3) == (False, None)
    assert _rping_ok(1, _PINGS + _RACE, 3) == (False, None)
    assert _rping_ok(255, _PINGS + "client DISCONNECT EVENT...\ncq completion failed status 5\n",
                     3) == (False, None)
    assert _rping_ok(255, _PINGS + _RACE + "wait for RDMA_WRITE_COMPLETE state 9\n", 3) == (
        False, None)
    assert _rping_ok(None, _PINGS + _RACE, 3) == (False, None)
    assert _rping_ok(0, _PINGS, 4) == (False, None)


@pytest.mark.lab
def test_three_nodes_rxe_every_pair_reaches_each_other(three_nodes: Lab) -> None:
    lab = three_nodes
    info, st_ = lab.info(), lab.status()
    assert [k for k in info if k != "rdma"] == ["a", "b", "c"]
    assert {info[n][f]["ipv4"] for n in "abc" for f in "xy"} == {
        f"10.77.{i}.{h}" for i in (1, 2) for h in (1, 2, 3)}
    assert all(n["state"] == "running" and n["ready"] for n in st_["nodes"].values())
    assert all(h["alive"] for h in st_["hubs"].values())
    pairs = [(s, c, f) for f in "xy" for s, c in (("a", "b"), ("b", "c"), ("c", "a"))]
    res = rping_pairs(lab, pairs, timeout=20)
    assert all(r.ok for r in res), [r.detail for r in res if not r.ok]
    ask = f"printf 'action=status\\nplug=c\\n' | {sys.executable} -m hsp_rdma.lab.fence_agent"
    fence = lab.exec("a", ["sh", "-c", ask], timeout=30)
    assert fence.rc == 0 and "node c is on" in fence.stdout, fence.stderr  # c's plug served
    stats = lab.hub_stats()
    print(f"\n3-node rxe: 6 rpings in parallel, retries {sum(r.retries for r in res)}; hub x "
          f"{stats['x'].get('frames_in')} frames, {stats['x'].get('macs')} MACs")


@pytest.mark.lab
def test_three_nodes_rxe_fabric_pulled_on_one_node_cuts_only_it(three_nodes: Lab) -> None:
    lab = three_nodes
    lab.fault("c", "link", "x", "down")
    try:
        assert lab.status()["nodes"]["c"]["links"] == {"x": "down", "y": "up"}
        t0 = time.monotonic()
        ab_x, ac_x, cb_x, ac_y = rping_pairs(
            lab, [("a", "b", "x"), ("a", "c", "x"), ("c", "b", "x"), ("a", "c", "y")],
            timeout=6, retries=1)
        assert time.monotonic() - t0 < 25, "a cut fabric must fail in bounded time"
        assert ab_x.ok, ab_x.detail  # the others keep fabric x
        assert ac_y.ok, ac_y.detail  # c keeps fabric y
        assert not ac_x.ok and not cb_x.ok, "c's fabric x is pulled: nothing gets through"
    finally:
        lab.fault("c", "link", "x", "up")
    again = rping_pairs(lab, [("a", "c", "x")], timeout=20)[0]
    assert again.ok, again.detail


@pytest.mark.lab
def test_three_nodes_rxe_failed_boot_leaves_no_hub_nor_guest(lab_artefacts) -> None:
    lab = Lab(os.environ.get("HSP_TEST_LAB_ID", "pytest") + "-n3x")
    with pytest.raises(LabTimeout, match="did not finish booting"):
        lab.up(rdma="rxe", nodes=3, boot_timeout=0.3)
    assert not lab.dir.exists() and not lab.running()
    out = subprocess.run(["pgrep", "-f", str(lab.dir)], capture_output=True, text=True,
                         check=False)
    assert out.stdout == "", "no QEMU, hub or fence device may outlive a failed up"
