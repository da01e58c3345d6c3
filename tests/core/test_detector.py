"""The failure detector: heart beats on every fabric, one silent fabric is a link event, the
peer is suspected only when every fabric is silent past the timeout; evidence, pauses, timers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsp_rdma.core.detector import (
    DetectorTick,
    Evidence,
    FabricFailed,
    FabricHeard,
    FabricSilent,
    FailureDetector,
    HeartbeatReceived,
    LinkEvidence,
    SendHeartbeat,
)
from hsp_rdma.core.failover import ArmTimer, LinkRestored, PeerEpochSeen, PeerSuspected

INTERVAL, TIMEOUT = 0.1, 1.0


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def heard_pair(now=0.0):
    d = FailureDetector(("x", "y"), INTERVAL, TIMEOUT, now)
    d.feed(HeartbeatReceived("x", 2, True), now)
    d.feed(HeartbeatReceived("y", 2, True), now)
    return d


def run(d, start, end, beats=()):
    """Tick every interval from ``start`` to ``end`` (the engine's timer), delivering
    ``beats`` = [(t, fabric)] on the way; return [(t, action)]."""
    out = []
    t = start
    pending = sorted(beats)
    while t <= end + 1e-9:
        while pending and pending[0][0] <= t:
            bt, f = pending.pop(0)
            out += [(bt, a) for a in d.feed(HeartbeatReceived(f, 2, True), bt)]
        out += [(t, a) for a in d.feed(DetectorTick(), t)]
        t = round(t + d.interval, 9)
    return out


def test_heart_beats_go_out_on_every_fabric_every_interval_and_the_timer_says_when():
    d = FailureDetector(("x", "y"), INTERVAL, TIMEOUT, 0.0)
    first = d.feed(DetectorTick(), 0.0)
    assert of(first, SendHeartbeat) == [SendHeartbeat("x"), SendHeartbeat("y")]
    assert of(first, ArmTimer) == [ArmTimer(0.1)]
    assert d.feed(DetectorTick(), 0.05) == []  # nothing due, timer unchanged
    assert of(d.feed(DetectorTick(), 0.1), SendHeartbeat) == [SendHeartbeat("x"),
                                                              SendHeartbeat("y")]


def test_one_silent_fabric_is_a_link_event_not_a_failure():
    d = heard_pair()
    events = run(d, 0.1, 3.0, beats=[(t / 10, "y") for t in range(1, 31)])
    assert [(round(t, 3), a) for t, a in events if isinstance(a, FabricSilent)] == \
        [(1.0, FabricSilent("x"))]
    assert not [a for _, a in events if isinstance(a, PeerSuspected)]


def test_the_peer_is_suspected_when_every_fabric_is_silent_past_the_timeout():
    d = heard_pair()
    events = run(d, 0.1, 3.0, beats=[(0.5, "y")])
    silent = [(round(t, 3), a) for t, a in events if isinstance(a, (FabricSilent, PeerSuspected))]
    assert silent == [(1.0, FabricSilent("x")), (1.5, FabricSilent("y")), (1.5, PeerSuspected())]


def test_evidence_moves_traffic_at_once_but_shortens_no_verdict():
    d = heard_pair()
    actions = d.feed(LinkEvidence("x", Evidence.RETRY_EXCEEDED, "wc status 12"), 0.2)
    assert of(actions, FabricFailed) == [FabricFailed("x", Evidence.RETRY_EXCEEDED)]
    d.feed(LinkEvidence("y", Evidence.DISCONNECTED), 0.3)
    events = run(d, 0.3, 2.0)
    (t, verdict), = [(t, a) for t, a in events if isinstance(a, PeerSuspected)]
    assert round(t, 3) == TIMEOUT  # a full timeout after the last heart beat, not earlier
    assert verdict.evidence == ("retry-exceeded on x: wc status 12", "disconnected on y")


def test_restored_on_the_first_heart_beat_then_epochs_seen():
    d = FailureDetector(("x",), INTERVAL, TIMEOUT, 0.0)
    assert of(d.feed(HeartbeatReceived("x", 2, True), 0.0), LinkRestored) == \
        [LinkRestored(2, True)]
    assert of(d.feed(HeartbeatReceived("x", 3, True), 0.1), PeerEpochSeen) == \
        [PeerEpochSeen(3, True)]
    run(d, 0.2, 1.2)
    actions = d.feed(HeartbeatReceived("x", 3, False), 1.3)
    assert of(actions, FabricHeard) == [FabricHeard("x")]
    assert of(actions, LinkRestored) == [LinkRestored(3, False)]


def test_a_peer_never_heard_is_never_suspected():
    d = FailureDetector(("x", "y"), INTERVAL, TIMEOUT, 0.0)
    events = run(d, 0.0, 5.0)
    assert not [a for _, a in events if isinstance(a, PeerSuspected)]
    assert len([a for _, a in events if isinstance(a, FabricSilent)]) == 2


def test_a_node_that_was_paused_does_not_blame_its_peer_for_its_own_silence():
    d = heard_pair()
    run(d, 0.1, 0.5, beats=[(0.5, "x"), (0.5, "y")])
    # This node stalls for 10 s (the peer's heart beats were not read meanwhile).
    assert not of(d.feed(DetectorTick(), 10.5), PeerSuspected)
    assert d.pauses == 1
    # Once running again, a peer still silent is suspected one timeout later.
    events = run(d, 10.6, 12.0)
    (t, _), = [(t, a) for t, a in events if isinstance(a, PeerSuspected)]
    assert round(t, 3) == 11.5


@given(st.lists(st.tuples(st.integers(1, 60), st.sampled_from(["x", "y"])), max_size=25))
@settings(max_examples=200, deadline=None)
def test_suspected_exactly_when_every_fabric_is_silent_past_the_timeout(beats):
    # Heart beats at random times on random fabrics, the timer ticking every interval (whole
    # units here, so float rounding cannot move a verdict by a tick): the verdict comes at
    # the first tick where every fabric has been silent for the timeout, never before, and
    # once per silence.
    d = FailureDetector(("x", "y"), 1, 10, 0)
    d.feed(HeartbeatReceived("x", 2, True), 0)
    d.feed(HeartbeatReceived("y", 2, True), 0)
    events = run(d, 1, 80, beats=beats)
    last = {"x": 0, "y": 0}
    suspected = False
    expected = []
    pending = sorted(beats)
    for t in range(1, 81):
        while pending and pending[0][0] <= t:
            bt, f = pending.pop(0)
            last[f] = max(last[f], bt)
            suspected = False
        if not suspected and all(t - last[f] >= 10 for f in last):
            suspected = True
            expected.append(t)
    assert [t for t, a in events if isinstance(a, PeerSuspected)] == expected


def test_bad_settings_and_unknown_fabrics_are_refused_clearly():
    with pytest.raises(ValueError, match="below the timeout"):
        FailureDetector(("x",), 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="distinct fabrics"):
        FailureDetector(("x", "x"), 0.1, 1.0, 0.0)
    d = FailureDetector(("x",), 0.1, 1.0, 0.0)
    with pytest.raises(ValueError, match="fabric 'z' is not one of"):
        d.feed(HeartbeatReceived("z", 1, True), 0.1)
