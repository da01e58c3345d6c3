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

from hsp_rdma.errors import LabTimeout
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


# A scenario that fails runs once more, and the first failure is kept in the results
# (``retried``) and printed: on siw in a loaded TCG guest a new connection sometimes breaks as
# it comes up (two CI rehearsals in a row: 'the peer disconnected as the connection came up'
# in rdma_write, a first send completing in error 0x21 in disconnect_flush), which says
# nothing of the scenario's semantics. A scenario that fails twice fails.


@pytest.fixture(scope="module")
def scenario_results(lab: Lab) -> dict:
    """Both sides' per-scenario reports. A side that hangs is ended after its deadline with
    every thread's stack printed (faulthandler), and what it reported until then still counts:
    each scenario passes or fails on its own."""
    out = _run_scenarios(lab, ())
    again = sorted({key[1] for key, r in out.items()
                    if isinstance(key, tuple) and not r.get("ok")}
                   | {name for name in SCENARIOS for side in ("server", "client")
                      if (side, name) not in out})
    if again:
        second = _run_scenarios(lab, again)
        out["retried"] = {name: [out.get((s, name), {}).get("detail") for s in
                                 ("server", "client")] for name in again}
        for name in again:
            for side in ("server", "client"):
                out[(side, name)] = second.get((side, name), out.get((side, name)))
        print(f"scenarios run again after a failure: {again}: {out['retried']}")
    return out


def _run_scenarios(lab: Lab, only) -> dict:
    extra = ("--only", ",".join(only)) if only else ()
    server = lab.spawn("a", _argv(lab, "a", "scenarios.py", "server", "--dump-after", "170",
                                  *extra), timeout=300, cwd=str(ROOT))
    time.sleep(0.5)
    client = lab.spawn("b", _argv(lab, "b", "scenarios.py", "client", "--dump-after", "170",
                                  *extra), timeout=300, cwd=str(ROOT))
    out: dict = {"rdma": lab.info()["rdma"], "stderr": {}, "hung": {}}
    for node, job in (("b", client), ("a", server)):
        try:
            res = job.wait(180)
            stdout, stderr = res.stdout, res.stderr
        except LabTimeout as exc:
            stdout, stderr = job.output()
            out["hung"][node] = str(exc)
        out["stderr"][node] = stderr[-4000:]
        for r in _lines(stdout):
            out[(r["side"], r["scenario"])] = r
    return out


@pytest.mark.parametrize("name", SCENARIOS)
def test_via_semantics(scenario_results: dict, name: str) -> None:
    for side in ("server", "client"):
        r = scenario_results.get((side, name))
        assert r is not None, (f"{side} never reported '{name}' (crashed or hung?): "
                               f"{scenario_results['hung']} {scenario_results['stderr']}")
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


def _event(job, want: str, timeout_s: float) -> dict | None:
    """The first JSON line with event WANT the job prints within TIMEOUT_S (None if not)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ended = job.poll() is not None  # (pumps the output too)
        for r in _lines(job.output()[0]):
            if r.get("event") == want:
                return r
        if ended or time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def test_peer_killed_mid_transfer(healthy_lab: Lab) -> None:
    """Node a (the receiver) loses power while b streams sends into it: b's send completes
    in error, the error callback fires, SendWait(INFINITE) returns instead of hanging.

    How long that takes is the transport's dead-peer time: on RoCE (rxe) the RC ACK timeout
    times the retry count (0.54 s x 7 tries, set by the provider); on iWARP (siw) TCP's
    retransmission limit, which the test lowers on node b (tcp_retries2 = 5, about 13 s
    instead of Linux's default of about 15 minutes: a production iWARP HA pair sets it too)."""
    lab = healthy_lab
    iwarp = lab.info()["rdma"] == "siw"
    if iwarp:
        lab.exec("b", ["sh", "-c", "echo 5 > /proc/sys/net/ipv4/tcp_retries2"], timeout=30)
    sink = lab.spawn("a", _argv(lab, "a", "scenarios.py", "sink"), timeout=200, cwd=str(ROOT))
    time.sleep(0.5)
    stream = lab.spawn("b", _argv(lab, "b", "scenarios.py", "stream", "--seconds", "150"),
                       timeout=200, cwd=str(ROOT))
    try:
        assert _event(stream, "streaming", 60) is not None, \
            f"the stream never got going: {stream.output()}"
        lab.fault("a", "kill")
        t_kill = time.monotonic()
        end = _event(stream, "end", 120)
        took = time.monotonic() - t_kill
        assert end is not None, f"no result 120 s after the peer died: {stream.output()}"
        assert end["error_seen"], f"the stream ended without an error completion: {end}"
        assert end["callbacks"], f"the error callback never fired: {end}"
        assert took < 60, f"the error took {took:.1f} s to surface"
        print(f"peer killed: error surfaced {took:.1f} s later after {end['sent']} sends, "
              f"status {end['status']}, callbacks {end['callbacks']}")
        res = stream.wait(60)
        assert res.rc == 0, res.stderr[-2000:]
    finally:
        stream.kill()
        sink.kill()
        if iwarp:
            lab.exec("b", ["sh", "-c", "echo 15 > /proc/sys/net/ipv4/tcp_retries2"], timeout=30)
