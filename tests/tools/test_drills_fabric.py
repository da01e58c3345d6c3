"""Issue 13's drills on the host, fast: the soft pair has fabrics x and y, each a soft NIC of
its own per node on its own loopback network, with its own link emulation (a pull of y breaks
y's connection and leaves x's); a one-fabric scenario gets one fabric over soft and in the lab;
the fabric drills parse, say what their checks mean, and the report's fabric figures (the
carrier moves, the traffic stop around each pull) come from the nodes' events and the driver's
ack log as documented (runner.traffic_stops), judged by the scenario's fabric checks."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from hsp_rdma import via
from hsp_rdma.errors import ConfigError
from hsp_rdma.ha.config import parse_node_config
from hsp_rdma.tools.drills import lab_runner
from hsp_rdma.tools.drills.runner import (
    REPORT_FIELDS,
    DrillResult,
    StepDriver,
    describe_stops,
    fabric_problems,
    judge,
    pair_ready,
    report,
    switch_count,
    traffic_stops,
    until_event,
)
from hsp_rdma.tools.drills.scenario import find_scenario, load_scenario, parse_scenario
from hsp_rdma.tools.drills.soft_runner import (
    SOFT_FABRICS,
    GsoStepDriver,
    soft_info,
    soft_label,
    unsupported,
)
from hsp_rdma.tools.lab_config import node_config_text
from hsp_rdma.via.providers import soft

FABRIC_DRILLS = ("pull-x-both", "flap-x", "pull-y-during-gso", "pull-both")
DISC = b"fabric-test"


def _scenario(steps: str, checks: str = "", fabrics: str = '["x", "y"]') -> object:
    return parse_scenario(f"""description = "test"
fabrics = {fabrics}
[workload]
rate = 10
transaction_size = 256
targets = ["pmem"]
commit = "applied"
{steps}
{checks}""", "test.toml")


PULL_WAIT_PLUG = """[[steps]]
do = "wait"
for = "1s"
[[steps]]
do = "pull"
node = "active"
fabric = "x"
[[steps]]
do = "wait"
until = "fabric-switched"
timeout = "5s"
[[steps]]
do = "plug"
node = "active"
fabric = "x"
"""


# ---- the soft pair's two fabrics ---------------------------------------------------------
def test_the_soft_pair_has_two_loopback_fabrics_with_their_own_nics(tmp_path) -> None:
    assert SOFT_FABRICS == ("x", "y")
    info = soft_info()
    # x keeps the one-fabric names; y is its own network; every address is loopback
    assert info["a"]["x"] == {"rdma_dev": "soft:a", "ipv4": "127.0.0.1"}
    assert info["b"]["y"] == {"rdma_dev": "soft:b-y", "ipv4": "127.0.2.2"}
    addrs = [f["ipv4"] for n in info.values() for f in n.values()]
    assert len(set(addrs)) == 4 and all(ipaddress.IPv4Address(a).is_loopback for a in addrs)
    devs = {f["rdma_dev"] for n in info.values() for f in n.values()}
    assert devs == {f"soft:{soft_label(n, f)}" for n in ("a", "b") for f in ("x", "y")}
    # the node's own loader takes both fabrics (distinct local addresses on x and y)
    cfg = parse_node_config(node_config_text(info, "a", tmp_path), tmp_path / "a.toml")
    assert [(f.name, f.rdma_device, f.local, f.peer) for f in cfg.fabrics] == [
        ("x", "soft:a", "127.0.0.1", "127.0.0.2"), ("y", "soft:a-y", "127.0.2.1", "127.0.2.2")]
    # a one-fabric scenario: fabric x alone
    one = parse_node_config(node_config_text(soft_info(("x",)), "b", tmp_path),
                            tmp_path / "b.toml")
    assert [f.name for f in one.fabrics] == ["x"]


def test_the_lab_runner_sets_a_one_fabric_drill_up_on_x_alone() -> None:
    info = {"a": {"x": {"ipv4": "10.0.0.1"}, "y": {"ipv4": "10.1.0.1"}},
            "b": {"x": {"ipv4": "10.0.0.2"}, "y": {"ipv4": "10.1.0.2"}}, "rdma": "rxe"}
    one = lab_runner.fabrics_only(info, load_scenario(find_scenario("pull-fabric-10s")).fabrics)
    assert one == {"a": {"x": {"ipv4": "10.0.0.1"}}, "b": {"x": {"ipv4": "10.0.0.2"}},
                   "rdma": "rxe"}
    assert lab_runner.fabrics_only(info, ("x", "y")) == info


class _End:
    def __init__(self, label: str, ip: str):
        self.ip = ip
        self.nic = via.VipOpenNic(f"soft:{label}")
        self.ptag = via.VipCreatePtag(self.nic)
        self.vi = via.VipCreateVi(self.nic, via.ViAttributes(ptag=self.ptag))


def _connect(a: _End, b: _End) -> None:
    got: list = []

    def accept() -> None:
        req = via.VipConnectWait(b.nic, via.NetAddress(b.ip, DISC), 3000)
        via.VipConnectAccept(req, b.vi)
        got.append(True)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    deadline = time.monotonic() + 3
    while True:
        try:
            via.VipConnectRequest(a.vi, via.NetAddress(a.ip, b""),
                                  via.NetAddress(b.ip, DISC), 3000)
            break
        except via.VipNoMatch:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    t.join(5)
    assert got


def _state(end: _End) -> via.ViState:
    return via.VipQueryVi(end.vi)[0]


def test_pulling_fabric_y_breaks_y_and_leaves_x(tmp_path, monkeypatch) -> None:
    """The soft runner's pull of fabric y on node a: LINKS/a-y.down. y's connection breaks
    (both sides), x's stays connected; the plug brings y's port back."""
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    monkeypatch.setenv(soft.LINKS_DIR_ENV, str(tmp_path))
    info = soft_info()
    ends = {(n, f): _End(soft_label(n, f), info[n][f]["ipv4"])
            for n in ("a", "b") for f in ("x", "y")}
    try:
        for f in ("x", "y"):
            _connect(ends["a", f], ends["b", f])
        (tmp_path / f"{soft_label('a', 'y')}.down").touch()
        deadline = time.monotonic() + 5
        while {_state(ends["a", "y"]), _state(ends["b", "y"])} != {via.ViState.ERROR}:
            assert time.monotonic() < deadline, "y did not break"
            time.sleep(0.01)
        time.sleep(0.2)  # a few link polls: x is left alone
        assert _state(ends["a", "x"]) is via.ViState.CONNECTED
        assert _state(ends["b", "x"]) is via.ViState.CONNECTED
        assert ends["a", "y"].nic.link_down and not ends["a", "x"].nic.link_down
        (tmp_path / f"{soft_label('a', 'y')}.down").unlink()
        deadline = time.monotonic() + 5
        while ends["a", "y"].nic.link_down:
            assert time.monotonic() < deadline, "y's port did not come back"
            time.sleep(0.01)
    finally:
        for e in ends.values():
            via.VipCloseNic(e.nic)


# ---- the fabric drills and their checks -----------------------------------------------
def test_the_fabric_drills_are_shipped_parse_and_run_everywhere() -> None:
    for name in FABRIC_DRILLS:
        s = load_scenario(find_scenario(name))
        assert s.fabrics == ("x", "y") and s.checks.lost == 0, name
        assert unsupported(s) is None and lab_runner.unsupported(s) is None, name
    both = load_scenario(find_scenario("pull-x-both"))
    assert [(st.do, st.node, st.fabric) for st in both.steps if st.do != "wait"] == [
        ("pull", "active", "x"), ("pull", "standby", "x"),
        ("plug", "active", "x"), ("plug", "standby", "x")]
    assert [st.wait_s for st in both.steps if st.do == "wait"] == [3, 10, 3]
    assert both.checks.failover is False and both.checks.resync is False
    assert both.checks.fabric_switch is True and both.checks.max_traffic_stop_ms == 1000
    flap = load_scenario(find_scenario("flap-x"))
    assert sum(st.do == "pull" for st in flap.steps) == 10
    assert sum(st.do == "plug" for st in flap.steps) == 10
    assert flap.steps[2].until == "fabric-switched"  # the first pull moves the carrier
    assert flap.checks.fabric_switch is True and flap.checks.failover is False
    gso = load_scenario(find_scenario("pull-y-during-gso"))
    assert [st.do for st in gso.steps if st.do != "wait"] == ["gso", "pull", "plug"]
    assert gso.checks.fabric_switch is False
    pull = load_scenario(find_scenario("pull-both"))
    assert {(st.node, st.fabric) for st in pull.steps if st.do == "pull"} == {
        ("active", "x"), ("active", "y")}
    # either node may win at the fence device: one serves, traffic comes back
    assert pull.checks.failover is None and pull.checks.max_traffic_stop_ms == 15000


def test_fabric_checks_parse_and_bad_ones_name_the_line() -> None:
    s = _scenario(PULL_WAIT_PLUG, "[checks]\nfabric_switch = true\nmax_fabric_switches = 2\n"
                  "max_traffic_stop_ms = 300")
    assert (s.checks.fabric_switch, s.checks.max_fabric_switches,
            s.checks.max_traffic_stop_ms) == (True, 2, 300.0)
    assert s.steps[2].until == "fabric-switched"
    assert s.steps[2].describe() == "wait until fabric-switched (5s)"
    for checks, says in [
            ("fabric_swich = true",
             "unknown field 'fabric_swich'; did you mean 'fabric_switch'?"),
            ("fabric_switch = 1", "fabric_switch = 1 should be true (the carrier must move"),
            ("max_fabric_switches = -1", "should be a whole number between 0"),
            ("max_traffic_stop_ms = 0", "should be a number of milliseconds above 0")]:
        with pytest.raises(ConfigError, match=re.escape(says)) as err:
            _scenario(PULL_WAIT_PLUG, f"[checks]\n{checks}")
        assert err.value.line == 25, (checks, str(err.value))
    with pytest.raises(ConfigError, match="test.toml:17: step 3 .wait.: until = "
                                          "'fabric-swiched' should be one of .*"
                                          "\"fabric-switched\""):
        _scenario(PULL_WAIT_PLUG.replace("fabric-switched", "fabric-swiched"))
    # a bound on the stop around a pull needs a pull; a switch needs two fabrics
    with pytest.raises(ConfigError, match="max_traffic_stop_ms needs a pull step"):
        _scenario('[[steps]]\ndo = "wait"\nfor = "1s"', "[checks]\nmax_traffic_stop_ms = 9")
    with pytest.raises(ConfigError, match=r"fabric_switch needs two fabrics .*fabrics = "
                                          r"\[\"x\"\]"):
        _scenario(PULL_WAIT_PLUG.replace("until = \"fabric-switched\"\ntimeout = \"5s\"",
                                         "for = \"1s\""),
                  "[checks]\nfabric_switch = false", '["x"]')


# ---- the figures: carrier moves and traffic stops ----------------------------------------
def _ms(t_ms: float) -> int:
    return int(t_ms * 1e6)


def _step(do: str, fabric: str = "x", node: str = "active") -> SimpleNamespace:
    return SimpleNamespace(do=do, fabric=fabric, node=node)


def test_the_traffic_stop_is_the_longest_gap_from_the_last_ack_before_each_pull() -> None:
    # acks every 5 ms from 0 to 1000 ms, none from 1003 to 1180 ms (the move), acks again
    # until 3000; an ack at 1001 ms (on its way at the pull) does not hide the stop
    acks = [_ms(t) for t in range(0, 1000, 5)] + [_ms(1001)] + \
           [_ms(t) for t in range(1180, 3000, 5)]
    timeline = [(0.5, _step("wait")), (1.0, _step("pull")), (1.0005, _step("pull", "x", "standby")),
                (1.001, _step("wait")), (2.0, _step("plug")), (2.0001, _step("plug"))]
    moves = [("a", {"t": 1.1, "from": "x", "to": "y", "why": "heart beats stopped"}),
             ("b", {"t": 1.15, "from": "x", "to": "y"}), ("a", {"t": 2.5, "from": "y",
                                                                  "to": "x"})]
    (stop,) = traffic_stops(acks, timeline, moves)
    assert stop == {"pull": "x on active, x on standby", "at_s": 1.0, "stop_ms": 179.0,
                    "resumed": True, "clock": "driver",
                    "switches": ["a: x -> y (heart beats stopped)", "b: x -> y"]}
    # the lab: acks come to the driver in batches; the node's own clock (here 1 s behind the
    # driver's, its acks 1 ms apart where the driver got them 5 ms apart) measures the stop
    own = [("a", t / 1e9 - 1.0) for t in acks]
    own = [("a", n_t - (0.004 if t > _ms(1100) else 0.0)) for (_, n_t), t in zip(own, acks,
                                                                                   strict=True)]
    (mine,) = traffic_stops(acks, timeline, moves, own)
    assert mine["clock"] == "node a" and mine["stop_ms"] == 175.0
    # acks of two nodes in the stretch (a failover): the driver's clock
    two = [("a" if t < _ms(1100) else "b", n_t) for (_, n_t), t in zip(own, acks, strict=True)]
    assert traffic_stops(acks, timeline, moves, two)[0]["clock"] == "driver"
    # only the new active's acks after the pull (node b took over; a's last came before it):
    # still the driver's clock, and the stop is measured (rxe lab, pull-both: it was None)
    took = [("a" if t <= _ms(1001) else "b", n_t) for (_, n_t), t in zip(own, acks,
                                                                          strict=True)]
    assert traffic_stops(acks, timeline, moves, took)[0] == {**stop, "clock": "driver"}
    # no ack at all between the pull and the plug (a GSO froze a, b served after the plug):
    # the driver's clock, the stop measured whole (pull-y-during-gso in the lab: it was None)
    frozen = [a for a in acks if not _ms(1000) < a < _ms(2100)]
    (gso,) = traffic_stops(frozen, timeline, (), [("a" if a < _ms(1000) else "b", a / 1e9)
                                                   for a in frozen])
    assert gso["clock"] == "driver" and gso["stop_ms"] == 1105.0
    # a gap that began after the plug is not the pull's, nor a hiccup 1.5 s after the pull
    # (runner.STOP_BEGINS_S);
    # a stop that began at the pull counts whole, however long
    late = acks[:-100] + [_ms(2600)]
    assert traffic_stops(late, timeline)[0]["stop_ms"] == 179.0
    later = [*timeline[:4], (4.0, _step("plug"))]
    hiccup = [a for a in acks if not _ms(2500) < a < _ms(2900)]
    assert traffic_stops(hiccup, later)[0]["stop_ms"] == 179.0
    long = [a for a in acks if not _ms(1000) < a < _ms(2500)]
    assert traffic_stops(long, timeline)[0]["stop_ms"] == 1505.0
    # no ack after the pull: it never came back
    (gone,) = traffic_stops([_ms(t) for t in range(0, 1000, 5)], timeline)
    assert gone["stop_ms"] is None and gone["resumed"] is False
    # two pulls with a plug between: one figure each, each in its own window
    flap = [(1.0, _step("pull")), (1.5, _step("wait")), (2.0, _step("plug")),
            (2.2, _step("pull")), (2.5, _step("plug"))]
    acks2 = [_ms(t) for t in range(0, 3000, 10) if not 1000 < t < 1300 and not 2200 < t < 2250]
    assert [s["stop_ms"] for s in traffic_stops(acks2, flap)] == [300.0, 50.0]
    # a pull with a wait before the next pull: two figures
    seq = [(1.0, _step("pull")), (1.2, _step("wait")), (2.2, _step("pull", "y"))]
    assert [s["pull"] for s in traffic_stops(acks2, seq)] == ["x on active", "y on active"]


def test_switches_are_counted_on_the_node_that_moved_most() -> None:
    sw = {"event": "fabric", "phase": "switched", "from": "x", "to": "y", "t": 1.0}
    procs = {"a": SimpleNamespace(events=[sw, {**sw, "t": 2.0}]),
             "b": SimpleNamespace(events=[sw, {"event": "final",
                                               "status": {"fabric_switches": 1}}])}
    assert switch_count(procs) == 2
    # a move after the drill's last step (a peer that stops breaks the carrier) is not counted
    assert switch_count(procs, until=1.5) == 1
    procs["b"].events.append({"event": "final", "status": {"fabric_switches": 3}})
    assert switch_count(procs) == 2  # the events count, not a status taken after the drill
    assert until_event(procs, "fabric-switched")["t"] == 1.0
    assert until_event(procs, "fabric-switched", {"a": 2, "b": 1}) is None


def test_fabric_checks_judge_the_figures() -> None:
    s = _scenario(PULL_WAIT_PLUG, "[checks]\nfabric_switch = true\nmax_fabric_switches = 1\n"
                  "max_traffic_stop_ms = 300")
    ok = ({"pull": "x on active", "at_s": 1.0, "stop_ms": 120.0, "resumed": True,
           "switches": []},)
    assert fabric_problems(s, 1, ok) == []
    slow = ({**ok[0], "stop_ms": 450.0},)
    assert fabric_problems(s, 0, slow) == [
        "the carrier never moved to the other fabric (no fabric switch; expected one)",
        "traffic stopped 450 ms around the pull of x on active (at 1 s) > 300 ms"]
    gone = ({**ok[0], "stop_ms": None, "resumed": False},)
    assert fabric_problems(s, 3, gone) == [
        "the carrier moved 3 times (allowed: at most 1)",
        "traffic never came back after the pull of x on active (no ack after it)"]
    stay = _scenario(PULL_WAIT_PLUG, "[checks]\nfabric_switch = false")
    assert fabric_problems(stay, 2, ok) == ["the carrier moved 2 time(s), expected it to stay"]


def test_the_report_shows_switches_and_traffic_stops() -> None:
    stops = ({"pull": "x on active", "at_s": 5.0, "stop_ms": 150.0, "resumed": True,
              "clock": "driver", "switches": ["a: x -> y"]},
             {"pull": "x on active", "at_s": 10.0, "stop_ms": 40.0, "resumed": True,
              "clock": "driver", "switches": []})
    r = DrillResult("d", 100, 0, False, 150.0, None, 0, 0, False, False, (), 1, stops, 5.0)
    assert r.traffic_stop_ms == 150.0
    row = report(r, [])
    assert list(row) == [*REPORT_FIELDS, "failures"]
    assert row["fabric_switches"] == 1 and row["traffic_stop_ms"] == 150.0
    assert row["ack_interval_ms"] == 5.0 and row["traffic_stops"][1]["stop_ms"] == 40.0
    assert describe_stops(row) == [
        ("d: pull of x on active at 5 s: traffic stopped 150 ms (last ack before to first "
        "after, driver's clock; an ack every 5 ms otherwise); carrier moved: a: x -> y"),
        ("d: pull of x on active at 10 s: traffic stopped 40 ms (last ack before to first "
        "after, driver's clock; an ack every 5 ms otherwise)")]
    gone = report(DrillResult("d", 1, 0, False, None, None, 0, 0, False, False, (), 0, (
        {"pull": "y on standby", "at_s": 1.5, "stop_ms": None, "resumed": False,
         "clock": "node a", "switches": []},)), [])
    assert describe_stops(gone) == [("d: pull of y on standby at 1.5 s: traffic never came "
                                    "back (no ack after it)")]
    # an older runner's result: no pulls, no figures
    assert DrillResult("d", 1, 0, False, None, None, 0, 0, False, False).traffic_stop_ms is None
    assert judge(_scenario(PULL_WAIT_PLUG), r) == []


def test_the_step_drivers_keep_a_timeline_and_wait_for_a_fabric_switch() -> None:
    procs = {"a": SimpleNamespace(events=[]), "b": SimpleNamespace(events=[])}
    clock = iter(range(100)).__next__
    done: list = []

    def fault(node, step):
        done.append((node, step.do, step.fabric))
        if step.do == "pull":  # the node tells its move
            procs["a"].events.append({"event": "fabric", "phase": "switched", "t": 0.0})

    def wait(pred, timeout, what):
        assert pred(), what

    for cls in (StepDriver, GsoStepDriver):
        done.clear()
        procs["a"].events.clear()
        d = cls(procs, fault, lambda: None, lambda *a: None, wait, lambda s: None,
                lambda: float(clock()))
        d.run(_scenario(PULL_WAIT_PLUG).steps)
        assert done == [("a", "pull", "x"), ("a", "plug", "x")]
        assert [st.do for _, st in d.timeline] == ["wait", "pull", "wait", "plug"]
        assert [t for t, _ in d.timeline] == sorted(t for t, _ in d.timeline)



def test_the_hosts_runner_runs_a_one_fabric_drill_on_x_alone(tmp_path) -> None:
    """Hosts with x and y and a drill of fabrics = ["x"]: [fabric.y] is cut out of the drill's
    copy of each node's TOML; a y written inline cannot be cut, and the drill says so."""
    from hsp_rdma.tools.drills.hosts_runner import fabrics_text

    text = node_config_text(soft_info(), "a", tmp_path) + "\n# end\n"
    cfg = parse_node_config(text, tmp_path / "a.toml")
    assert fabrics_text(text, cfg, ("x", "y")) == text
    one = parse_node_config(fabrics_text(text, cfg, ("x",)))
    assert [f.name for f in one.fabrics] == ["x"] and one.pmem_size == cfg.pmem_size
    assert one.fabrics[0] == cfg.fabrics[0]
    i, j = text.index("[fabric.x]"), text.index("[pmem]")
    inline = ('fabric = { x = { rdma_device = "soft:a", local = "127.0.0.1", '
              'peer = "127.0.0.2" }, y = { rdma_device = "soft:a-y", local = '
              '"127.0.2.1", peer = "127.0.2.2" } }\n') + text[:i] + text[j:]
    cfg2 = parse_node_config(inline, tmp_path / "a.toml")
    with pytest.raises(ConfigError, match=r"a.toml: the drill runs on fabric\(s\) x alone .*"
                                          r"\[fabric.NAME\] table of its own"):
        fabrics_text(inline, cfg2, ("x",))


def test_a_pair_that_did_not_come_up_whole_stops_the_drill_at_once() -> None:
    """The lab (rxe and siw, dual-fabric node): a start stalled past the heart-beat timeout,
    the standby suspected the active and fenced it before any step; the runner says so at
    once instead of waiting 180 s for a pair serving."""
    procs = {"a": SimpleNamespace(events=[{"event": "started"}]),
             "b": SimpleNamespace(events=[{"event": "started"}])}
    assert not pair_ready(procs)
    procs["a"].events.append({"event": "serving"})
    assert pair_ready(procs)
    procs["b"].events += [{"event": "failover", "what": "suspected",
                           "evidence": ["disconnected on x: oam: CONN_LOST"]},
                          {"event": "failover", "what": "fencing", "attempt": 1}]
    with pytest.raises(RuntimeError, match=r"before the drill's first step the standby \(node "
                                           r"b\) suspected the active \(disconnected on x: oam: "
                                           r"CONN_LOST\) and began fencing it"):
        pair_ready(procs)


def test_the_fabric_drills_pass_over_soft() -> None:
    """hsp-failover-test --provider soft on the soft pair's two fabrics: pull-x-both (the
    carrier moves to y on both nodes, no failover, no resync), flap-x (ten pulls of x: traffic
    back after each) and pull-y-during-gso (y, the spare, pulled during a GSO's copy: the
    carrier stays on x, the GSO ends cleanly). 0 lost, never two actives."""
    res = subprocess.run([sys.executable, "-m", "hsp_rdma.cli.failover_test", "--provider",
                          "soft", "pull-x-both", "flap-x", "pull-y-during-gso", "--json"],
                         check=False, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, (res.stdout, res.stderr)
    rows = {r["name"]: r for r in json.loads(res.stdout)["scenarios"]}
    for r in rows.values():
        assert r["passed"] and r["lost"] == 0 and not r["two_actives"], r
        assert r["acknowledged"] > 500 and all(s["resumed"] for s in r["traffic_stops"]), r
    both, flap, gso = rows["pull-x-both"], rows["flap-x"], rows["pull-y-during-gso"]
    assert both["fabric_switches"] >= 1 and both["resync_bytes"] == 0, both
    (stop,) = both["traffic_stops"]
    # both nodes told their move to y (the soft port goes down at once: a VI error)
    assert {m.split(":")[0] for m in stop["switches"]} == {"a", "b"}, stop
    assert all(": x -> y" in m for m in stop["switches"]), stop
    assert stop["stop_ms"] <= 1000, stop
    assert len(flap["traffic_stops"]) == 10 and flap["fabric_switches"] >= 1, flap
    assert gso["fabric_switches"] == 0, gso
