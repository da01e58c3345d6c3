"""hsp_rdma.via against real verbs in the lab, on rxe and siw: VIA.md's semantics to keep.

The scenarios (tests/via/scenarios.py) run as one server process in node a and one client
process in node b per rdma kind; each scenario is reported here as its own test.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

from hsp_rdma.lab import Lab

pytestmark = pytest.mark.lab
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
_spec = importlib.util.spec_from_file_location("via_scenarios", HERE / "scenarios.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
SCENARIOS: list[str] = _mod.SCENARIOS


def _argv(lab: Lab, node: str, script: str, *args: str) -> list[str]:
    info = lab.info()
    peer = "b" if node == "a" else "a"
    return [sys.executable, str(HERE / script), *args, "--dev", info[node]["x"]["rdma_dev"],
            "--local", info[node]["x"]["ipv4"], "--peer", info[peer]["x"]["ipv4"]]


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def scenario_results(lab: Lab) -> dict:
    server = lab.spawn("a", _argv(lab, "a", "scenarios.py", "server"), timeout=300, cwd=str(ROOT))
    time.sleep(0.5)
    client = lab.exec("b", _argv(lab, "b", "scenarios.py", "client"), timeout=300, cwd=str(ROOT))
    srv = server.wait(60)
    out = {"rdma": lab.info()["rdma"], "stderr": {"a": srv.stderr[-2000:],
                                                  "b": client.stderr[-2000:]}}
    for r in _lines(srv.stdout) + _lines(client.stdout):
        out[(r["side"], r["scenario"])] = r
    return out


@pytest.mark.parametrize("name", SCENARIOS)
def test_via_semantics(scenario_results: dict, name: str) -> None:
    for side in ("server", "client"):
        r = scenario_results.get((side, name))
        assert r is not None, (f"{side} never reported '{name}' (crashed or hung?): "
                               f"{scenario_results['stderr']}")
        assert r["ok"], f"{side} {name} on {scenario_results['rdma']}: {r['detail']}"


def test_random_call_sequences_never_crash(lab: Lab) -> None:
    """Long random sequences of VIPL calls, wrong ones included: only VipError/VerbsError."""
    sinks = lab.spawn("a", _argv(lab, "a", "scenarios.py", "sinks", "--seconds", "60"),
                      timeout=120, cwd=str(ROOT))
    try:
        res = lab.exec("b", _argv(lab, "b", "fuzz.py", "--steps", "2000", "--seed", "7"),
                       timeout=120, cwd=str(ROOT))
    finally:
        sinks.kill()
    assert res.rc == 0, f"fuzz exit {res.rc}: {res.stdout[-1500:]} {res.stderr[-1500:]}"
    summary = _lines(res.stdout)[-1]
    assert summary["ok"] and summary["steps"] == 2000, summary
    assert summary["outcomes"].get("connect:ok", 0) > 0, "no connection was ever made"
