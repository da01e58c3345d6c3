"""Issue 13's n+1 drill in the lab, on rxe and siw: three actives (guests a, b, c) and one n+1
standby host (guest d, StandbyHost with a session per active), each active under the ledger
workload. Active a is killed: d's session for a fences it through the lab's fence device,
promotes and serves a's ledger; b and c stay protected (their commits keep being
acknowledged); active b is killed: d refuses ("n+1 standby already active for a; cannot take
over for b"), never two actives; 0 lost on every pair.

This test boots a lab of its own (4 nodes, fabric x only, one hub segment) with the lab id
``<HSP_TEST_LAB_ID>-n1``, and takes it down at the end: the session's ``lab`` fixture is a
two-node lab, and the drill cannot use it. Each kind is one boot and one drill.

Measured (CI=true HSP_TEST_LAB_ID=np, both kinds, 2026-11-26 12:39 UTC, host shared with one
other two-node lab): 2 passed in 120 s (pytest's wall time, boots and downs included).
rxe 49.8 s: boot 13.2 s, pairs up 13.3 s after the spawn; pair a 332 acked (72 by a, 260 by
d after the takeover), 0 lost, blackout 4899 ms, detected in 2872 ms (heart-beat timeout 3 s
here); pair b 278 acked, 0 lost, 100 acked after a's takeover, takeover refused; pair c 427
acked, 0 lost. siw 68.7 s: boot 12.7 s, pairs up 32.2 s; a 344 acked (86 by a, 258 by d), 0
lost, blackout 5503 ms, detected in 3131 ms; b 694 acked, 0 lost, refused; c 856 acked, 0
lost. Both: the alarm "n+1 standby already active for a; cannot take over for b", d active
for a only, never two actives.
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
    scenario = load_scenario(find_scenario("nplus1"))
    runner = LabRunner(kind, LAB_ID)
    t0 = time.monotonic()
    try:
        result = runner.run(scenario)  # boots the 4-node lab, and takes it down after
    finally:
        runner.close()
        Lab(LAB_ID).down()
    took = time.monotonic() - t0
    for line in describe(report(result, judge(scenario, result))):
        print(line)
    print(f"{kind} n+1 drill: {took:.0f} s in all, acknowledged {result.acknowledged}, lost "
          f"{result.lost}")
    assert judge(scenario, result) == [], result.problems
    n1 = result.nplus1
    assert n1["lab"]["boot_s"] is not None  # booted here
    assert result.lost == 0 and not result.two_actives and n1["active_for"] == "a"
    pairs = n1["pairs"]
    assert pairs["a"]["served_by"] == "d" and pairs["a"]["by_standby"] > 0
    assert pairs["b"]["refused"] and pairs["b"]["acks_after_takeover"] > 0
    assert pairs["c"]["served_by"] == "c" and pairs["c"]["acks_after_takeover"] > 0
    assert [r["why"] for r in n1["refusals"]] == [REFUSAL.format(active="a", other="b")]
