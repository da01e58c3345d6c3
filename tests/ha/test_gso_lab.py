"""Graceful Switch Over in the lab, on rxe and siw: the acceptance cases of Interface B."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from hsp_rdma.lab import Lab
from hsp_rdma.tools.gso_pair import LIVE, finish_pair, run_pair, start_pair, stop_pair
from hsp_rdma.tools.guest import GuestRun

pytestmark = pytest.mark.lab
MiB = 1 << 20


@pytest.fixture(autouse=True)
def _no_pair_left_running():
    """A test that fails midway leaves its pair running; end it before the next test (whose
    listener needs the same rdma_cm port on node a)."""
    yield
    stop_pair(*LIVE)


def only(run: GuestRun, kind: str) -> dict:
    evs = run.of(kind)
    assert len(evs) == 1, f"node {run.name}: expected one '{kind}' event, got {run.events}"
    return evs[0]


def wait_event(runs: list[GuestRun], kind: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in runs:
            r.job.poll()
            if r.of(kind):
                return r.of(kind)[0]
        time.sleep(0.05)
    raise AssertionError(f"no '{kind}' event in {timeout} s: {[r.events for r in runs]}; "
                         f"stderr: {[r.job.output()[1][-600:] for r in runs]}")


def pmem_crc(run: GuestRun, role: str, epoch: int) -> int:
    (ev,) = [e for e in run.of("pmem") if e["role"] == role and e["epoch"] == epoch]
    return ev["pmem_crc"]


def assert_thawed_and_serving(b: GuestRun) -> None:
    """The active (b) stopped for the copy, the GSO ended without a switch, and the
    application runs again: thawed at the counter it froze at, then more transactions."""
    (g,) = b.of("gso")
    assert g["outcome"] == "aborted" and g["serving"], f"the active must serve: {b.events}"
    (frozen,), (thawed,), (serving,) = b.of("frozen"), b.of("thawed"), b.of("serving")
    assert thawed["counter"] == frozen["counter"] > 0
    assert serving["counter"] == frozen["counter"] + 1000, "the thawed application serves"
    assert only(b, "end")["serving"]


def test_gso_of_16mib_and_switch_back_continue_the_application(healthy_lab: Lab) -> None:
    res = run_pair(healthy_lab, 16 * MiB, runs=2)
    a, b = res.standby, res.active
    assert res.rc == {"a": 0, "b": 0}, res.stderr
    # GSO 1: b -> a. Every byte of P.mem arrived (same CRC) and the counter continues.
    frozen_b, resumed_a = b.of("frozen")[0], a.of("resumed")[0]
    assert pmem_crc(a, "standby", 1) == pmem_crc(b, "active", 1)
    assert resumed_a["counter"] == resumed_a["blob_counter"] == frozen_b["counter"] > 0
    # GSO 2 (switch-back): a ran more transactions, then handed them back to b.
    frozen_a, resumed_b = a.of("frozen")[0], b.of("resumed")[0]
    assert frozen_a["counter"] == frozen_b["counter"] + 1000
    assert resumed_b["counter"] == frozen_a["counter"]
    assert pmem_crc(b, "standby", 2) == pmem_crc(a, "active", 2)
    assert [e["outcome"] for e in b.of("gso")] == ["completed", "completed"]
    assert only(b, "end")["serving"] and not only(a, "end")["serving"]
    # "done" leaves the standby after it resumed: the blackout holds copy, verify and resume
    for active, standby in ((b, a), (a, b)):
        g = next(e for e in active.of("gso") if e["role"] == "active")
        s = next(e for e in standby.of("gso") if e["role"] == "standby")
        ph = g["phases_ms"]
        assert set(ph) == {"freeze", "copy", "marker", "await_done"}
        assert g["blackout_s"] * 1000 >= ph["copy"] + s["verify_s"] * 1000 + s["resume_s"] * 1000
    # the header went right behind the last data writes, not after their completions
    assert max(e["header_behind"] for e in a.of("gso") + b.of("gso") if e["role"] == "active") > 0


PULL = ("--mode", "pull")


def test_pull_gso_and_switch_back_continue_the_application(healthy_lab: Lab) -> None:
    """RDMA Read pull: the active seals its image and says so; the standby reads it (one
    segment per read), verifies it, resumes, and the application continues there; then the
    same back."""
    res = run_pair(healthy_lab, 4 * MiB, runs=2, extra_a=PULL, extra_b=PULL)
    a, b = res.standby, res.active
    assert res.rc == {"a": 0, "b": 0}, res.stderr
    assert [e["mode"] for e in a.of("gso") + b.of("gso")] == ["pull"] * 4
    frozen_b, resumed_a = b.of("frozen")[0], a.of("resumed")[0]
    assert pmem_crc(a, "standby", 1) == pmem_crc(b, "active", 1)
    assert resumed_a["counter"] == resumed_a["blob_counter"] == frozen_b["counter"] > 0
    frozen_a, resumed_b = a.of("frozen")[0], b.of("resumed")[0]
    assert resumed_b["counter"] == frozen_a["counter"] == frozen_b["counter"] + 1000
    assert pmem_crc(b, "standby", 2) == pmem_crc(a, "active", 2)
    assert only(b, "end")["serving"] and not only(a, "end")["serving"]
    g = next(e for e in b.of("gso") if e["role"] == "active")
    s = next(e for e in a.of("gso") if e["role"] == "standby")
    assert set(g["phases_ms"]) == {"seal", "await_done"}
    assert set(s["phases_ms"]) == {"pull", "verify", "resume"}
    # rxe: registered for read at Start-GSO (the link refused reads until the seal); siw
    # serves reads whatever the queue pair says, so it registers at the seal
    kind = healthy_lab.info()["rdma"]
    assert {e["read_registered"] for e in b.of("gso") + a.of("gso") if e["role"] == "active"} \
        == {"seal" if kind == "siw" else "start-gso"}
    # (a pull reads in the profile's read_chunk_size: on rxe 64 KiB, though it writes 1 MiB)
    assert s["writes"] == -(-s["image_bytes"] // only(a, "connected")["read_chunk"]), "reads"
    # the standby's pull, verify and resume all lie inside the active's blackout
    assert g["phases_ms"]["await_done"] >= sum(s["phases_ms"].values())


def test_digest_mismatch_in_pull_mode_aborts_and_thaws_the_active(healthy_lab: Lab) -> None:
    res = run_pair(healthy_lab, 4 * MiB, runs=1, extra_a=PULL,
                   extra_b=(*PULL, "--inject", "bad-digest"))
    a, b = res.standby, res.active
    assert res.rc == {"a": 0, "b": 0}, res.stderr
    g = only(a, "gso")
    assert g["mode"] == "pull" and g["outcome"] == "aborted" and "digest" in g["reason"].lower()
    assert not a.of("resumed"), "the standby must not resume from an unverified image"
    assert only(b, "gso")["reason"] == "DIGEST_MISMATCH"
    assert_thawed_and_serving(b)


def test_stale_marker_does_not_complete_a_new_gso(healthy_lab: Lab) -> None:
    res = run_pair(healthy_lab, 4 * MiB, runs=1, extra_b=("--inject", "stale-marker"))
    a, b = res.standby, res.active
    g = only(a, "gso")
    assert g["outcome"] == "completed" and g["markers_ignored"] >= 1
    assert pmem_crc(a, "standby", 1) == pmem_crc(b, "active", 1)


def test_the_other_marker_wait_completes_and_still_ignores_a_stale_marker(
        healthy_lab: Lab, tmp_path) -> None:
    """The marker wait the shipped profile does not use (the stale-marker test above runs
    the shipped one). "doorbell": the standby sleeps on its receive queue and looks at the
    marker when the zero-length message after it arrives; a stale marker rings too. A
    polling wait ("sleep_us:N") looks at it every N us. Either way the stale marker is
    ignored and the real one completes the GSO."""
    rdma = healthy_lab.info()["rdma"]
    shipped = (Path(__file__).resolve().parents[2] / "hw-profiles" / f"{rdma}.toml").read_text()
    doorbell = re.search(r'(?m)^marker_poll = "doorbell"$', shipped) is not None
    other, mode = ('"sleep_us:1000"', "sleep") if doorbell else ('"doorbell"', "doorbell")
    (tmp_path / f"{rdma}.toml").write_text(re.sub(r'(?m)^marker_poll = .*$',
                                                  f'marker_poll = {other}', shipped))
    mine = ("--profiles", str(tmp_path))
    res = run_pair(healthy_lab, 4 * MiB, runs=1, extra_a=mine,
                   extra_b=(*mine, "--inject", "stale-marker"))
    a, b = res.standby, res.active
    assert res.rc == {"a": 0, "b": 0}, res.stderr
    assert only(a, "connected")["marker_wait"] == mode
    g = only(a, "gso")
    assert g["outcome"] == "completed" and g["markers_ignored"] >= 1
    assert pmem_crc(a, "standby", 1) == pmem_crc(b, "active", 1)


def test_standby_not_ready_makes_active_abort_and_stay_active(healthy_lab: Lab) -> None:
    res = run_pair(healthy_lab, 1 * MiB, runs=1, extra_a=("--inject", "no-ready"),
                   extra_b=("--ready-timeout", "1"))
    a, b = res.standby, res.active
    assert only(b, "gso")["outcome"] == "aborted" and only(b, "end")["serving"]
    assert not b.of("frozen"), "the active must not stop before the standby is ready"
    assert only(b, "serving")["counter"] == 2000, "the application kept serving"
    assert not a.of("resumed")


def test_digest_mismatch_is_refused_and_the_active_thaws(healthy_lab: Lab) -> None:
    res = run_pair(healthy_lab, 4 * MiB, runs=1, extra_b=("--inject", "bad-digest"))
    a, b = res.standby, res.active
    assert res.rc == {"a": 0, "b": 0}, res.stderr
    g = only(a, "gso")
    assert g["outcome"] == "aborted" and "digest" in g["reason"].lower()
    assert not a.of("resumed"), "the standby must not resume from an unverified image"
    assert only(b, "gso")["reason"] == "DIGEST_MISMATCH"
    assert_thawed_and_serving(b)


def test_link_pulled_mid_copy_thaws_the_active_never_two_actives(healthy_lab: Lab) -> None:
    lab = healthy_lab
    a, b = start_pair(lab, 48 * MiB, runs=1, extra_a=("--gso-timeout", "20"),
                      extra_b=("--copy-timeout", "15"), timeout=180)
    try:
        wait_event([b], "frozen")
        time.sleep(0.3)
        lab.fault("a", "link", "x", "down")
        finish_pair(a, b)
    finally:
        lab.fault("a", "link", "x", "up")
    assert_thawed_and_serving(b)
    assert not a.of("resumed"), "the standby must not resume without the marker"
    assert not any(e.get("serving") for e in a.of("gso") + a.of("end") + a.of("error"))


def test_standby_killed_mid_copy_thaws_the_active(healthy_lab: Lab) -> None:
    lab = healthy_lab
    a, b = start_pair(lab, 48 * MiB, runs=1, extra_b=("--copy-timeout", "15"), timeout=180)
    wait_event([b], "frozen")
    time.sleep(0.3)
    lab.fault("a", "kill")
    res = finish_pair(a, b)
    assert res.rc["a"] == -1  # the node went down with its process
    assert_thawed_and_serving(b)


def test_copy_timeout_fires_while_the_copy_is_stalled(healthy_lab: Lab) -> None:
    """netem loss 100% on the standby's wire: writes stay in flight, no completion comes;
    the active's copy timer still fires, cancels the copy and thaws the application."""
    lab = healthy_lab
    a, b = start_pair(lab, 48 * MiB, runs=1, extra_a=("--gso-timeout", "30"),
                      extra_b=("--copy-timeout", "3"), timeout=180)
    try:
        wait_event([b], "frozen")
        lab.fault("a", "netem", "x", "loss 100%")
        t0 = time.monotonic()
        wait_event([b], "thawed", timeout=60)
        took = time.monotonic() - t0
        finish_pair(a, b)
    finally:
        lab.fault("a", "netem", "x", "clear")
    assert_thawed_and_serving(b)
    assert "COPY_TIMEOUT" in only(b, "gso")["reason"] or took < 10, b.events
    assert not a.of("resumed")


# the Python fence agent here (the failover tests and drills use the sh one)
FENCE_AGENT = f"{sys.executable} -m hsp_rdma.lab.fence_agent"
IN_DOUBT_ARGS = ("--done-timeout", "2", "--fence-timeout", "5")


def test_link_pulled_after_the_marker_fences_the_standby_then_the_active_resumes(
        healthy_lab: Lab) -> None:
    """The point of no return is the marker: after it, the active resumes only once the
    lab's fence device has powered the standby off, never on a timer."""
    lab = healthy_lab
    a, b = start_pair(lab, 4 * MiB, runs=1, extra_a=("--inject", "hold-verify"),
                      extra_b=(*IN_DOUBT_ARGS, "--fence-agent", FENCE_AGENT, "--peer-name", "a"),
                      timeout=180)
    try:
        wait_event([a], "marker_seen")
        lab.fault("b", "link", "x", "down")
        wait_event([b], "thawed", timeout=90)
        finish_pair(a, b, timeout=60)
    finally:
        lab.fault("b", "link", "x", "up")
    g = only(b, "gso")
    assert g["outcome"] == "fenced" and g["serving"], b.events
    assert any("off a" in r for r in g["fence"]), g["fence"]
    assert b.of("alarm"), "in doubt, the active raises an alarm before it fences"
    assert only(b, "thawed")["counter"] == only(b, "frozen")["counter"]
    assert only(b, "serving")["counter"] == only(b, "frozen")["counter"] + 1000
    assert lab.status()["nodes"]["a"]["state"] in ("dead", "killed"), "the standby is off"
    assert not lab.node_alive("a")


def test_link_pulled_after_the_marker_without_a_fence_action_stays_frozen(
        healthy_lab: Lab) -> None:
    lab = healthy_lab
    a, b = start_pair(lab, 4 * MiB, runs=1, extra_a=("--inject", "hold-verify"),
                      extra_b=IN_DOUBT_ARGS, timeout=180)
    try:
        wait_event([a], "marker_seen")
        lab.fault("b", "link", "x", "down")
        deadline = time.monotonic() + 60
        while not any("no fence action configured" in e["reason"] for e in b.of("alarm")):
            assert time.monotonic() < deadline, f"no 'no fence action' alarm: {b.events}"
            b.job.poll()
            time.sleep(0.2)
        time.sleep(6)  # more than one more fence timeout: still frozen, still alarmed
        b.job.poll()
        a.job.poll()
    finally:
        lab.fault("b", "link", "x", "up")
        stop_pair(a, b)  # gone, listeners and all, before the next test starts its pair
    assert not b.of("thawed") and not b.of("gso") and not b.of("serving"), b.events
    assert all(not e["serving"] for e in b.of("alarm"))
    assert len(b.of("alarm")) >= 2, "the alarm is raised again on every failed fence"
    # the standby verified the image and took over: exactly one node serves
    assert only(a, "resumed")["counter"] == only(b, "frozen")["counter"]


def test_restarted_nodes_keep_their_epochs_and_ignore_a_replayed_old_gso(healthy_lab: Lab,
                                                                         tmp_path) -> None:
    """Both nodes persist their epochs (--state-dir) and are restarted after GSO 1. The
    active then replays GSO 1's Start-GSO and marker, late, before GSO 2: the restarted
    standby, which remembers it saw epoch 1, ignores both, and GSO 2 completes."""
    # a path per node; what a guest writes there stays in its own overlay (its "disk")
    dirs = {n: str(tmp_path / n) for n in "ab"}
    first = run_pair(healthy_lab, 1 * MiB, runs=1, extra_a=("--state-dir", dirs["a"]),
                     extra_b=("--state-dir", dirs["b"]))
    assert only(first.standby, "gso")["outcome"] == "completed", first.standby.events
    res = run_pair(healthy_lab, 1 * MiB, runs=1, extra_a=("--state-dir", dirs["a"]),
                   extra_b=("--state-dir", dirs["b"], "--inject", "replay-old-start"))
    a, b = res.standby, res.active
    assert res.rc == {"a": 0, "b": 0}, res.stderr
    assert only(a, "connected")["seen"] == 1, "the restarted standby remembers epoch 1"
    # One GSO on a, epoch 2, completed. A standby that forgot epoch 1 would have started the
    # replayed GSO 1 (stopped, zeroed its marker, sent Ready) and refused GSO 2 as busy.
    g = only(a, "gso")
    assert g["epoch"] == 2 and g["outcome"] == "completed"
    assert pmem_crc(a, "standby", 2) == pmem_crc(b, "active", 2)
    saved = healthy_lab.exec("a", ["cat", f"{dirs['a']}/gso-epoch.json"], check=True)
    assert json.loads(saved.stdout)["epoch"] == json.loads(saved.stdout)["seen"] == 2


# A pair that can never switch over: the refusing node tells the other why (Goodbye) and
# both end at once, each with its reason, instead of one waiting out a timeout (60-90 s).
PROMPT_S = 30.0  # both ended well within this (TCG guests: Python start, connect, close)


def test_image_larger_than_standby_region_is_refused_before_stopping(healthy_lab: Lab) -> None:
    t0 = time.monotonic()
    a, b = start_pair(healthy_lab, 2 * MiB, runs=1, extra_a=("--pmem", str(1 * MiB)))
    res = finish_pair(a, b, timeout=PROMPT_S)
    refused = only(b, "refused")
    assert "exceeds the standby's registered region" in refused["reason"]
    assert not b.of("frozen") and res.rc["b"] == 1
    told = only(a, "error")["error"]
    assert "the peer ended the pair: the active's state image of" in told, a.events
    assert "exceeds this standby's registered region" in told and res.rc["a"] == 1
    assert time.monotonic() - t0 < PROMPT_S, "both ended at once"


def test_peer_with_another_protocol_version_is_refused(healthy_lab: Lab) -> None:
    # --connect-timeout 20: should b ever miss a's Hello and Goodbye, it gives up in 20 s
    t0 = time.monotonic()
    a, b = start_pair(healthy_lab, 1 * MiB, runs=1,
                      extra_b=("--inject", "bad-version", "--connect-timeout", "20"))
    res = finish_pair(a, b, timeout=PROMPT_S)
    assert "peer speaks protocol version 99" in only(a, "error")["error"]
    assert not b.of("frozen") and res.rc["a"] == 1
    told = only(b, "error")["error"]
    assert "the peer ended the pair: it speaks protocol version 1, we speak 99" in told, b.events
    assert res.rc["b"] == 1
    assert time.monotonic() - t0 < PROMPT_S, "both ended at once"


def test_bench_on_two_hosts_serve_and_peer(healthy_lab: Lab) -> None:
    """hsp-bench's real-host mode, on the lab's two nodes as the two hosts."""

    info = healthy_lab.info()
    a, b = info["a"]["x"], info["b"]["x"]
    # 64 KiB chunks: perftest's rounds take at least 50 writes, 50 MiB at rxe's 1 MiB
    common = ["--size", "2MiB", "--runs", "2", "--chunk", "64KiB"]
    srv = healthy_lab.spawn("a", [sys.executable, "-m", "hsp_rdma.cli.bench", "serve",
                                  "--device", a["rdma_dev"], "--local-ip", a["ipv4"], *common],
                            timeout=240)
    res = healthy_lab.exec("b", [sys.executable, "-m", "hsp_rdma.cli.bench", "gso", "--peer",
                                 a["ipv4"], "--device", b["rdma_dev"], "--local-ip", b["ipv4"],
                                 "--json", *common], timeout=240)
    if not res.ok:
        srv.kill()
    served = srv.wait()
    assert res.rc == 0, (f"gso --peer: {res.stdout[-800:]}{res.stderr[-800:]}\n"
                         f"serve: {served.stdout[-800:]}{served.stderr[-800:]}")
    r = json.loads(res.stdout)
    # runs alternate direction: this host (b) was the active of run 1 only
    assert r["runs"] == 2 and [p["epoch"] for p in r["per_run"]] == [1]
    assert r["image_bytes"] >= 2 << 20 and r["peer"] == a["ipv4"]
    assert r["ratio"] == pytest.approx(r["stop_and_copy_MBps"] / r["baseline_ib_write_bw_MBps"],
                                       rel=0.01)
    blk = r["blackout_ms"]
    assert 0 < blk["min"] <= blk["p50"] <= blk["p99"] <= blk["max"]
    (run,) = r["per_run"]
    # the blackout contains the copy: freeze .. "done" >= image bytes at the copy's rate
    copy_ms = r["image_bytes"] / (run["copy_MBps"] * (1 << 20)) * 1000
    assert run["blackout_ms"] >= copy_ms - 0.2
    # the verdict is each run's own overhead (blackout - copy - verify), by its median
    assert r["blackout_goal_met"] == (r["overhead_ms"]["p50"] <= r["blackout_slack_ms"])
    assert served.rc == 0 and "served 2 GSO(s) and " in served.stdout, served.stdout
