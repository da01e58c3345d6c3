"""The GSO's link on two fabrics in the lab, on rxe and siw (issue 13): gso_node pairs given
fabric y too (--y-device ...). With x pulled the link comes up on y and a GSO completes
there; x pulled under the copy: the GSO's link is connected again on y and the copy starts
again there, the GSO completes (the active never thaws), and the next GSO runs on y. And
the shipped drill gso-x-down (drill nodes under load: Interface A moves to y, then the GSO).
And a copy striped across x and y (--stripe), with y pulled under a second one."""

from __future__ import annotations

import time

import pytest
from test_gso_lab import _no_pair_left_running, only, pmem_crc, wait_event  # noqa: F401

from hsp_rdma.lab import Lab
from hsp_rdma.tools.drills.lab_runner import LabRunner
from hsp_rdma.tools.drills.runner import judge
from hsp_rdma.tools.drills.scenario import find_scenario, load_scenario
from hsp_rdma.tools.gso_pair import finish_pair, start_pair

pytestmark = pytest.mark.lab
MiB = 1 << 20


def y_args(lab: Lab) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(node a's, node b's) fabric y arguments: a listens, b connects."""
    info = lab.info()
    ya, yb = info["a"]["y"], info["b"]["y"]
    return (("--y-device", ya["rdma_dev"], "--y-local-ip", ya["ipv4"]),
            ("--y-device", yb["rdma_dev"], "--y-local-ip", yb["ipv4"],
             "--y-peer-ip", ya["ipv4"]))


def test_x_down_the_link_comes_up_on_y_and_a_gso_completes_there(healthy_lab: Lab) -> None:
    lab = healthy_lab
    ya, yb = y_args(lab)
    lab.fault("a", "link", "x", "down")
    try:
        a, b = start_pair(lab, 4 * MiB, runs=1, extra_a=ya, extra_b=yb, timeout=180)
        res = finish_pair(a, b, timeout=150)
    finally:
        lab.fault("a", "link", "x", "up")
    assert res.rc == {"a": 0, "b": 0}, res.stderr
    assert only(a, "connected")["fabric"] == only(b, "connected")["fabric"] == "y"
    assert only(b, "request")["fabric"] == "y"
    ga, gb = only(a, "gso"), only(b, "gso")
    assert ga["outcome"] == gb["outcome"] == "completed" and ga["fabric"] == gb["fabric"] == "y"
    assert pmem_crc(a, "standby", 1) == pmem_crc(b, "active", 1)
    assert only(a, "end")["serving"] and not only(b, "end")["serving"]


def test_x_lost_under_the_copy_the_gso_continues_on_y_and_completes(healthy_lab: Lab) -> None:
    """x pulled on the standby's side while the active copies: both engines see x silent (or
    its VI fail), connect the GSO's link again on y, and the active copies the image again
    from its first byte there, the marker last on that VI: GSO 1 completes on y without the
    active ever thawing, the image resumed is the one frozen (same P.mem CRC on both), and
    GSO 2 (back) runs on y."""
    lab = healthy_lab
    ya, yb = y_args(lab)
    # The copy timers leave room for 3 s of silence, the relink and a second copy of 48 MiB
    # (rxe in the lab: ~6 s for one): with 15 s and 10 s, one run in three aborted on them.
    a, b = start_pair(lab, 48 * MiB, runs=2,
                      extra_a=(*ya, "--copy-timeout", "30", "--gso-timeout", "45"),
                      extra_b=(*yb, "--copy-timeout", "30"), timeout=240)
    try:
        wait_event([b], "frozen")
        time.sleep(0.3)
        lab.fault("a", "link", "x", "down")
        res = finish_pair(a, b, timeout=200)
    finally:
        lab.fault("a", "link", "x", "up")
    assert res.rc == {"a": 0, "b": 0}, (res.stderr, a.events, b.events)
    first, second = b.of("gso")
    for n, run in (("a", a), ("b", b)):
        for g in run.of("gso"):
            print(f"{n}: epoch {g['epoch']} {g['role']} {g['outcome']} on {g['fabric']} "
                  f"relinks {g['relinks']} copy {g['copy_s']:.2f} s {g['reason']!r} "
                  f"{g['link_error']!r}")
    # GSO 1: lost on x during the copy, continued and completed on y; b never thawed
    assert first["outcome"] == "completed" and first["role"] == "active", \
        f"b: {b.of('gso')} a: {a.of('gso')}"
    assert first["fabric"] == "y" and first["relinks"] == ["x->y"], first
    assert not b.of("thawed"), b.events
    took = a.of("gso")[0]
    assert took["outcome"] == "completed" and took["relinks"] == ["x->y"], took
    frozen = b.of("frozen")[0]
    assert a.of("resumed")[0]["counter"] == frozen["counter"]
    pm_b, pm_a = b.of("pmem")[0], a.of("pmem")[0]
    assert pm_b["epoch"] == pm_a["epoch"] == first["epoch"], (pm_b, pm_a)
    assert pm_b["pmem_crc"] == pm_a["pmem_crc"], (pm_b, pm_a)  # the image frozen = resumed
    # GSO 2, back from a to b, on y: completed
    assert second["fabric"] == "y" and second["outcome"] == "completed", second
    assert [g["outcome"] for g in a.of("gso")] == ["completed", "completed"]
    assert only(b, "end")["serving"] and not only(a, "end")["serving"]


def test_a_striped_copy_goes_over_x_and_y_and_y_pulled_under_it_restarts_on_x(
        healthy_lab: Lab) -> None:
    """--stripe on both nodes: the link on x, the stripe's VI on y. GSO 1 (b to a) spreads
    its writes over both (the fence read on y before the header and marker on x), and the
    image resumed is the one frozen. GSO 2 (back, a to b): y pulled on a's side 0.3 s into
    the copy; the stripe is lost (a completion in error, or none in 2 s: a pulled iWARP
    cable shows as TCP retransmitting), a withdraws it, copies again from the first byte on x
    alone, and the GSO completes with the frozen image; a never thaws."""
    lab = healthy_lab
    a, b = start_pair(lab, 32 * MiB, runs=2, stripe_on="y",
                      extra_a=("--copy-timeout", "30", "--gso-timeout", "45"),
                      extra_b=("--copy-timeout", "30", "--gso-timeout", "45"), timeout=240)
    try:
        try:
            wait_event([a], "frozen", timeout=150)  # a freezes for GSO 2 only
        except AssertionError as exc:
            raise AssertionError(f"{exc}; b's events: {b.events}") from None
        time.sleep(0.3)
        lab.fault("a", "link", "y", "down")
        res = finish_pair(a, b, timeout=200)
    finally:
        lab.fault("a", "link", "y", "up")
    assert res.rc == {"a": 0, "b": 0}, (res.stderr, a.events, b.events)
    for n, run in (("a", a), ("b", b)):
        for g in run.of("gso"):
            print(f"{n}: epoch {g['epoch']} {g['role']} {g['outcome']} over {g['fabrics']!r} "
                  f"writes {g['writes']} (y {g['stripe_writes']}) relinks {g['relinks']} "
                  f"copy {g['copy_s']:.2f} s {g['reason']!r}")
    assert only(a, "connected")["stripe"] == only(b, "connected")["stripe"] == "y"
    first, second = b.of("gso")[0], a.of("gso")[1]
    assert first["role"] == "active" and first["outcome"] == "completed", first
    assert first["fabrics"] == "x+y" and 0 < first["stripe_writes"] < first["writes"], first
    assert pmem_crc(b, "active", first["epoch"]) == pmem_crc(a, "standby", first["epoch"])
    assert second["role"] == "active" and second["outcome"] == "completed", second
    assert second["relinks"] == ["x+y->x"] and second["fabrics"] == "x", second
    assert pmem_crc(a, "active", second["epoch"]) == pmem_crc(b, "standby", second["epoch"])
    assert not a.of("thawed") and only(b, "end")["serving"], (a.events, b.events)


def test_gso_x_down_drill(healthy_lab: Lab) -> None:
    """x pulled on the active under the ledger workload; once Interface A's carrier moved to
    y, a GSO: it completes over y, the standby serves from the image, nothing acknowledged
    lost, never two actives. (Kept here rather than in test_failover_lab's list, whose
    shared assertions expect no role change and more than 100 acks from every drill there
    but gso-under-load.)"""
    runner = LabRunner(healthy_lab.status()["rdma"], healthy_lab.lab_id)
    scenario = load_scenario(find_scenario("gso-x-down"))
    result = runner.run(scenario)
    runner.close()
    assert judge(scenario, result) == [], result
    assert result.lost == 0 and not result.two_actives and result.acknowledged > 0, result
    assert result.fabric_switches >= 1, result
