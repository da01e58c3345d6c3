"""GSO to the n+1 standby host (issue 13) over the soft provider on this host: 3 actives (a,
b, c: drill nodes) and the standby host d (standby_node.py: StandbyHost, one GSO engine per
session), each pair under the ledger workload. a switches over to d (d serves a's ledger, 0
lost, a becomes its standby); then b's GSO is refused (d is active for a) before b freezes,
with the failover refusal's alarm, and b keeps serving; never two actives. Then the judge on
made-up events and the scenario's bad input. ~30 s."""

from __future__ import annotations

import pytest

from hsp_rdma.errors import ConfigError
from hsp_rdma.tools.drills import nplus1
from hsp_rdma.tools.drills.acklog import Ack, AckLog
from hsp_rdma.tools.drills.nplus1 import REFUSAL, NPlus1Driver, SoftNPlus1Runner, judge_nplus1
from hsp_rdma.tools.drills.runner import SoftTarget, judge, report, why_unavailable
from hsp_rdma.tools.drills.scenario import find_scenario, load_scenario, parse_scenario


def test_gso_to_the_nplus1_standby_and_a_second_refused_over_soft() -> None:
    scenario = load_scenario(find_scenario("nplus1-gso"))
    assert scenario.nplus1 == 3 and [s.node for s in scenario.steps if s.do == "gso"] == \
        ["a", "b"]
    assert why_unavailable(SoftTarget(), scenario) is None
    result = SoftNPlus1Runner().run(scenario)
    assert judge(scenario, result) == [], result.problems
    n1 = result.nplus1
    pairs = n1["pairs"]
    print("n+1 GSO over soft:", {a: (p["acknowledged"], p["lost"], p["served_by"])
                                 for a, p in pairs.items()}, "a's GSO", pairs["a"].get("gso"),
          "b's refused GSO", pairs["b"].get("gso_refused"))
    assert result.lost == 0 and not result.two_actives and not result.failover
    assert n1["active_for"] == "a"
    # a: switched over to d by GSO; d acknowledged a's ledger on; only d's copy judged
    a = pairs["a"]
    assert a["served_by"] == "d" and a["taken_by"] == "gso" and a["gso"]["outcome"] == \
        "completed"
    assert a["by_active"] > 0 and a["by_standby"] > 0 and a["checked_on"] == ["d"]
    # b: its GSO refused before its freeze (Abort BUSY), it kept serving and acknowledging
    b = pairs["b"]
    assert b["served_by"] == "b" and b["lost"] == 0
    assert b["gso_refused"]["froze"] is False and b["gso_refused"]["outcome"] == "aborted"
    assert b["gso_refused"]["reason"] == "BUSY" and b["gso_refused"]["acks_after"] > 0
    assert [r["why"].startswith(REFUSAL.format(active="a", other="b")) for r in n1["refusals"]] \
        == [True]
    # c: protected to the end
    assert pairs["c"]["served_by"] == "c" and pairs["c"]["acks_after_takeover"] > 0
    lines = nplus1.describe(report(result, []))
    assert any("pair a-d" in x and "switched over by GSO" in x for x in lines)
    assert any("pair b-d" in x and "refused (aborted BUSY, never frozen" in x for x in lines)


# ---- judging, on made-up events (no figure here is a measurement) -------------------------

class _P:
    def __init__(self, events):
        self.events = events

    def find(self, event):
        return next((e for e in self.events if e.get("event") == event), None)


def _ack(i: int, t: float, node: str) -> Ack:
    return Ack(i, int(t * 1e9), node)


def test_the_judge_names_a_frozen_refused_gso_and_an_old_active_still_serving() -> None:
    s = load_scenario(find_scenario("nplus1-gso"))
    why = REFUSAL.format(active="a", other="b") + " (GSO refused: b keeps serving)"
    host = [{"event": "gso", "phase": "switched", "active": True, "session": "a", "t": 10.0},
            {"event": "failover", "session": "b", "what": "takeover_refused", "t": 20.0,
             "why": why, "gso_epoch": 1},
            {"event": "final", "host": {"active_session": "a"}, "t": 31.0}]
    a = [{"event": "gso", "phase": "done", "outcome": "completed", "role": "active",
          "epoch": 1, "blackout_ms": 12.0, "copy_ms": 2.0, "t": 10.0},
         {"event": "final", "status": {"failover": {"serving": True}}, "t": 30.0}]
    b = [{"event": "gso", "phase": "frozen", "epoch": 1, "t": 19.9},
         {"event": "gso", "phase": "done", "outcome": "aborted", "reason": "BUSY", "epoch": 1,
          "t": 20.1}]
    procs = {"a": _P(a), "b": _P(b), "c": _P([]), "d": _P(host)}
    logs = {"a": AckLog((_ack(1, 5, "a"), _ack(2, 12, "d"))),
            "b": AckLog((_ack(1, 15, "b"),)),  # nothing after the refusal
            "c": AckLog((_ack(1, 15, "c"),))}
    d = NPlus1Driver({}, "d", lambda *_: None, lambda *_: None, lambda *_: None, lambda: 0.0)
    d.done_t = 30.0
    result = judge_nplus1(s, procs, logs, {}, d, [])
    text = "\n".join(result.problems)
    assert result.two_actives and "node a still served at the end, after its GSO" in text
    assert "node b froze for GSO epoch 1, which the standby host refused" in text
    assert "node b acknowledged nothing after the standby host refused its GSO" in text
    assert result.nplus1["pairs"]["a"]["taken_by"] == "gso"
    assert "not naming the pair it serves" not in text


@pytest.mark.parametrize(("top", "steps", "says"), [
    ("[nplus1]\nactives = 3\n", '[[steps]]\ndo = "gso"\n',
     "an n+1 drill's gso needs node = an active by name"),
    ("[nplus1]\nactives = 3\n", '[[steps]]\ndo = "gso"\nnode = "standby"\n',
     "an n+1 drill's gso needs node = an active by name"),
    ("", '[[steps]]\ndo = "gso"\nnode = "active"\n',
     "a pair's GSO starts on the node serving, without node"),
])
def test_bad_gso_steps_are_refused_naming_the_field(top, steps, says) -> None:
    text = ('description = "t"\n' + top + '[workload]\nrate = 20\ntransaction_size = 256\n'
            'targets = ["pmem"]\ncommit = "applied"\n' + steps)
    with pytest.raises(ConfigError) as exc:
        parse_scenario(text, "/d/n.toml")
    assert says in str(exc.value) and "/d/n.toml:" in str(exc.value)
