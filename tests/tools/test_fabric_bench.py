"""`hsp-bench fabric` on this host over the soft provider (a short run: 2 pulls), and its
argument errors. The lab runs (rxe, siw) are not in scripts/test: their figures are quoted
from a run by hand (see README)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hsp_rdma.cli import bench
from hsp_rdma.errors import LabError
from hsp_rdma.lab.lab import Lab
from hsp_rdma.tools import fabric_bench
from hsp_rdma.tools.drills.scenario import parse_scenario

CLI = [sys.executable, "-m", "hsp_rdma.cli.bench"]


def test_two_pulls_over_soft_give_one_stop_each_and_a_baseline() -> None:
    out = subprocess.run([*CLI, "fabric", "--provider", "soft", "--pulls", "2", "--json"],
                         check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["bench"] == "fabric" and r["rdma"] == "soft" and r["pulls"] == 2
    # one stop per pull, the carrier each time: x, then y (where the traffic went)
    assert [s["fabric"] for s in r["stops"]] == ["x", "y"], r["stops"]
    assert [s["what"] for s in r["stops"]] == ["x on active", "y on active"], r["stops"]
    for s in r["stops"]:
        assert s["resumed"] and s["stop_ms"] > 0, s
        assert s["switches"], s  # every pull moved the carrier
    assert r["stop_ms"]["min"] <= r["stop_ms"]["p50"] <= r["stop_ms"]["max"]
    # the same run's baseline: gaps outside the pull windows, far more than the pulls
    b = r["baseline"]
    assert b["gaps"] > 100 and 0 < b["p50_ms"] <= b["p99_ms"] <= b["max_ms"], b
    # the method names what was pulled, how, the rate, commit mode and heart-beat interval
    assert r["heartbeat_interval_ms"] > 0 and r["goal_ms"] == 2 * r["heartbeat_interval_ms"]
    assert r["goal_met"] == (r["stop_ms"]["p50"] <= r["goal_ms"])
    assert r["stop_vs_baseline"] == round(r["stop_ms"]["p50"] / b["p50_ms"], 2)
    for words in ("carrier", "200 tx/s", "commit applied", "heart-beat interval",
                  "on the active", "soft"):
        assert words in r["method"], (words, r["method"])
    assert r["lost"] == 0 and not r["failover"], r


def test_the_scenario_pulls_the_carrier_alternately() -> None:
    text = fabric_bench.scenario_text(3, True, 200, "applied")
    s = parse_scenario(text, "fabric.toml")
    pulls = [(st.node, st.fabric) for st in s.steps if st.do == "pull"]
    assert pulls == [("active", "x"), ("standby", "x"), ("active", "y"), ("standby", "y"),
                     ("active", "x"), ("standby", "x")]
    plugs = [(st.node, st.fabric) for st in s.steps if st.do == "plug"]
    assert plugs == pulls
    warm = [st.wait_s for st in s.steps if st.do == "wait"][2::2]
    assert all(w >= 4 for w in warm), warm


def test_baseline_leaves_out_the_pull_windows() -> None:
    class Step:
        def __init__(self, do: str) -> None:
            self.do = do

    # acks every 10 ms from 0 to 3 s, none from 1.0 to 1.5 s (the pull at 1.02 s)
    times = [i * 10 for i in range(301) if not 100 < i < 150]
    timeline = [(0.0, Step("wait")), (1.02, Step("pull")), (1.02, Step("wait")),
                (1.8, Step("plug")), (1.8, Step("wait"))]
    gaps, clock = fabric_bench.baseline_gaps([t * 1_000_000 for t in times], timeline, 3.0)
    assert clock == "driver" and gaps and max(gaps) == pytest.approx(10)


@pytest.mark.parametrize("argv, words", [
    (["--pulls", "0"], "--pulls should be between 1 and 50"),
    (["--pulls", "51"], "--pulls should be between 1 and 50"),
    (["--lab", "ib"], "invalid choice: 'ib'"),
    (["--provider", "soft", "--lab", "siw"], "--lab siw makes no sense with --provider soft"),
])
def test_bad_arguments_exit_64(argv, words, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["fabric", *argv])
    assert exc.value.code == 64
    assert words in capsys.readouterr().err


def test_a_lab_that_cannot_boot_is_one_clear_line(monkeypatch, capsys) -> None:
    def cannot(self, rdma, *a, **kw):
        raise LabError("no guest kernel (stand-in for a lab that cannot boot)")

    monkeypatch.setattr(Lab, "ensure_up", cannot)
    code = bench.main(["fabric", "--lab", "siw", "--lab-id", "fbtest", "--pulls", "1"])
    err = capsys.readouterr().err
    assert code == 69, err
    assert "the siw lab cannot run" in err and "Traceback" not in err, err


def test_each_pull_is_of_the_carrier_the_nodes_last_told() -> None:
    class Node:
        def __init__(self) -> None:
            self.events: list[dict] = []

    procs = {"a": Node(), "b": Node()}
    done: list[tuple[str, str, str]] = []
    moves = iter([("x", "y"), None, ("y", "x")])  # the 2nd pull moved nothing (no spare)

    def fault(node: str, step) -> None:
        done.append((node, step.do, step.fabric))
        if step.do == "pull" and node == "a":
            move = next(moves)
            if move:
                procs["a"].events.append({"event": "fabric", "phase": "switched",
                                          "from": move[0], "to": move[1], "t": len(done)})

    clock = iter(range(1000))
    driver = fabric_bench.CarrierStepDriver(procs, fault, lambda: None, lambda *a: None,
                                            lambda *a: None, lambda s: None,
                                            lambda: float(next(clock)))
    s = parse_scenario(fabric_bench.scenario_text(3, True, 200, "applied"), "f.toml")
    driver.run(s.steps)
    # x (the carrier at the start), then y (where it moved), y again (it did not move), and
    # each plug of the fabric its pull took down
    assert done == [("a", "pull", "x"), ("b", "pull", "x"), ("a", "plug", "x"),
                    ("b", "plug", "x"), ("a", "pull", "y"), ("b", "pull", "y"),
                    ("a", "plug", "y"), ("b", "plug", "y"), ("a", "pull", "y"),
                    ("b", "pull", "y"), ("a", "plug", "y"), ("b", "plug", "y")]
    assert [st.fabric for _, st in driver.timeline if st.do == "pull"] == ["x"] * 2 + ["y"] * 4


def test_baseline_says_where_its_gaps_were() -> None:
    class Step:
        def __init__(self, do: str) -> None:
            self.do = do

    # acks every 10 ms; a 50 ms hiccup 0.5 s after the plug at 1.8 s
    times = [i * 10 for i in range(301) if not 231 <= i <= 234]
    timeline = [(0.0, Step("wait")), (1.0, Step("pull")), (1.0, Step("wait")),
                (1.8, Step("plug")), (1.8, Step("wait"))]
    where: list = []
    gaps, _ = fabric_bench.baseline_gaps([t * 1_000_000 for t in times], timeline, 3.0,
                                         where=where)
    at, after = where[gaps.index(max(gaps))]
    assert max(gaps) == pytest.approx(50) and at == pytest.approx(2.3)
    assert after == pytest.approx(0.5) and where[0][1] is None
