"""A GSO's link lost during the copy, over the soft provider on this host (two engines, fabrics
x and y, a pulled cable is the soft link emulation's file N.down): with y open, both engines
connect the link again on y and the copy starts again there, the GSO completes and the image
resumed is the one frozen; with y down too, no fabric answers within the relink budget and the
GSO aborts cleanly (the active thaws and serves, the standby never resumes)."""

from __future__ import annotations

import threading
import time

from pair_helpers import in_thread
from test_gso_fabrics_soft import _own_ports_and_links, pair, pull  # noqa: F401 (fixture)

from hsp_rdma.core import gso
from hsp_rdma.ha.switchover import RELINK_S, Engine

BOUND_S = 40.0


def gso_with_x_pulled(tmp_path) -> tuple[Engine, Engine, list[str], list[str]]:
    """a listens (standby), b connects (active); b's copy paced to ~1.5 s, x of b pulled
    0.3 s into it; both served until each reported the GSO."""
    a, b = pair(timeouts=gso.Timeouts(ready=5, copy=6, done=5, gso=9), chunk_size=4096)
    assert a.fabric == b.fabric == "x"
    b.image.pmem[:] = bytes(range(256)) * (len(b.image.pmem) // 256)
    said_a, said_b, thawed = [], [], []
    a.on_relink, b.on_relink = said_a.append, said_b.append
    b.app.thaw = lambda: thawed.append(time.monotonic())
    b.copy_rate_Bps = b.image.capacity / 1.5
    b.on_copy_start = lambda epoch, length: threading.Timer(
        0.3, pull, (tmp_path, "b", "x")).start()
    b.request_gso()
    end = time.monotonic() + BOUND_S
    t, box = in_thread(a.serve, lambda: len(a.reports) > 0 or time.monotonic() > end)
    b.serve(until=lambda: len(b.reports) > 0 or time.monotonic() > end)
    t.join(30)
    assert "error" not in box, box
    assert a.reports and b.reports, (a.machine.state, b.machine.state)
    b.thawed = thawed
    return a, b, said_a, said_b


def test_x_pulled_during_the_copy_the_gso_continues_on_y_and_completes(tmp_path):
    a, b, said_a, said_b = gso_with_x_pulled(tmp_path)
    try:
        (ra,), (rb,) = a.reports, b.reports
        assert (ra.outcome, rb.outcome) == ("completed", "completed"), \
            (ra.reason, rb.reason, said_a, said_b, a.link_error, b.link_error)
        assert ra.relinks == rb.relinks == ["x->y"] and a.fabric == b.fabric == "y"
        assert "connected again on fabric y" in said_b[0], said_b
        assert not b.thawed and a.machine.serving and not b.machine.serving
        assert bytes(a.image.pmem) == bytes(b.image.pmem)  # the image frozen is the one resumed
        assert rb.writes > (b.image.capacity // b.chunk_size)  # copied again from the start
    finally:
        a.close()
        b.close()


def test_x_pulled_during_the_copy_with_y_down_aborts_cleanly(tmp_path):
    pull(tmp_path, "a", "y")  # y idle: nothing breaks, but nothing connects there either
    a, b, said_a, said_b = gso_with_x_pulled(tmp_path)
    try:
        (ra,), (rb,) = a.reports, b.reports
        assert (ra.outcome, rb.outcome) == ("aborted", "aborted"), (ra.reason, rb.reason)
        assert ra.relinks == rb.relinks == [] and "no other fabric answered" in said_b[0]
        # the active thawed and serves, within its relink budget of the loss; never resumed B
        assert b.thawed and b.machine.serving and not a.machine.serving, (said_a, said_b)
        assert rb.relink_s <= RELINK_S + 0.5, rb.relink_s
        assert not ra.resume_t and a.machine.state is gso.GsoState.NORMAL_STANDBY
    finally:
        a.close()
        b.close()
