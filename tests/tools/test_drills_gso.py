"""The drill kill-standby-during-gso over the soft provider, end to end: the active starts a
Graceful Switch Over (drill command gso, its own Interface B VI), its ledger workload freezes,
the copy of its P.mem begins (paced to last: a window for the fault), the standby's process is
killed, the GSO is abandoned, the active thaws and acknowledges transfers again; nobody
promotes, nothing acknowledged is lost.

Then, without node processes: the workload's freeze gate, where the runners send the gso
command (and when they ask for a paced copy), which events end a ``wait until gso-*``, what a
drill with a gso step must show (``gso_problems``), and the gso command's bad input.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hsp_rdma.tools.drills import app, lab_runner
from hsp_rdma.tools.drills.acklog import Ack
from hsp_rdma.tools.drills.drill_node import run_command
from hsp_rdma.tools.drills.runner import command_file, judge
from hsp_rdma.tools.drills.scenario import find_scenario, load_scenario, parse_scenario
from hsp_rdma.tools.drills.soft_runner import (
    DRILL_COPY_S,
    GsoStepDriver,
    SoftRunner,
    gso_problems,
    unsupported,
)

CLI = [sys.executable, "-m", "hsp_rdma.cli.failover_test"]
DRILL = "kill-standby-during-gso"


def _gso(events: list[dict], phase: str) -> dict | None:
    return next((e for e in events if e.get("event") == "gso" and e.get("phase") == phase), None)


def test_kill_the_standby_during_a_gso_over_soft(tmp_path, monkeypatch) -> None:
    scenario = load_scenario(find_scenario(DRILL))
    assert unsupported(scenario) is None and lab_runner.unsupported(scenario) is None
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the runner's work directory
    result = SoftRunner(keep=True).run(scenario)
    assert judge(scenario, result) == [], result
    assert result.lost == 0 and not result.two_actives and not result.failover, result
    assert result.acknowledged > 500, result
    (work,) = tmp_path.glob(f"hsp-drill-{DRILL}-*")
    a = [json.loads(line) for line in (work / "a.events").read_text().splitlines()]
    b = [json.loads(line) for line in (work / "b.events").read_text().splitlines()]
    # both nodes brought up the GSO's own VI; the active started one, froze, began the copy
    assert _gso(a, "connected")["serving"] and not _gso(b, "connected")["serving"]
    req, frozen, copy = _gso(a, "requested"), _gso(a, "frozen"), _gso(a, "copy_started")
    assert req["copy_s"] == DRILL_COPY_S and copy["image_bytes"] > 8 << 20  # P.mem + blob
    assert req["t"] <= frozen["t"] <= copy["t"]
    assert _gso(b, "standby_stopped") is not None  # the standby stopped for the copy
    # the standby died mid-copy: abandoned, thawed, the workload acknowledged again after
    done, thawed = _gso(a, "done"), _gso(a, "thawed")
    assert done["outcome"] == "aborted" and done["role"] == "active" and done["serving"], done
    assert done["copy_ms"] < DRILL_COPY_S * 1000, done  # it never finished its copy
    assert thawed["t"] >= copy["t"] and thawed["acked"] == frozen["acked"], (frozen, thawed)
    # the GSO's link lost before the marker: the active tries the other fabric first (at most
    # RELINK_S), where no standby answers, then aborts as on any loss (unless the failure
    # detector's suspicion ended the GSO before the engine saw its VI break)
    relink = _gso(a, "relink")
    if relink is not None:
        assert "no other fabric answered" in relink["detail"], relink
        assert done["relinks"] == [] and thawed["t"] - relink["t"] < 1.0, (relink, thawed)
    final = next(e for e in a if e["event"] == "final")
    assert final["acked"] > thawed["acked"] + 100, (thawed, final)
    assert final["gso"]["state"] == "NORMAL_ACTIVE" and not final["gso"]["frozen"], final
    # nobody promoted, nobody switched
    assert not any(e.get("what") == "active" for e in b if e["event"] == "failover")
    assert _gso(a, "switched") is None and _gso(b, "switched") is None


COMPLETE = """description = "A GSO under load completes: the standby takes over from the image"
[workload]
rate = 200
transaction_size = 256
targets = ["pmem", "disk"]
commit = "applied"
[[steps]]
do = "wait"
for = "3s"
[[steps]]
do = "gso"
[[steps]]
do = "wait"
until = "gso-done"
timeout = "30s"
[[steps]]
do = "wait"
for = "3s"
[checks]
lost = 0
two_actives = false
"""


def test_a_completed_gso_changes_the_roles_over_soft(tmp_path, monkeypatch) -> None:
    """No fault: the copy (unpaced) completes, the standby resumes from the image (its P.mem
    equal to the replicated one), both failover engines are told SwitchedOver, the new active
    serves the ledger, the old one stops and becomes its replica; nothing acknowledged is
    lost."""
    path = tmp_path / "gso-complete.toml"
    path.write_text(COMPLETE)
    scenario = load_scenario(path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = SoftRunner(keep=True).run(scenario)
    assert result.lost == 0 and not result.two_actives and result.failover, result
    (work,) = tmp_path.glob("hsp-drill-gso-complete-*")
    a = [json.loads(line) for line in (work / "a.events").read_text().splitlines()]
    b = [json.loads(line) for line in (work / "b.events").read_text().splitlines()]
    assert _gso(a, "requested")["copy_s"] == 0
    done_a, done_b = _gso(a, "done"), _gso(b, "done")
    assert done_a["outcome"] == done_b["outcome"] == "completed", (done_a, done_b)
    assert 0 < done_a["blackout_ms"] < 5000, done_a  # freeze -> "done" (b resumed before)
    took, gave = _gso(b, "switched"), _gso(a, "switched")
    assert took["active"] and took["pages_differing"] == 0, took  # image == replica
    assert not gave["active"], gave
    assert any(e["event"] == "serving" and e["t"] >= took["t"] for e in b), b
    final_b = next(e for e in b if e["event"] == "final")
    assert final_b["gso"]["state"] == "NORMAL_ACTIVE", final_b
    # the old active, told it is the standby when its marker went out, follows the new
    # active's epoch as its replica: b's commits are acknowledged (applied there), nobody
    # refuses or suspects anyone after the switch
    assert final_b["acked"] > 100, final_b
    assert not any(e.get("what") in ("refused", "suspected", "stopped")
                   for p in (a, b) for e in p if e["event"] == "failover"
                   and e["t"] >= took["t"]), (a, b)
    assert any(e["event"] == "gso" and e["phase"] == "handed_over" for e in a), a
    assert result.problems == (), result
    final_a = next(e for e in a if e["event"] == "final")
    assert final_a["acked"] == gave["acked"] == _gso(a, "frozen")["acked"], (gave, final_a)
    assert final_a["gso"]["state"] == "NORMAL_STANDBY", final_a
    assert not any("never switched" in p or "after it switched" in p
                   for p in result.problems), result


def test_the_cli_runs_it_and_lists_it() -> None:
    res = subprocess.run([*CLI, "--list"], check=False, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and DRILL in res.stdout, res


# ---- the freeze gate ------------------------------------------------------------------------
def test_the_gate_freezes_after_the_transfer_in_flight_and_thaws() -> None:
    gate = app.Gate()
    stop = threading.Event()
    assert gate.enter(stop.is_set)  # a transfer in flight
    froze = threading.Event()
    t = threading.Thread(target=lambda: (gate.freeze(), froze.set()))
    t.start()
    assert not froze.wait(0.2)  # freeze waits for it
    gate.leave()
    assert froze.wait(2) and gate.frozen
    entered = threading.Event()
    t2 = threading.Thread(target=lambda: gate.enter(stop.is_set) and entered.set())
    t2.start()
    assert not entered.wait(0.2)  # frozen: the next transfer waits
    gate.thaw()
    assert entered.wait(2)
    gate.leave()
    gate.freeze()  # no transfer in flight: at once
    stop.set()
    assert gate.enter(stop.is_set) is False  # stopping while frozen ends the wait
    t.join()
    t2.join()


def test_run_passes_the_gate_before_each_transfer() -> None:
    seen: list[int] = []

    class Wl:
        n = 0

        def random_transfer(self, _rng):
            Wl.n += 1
            return SimpleNamespace(id=Wl.n)

        def apply(self, _t):
            pass

    gate = app.Gate()
    gate.freeze()
    stop = threading.Event()
    t = threading.Thread(target=app.run, args=(Wl(), 1000, seen.append, stop.is_set),
                         kwargs={"gate": gate})
    t.start()
    time.sleep(0.2)
    assert seen == []  # frozen from the start
    gate.thaw()
    time.sleep(0.1)
    gate.freeze()
    n = len(seen)
    time.sleep(0.1)
    assert n > 0 and len(seen) == n  # nothing acknowledged while frozen
    stop.set()
    t.join(2)
    assert not t.is_alive()


# ---- the runners' gso step, no node processes -------------------------------------------------
def _scenario(steps: str) -> object:
    return parse_scenario(f"""description = "test"
[workload]
rate = 10
transaction_size = 256
targets = ["pmem"]
commit = "applied"
{steps}""", "test.toml")


class _FakePair:
    def __init__(self, tmp: Path):
        self.dirs = {n: tmp / n for n in ("a", "b")}
        for d in self.dirs.values():
            d.mkdir()
        self.procs = {n: SimpleNamespace(events=[]) for n in ("a", "b")}

    def put(self, node: str, seq: int, cmd: dict) -> None:
        command_file(self.dirs[node], seq, cmd)
        ev = self.procs[node].events
        ev.append({"event": "command_done", "seq": seq, "ok": True, "detail": "started"})
        ev.append({"event": "gso", "phase": "copy_started", "t": 1.0})

    def driver(self) -> GsoStepDriver:
        def wait(pred, timeout, what):
            if not pred():
                raise RuntimeError(f"no {what} in {timeout:g} s")

        return GsoStepDriver(self.procs, lambda n, st: None, lambda: None, self.put, wait,
                             lambda _s: None, time.monotonic)


def test_the_gso_command_goes_to_the_serving_node(tmp_path) -> None:
    pair = _FakePair(tmp_path)
    pair.driver().run(_scenario("""[[steps]]
do = "gso"
[[steps]]
do = "wait"
until = "gso-copy-started"
[[steps]]
do = "gso"
""").steps)
    # a copy window when a fault waits for the copy; none for a plain switch-over
    assert json.loads((pair.dirs["a"] / "cmd-1.json").read_text()) == {
        "do": "gso", "copy_s": DRILL_COPY_S}
    assert json.loads((pair.dirs["a"] / "cmd-2.json").read_text()) == {"do": "gso"}
    assert list(pair.dirs["b"].iterdir()) == []
    pair.procs["b"].events.append({"event": "failover", "what": "active", "t": 2.0})
    pair.driver().run(_scenario("""[[steps]]
do = "gso"
""").steps)
    assert (pair.dirs["b"] / "cmd-1.json").exists()  # b serves now


def test_a_gso_wait_takes_only_a_later_event(tmp_path) -> None:
    pair = _FakePair(tmp_path)
    pair.procs["a"].events.append({"event": "gso", "phase": "done", "t": 0.5})
    with pytest.raises(RuntimeError, match="no event gso-done"):
        pair.driver().run(_scenario("""[[steps]]
do = "gso"
[[steps]]
do = "wait"
until = "gso-done"
""").steps)


def _ev(phase: str, t: float, **kw) -> dict:
    return {"event": "gso", "phase": phase, "t": t, **kw}


def test_what_a_gso_drill_must_show() -> None:
    s = _scenario('[[steps]]\ndo = "gso"')

    def procs(*a: dict) -> dict:
        return {"a": SimpleNamespace(events=list(a)), "b": SimpleNamespace(events=[])}

    acks = [Ack(1, int(1e9), "a"), Ack(2, int(5e9), "a")]
    ok = procs(_ev("requested", 1), _ev("frozen", 2), _ev("done", 3, outcome="aborted"),
               _ev("thawed", 3))
    assert gso_problems(s, ok, acks) == []
    assert gso_problems(_scenario('[[steps]]\ndo = "wait"\nfor = "1s"'), procs(), []) == []
    assert "no GSO was started" in gso_problems(s, procs(), acks)[0]
    assert "never ended" in gso_problems(s, procs(_ev("requested", 1)), acks)[0]
    frozen = procs(_ev("requested", 1), _ev("frozen", 2),
                   _ev("done", 3, outcome="aborted", reason="LINK_LOST"))
    assert "never thawed" in gso_problems(s, frozen, acks)[0]
    # ended on the ready timer before the freeze: no switch-over, said so (CI, stop 19)
    early = procs(_ev("requested", 1), _ev("done", 6, outcome="aborted", reason="READY_TIMEOUT"))
    assert gso_problems(s, early, acks) == [(
        "the active's GSO ended aborted (READY_TIMEOUT) before its application was frozen: "
        "no switch-over took place")]
    late = procs(_ev("requested", 1), _ev("frozen", 2), _ev("done", 6, outcome="aborted"),
                 _ev("thawed", 6))
    assert "acknowledged no transfer after" in gso_problems(s, late, acks)[0]
    # completed: b switched to active and acknowledged after, a switched to standby and did not
    done = procs(_ev("requested", 1), _ev("done", 3, outcome="completed"),
                 _ev("switched", 3, active=False))
    done["b"].events.append(_ev("switched", 2.9, active=True))
    moved = [Ack(1, int(1e9), "a"), Ack(2, int(5e9), "b")]
    assert gso_problems(s, done, moved) == []
    assert "acknowledged transfers after it switched" in gso_problems(
        s, done, [*moved, Ack(3, int(6e9), "a")])[0]
    done["b"].events.append({"event": "failover", "what": "refused", "t": 4.0,
                             "channel": "health", "epoch": 1})
    assert "(node b) refused its frames (health, epoch 1)" in gso_problems(s, done, moved)[0]
    done["b"].events[-1] = {"event": "failover", "what": "suspected", "t": 4.0}
    assert "(node b) suspected it" in gso_problems(s, done, moved)[0]
    # a fault step in the drill: a suspicion after the switch may be the drill's own
    faulted = _scenario('[[steps]]\ndo = "gso"\n[[steps]]\ndo = "kill"\nnode = "standby"')
    assert gso_problems(faulted, done, moved) == []
    stuck = procs(_ev("requested", 1), _ev("done", 3, outcome="completed"))
    assert gso_problems(s, stuck, moved) == [
        "the GSO completed but node b never switched to active",
        "the GSO completed but node a never switched to standby"]


def test_the_gso_command_says_what_is_wrong() -> None:
    node = SimpleNamespace()
    ok, why = run_command(node, {"do": "gso"})
    assert not ok and "runs no GSO engine" in why
    side = SimpleNamespace(request=lambda copy_s: f"started {copy_s}")
    for bad in (-1, "10", True, 1e9):
        ok, why = run_command(node, {"do": "gso", "copy_s": bad}, side)
        assert not ok and "copy_s" in why, (bad, why)
    assert run_command(node, {"do": "gso", "copy_s": 2}, side) == (True, "started 2.0")
    ok, why = run_command(node, {"do": "dance"}, side)
    assert not ok and "'gso'" in why


def test_fabric_x_pulled_during_the_copy_continues_the_gso_on_y_over_soft(
        tmp_path, monkeypatch) -> None:
    """pull-x-during-gso: fabric x of the active (the GSO's link and Interface A's carrier) is
    pulled while the paced copy runs. Both engines connect the GSO's link again on y (the
    machine never sees the loss), the active copies the image again from its first byte on
    the new VI, the marker goes last there: the GSO completes, the roles change, nothing
    acknowledged is lost, never two actives, and the reports say the link moved x -> y."""
    name = "pull-x-during-gso"
    scenario = load_scenario(find_scenario(name))
    assert unsupported(scenario) is None and lab_runner.unsupported(scenario) is None
    assert scenario.checks.fabric_switch is True
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = SoftRunner(keep=True).run(scenario)
    assert judge(scenario, result) == [], result
    assert result.lost == 0 and not result.two_actives and result.acknowledged > 500, result
    (work,) = tmp_path.glob(f"hsp-drill-{name}-*")
    a = [json.loads(line) for line in (work / "a.events").read_text().splitlines()]
    b = [json.loads(line) for line in (work / "b.events").read_text().splitlines()]
    assert _gso(a, "copy_started")["fabric"] == "x"
    done_a, done_b = _gso(a, "done"), _gso(b, "done")
    assert done_a["outcome"] == done_b["outcome"] == "completed", (done_a, done_b)
    for done in (done_a, done_b):
        assert done["relinks"] == ["x->y"] and done["fabric"] == "y", done
        assert 0 < done["relink_ms"] < 6000, done
    relink = _gso(a, "relink")
    assert "connected again on fabric y" in relink["detail"], relink
    assert _gso(b, "switched")["active"] and not _gso(a, "switched")["active"]
    assert _gso(a, "thawed") is None  # never resumed: the standby took over
