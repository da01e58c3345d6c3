"""The failover engine in the lab, on rxe and siw: drill nodes (tools/drills/drill_node.py:
node engine + failover engine + ledger workload) in guests a (active) and b (standby), the
lab's fence device as fence action. Node a's guest is killed under load: b suspects it after
the heart-beat timeout, fences a through the lab fence device (confirmed: a is off), persists
the bumped epoch, promotes and its ledger workload serves. The killed node is booted again
afterwards by the healthy_lab fixture."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from hsp_rdma.lab import Lab, fence_agent
from hsp_rdma.tools.drills.lab_runner import LabRunner
from hsp_rdma.tools.drills.runner import judge
from hsp_rdma.tools.drills.scenario import find_scenario, load_scenario
from hsp_rdma.tools.guest import GuestRun
from hsp_rdma.tools.lab_config import write_node_configs

pytestmark = pytest.mark.lab
TIMEOUT_MS = 1000


def wait_for(runs, pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, (what, [r.events[-4:] for r in runs])
        for r in runs:
            r.job.poll()
        time.sleep(0.05)


def notes(run: GuestRun, what: str) -> list[dict]:
    return [e for e in run.of("failover") if e.get("what") == what]


def test_killed_active_is_fenced_and_the_standby_serves(healthy_lab: Lab) -> None:
    lab = healthy_lab
    tag = f"/tmp/failover-{time.time_ns()}"
    # this test's own state directories (a guest keeps what it wrote under the lab's
    # directory while it runs: a persisted epoch of an earlier run would be taken up)
    paths = write_node_configs(
        lab.info(), Path(lab.dir) / Path(tag).name, pmem_size="4 MiB",
        timeouts={"heartbeat_interval": 100, "heartbeat_timeout": TIMEOUT_MS,
                  "connect": 90000, "commit": 10000},
        disks=[{"name": "journal", "path": f"{tag}-journal.img", "size": "4 MiB"}],
        # the sh agent, as the drills use it (the Python one is the GSO lab tests')
        fence={"action": fence_agent.SH_COMMAND, "timeout": 60000})
    scenario = str(find_scenario("kill-active"))
    runs = {}
    for node in ("a", "b"):
        lab.exec(node, ["mkdir", "-p", tag], timeout=30, check=True)
        run = runs[node] = GuestRun(node)
        run.job = lab.spawn(node, [sys.executable, "-m", "hsp_rdma.tools.drills.drill_node",
                                   str(paths[node]), scenario, "-", tag],
                            timeout=240, on_stdout=run.feed)
    a, b = runs["a"], runs["b"]
    wait_for((a, b), lambda: a.of("serving") and b.of("started"), 150, "the pair serving")
    time.sleep(3)  # under load
    lab.fault("a", "kill")
    wait_for((b,), lambda: b.of("serving"), 90, "b serving after the failover")
    whats = [e["what"] for e in b.of("failover")]
    for w in ("suspected", "fencing", "fence_result", "persisted", "active"):
        assert w in whats, whats
    assert whats.index("suspected") < whats.index("fencing") < whats.index("persisted") \
        < whats.index("active"), whats
    (fence,) = notes(b, "fence_result")
    assert fence["ok"] and "off a" in fence["detail"], fence
    assert not lab.node_alive("a")  # fenced: powered off by the lab's fence device
    (active,) = notes(b, "active")
    assert active["epoch"] == 3 and notes(b, "persisted")[0]["epoch"] == 3
    (serving,) = b.of("serving")
    assert serving["epoch"] == 3 and serving["last_id"] > 0  # the ledger a left, recovered
    time.sleep(2)
    lab.exec("b", ["touch", f"{tag}/stop"], timeout=30, check=True)
    res = b.job.wait(60)
    assert res.rc == 0, res.stderr
    (final,) = b.of("final")
    assert final["acked"] > 0 and not final["workload_error"], final
    fo = final["status"]["failover"]
    assert fo["state"] == "ACTIVE_ALONE" and fo["epoch"] == 3 and final["status"]["role"] == \
        "active"


def test_pause_active_drill_runs_in_the_lab(healthy_lab: Lab) -> None:
    """hsp-failover-test's lab runner on the session lab: the active's guest paused past
    the timeout, fenced (powered off) and the standby serves; every acknowledged transfer
    is in the survivor's ledger and journal."""
    runner = LabRunner(healthy_lab.status()["rdma"], healthy_lab.lab_id)
    scenario = load_scenario(find_scenario("pause-active"))
    result = runner.run(scenario)
    runner.close()  # the session's lab: not booted by the runner, left up
    assert healthy_lab.running()
    assert judge(scenario, result) == [], result
    assert result.failover and result.lost == 0 and not result.two_actives
    assert result.acknowledged > 100 and result.detect_ms > 800, result


@pytest.mark.parametrize("drill", ["pull-fabric-10s", "corrupt-and-audit", "kill-standby-rejoin",
                                   "kill-standby-during-gso", "kill-active-during-resync",
                                   "kill-active-rejoin", "kill-active", "gso-under-load"])
def test_shipped_drills_run_in_the_lab(healthy_lab: Lab, drill: str) -> None:
    """pull-fabric-10s: the only fabric of the active pulled for 10 s under load: the active
    outdates the standby at the lab's fence device and serves alone (dirty bitmaps), the
    standby's own fence is refused, the channels come back, a resync sends what changed;
    nobody promotes. corrupt-and-audit: a standby page and block damaged on purpose, the
    audit repairs exactly those two. kill-standby-rejoin: the standby's guest killed, booted
    again; its node rejoins with a full resync. kill-standby-during-gso: the standby's guest
    killed during a GSO's copy: abandoned, the active thaws and acknowledges again (judged by
    soft_runner.gso_problems). kill-active-during-resync: the active's guest killed while it
    resyncs the standby (Inconsistent, so it does not promote), booted again: its node finds
    its P.mem and journal on its persistent storage, serves again in its own epoch and
    resyncs the standby from its persisted bitmap. kill-active-rejoin: the standby fences the
    killed active and promotes; the old active, booted again, follows the newer epoch and is
    resynced in full. kill-active: the standby fences the killed active and serves.
    gso-under-load: a planned switch-over under load; the standby resumes from the copied
    image and serves, the old active follows it as its replica. All: every acknowledged
    transfer on the survivor."""
    runner = LabRunner(healthy_lab.status()["rdma"], healthy_lab.lab_id)
    scenario = load_scenario(find_scenario(drill))
    result = runner.run(scenario)
    runner.close()
    assert judge(scenario, result) == [], result
    assert result.lost == 0 and not result.two_actives, result
    # b became the active: by a failover, or by the planned switch-over
    assert result.failover == (drill in ("kill-active-rejoin", "kill-active",
                                         "gso-under-load")), result
    # The workload kept acknowledging (liveness; lost == 0 and the judge are the correctness
    # checks). Not a rate: an `applied` commit is a round trip through two 1-vCPU TCG guests,
    # so the count follows the host's speed. Seen on 2-CPU hosts: corrupt-and-audit 70 (one
    # ack per 81 ms), then 47 on both kinds in rehearsal 10 (133-151 ms per ack; 69-125 in
    # eight runs right after on the same host), gso-under-load 97 (its 2.6 s blackout); all
    # with 0 lost. A workload that stopped acknowledges a handful at most.
    assert result.acknowledged > 20, result
    if drill == "pull-fabric-10s":
        assert result.resync and 0 < result.resync_bytes < 8 << 20, result
    elif drill in ("kill-standby-rejoin", "kill-active-rejoin"):  # a restarted node: in full
        assert result.resync and result.resync_bytes >= 24 << 20, result
    elif drill == "kill-active-during-resync":  # from the persisted extents (1 MiB each)
        assert result.resync and result.resync_bytes >= 1 << 20, result
    elif drill == "corrupt-and-audit":
        assert result.audit_repairs == 2, result
