"""hsp-failover-test --provider soft on this host: two node processes over the soft VIA
provider, each with its failover engine, the host fence agent. kill-active and pause-active
run for real: the standby suspects after the heart-beat timeout, fences (the old active's
process is killed), persists the bumped epoch, promotes and serves the ledger; every
transfer the driver saw acknowledged is in the survivor's ledger and journal. Drills with a
step a runner cannot do (netem over soft) are not run and say so (exit 69).

Then the runners' step logic without node processes (runner.StepDriver with fake nodes):
which steps run where, which event ends a ``wait until``, where corrupt and audit commands
go, and the result fields taken from the nodes' events (resync, resync_bytes,
audit_repairs).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hsp_rdma.tools.drills import lab_runner
from hsp_rdma.tools.drills.acklog import AckLog
from hsp_rdma.tools.drills.runner import (
    UNTIL_EVENT,
    StepDriver,
    command_file,
    event_results,
    judge,
    until_event,
)
from hsp_rdma.tools.drills.scenario import load_scenario, parse_scenario, shipped
from hsp_rdma.tools.drills.soft_runner import TIMEOUTS, judge_drill, unsupported

CLI = [sys.executable, "-m", "hsp_rdma.cli.failover_test"]


def test_kill_and_pause_the_active_over_soft() -> None:
    res = subprocess.run([*CLI, "--provider", "soft", "kill-active", "pause-active", "--json"],
                         check=False, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, (res.stdout, res.stderr)
    out = json.loads(res.stdout)
    assert out["unavailable"] == []
    rows = {r["name"]: r for r in out["scenarios"]}
    timeout_ms = TIMEOUTS["heartbeat_timeout"]
    for name in ("kill-active", "pause-active"):
        r = rows[name]
        assert r["passed"] and r["failures"] == [], r
        assert r["lost"] == 0 and not r["two_actives"] and r["acknowledged"] > 500, r
        # suspected once the last heart beat is a timeout old: not before the timeout less
        # one interval after the fault; the upper bounds are the scenario's (judged above:
        # 3 s detection, 15 s blackout), as a loaded host can stretch them
        assert r["detect_ms"] > timeout_ms - 2 * TIMEOUTS["heartbeat_interval"], r
        assert r["detect_ms"] <= r["blackout_ms"], r


def test_pull_the_fabric_and_corrupt_then_audit_over_soft() -> None:
    """pull-fabric-10s: the link emulation takes fabric x down for 10 s; the active keeps
    serving, nobody promotes, a resync sends what changed. corrupt-and-audit: one block and
    one page of the standby damaged through drill command files, the audit repairs exactly
    those two."""
    res = subprocess.run([*CLI, "--provider", "soft", "pull-fabric-10s", "corrupt-and-audit",
                          "kill-standby-rejoin", "--json"],
                         check=False, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, (res.stdout, res.stderr)
    rows = {r["name"]: r for r in json.loads(res.stdout)["scenarios"]}
    pull, audit = rows["pull-fabric-10s"], rows["corrupt-and-audit"]
    rejoin = rows["kill-standby-rejoin"]
    # the restarted standby rejoined with a full resync (8 MiB P.mem + 16 MiB journal)
    assert rejoin["passed"] and rejoin["lost"] == 0 and rejoin["resync_bytes"] >= 24 << 20
    for r in (pull, audit):
        assert r["passed"] and r["lost"] == 0 and not r["two_actives"], r
    assert pull["resync_bytes"] > 0 and pull["audit_repairs"] == 0, pull
    # served through the 10 s outage: acks stopped only until the link loss was told
    assert pull["blackout_ms"] is not None and pull["blackout_ms"] < 5000, pull
    assert audit["audit_repairs"] == 2 and audit["resync_bytes"] == 0, audit


def test_kill_the_active_during_resync_and_rejoin_the_old_active_over_soft() -> None:
    """kill-active-during-resync: the active dies while it resyncs the standby
    (Inconsistent): the standby does not promote; the old active, started again with its
    persisted P.mem and disk, serves again in its own epoch, resyncs the standby from its
    persisted bitmap. kill-active-rejoin: the standby fences and promotes; the old active,
    started again, meets the newer epoch, follows it and is resynced in full. Every
    acknowledged transfer is in the survivor's ledger and journal."""
    res = subprocess.run([*CLI, "--provider", "soft", "kill-active-during-resync",
                          "kill-active-rejoin", "--json"],
                         check=False, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, (res.stdout, res.stderr)
    rows = {r["name"]: r for r in json.loads(res.stdout)["scenarios"]}
    for r in rows.values():
        assert r["passed"] and r["failures"] == [], r
        assert r["lost"] == 0 and not r["two_actives"] and r["resync_bytes"] > 0, r
    # the old active, back after the standby took over, is resynced in full as its standby
    assert rows["kill-active-rejoin"]["resync_bytes"] >= 24 << 20


# ---- the runners' step logic, no node processes -----------------------------------------
def _scenario(steps: str, checks: str = "") -> object:
    return parse_scenario(f"""description = "test"
fabrics = ["x", "y"]
[workload]
rate = 10
transaction_size = 256
targets = ["pmem"]
commit = "applied"
{steps}
{checks}""", "test.toml")


def test_which_shipped_drills_run_where() -> None:
    soft = {p.stem: unsupported(load_scenario(p)) for p in shipped()}
    lab = {p.stem: lab_runner.unsupported(load_scenario(p)) for p in shipped()}
    # every shipped drill runs over soft and in the lab
    for name, why in soft.items():
        assert why is None and lab[name] is None, (name, why, lab[name])


def test_netem_runs_in_the_lab_only_fabric_y_anywhere() -> None:
    s = _scenario("""[[steps]]
do = "netem"
node = "active"
fabric = "y"
spec = "delay 5ms"
[[steps]]
do = "heal"
""")
    why = unsupported(s)
    assert "step netem:" in why and "in the lab" in why and "fabric" not in why, why
    assert lab_runner.unsupported(s) is None
    # the soft pair has fabric y too (its own NICs soft:a-y / soft:b-y)
    s = _scenario("""[[steps]]
do = "pull"
node = "active"
fabric = "y"
[[steps]]
do = "wait"
until = "fabric-switched"
""")
    assert unsupported(s) is None and lab_runner.unsupported(s) is None


def _events(*evs: dict) -> SimpleNamespace:
    return SimpleNamespace(events=list(evs))


def _fo(what: str, t: float = 0.0, **kw) -> dict:
    return {"event": "failover", "what": what, "t": t, **kw}


def test_wait_until_events_map_to_the_engine_notes() -> None:
    assert UNTIL_EVENT["resync-started"] == "resync_started"
    assert UNTIL_EVENT["resync-done"] == "resync_done"
    assert UNTIL_EVENT["audit-done"] == "audit_done"
    procs = {"a": _events(_fo("resync_started", side="SyncSource")),
             "b": _events(_fo("suspected"), _fo("fence_result", ok=False))}
    assert until_event(procs, "resync-started")["side"] == "SyncSource"  # either node
    assert until_event(procs, "suspected") is not None
    assert until_event(procs, "fenced") is None  # a failed fence is not "fenced"
    procs["b"].events.append(_fo("fence_result", ok=True))
    assert until_event(procs, "fenced")["ok"] is True
    procs["a"].events.append(_fo("suspected"))  # the active's suspicion is not the standby's
    assert until_event(procs, "suspected", {"a": 0, "b": 3}) is None
    assert until_event(procs, "resync-started", {"a": 1, "b": 0}) is None  # an old one
    procs["b"].events.append({"event": "audit_done", "t": 1.0, "repairs": 2})
    assert until_event(procs, "audit-done")["repairs"] == 2  # drill_node's own form


def test_results_from_events() -> None:
    procs = {"a": _events(_fo("resync_started", 1.0, side="SyncSource"),
                          _fo("resync_done", 2.0, side="SyncSource", bytes=4096, blocks=1),
                          _fo("resync_done", 9.0, side="SyncSource", bytes=8192, blocks=2),
                          _fo("audit_done", 3.0, repairs=2, chunks=64)),
             "b": _events(_fo("resync_done", 2.0, side="SyncTarget", bytes=4096),
                          _fo("audit_done", 3.0, repairs=2, chunks=64))}
    # both sides noted the audit: counted once (the serving node's)
    assert event_results(procs) == (True, 4096 + 8192, 2)
    procs["b"].events += [_fo("active", 5.0), _fo("audit_done", 6.0, repairs=1)]
    procs["a"].events.append(_fo("audit_done", 6.0, repairs=7))  # the old active's, late
    assert event_results(procs) == (True, 4096 + 8192, 3)
    assert event_results({"a": _events(), "b": _events()}) == (False, 0, 0)
    # a resync cut by a link loss and resumed: what the cut one sent counts too
    cut = {"a": _events(_fo("resync_stopped", 1.0, side="SyncSource", bytes=1000),
                        _fo("resync_done", 2.0, side="SyncSource", bytes=500)),
           "b": _events()}
    assert event_results(cut) == (True, 1500, 0)


def test_judge_drill_fills_resync_and_audit_and_judge_checks_them() -> None:
    s = _scenario("""[[steps]]
do = "audit"
""", """[checks]
resync = true
audit_repairs = 2""")
    procs = {"a": _events({"event": "final", "t": 1.0},
                          _fo("resync_done", 1.0, side="SyncSource", bytes=100),
                          _fo("audit_done", 2.0, repairs=2)),
             "b": _events()}
    for p in procs.values():
        p.find = lambda ev, what=None, p=p: next(
            (e for e in p.events if e["event"] == ev and what in (None, e.get("what"))), None)
    r = judge_drill(s, procs, AckLog(()), None, None, None, [])
    assert (r.resync, r.resync_bytes, r.audit_repairs, r.failover) == (True, 100, 2, False)
    assert judge(s, r) == [("no transfer was acknowledged: the workload never ran, so "
                            "nothing was shown")]
    procs["a"].events.pop(1)
    r = judge_drill(s, procs, AckLog(()), None, None, None, [])
    assert "resync did not happen, expected one" in judge(s, r)


class _FakePair:
    """Two fake nodes: a command file is answered at once by a command_done (and an audit
    by an audit_done), as drill_node does."""

    def __init__(self, tmp: Path, ok: bool = True):
        self.dirs = {n: tmp / n for n in ("a", "b")}
        for d in self.dirs.values():
            d.mkdir()
        self.procs = {n: _events() for n in ("a", "b")}
        self.faults: list[tuple[str, str]] = []
        self.healed = 0
        self.ok = ok
        self.t = 100.0

    def put(self, node: str, seq: int, cmd: dict) -> None:
        path = command_file(self.dirs[node], seq, cmd)
        assert json.loads(path.read_text()) == cmd and path.name == f"cmd-{seq}.json"
        assert [p.name for p in self.dirs[node].iterdir() if p.name.startswith(".")] == []
        ev = self.procs[node].events
        ev.append({"event": "command_done", "seq": seq, "ok": self.ok,
                   "detail": "" if self.ok else "index 99999999 past the disk"})
        if cmd["do"] == "audit" and self.ok:
            ev.append(_fo("audit_done", self.t, repairs=1))

    def driver(self) -> StepDriver:
        def wait(pred, timeout, what):
            if not pred():
                raise RuntimeError(f"no {what} in {timeout:g} s")

        return StepDriver(self.procs, lambda n, st: self.faults.append((n, st.do)),
                          lambda: setattr(self, "healed", self.healed + 1), self.put, wait,
                          lambda _s: None, time.monotonic)


def test_corrupt_goes_to_the_first_standby_audit_to_the_serving_node(tmp_path) -> None:
    s = _scenario("""[[steps]]
do = "corrupt"
what = "block"
index = 1024
[[steps]]
do = "corrupt"
what = "page"
index = 3
[[steps]]
do = "pull"
node = "active"
fabric = "x"
[[steps]]
do = "plug"
node = "active"
fabric = "x"
[[steps]]
do = "heal"
[[steps]]
do = "audit"
""")
    pair = _FakePair(tmp_path)
    d = pair.driver()
    d.run(s.steps)
    assert sorted(p.name for p in pair.dirs["b"].iterdir()) == ["cmd-1.json", "cmd-2.json"]
    assert json.loads((pair.dirs["b"] / "cmd-2.json").read_text()) == {
        "do": "corrupt", "what": "page", "index": 3}
    assert [p.name for p in pair.dirs["a"].iterdir()] == ["cmd-1.json"]  # the audit
    assert pair.faults == [("a", "pull"), ("a", "plug")] and pair.healed == 1
    assert d.fault_t is not None  # the pull is the drill's first fault
    # after b promoted, an audit goes to b (its seq counts on from b's own)
    pair.procs["b"].events.append(_fo("active", 1.0))
    d.run(_scenario("""[[steps]]
do = "audit"
""").steps)
    assert json.loads((pair.dirs["b"] / "cmd-3.json").read_text()) == {"do": "audit"}


def test_a_failed_command_or_a_missing_event_stops_the_drill(tmp_path) -> None:
    pair = _FakePair(tmp_path, ok=False)
    with pytest.raises(RuntimeError, match="node b could not corrupt: index 99999999"):
        pair.driver().run(_scenario("""[[steps]]
do = "corrupt"
what = "block"
index = 99999999
""").steps)
    (tmp_path / "2").mkdir()
    pair = _FakePair(tmp_path / "2")
    # a resync_done from before the plug does not end the wait that follows the plug
    pair.procs["a"].events.append(_fo("resync_done", 1.0, side="SyncSource", bytes=1))
    with pytest.raises(RuntimeError, match="no event resync-done"):
        pair.driver().run(_scenario("""[[steps]]
do = "pull"
node = "active"
fabric = "x"
[[steps]]
do = "plug"
node = "active"
fabric = "x"
[[steps]]
do = "wait"
until = "resync-done"
""").steps)
