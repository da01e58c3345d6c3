"""A pair that can never switch over ends at once on both sides, each saying why (over the
soft provider, on this host): the refusing node sends a Goodbye with its reason and the
refused one ends with it, instead of waiting for a timeout to notice."""

from __future__ import annotations

import time

import pytest
from pair_helpers import in_thread

from hsp_rdma.core.gso import GsoMachine, GsoState
from hsp_rdma.core.profiles import load_profiles, pick_profile
from hsp_rdma.errors import GsoRefused
from hsp_rdma.ha.switchover import Engine, PeerLeft
from hsp_rdma.via.providers import soft

LISTEN_IP, CONNECT_IP = "127.0.0.1", "127.0.0.2"
PROMPT_S = 10.0  # ends well before any of the engine's timeouts (connect: 20 s here)


@pytest.fixture(autouse=True)
def _own_ports(monkeypatch):
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())


def engine(name: str, serving: bool, pmem: int = 1 << 16) -> Engine:
    return Engine.open(f"soft:{name}", pick_profile(f"soft:{name}", load_profiles()),
                       pmem, 256, serving=serving)


def closing(eng: Engine, fn, *args):
    """FN(*ARGS), then close ENG (so what it posted, a Goodbye, goes out) whatever happens."""
    try:
        return fn(*args)
    finally:
        eng.close()


def serve_forever(eng: Engine, bound_s: float = 60.0) -> None:
    """Serve until the link ends (PeerLeft, what the callers expect); bounded, so a link that
    never ends fails the test (no PeerLeft) instead of hanging the suite."""
    end = time.monotonic() + bound_s
    eng.serve(until=lambda: time.monotonic() > end)


def test_peer_of_another_version_is_told_and_both_end_at_once():
    standby, active = engine("a", False), engine("b", True)
    active.hello_version = 99
    t0, refused = time.monotonic(), ""
    t, box = in_thread(closing, standby, standby.connect, LISTEN_IP, None, 20)
    try:
        try:
            active.connect(CONNECT_IP, LISTEN_IP, 20)
            # it may have taken the standby's Hello before the Goodbye: it hears it next
            active.request_gso()
            serve_forever(active)
        except PeerLeft as exc:
            refused = str(exc)
        took = time.monotonic() - t0
    finally:
        active.close()
    t.join(PROMPT_S)
    assert isinstance(box.get("error"), PeerLeft), box
    assert "peer speaks protocol version 99, we speak 1" in str(box["error"])
    assert "the peer ended the pair: it speaks protocol version 1, we speak 99" in refused
    assert took < PROMPT_S, f"the refused node ended after {took:.1f} s"


def test_image_larger_than_the_standby_region_ends_the_standby_with_the_reason():
    standby, active = engine("a", False), engine("b", True, pmem=1 << 17)
    t, box = in_thread(standby.connect, LISTEN_IP, None, 20)
    try:
        active.connect(CONNECT_IP, LISTEN_IP, 20)
        t.join(20)
        assert "error" not in box, box
        with pytest.raises(GsoRefused, match="exceeds the standby's registered region"):
            active.request_gso()
    finally:
        active.close()
    t0 = time.monotonic()
    try:
        with pytest.raises(PeerLeft, match=r"the peer ended the pair: the active's state image "
                                           r"of \d+ bytes exceeds this standby's registered "
                                           r"region of \d+ bytes: give this node a region"):
            serve_forever(standby)
    finally:
        standby.close()
    assert time.monotonic() - t0 < PROMPT_S
    assert not standby.reports, "no GSO started"


def test_a_standby_whose_peer_left_ends_instead_of_waiting_forever():
    standby, active = engine("a", False), engine("b", True)
    t, box = in_thread(standby.connect, LISTEN_IP, None, 20)
    try:
        active.connect(CONNECT_IP, LISTEN_IP, 20)
        t.join(20)
        assert "error" not in box, box
    finally:
        active.close()  # leaves without a word
    t0 = time.monotonic()
    try:
        with pytest.raises(PeerLeft, match="the link to the peer is gone .* no GSO is in "
                                           "progress"):
            serve_forever(standby)
    finally:
        standby.close()
    assert time.monotonic() - t0 < PROMPT_S


def connect_pair(listener: Engine, connector: Engine) -> tuple[BaseException | None,
                                                                 BaseException | None]:
    """Both connect and serve until they end (the listener in a thread, each closed after):
    each one's error."""

    def connect_and_serve(eng: Engine, peer_ip: str | None, local_ip: str) -> None:
        eng.connect(local_ip, peer_ip, 20)
        serve_forever(eng)  # the peer's Goodbye, if it refused

    t, box = in_thread(closing, listener, connect_and_serve, listener, None, LISTEN_IP)
    err = None
    try:
        connect_and_serve(connector, LISTEN_IP, CONNECT_IP)
    except PeerLeft as exc:
        err = exc
    finally:
        connector.close()
    t.join(PROMPT_S)
    return box.get("error"), err


def test_two_fresh_actives_meet_as_peer_active_and_refuse_to_run():
    """Each one's Hello says 'serving since epoch 0': PeerActive(0) for the other's machine,
    which no row of an active accepts before a GSO (split brain)."""
    x, y = engine("a", True), engine("b", True)
    ex, ey = connect_pair(x, y)
    for eng, err in ((x, ex), (y, ey)):
        assert isinstance(err, PeerLeft), err
        assert "both nodes claim to be active (split brain)" in str(err)
        assert eng.machine.state is GsoState.NORMAL_ACTIVE and not eng.reports
    assert x.machine.broken is not None or y.machine.broken is not None


def test_the_older_active_refuses_and_the_newer_one_is_told():
    """X became active in GSO 3 (persisted); Y was started as active from nothing (epoch 0):
    Y's machine takes X's PeerActive(3) as a split brain and Y refuses, naming itself the
    older active; X's machine ignores Y's PeerActive(0) as stale and X ends on Y's Goodbye."""
    x, y = engine("a", True), engine("b", True)
    x.machine = GsoMachine.active(epoch=3, region_size=x.image.capacity)
    ex, ey = connect_pair(x, y)
    assert isinstance(ey, PeerLeft) and y.machine.broken is not None, ey
    assert ("the peer since epoch 3, this node since epoch 0; refusing to run; this node is "
            "the older active: restart it as standby") in str(ey)
    assert isinstance(ex, PeerLeft), ex
    assert x.machine.broken is None and x.machine.stale_ignored == 1, "X judged it stale"
    assert "the peer ended the pair: both nodes claim to be active (split brain): this node " \
           "since epoch 3, the peer since epoch 0" in str(ex)
