"""Detector and failover machine together, on a simulated clock: two nodes, two fabrics, cables
pulled and nodes paused at random (hypothesis), a truthful fence that powers the peer off and
a node that comes back from its persisted epoch. The explorer abstracts the detector; this
checks that what the real detector emits is what the machine's table expects, and that after
the faults one node serves and the other is its UpToDate standby again."""

from __future__ import annotations

import heapq
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from hsp_rdma.core.detector import (
    DetectorTick,
    FailureDetector,
    HeartbeatReceived,
    SendHeartbeat,
)
from hsp_rdma.core.failover import (
    FailoverMachine,
    FencePeer,
    FenceResult,
    FoState,
    LinkRestored,
    PeerEpochSeen,
    PeerSuspected,
    Persisted,
    PersistEpoch,
    ResyncDone,
    StartResync,
    Tick,
    Timeouts,
)

DT, INTERVAL, TIMEOUT = 0.05, 0.1, 0.5
FENCE_DELAY, RESYNC_TIME, OFF_TIME = 0.3, 0.4, 2.0
END, QUIET_FROM = 30.0, 14.0
FABRICS = ("x", "y")


class Sim:
    def __init__(self, link_faults, pauses):
        t = Timeouts(fence=1.0, fence_retry=0.7)
        self.fm = [FailoverMachine.active(2, 0, timeouts=t),
                   FailoverMachine.standby(2, 1, timeouts=t)]
        self.det = [self._detector(0.0, heard=True) for _ in range(2)]
        self.store = [(2, 2), (2, 0)]
        self.dead_until: list[float | None] = [None, None]
        self.link_faults = link_faults
        self.pauses = pauses
        self.later: list = []  # (time, seq, node, what, arg)
        self.seq = itertools.count()
        self.inbox: list[list] = [[], []]  # heart beats waiting for a paused node
        self.now = 0.0
        self.max_serving = 0

    def _detector(self, now, heard):
        d = FailureDetector(FABRICS, INTERVAL, TIMEOUT, now)
        if heard:
            for f in FABRICS:
                d.feed(HeartbeatReceived(f, 2, True), now)
        return d

    def link_up(self, fabric):
        return not any(f in (fabric, "both") and s <= self.now < s + d
                       for f, s, d in self.link_faults)

    def paused(self, n):
        return any(node == n and s <= self.now < s + d for node, s, d in self.pauses)

    def alive(self, n):
        return self.dead_until[n] is None

    def schedule(self, delay, n, what, arg=None):
        heapq.heappush(self.later, (self.now + delay, next(self.seq), n, what, arg))

    def run_detector(self, n, event):
        for a in self.det[n].feed(event, self.now):
            if isinstance(a, SendHeartbeat):
                other = 1 - n
                if self.link_up(a.fabric) and self.alive(other):
                    m = self.fm[n]
                    self.inbox[other].append(HeartbeatReceived(a.fabric, m.epoch, m.serving))
            elif isinstance(a, (PeerSuspected, LinkRestored, PeerEpochSeen)):
                self.run_machine(n, a)

    def run_machine(self, n, event):
        for a in self.fm[n].feed(event, self.now):
            if isinstance(a, PersistEpoch):
                self.store[n] = (a.epoch, a.active_since)
                self.run_machine(n, Persisted(a.epoch))
            elif isinstance(a, FencePeer):
                self.schedule(FENCE_DELAY, n, "fence", a.attempt)
            elif isinstance(a, StartResync):
                self.schedule(RESYNC_TIME, n, "resync")

    def step(self):
        self.now = round(self.now + DT, 9)
        for n in (0, 1):
            if self.dead_until[n] is not None and self.now >= self.dead_until[n]:
                # Powered on again: back from what it persisted, as a new session.
                self.dead_until[n] = None
                epoch, since = self.store[n]
                self.fm[n] = FailoverMachine.restarted(epoch, since, n,
                                                       timeouts=self.fm[1 - n].timeouts)
                self.det[n] = self._detector(self.now, heard=False)
                self.inbox[n] = []
        while self.later and self.later[0][0] <= self.now:
            _, _, n, what, arg = self.later[0]
            if not self.alive(n):
                heapq.heappop(self.later)
                continue
            if self.paused(n):
                break  # it answers when it runs again
            heapq.heappop(self.later)
            if what == "fence":
                other = 1 - n
                if self.alive(other):
                    self.dead_until[other] = self.now + OFF_TIME
                    self.later = [e for e in self.later if e[2] != other]
                    heapq.heapify(self.later)
                    self.inbox[other] = []
                self.run_machine(n, FenceResult(True, "off", arg))
            elif (what == "resync" and self.alive(1 - n) and self.fm[n].connected
                  and self.fm[n].state in (FoState.SYNC_SOURCE, FoState.SYNC_TARGET)):
                self.run_machine(n, ResyncDone())
        for n in (0, 1):
            if not self.alive(n) or self.paused(n):
                continue
            beats, self.inbox[n] = self.inbox[n], []
            for hb in beats:
                self.run_detector(n, hb)
            self.run_detector(n, DetectorTick())
            self.run_machine(n, Tick())
        serving = [n for n in (0, 1) if self.alive(n) and self.fm[n].serving]
        assert len(serving) <= 1, f"two nodes serve at t={self.now}"
        self.max_serving = max(self.max_serving, len(serving))


FAULTS = st.lists(st.tuples(st.sampled_from(["x", "y", "both"]),
                            st.floats(1, 10).map(lambda v: round(v, 2)),
                            st.floats(0.05, 4).map(lambda v: round(v, 2))), max_size=3)
PAUSES = st.lists(st.tuples(st.sampled_from([0, 1]),
                            st.floats(1, 10).map(lambda v: round(v, 2)),
                            st.floats(0.05, 3).map(lambda v: round(v, 2))), max_size=2)


@given(FAULTS, PAUSES)
@settings(max_examples=100, deadline=None)
def test_after_any_cable_pulls_and_pauses_one_node_serves_and_the_other_follows(links, pauses):
    sim = Sim(links, pauses)
    while sim.now < END:
        sim.step()
    serving = [n for n in (0, 1) if sim.alive(n) and sim.fm[n].serving]
    assert len(serving) == 1, [(m.state, m.epoch) for m in sim.fm]
    (active,) = serving
    other = sim.fm[1 - active]
    assert sim.alive(1 - active) and other.state is FoState.STANDBY, other.state
    assert other.epoch == sim.fm[active].epoch  # the standby follows the newest epoch
    assert sim.fm[active].state is FoState.ACTIVE  # in sync, dirty tracking off


def test_a_pause_past_the_timeout_fails_over_and_the_old_active_rejoins():
    sim = Sim(link_faults=[], pauses=[(0, 2.0, 2.0)])
    while sim.now < END:
        sim.step()
    assert sim.fm[1].serving and sim.fm[1].epoch == 3
    assert sim.fm[0].state is FoState.STANDBY and sim.fm[0].epoch == 3


def test_one_fabric_pulled_changes_nothing():
    sim = Sim(link_faults=[("x", 1.0, 10.0)], pauses=[])
    while sim.now < 15:
        sim.step()
    assert sim.fm[0].state is FoState.ACTIVE and sim.fm[0].epoch == 2
    assert sim.fm[1].state is FoState.STANDBY and sim.fm[1].fence_attempt == 0


def test_both_fabrics_pulled_past_the_timeout_fences_the_active_it_comes_back_as_standby():
    # Link loss without node loss on every fabric looks like a dead active to the standby:
    # it fences (powers off) the active and takes over; the old active restarts from its
    # persisted epoch, hears the new active, resyncs and follows.
    sim = Sim(link_faults=[("both", 1.0, 3.0)], pauses=[])
    fenced_at = None
    while sim.now < END:
        sim.step()
        if fenced_at is None and not sim.alive(0):
            fenced_at = sim.now
    assert fenced_at is not None and 1.0 + TIMEOUT <= fenced_at <= 1.0 + TIMEOUT + 0.5
    assert sim.fm[1].serving and sim.fm[1].epoch == 3
    assert sim.fm[0].state is FoState.STANDBY and sim.fm[0].epoch == 3
