"""The n+1 drill (issue 13) over the soft provider on this host: 3 actives (a, b, c: drill
nodes) and the standby host d (standby_node.py: StandbyHost), each pair under the ledger
workload. Kill a: d's session for a promotes and serves a's ledger (0 lost); b and c stay
protected; kill b: d refuses (the alarm names a and b), never two actives. Then the bad input:
more actives than a lab can take, node names outside the drill, n+1 words in a pair drill, a
host or lab that cannot take the nodes: clear errors, no traceback. ~25 s."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hsp_rdma.errors import ConfigError, LabError
from hsp_rdma.tools.drills import nplus1
from hsp_rdma.tools.drills.acklog import Ack, AckLog
from hsp_rdma.tools.drills.nplus1 import (
    REFUSAL,
    NPlus1Driver,
    SoftNPlus1Runner,
    check_soft_host,
    judge_nplus1,
)
from hsp_rdma.tools.drills.nplus1_lab import _lab_ready
from hsp_rdma.tools.drills.runner import (
    DrillsUnavailable,
    HostsTarget,
    LabTarget,
    SoftTarget,
    judge,
    report,
    why_unavailable,
)
from hsp_rdma.tools.drills.scenario import find_scenario, load_scenario, parse_scenario

BASE = """description = "n+1 test"
{top}
[workload]
rate = 20
transaction_size = 256
targets = ["pmem"]
commit = "applied"
{steps}
"""
STEPS = """[[steps]]
do = "wait"
for = "1s"
"""


def scen(top: str = "[nplus1]\nactives = 3\n", steps: str = STEPS, path: str = "/d/n.toml"):
    return parse_scenario(BASE.format(top=top, steps=steps), path)


def test_the_nplus1_drill_over_soft() -> None:
    scenario = load_scenario(find_scenario("nplus1"))
    assert scenario.nplus1 == 3 and scenario.checks.takeover_refused is True
    assert why_unavailable(SoftTarget(), scenario) is None
    result = SoftNPlus1Runner().run(scenario)
    assert judge(scenario, result) == [], result.problems
    n1 = result.nplus1
    pairs = n1["pairs"]
    print("n+1 over soft:", {a: (p["acknowledged"], p["lost"], p["served_by"])
                             for a, p in pairs.items()}, "blackout", result.blackout_ms,
          "detect", result.detect_ms)
    assert result.lost == 0 and not result.two_actives and result.failover
    assert n1["standby"] == "d" and n1["active_for"] == "a"
    # a: taken over by d, which acknowledged a's ledger on; every ack of both on d
    assert pairs["a"]["served_by"] == "d" and pairs["a"]["by_standby"] > 0
    assert pairs["a"]["by_active"] > 0 and pairs["a"]["lost"] == 0
    # b: protected after a's takeover, then killed: d refused, nobody serves, nothing lost
    assert pairs["b"]["served_by"] is None and pairs["b"]["refused"] is True
    assert pairs["b"]["acks_after_takeover"] > 0 and pairs["b"]["lost"] == 0
    assert pairs["b"]["checked_on"] == ["d"]
    # c: protected to the end, its acks on its own copy and on d's
    assert pairs["c"]["served_by"] == "c" and pairs["c"]["acks_after_takeover"] > 0
    assert sorted(pairs["c"]["checked_on"]) == ["c", "d"] and pairs["c"]["lost"] == 0
    assert [r["why"] for r in n1["refusals"]] == [REFUSAL.format(active="a", other="b")]
    row = report(result, [])
    assert row["nplus1"] == n1
    lines = nplus1.describe(row)
    assert any("pair a-d" in x and "served by d" in x for x in lines)
    assert any("refused: n+1 standby already active for a; cannot take over for b" in x
               for x in lines)


# ---- judging, on made-up events (no figure here is a measurement) -------------------------

class _P:
    def __init__(self, events):
        self.events = events


def _driver(kills: dict[str, float]) -> NPlus1Driver:
    d = NPlus1Driver({}, "d", lambda *_: None, lambda *_: None, lambda *_: None, lambda: 0.0)
    d.kills, d.done_t = kills, 30.0
    return d


def _ack(i: int, t: float, node: str) -> Ack:
    return Ack(i, int(t * 1e9), node)


def test_the_judge_names_two_actives_a_second_takeover_and_an_unprotected_pair() -> None:
    s = scen()
    host = [{"event": "failover", "session": "a", "what": "active", "t": 10.0},
            {"event": "failover", "session": "b", "what": "active", "t": 20.0},
            {"event": "final", "host": {"active_session": "a"}, "t": 31.0}]
    procs = {"a": _P([]), "b": _P([]), "c": _P([]), "d": _P(host)}
    logs = {"a": AckLog((_ack(1, 5, "a"), _ack(2, 11, "a"))),  # a acked after d took over
            "b": AckLog((_ack(1, 5, "b"),)),
            "c": AckLog((_ack(1, 5, "c"),))}  # c: nothing after the takeover
    result = judge_nplus1(s, procs, logs, {}, _driver({"a": 9.0, "b": 19.0}), [])
    text = "\n".join(result.problems)
    assert result.two_actives
    assert "the standby host became active for 2 pairs (a, b)" in text
    assert "pair a: node a acknowledged transfers after the standby host took over" in text
    assert "pair c: no commit of node c was acknowledged after the standby host took over" in text
    assert "pair a: neither node left its P.mem and journal to check" in text
    assert result.lost == 4  # nothing to check them on: every ack counts as lost


def test_a_refusal_must_name_the_pair_served() -> None:
    s = scen()
    host = [{"event": "failover", "session": "a", "what": "active", "t": 10.0},
            {"event": "failover", "session": "b", "what": "takeover_refused", "t": 20.0,
             "why": "something else"}]
    procs = {n: _P([]) for n in "abc"} | {"d": _P(host)}
    result = judge_nplus1(s, procs, {}, {}, _driver({"a": 9.0, "b": 19.0}), [])
    assert any("not naming the pair it serves (a)" in p for p in result.problems)
    assert "the standby host (d) gave no final state" in result.problems


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize(("top", "steps", "says"), [
    ("[nplus1]\nactives = 8\n", STEPS, "nplus1: actives = 8 should be a whole number"),
    ("[nplus1]\nactives = 1\n", STEPS, "between 2 and 7"),
    ("[nplus1]\n", STEPS, "nplus1: missing field actives"),
    ("[nplus1]\nactives = 3\nspare = 1\n", STEPS, "nplus1: unknown field 'spare'"),
    ("[nplus1]\nactives = 3\n", '[[steps]]\ndo = "kill"\nnode = "e"\n',
     'node = \'e\' should be one of "a", "b", "c", "standby"'),
    ("[nplus1]\nactives = 2\n", '[[steps]]\ndo = "kill"\nnode = "c"\n',
     'should be one of "a", "b", "standby"'),
    ("", '[[steps]]\ndo = "wait"\nuntil = "refused"\n',
     'until = "refused" is an n+1 drill\'s event'),
    ("", STEPS + "[checks]\ntakeover_refused = true\n",
     "takeover_refused is an n+1 drill's check"),
])
def test_bad_nplus1_scenarios_are_refused_naming_the_field(top, steps, says) -> None:
    with pytest.raises(ConfigError) as exc:
        scen(top, steps)
    assert says in str(exc.value) and "/d/n.toml:" in str(exc.value)


def test_steps_the_nplus1_runners_do_not_do_are_named() -> None:
    s = scen(steps='[[steps]]\ndo = "audit"\n[[steps]]\ndo = "wait"\nuntil = "resync-done"\n')
    why = why_unavailable(SoftTarget(), s)
    assert "step audit: not built for n+1 drills" in why and "wait until resync-done" in why
    assert "step audit" in why_unavailable(LabTarget("rxe", "x"), s)
    assert "not built" in why_unavailable(HostsTarget((Path("a"), Path("b"))), s)


def test_more_nodes_than_this_host_can_take_is_a_clear_error() -> None:
    check_soft_host(3, available=4000)
    with pytest.raises(DrillsUnavailable, match=r"runs 8 node processes here, up to 1200 MiB "
                       r".* 500 MiB available: use \[nplus1\] actives = 2 or fewer"):
        check_soft_host(7, available=500)


class _Lab:
    lab_id = "t"

    def __init__(self, nodes: int, up_error: str | None = None):
        self.n, self.up_error, self.downs = nodes, up_error, 0

    def status(self):
        return {"up": self.n > 0, "rdma": "rxe", "nodes": {c: {} for c in "abcdefgh"[:self.n]}}

    def command(self, sub: str) -> str:
        return f"hsp-lab --lab-id t {sub}"

    def down(self):
        self.downs += 1
        self.n = 0

    def up(self, **kw):
        raise LabError(self.up_error)


def test_a_lab_too_small_or_that_cannot_boot_the_nodes_is_a_clear_error() -> None:
    s = scen()
    runner = SimpleNamespace(lab=_Lab(2), owned=False, kind="rxe")
    with pytest.raises(DrillsUnavailable, match=r"needs a lab of 4 nodes and lab 't' is up "
                       r"with 2: 'hsp-lab --lab-id t down' first.*up --nodes 4 --rdma rxe"):
        _lab_ready(runner, s, 4)
    assert runner.lab.downs == 0  # not ours: left alone
    # booted by this runner (for pair drills): down, and booted bigger; here the boot fails
    # as the lab's memory check does
    runner = SimpleNamespace(lab=_Lab(2, "8 nodes of 1024 MiB need up to 10752 MiB"),
                             owned=True, kind="rxe")
    with pytest.raises(DrillsUnavailable, match="the rxe lab of 4 nodes cannot run: 8 nodes"):
        _lab_ready(runner, s, 4)
    assert runner.lab.downs == 1


def test_the_cli_refuses_too_many_actives_without_a_traceback(tmp_path) -> None:
    bad = tmp_path / "big.toml"
    bad.write_text(Path(find_scenario("nplus1")).read_text().replace("actives = 3",
                                                                      "actives = 9"))
    res = subprocess.run([sys.executable, "-m", "hsp_rdma.cli.failover_test", "--provider",
                          "soft", str(bad)], check=False, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 64, res
    assert "nplus1: actives = 9 should be a whole number between 2 and 7" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
