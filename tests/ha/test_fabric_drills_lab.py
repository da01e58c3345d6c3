"""Issue 13's fabric drills in the lab, on rxe and siw, in the session's shared boot (the
``lab`` fixture: nodes a and b, fabrics x and y; no boot of their own): each drill through
hsp-failover-test's lab runner, as tests/ha/test_failover_lab.py runs the others.

pull-x-both: fabric x pulled on both nodes for 10 s under load, then plugged: the carrier moves
to y, nobody promotes, no resync (nobody went alone), every acknowledged transfer on the
active, traffic came back within the heart-beat timeout of the pull. flap-x: x of the active
pulled and plugged ten times: the carrier moves (once, to y: fabric_failback "stay"), traffic
comes back after every pull, nobody promotes. pull-y-during-gso: y, the warm spare, pulled on
the active while a GSO copies on x: the GSO completes or is abandoned cleanly (judged by
soft_runner.gso_problems), the carrier stays on x, never two actives. pull-both: both fabrics
of the active pulled: the fencing path; one node wins at the lab's fence device (the active
outdating the standby, or the standby fencing the active and promoting), one serves.
pull-x-during-gso: x, the GSO's link and the carrier, pulled on the active during a GSO's
copy: both engines connect the GSO's link again on y (each saw x silent for 3 s) and the copy
starts again there; the GSO completes (relinks x->y on both nodes), the carrier moves to y.
All: 0 lost. Each prints its traffic-stop figures (the report's ``traffic_stops``).

Measured (CI=true HSP_TEST_LAB_ID=d13, both kinds, 2026-11-26, on a host shared with one or
two other labs; node at 7d1c7ac): 6 min 24 s, 4 passed (rxe pull-x-both, stop 396 ms on node
a's clock; rxe flap-x, stops 67-409 ms; siw pull-x-both, 898 ms; siw pull-both) and 4 failed:
two on this file's own faults, fixed since (a stop across a failover was taken on the new
active's clock, which had no ack before the pull: rxe pull-both; > 100 acks was too many for
a GSO drill frozen 10 s at ~15 acks/s: rxe pull-y-during-gso) and two on the node's
behaviour (siw flap-x: stops of 1251 and 3287 ms, a resync; siw pull-y-during-gso: the
carrier moved though only the spare was pulled). An earlier run took 9 min 15 s with 7 of 8
failing on the node (before 7d1c7ac: a disk commit never acknowledged after a move, a
failover under flap-x, a GSO that never ended); the last one 7 min 48 s, 3 passed, 2 failed on
a stop the runner took on the wrong clock (fixed since) and 3 on the node (rxe pull-x-both:
a pmem commit not acknowledged in 10 s after the move; flap-x: stops of 8092 ms (rxe) and
2342 ms (siw)). Passing, a drill takes ~25-85 s."""

from __future__ import annotations

import pytest

from hsp_rdma.lab import Lab
from hsp_rdma.tools.drills.lab_runner import LabRunner
from hsp_rdma.tools.drills.runner import judge
from hsp_rdma.tools.drills.scenario import find_scenario, load_scenario

pytestmark = pytest.mark.lab


# All four, on both kinds. pull-x-both, flap-x and pull-y-during-gso were out of this matrix
# for a while: at a move, the peer's warm y connections broke. The cause was the active's warm
# y links coming up with no receive posted (a failed first connect had flushed them), and it
# is fixed in the node. After the fix, each passed on siw and rxe
# (hsp-failover-test --lab siw|rxe, 2026-11-26).
# pull-x-during-gso (the GSO's link moves to y during the copy) passed on both kinds with
# hsp-failover-test --lab rxe|siw, 2026-11-26 (relinked in 77-183 ms after 3 s of silence).
@pytest.mark.parametrize("drill", ["pull-x-both", "flap-x", "pull-y-during-gso", "pull-both",
                                   "pull-x-during-gso"])
def test_fabric_drills_run_in_the_lab(healthy_lab: Lab, drill: str) -> None:
    kind = healthy_lab.status()["rdma"]
    runner = LabRunner(kind, healthy_lab.lab_id)
    scenario = load_scenario(find_scenario(drill))
    events: dict[str, list[dict]] = {}
    runner.observe = lambda seen: events.update(
        {n: list(p.events) for n, p in seen["procs"].items()})
    result = runner.run(scenario)
    runner.close()  # the session's lab: not booted by the runner, left up
    print(f"{kind} {drill}: acknowledged {result.acknowledged}, lost {result.lost}, "
          f"fabric switches {result.fabric_switches}, ack interval {result.ack_interval_ms} ms, "
          f"traffic stops {[(s['pull'], s['stop_ms']) for s in result.traffic_stops]}")
    assert judge(scenario, result) == [], result
    # the workload ran (a lab pair acknowledges ~5-100 transfers a second under the drills;
    # pull-y-during-gso's copy freezes it for 10 of its ~18 s)
    assert result.lost == 0 and not result.two_actives and result.acknowledged > 20, result
    stops = result.traffic_stops
    assert stops and all(s["resumed"] for s in stops), result  # traffic came back every time
    if drill in ("pull-x-both", "flap-x"):
        assert not result.failover and not result.resync, result
        assert result.fabric_switches >= 1, result  # the carrier moved to y
        assert len(stops) == (1 if drill == "pull-x-both" else 10), stops
        assert result.traffic_stop_ms <= scenario.checks.max_traffic_stop_ms, result
    elif drill == "pull-y-during-gso":
        assert result.fabric_switches == 0, result  # y was the spare: the carrier stayed
    elif drill == "pull-x-during-gso":
        # the GSO went on over y and completed on both nodes: never aborted
        for n in ("a", "b"):
            done = next(e for e in events[n] if e.get("event") == "gso"
                        and e.get("phase") == "done")
            print(f"{kind} {drill} node {n}: {done['outcome']}, relinks {done['relinks']} in "
                  f"{done['relink_ms']} ms, blackout {done['blackout_ms']} ms")
            assert done["outcome"] == "completed" and done["relinks"] == ["x->y"], done
        assert result.fabric_switches >= 1, result
    # pull-both: either node may win at the fence device (quiet pair: the active outdates
    # the standby and serves alone; loaded lab: the standby fences the active and promotes);
    # judged above: one serves, never two actives, nothing lost, traffic back within 15 s
