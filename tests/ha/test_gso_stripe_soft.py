"""A push's copy striped across fabrics x and y (Engine.stripe), over the soft provider on this
host: the stripe connects on the fabric the link is not on, the writes spread over both VIs, a
fence read on the stripe precedes the header and marker on the link, and the standby takes
over with the image frozen; a peer that does not stripe leaves the pair unstriped (said why);
the stripe's cable pulled during the copy starts the copy again on the link alone, and the
GSO completes with the frozen image."""

from __future__ import annotations

import threading
import time

from pair_helpers import in_thread
from test_gso_fabrics_soft import _own_ports_and_links, engine, links, pull  # noqa: F401

from hsp_rdma.core import gso
from hsp_rdma.ha.switchover import Engine

BOUND_S = 40.0
TIMEOUTS = gso.Timeouts(ready=5, copy=10, done=5, gso=20)


def striped_pair(stripe_a: bool = True, stripe_b: bool = True, **engine_kw):
    """a listens (standby), b connects (active), each striping as told; (a, b, said)."""
    a, b = engine("a", False, TIMEOUTS, **engine_kw), engine("b", True, TIMEOUTS, **engine_kw)
    a.stripe, b.stripe = stripe_a, stripe_b
    said: list[str] = []
    a.on_connect_failed = b.on_connect_failed = said.append
    a.on_relink = b.on_relink = said.append
    t, box = in_thread(a.connect_fabrics, links("a", False), 30)
    b.connect_fabrics(links("b", True), 30, 2.0)
    t.join(30)
    assert "error" not in box, box
    return a, b, said


def gso_once(standby: Engine, active: Engine) -> None:
    """One GSO from ACTIVE (its P.mem filled with a pattern) to STANDBY, both served until
    each reported it (bounded)."""
    active.image.pmem[:] = bytes(range(256)) * (len(active.image.pmem) // 256)
    active.request_gso()
    end = time.monotonic() + BOUND_S
    t, box = in_thread(standby.serve,
                       lambda: len(standby.reports) > 0 or time.monotonic() > end)
    active.serve(until=lambda: len(active.reports) > 0 or time.monotonic() > end)
    t.join(30)
    assert "error" not in box, box
    assert standby.reports and active.reports, (standby.machine.state, active.machine.state)


def test_a_striped_copy_spreads_over_x_and_y_and_the_standby_takes_over():
    a, b, said = striped_pair(chunk_size=4096)
    try:
        assert a.fabric == b.fabric == "x" and a.striped == b.striped == "y", said
        gso_once(a, b)
        (ra,), (rb,) = a.reports, b.reports
        assert (ra.outcome, rb.outcome) == ("completed", "completed"), (ra.reason, rb.reason)
        assert rb.fabrics == "x+y" and 0 < rb.stripe_writes < rb.writes, (rb.fabrics,
                                                                          rb.stripe_writes)
        assert bytes(a.image.pmem) == bytes(b.image.pmem)
        assert a.machine.serving and not b.machine.serving
        # and back: the new active pushes over its own stripe, the same connections
        a.reports.clear()
        b.reports.clear()
        gso_once(b, a)
        assert [r.outcome for r in a.reports + b.reports] == ["completed", "completed"]
        assert a.reports[0].fabrics == "x+y" and b.machine.serving
    finally:
        a.close()
        b.close()


def test_a_peer_that_does_not_stripe_leaves_the_pair_unstriped_and_says_why():
    a, b, said = striped_pair(stripe_a=False)
    try:
        assert a.striped == b.striped == ""
        assert "does not stripe" in b.stripe_note, (b.stripe_note, said)
        gso_once(a, b)
        assert [r.outcome for r in a.reports + b.reports] == ["completed", "completed"]
        assert b.reports[0].fabrics == "x" and b.reports[0].stripe_writes == 0
    finally:
        a.close()
        b.close()


def test_the_stripe_pulled_during_the_copy_restarts_it_on_the_link(tmp_path):
    a, b, said = striped_pair(chunk_size=4096)
    try:
        assert b.striped == "y"
        b.copy_rate_Bps = b.image.capacity / 1.5  # a copy of ~1.5 s; y pulled 0.3 s in
        b.on_copy_start = lambda epoch, length: threading.Timer(
            0.3, pull, (tmp_path, "b", "y")).start()
        thawed: list[float] = []
        b.app.thaw = lambda: thawed.append(time.monotonic())
        gso_once(a, b)
        (ra,), (rb,) = a.reports, b.reports
        assert (ra.outcome, rb.outcome) == ("completed", "completed"), (ra.reason, rb.reason,
                                                                        said)
        assert rb.relinks == ["x+y->x"] and rb.fabrics == "x", (rb.relinks, said)
        assert any("copy starts again on fabric x alone" in w for w in said), said
        assert bytes(a.image.pmem) == bytes(b.image.pmem) and not thawed
        # the standby closed its end on the withdrawal, before it took the image
        assert a.machine.serving and b.striped == a.striped == ""
        assert "withdrew" in a.stripe_note, a.stripe_note
    finally:
        a.close()
        b.close()
