"""Issue 13's n+1 drill in the lab, on rxe and siw: three actives (guests a, b, c) and one n+1
standby host (guest d, StandbyHost with a session per active), each active under the ledger
workload. Active a is killed: d's session for a fences it through the lab's fence device,
promotes and serves a's ledger; b and c stay protected (their commits keep being
acknowledged); active b is killed: d refuses ("n+1 standby already active for a; cannot take
over for b"), never two actives; 0 lost on every pair.

First, in the same lab boot, the GSO drill nplus1-gso (it kills no guest, so the kill drill
finds every guest up): active a switches over to d by GSO (d's session for a resumes from a's
image and serves a's ledger, 0 lost; a becomes its standby), then b's GSO is refused by d
(Abort BUSY before b freezes; the same alarm words, "(GSO refused: b keeps serving)"), b keeps
serving; never two actives.

This test boots a lab of its own (4 nodes, fabric x only, one hub segment) with the lab id
``<HSP_TEST_LAB_ID>-n1``, and takes it down at the end: the session's ``lab`` fixture is a
two-node lab, and the drill cannot use it. Each kind is one boot and two drills.

Measured (CI=true HSP_TEST_LAB_ID=np, both kinds, 2026-11-26 12:39 UTC, host shared with one
other two-node lab): 2 passed in 120 s (pytest's wall time, boots and downs included).
rxe 49.8 s: boot 13.2 s, pairs up 13.3 s after the spawn; pair a 332 acked (72 by a, 260 by
d after the takeover), 0 lost, blackout 4899 ms, detected in 2872 ms (heart-beat timeout 3 s
here); pair b 278 acked, 0 lost, 100 acked after a's takeover, takeover refused; pair c 427
acked, 0 lost. siw 68.7 s: boot 12.7 s, pairs up 32.2 s; a 344 acked (86 by a, 258 by d), 0
lost, blackout 5503 ms, detected in 3131 ms; b 694 acked, 0 lost, refused; c 856 acked, 0
lost. Both: the alarm "n+1 standby already active for a; cannot take over for b", d active
for a only, never two actives.

With the GSO drill first in the same boot (CI=true HSP_TEST_LAB_ID=ng, both kinds, 2026-11-26
15:25 UTC, host shared with other labs): 2 passed in 241 s. rxe 113 s in all: boot 33 s;
nplus1-gso 38 s (pair a: GSO blackout 814 ms, copy 477 ms, 25 acked by a then 65 by d, 0 lost;
b's GSO refused, aborted BUSY, never frozen, 24 acked after); nplus1 42 s (as above). siw 125
s: boot 21 s; nplus1-gso 39 s (a: GSO blackout 2536 ms, copy 1883 ms, 30 by a then 28 by d,
0 lost; b refused, never frozen, 8 acked after); nplus1 66 s. The GSO drill adds ~40 s per
kind.
"""

from __future__ import annotations

import os
import time

import pytest

from hsp_rdma.lab import Lab
from hsp_rdma.tools.drills.lab_runner import LabRunner
from hsp_rdma.tools.drills.nplus1 import REFUSAL, describe
from hsp_rdma.tools.drills.runner import judge, report
from hsp_rdma.tools.drills.scenario import find_scenario, load_scenario

pytestmark = pytest.mark.lab

LAB_ID = os.environ.get("HSP_TEST_LAB_ID", "pytest") + "-n1"


@pytest.mark.parametrize("kind", ["rxe", "siw"])
def test_nplus1_drill_in_the_lab(lab_artefacts, kind: str) -> None:
    lab = Lab(LAB_ID)
    if lab.running():
        lab.down()  # a previous run was interrupted: start clean
    gso_scenario = load_scenario(find_scenario("nplus1-gso"))
    scenario = load_scenario(find_scenario("nplus1"))
    runner = LabRunner(kind, LAB_ID)
    t0 = time.monotonic()
    try:
        lab.up(rdma=kind, fabrics=1, nodes=4)  # one boot for both drills
        boot_s = time.monotonic() - t0
        t1 = time.monotonic()
        gso_result = runner.run(gso_scenario)  # the lab is up: used as it is, left up
        gso_s = time.monotonic() - t1
        result = runner.run(scenario)
    finally:
        runner.close()
        Lab(LAB_ID).down()
    took = time.monotonic() - t0
    for line in describe(report(gso_result, judge(gso_scenario, gso_result))):
        print(line)
    print(f"{kind} n+1 GSO drill: {gso_s:.0f} s (after the boot of {boot_s:.0f} s), "
          f"acknowledged {gso_result.acknowledged}, lost {gso_result.lost}")
    assert judge(gso_scenario, gso_result) == [], gso_result.problems
    g1 = gso_result.nplus1
    assert gso_result.lost == 0 and not gso_result.two_actives and g1["active_for"] == "a"
    ga, gb = g1["pairs"]["a"], g1["pairs"]["b"]
    assert ga["served_by"] == "d" and ga["taken_by"] == "gso" and ga["by_standby"] > 0
    assert gb["served_by"] == "b" and gb["gso_refused"]["froze"] is False
    assert gb["gso_refused"]["reason"] == "BUSY" and gb["gso_refused"]["acks_after"] > 0
    assert [r["why"] for r in g1["refusals"]] == [
        REFUSAL.format(active="a", other="b") + " (GSO refused: b keeps serving)"]
    for line in describe(report(result, judge(scenario, result))):
        print(line)
    print(f"{kind} n+1 drill: {took:.0f} s in all, acknowledged {result.acknowledged}, lost "
          f"{result.lost}")
    assert judge(scenario, result) == [], result.problems
    n1 = result.nplus1
    assert n1["lab"]["boot_s"] is None  # up already: booted once, above
    assert result.lost == 0 and not result.two_actives and n1["active_for"] == "a"
    pairs = n1["pairs"]
    assert pairs["a"]["served_by"] == "d" and pairs["a"]["by_standby"] > 0
    assert pairs["b"]["refused"] and pairs["b"]["acks_after_takeover"] > 0
    assert pairs["c"]["served_by"] == "c" and pairs["c"]["acks_after_takeover"] > 0
    assert [r["why"] for r in n1["refusals"]] == [REFUSAL.format(active="a", other="b")]
