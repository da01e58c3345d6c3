"""hsp-failover-test --provider soft on this host: two node processes over the soft VIA
provider, each with its failover engine, the host fence agent. kill-active and pause-active
run for real: the standby suspects after the heart-beat timeout, fences (the old active's
process is killed), persists the bumped epoch, promotes and serves the ledger; every
transfer the driver saw acknowledged is in the survivor's ledger and journal. Drills that
need resync or audit are not run and say so (exit 69)."""

from __future__ import annotations

import json
import subprocess
import sys

from hsp_rdma.tools.drills.soft_runner import TIMEOUTS

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


def test_drills_that_need_resync_or_audit_say_so_and_exit_69() -> None:
    res = subprocess.run([*CLI, "--provider", "soft", "corrupt-and-audit", "pull-fabric-10s"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 69, (res.stdout, res.stderr)
    assert "corrupt-and-audit not run" in res.stderr and "pull-fabric-10s not run" in res.stderr
    assert "not built yet" in res.stderr and "Traceback" not in res.stderr
