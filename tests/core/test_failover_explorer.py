"""Exhaustive check of unplanned failover: two failover machines, a hostile network, every
interleaving (the GSO explorer's method, tests/core/test_gso_explorer.py).

A breadth-first search over the joint state of two nodes (X starts active, Y standby, epoch
2), the heart beats and replication frames in flight (any may be lost, duplicated once,
reordered or delivered late), epoch writes not yet durable, fence actions running, resyncs
running. Faults: a node's detector suspects its peer at any moment (heart beats lost or late,
or its own clock jumped after a pause), a node pauses (it does nothing; a truthful fence still
powers it off) and resumes, a node crashes (what it had not persisted is lost) and restarts
from its persisted epoch, a fence succeeds (the peer is powered off), fails, does not answer
in time (its answer may still come), or lies (confirms while the peer runs). In pacemaker mode
an arbitrary manager sends Promote and Demote to either node at any time; a planned switch-over
(the GSO engine's SwitchedOver hook) may happen between an in-sync pair.

Invariants (hsp_rdma.core.failover's guarantees):
  1. truthful fences, self mode: never two nodes serving;
  2. always (lying fences, arbitrary Pacemaker included): a node never accepts a replication
     frame of an epoch below one it has served in or accepted frames of (kept across its
     restarts): the new active never takes the old active's writes, neither as active nor
     as a restarted standby, so the old one can never commit with received/applied; no two
     promotions share an epoch;
  3. self mode: a node becomes active only after a fence of this suspicion was confirmed;
     pacemaker mode: only after Promote;
  4. a node's epoch never decreases (restarts included); it takes an epoch only once it is
     persisted, so no frame carries an epoch a crash could forget;
  5. a refused command changes nothing; no protocol violation (IllegalTransition) anywhere;
  6. self mode, truthful fences: where nothing more can happen, a node serves or a living
     node holds an alarm.
The mutation tests show the checker is not vacuous: without the fence requirement, or without
the epoch check on frames, the explorer finds a counterexample.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields, replace

import pytest
from explore_bfs import search

from hsp_rdma.core import failover
from hsp_rdma.core.failover import (
    ArmTimer,
    BecomeActive,
    ClearAlarm,
    DataState,
    Demote,
    FailoverMachine,
    FailoverRefused,
    FencePeer,
    FenceResult,
    FoState,
    LinkRestored,
    Manager,
    PeerEpochSeen,
    PeerSuspected,
    Persisted,
    PersistEpoch,
    Promote,
    RaiseAlarm,
    ResyncDone,
    StartResync,
    SwitchedOver,
    Tick,
    Verdict,
)

X, Y = 0, 1
RANKS = (0, 1)
EPOCH = 2  # X became active in epoch 2 (rank 0 takes even epochs)


@dataclass(frozen=True)
class Budget:
    """How many of each fault or message one run may contain."""

    heartbeats: int = 2
    writes: int = 1
    dups: int = 1
    suspicions: int = 2
    pauses: int = 1
    kills: int = 0
    restarts: int = 0
    fence_failures: int = 1
    fence_timeouts: int = 1
    fence_lies: int = 0
    fence_outdated: int = 0  # refused: the serving peer marked this node Outdated
    promotes: int = 0  # pacemaker mode
    demotes: int = 0
    switchovers: int = 0  # planned (GSO) switch-overs, through the SwitchedOver hook


_BUDGET_FIELDS = tuple(f.name for f in fields(Budget))


class Violation(AssertionError):
    """An invariant failed; the message carries the trace that led there."""


def _bag(items) -> tuple:
    return tuple(sorted(items, key=hash))


def _without(bag: tuple, i: int) -> tuple:
    return bag[:i] + bag[i + 1:]


_SLOTS = FailoverMachine.__slots__


def _clone(m: FailoverMachine) -> FailoverMachine:
    c = object.__new__(FailoverMachine)
    for name in _SLOTS:
        setattr(c, name, getattr(m, name))
    return c


def _mkey(m: FailoverMachine | None) -> tuple | None:
    if m is None:
        return None
    # id() of an enum member: members are singletons, and Enum.__hash__ is slow Python.
    return (id(m.state), m.epoch, m.seen, m.pending, m.connected, m.peer_epoch, m.peer_active,
            m.fence_attempt, m.round_start, id(m.data), m.active_since, m.deadline is not None,
            m.peer_unfit)


@dataclass(slots=True)
class World:
    nodes: list  # FailoverMachine, or None for a dead node
    manager: Manager
    suspected: list  # the detector's verdict per node (True: no heart beat will do)
    paused: list
    clock: list
    store: list  # (epoch, active_since) persisted per node
    alarm: list
    net: tuple = ()  # (dst, "hb" | "write", epoch, active, unfit)
    persists: tuple = ()  # (node, epoch, active_since) written, not yet durable
    fences: tuple = ()  # (node, attempt) running
    resyncs: tuple = ()  # nodes with a resync running
    budget: Budget = field(default_factory=Budget)
    # every (epoch, node) a node became active in: X is the active of EPOCH at the start
    active_epochs: frozenset = frozenset({(EPOCH, X)})
    fence_ok: tuple = (False, False)  # a confirmation of this suspicion was fed
    promote_fed: tuple = (False, False)  # told from outside: Promote, or SwitchedOver
    # Per node, across restarts: the newest epoch it served in or accepted writes of.
    top: tuple = (EPOCH, EPOCH)
    fence: bool = True  # a fence action is configured (constant over a run)
    # Per node: its persisted data state says it cannot be promoted (Inconsistent or
    # Outdated): the engine persists that before it acts on it; a restart comes back so.
    unfit_store: tuple = (False, False)

    def key(self) -> tuple:
        return (tuple(_mkey(m) for m in self.nodes), tuple(self.suspected),
                tuple(self.paused), tuple(self.store), tuple(self.alarm), self.net,
                self.persists, self.fences, self.resyncs, self.budget, self.active_epochs,
                self.fence_ok, self.promote_fed, self.top, self.unfit_store)

    def clone(self) -> World:
        return World(list(self.nodes), self.manager, list(self.suspected), list(self.paused),
                     list(self.clock), list(self.store), list(self.alarm), self.net,
                     self.persists, self.fences, self.resyncs, self.budget,
                     self.active_epochs, self.fence_ok, self.promote_fed, self.top, self.fence,
                     self.unfit_store)


CHECK_FENCE = True  # the mutation test turns the bookkeeping check off to reach two actives
CHECK_TAKE_OVER = True  # likewise for the take-over's precondition
_TRUTHFUL = [True]  # the run's fences tell the truth (set by explore)
_TAKEOVERS = [0]  # take-overs by a restarted Consistent node in this run (explore reads it)


def _spend(w: World, what: str) -> None:
    w.budget = replace(w.budget, **{what: getattr(w.budget, what) - 1})


def _set(t: tuple, i: int, v) -> tuple:
    return t[:i] + (v,) + t[i + 1:]


def initial_world(budget: Budget, manager: Manager, fence: bool = True) -> World:
    kw = {"manager": manager, "fence_configured": fence,
          "timeouts": failover.Timeouts(fence=5, fence_retry=3)}
    nodes = [FailoverMachine.active(EPOCH, RANKS[X], **kw),
             FailoverMachine.standby(EPOCH, RANKS[Y], **kw)]
    return World(nodes, manager, [False, False], [False, False], [0.0, 0.0],
                 [(EPOCH, EPOCH), (EPOCH, 0)], [False, False], budget=budget, fence=fence)


def feed(w: World, n: int, event, now: float | None = None) -> None:
    """Feed ``event`` to node ``n`` (alive, not paused) and carry out its actions."""
    m = w.nodes[n]
    if now is not None:
        w.clock[n] = max(w.clock[n], now)
    before = m.epoch
    w.nodes[n] = m = _clone(m)
    actions = m.feed(event, w.clock[n])
    if m.epoch < before:
        raise Violation(f"node {n}'s epoch went down from {before} to {m.epoch}")
    if m.epoch > w.store[n][0]:
        raise Violation(f"node {n} took epoch {m.epoch} before it was persisted "
                        f"(durable: {w.store[n][0]})")
    if m.data is not DataState.CONSISTENT:  # Consistent comes only from a restart
        w.unfit_store = _set(w.unfit_store, n, m.data in (DataState.INCONSISTENT,
                                                          DataState.OUTDATED))
    if isinstance(event, PeerSuspected):
        w.resyncs = tuple(r for r in w.resyncs if r != n)
    # A confirmation counts from the last time this node followed an active.
    if m.state in (FoState.STANDBY, FoState.SYNC_TARGET):
        w.fence_ok = _set(w.fence_ok, n, False)
    elif isinstance(event, FenceResult) and event.ok:
        w.fence_ok = _set(w.fence_ok, n, True)
    for action in actions:
        if isinstance(action, PersistEpoch):
            if action.epoch <= w.store[n][0]:
                raise Violation(f"node {n} persists epoch {action.epoch}, not above its "
                                f"durable {w.store[n][0]}")
            w.persists = _bag(w.persists + ((n, action.epoch, action.active_since),))
        elif isinstance(action, FencePeer):
            w.fences = _bag(w.fences + ((n, action.attempt),))
        elif isinstance(action, StartResync):
            w.resyncs = _bag(set(w.resyncs) | {n})
        elif isinstance(action, BecomeActive):
            if w.manager is Manager.SELF and CHECK_FENCE and not (w.fence_ok[n]
                                                                   or w.promote_fed[n]):
                raise Violation(f"node {n} promoted itself to epoch {action.epoch} without a "
                                "confirmed fence")
            if w.manager is Manager.PACEMAKER and not w.promote_fed[n]:
                raise Violation(f"node {n} became active without Promote")
            if any(e == action.epoch and who != n for e, who in w.active_epochs):
                raise Violation(f"two promotions took epoch {action.epoch}")
            if action.epoch > w.store[n][0]:
                raise Violation(f"node {n} serves in epoch {action.epoch} before persisting it")
            w.active_epochs |= {(action.epoch, n)}
            w.top = _set(w.top, n, max(w.top[n], action.epoch))
            w.fence_ok = _set(w.fence_ok, n, False)
            w.promote_fed = _set(w.promote_fed, n, False)
        elif isinstance(action, RaiseAlarm):
            w.alarm[n] = True
        elif isinstance(action, ClearAlarm):
            w.alarm[n] = False
        elif isinstance(action, ArmTimer):
            assert action.at == m.deadline


def bury(w: World, n: int) -> None:
    """Node ``n`` is down: what it had not persisted is lost; its frames may still arrive."""
    w.nodes[n] = None
    w.paused[n] = False
    w.alarm[n] = False
    w.persists = tuple(p for p in w.persists if p[0] != n)
    w.fences = tuple(f for f in w.fences if f[0] != n)
    w.resyncs = tuple(r for r in w.resyncs if r != n)
    w.net = tuple(item for item in w.net if item[0] != n)


def restart(w: World, n: int) -> None:
    """Node ``n`` comes back from what it persisted; its detector has heard nobody yet."""
    epoch, since = w.store[n]
    data = DataState.INCONSISTENT if w.unfit_store[n] else DataState.CONSISTENT
    w.nodes[n] = FailoverMachine.restarted(epoch, since, RANKS[n], manager=w.manager,
                                           fence_configured=w.fence,
                                           timeouts=failover.Timeouts(fence=5, fence_retry=3),
                                           data=data)
    w.suspected[n] = True
    w.fence_ok = _set(w.fence_ok, n, False)
    w.promote_fed = _set(w.promote_fed, n, False)


def _up(w: World, n: int) -> bool:
    return w.nodes[n] is not None and not w.paused[n]


def moves(w: World):
    """Every (label, successor, progress) triple; faults and deliveries are not progress."""
    out: list[tuple[str, World, bool]] = []

    def go(label: str, fn, progress: bool = True) -> None:
        nxt = w.clone()
        fn(nxt)
        out.append((label, nxt, progress))

    for i, (dst, kind, epoch, active, unfit) in enumerate(w.net):
        if not _up(w, dst):
            continue

        def deliver(nw, i=i, dst=dst, kind=kind, epoch=epoch, active=active, unfit=unfit,
                    dup=False):
            if dup:
                _spend(nw, "dups")
            else:
                nw.net = _without(nw.net, i)
            m = nw.nodes[dst]
            if kind == "hb":
                ev = (LinkRestored if nw.suspected[dst] else PeerEpochSeen)(epoch, active, unfit)
                nw.suspected[dst] = False
                was_fed = nw.promote_fed[dst]
                may_take_over = unfit and m.data is DataState.CONSISTENT \
                    and m.state in (FoState.WAIT_PEER, FoState.STANDBY_PAIR) \
                    and nw.manager is Manager.SELF
                if may_take_over:
                    # the machine may take over: only from a peer that does not serve
                    peer = nw.nodes[1 - dst]
                    if CHECK_TAKE_OVER and _TRUTHFUL[0] and peer is not None and peer.serving:
                        raise Violation(f"node {dst} may take over while node {1 - dst} "
                                        f"serves ({peer.state.value})")
                    nw.promote_fed = _set(nw.promote_fed, dst, True)
                feed(nw, dst, ev)
                if may_take_over and not nw.nodes[dst].serving:
                    nw.promote_fed = _set(nw.promote_fed, dst, was_fed)
                elif may_take_over:
                    _TAKEOVERS[0] += 1
                return
            verdict = m.frame_verdict(epoch)
            if verdict is Verdict.ACCEPT:
                if epoch < nw.top[dst]:
                    raise Violation(f"node {dst} accepted a write of epoch {epoch} after it "
                                    f"served or followed epoch {nw.top[dst]}")
                nw.top = _set(nw.top, dst, epoch)
            elif verdict is Verdict.HOLD and not nw.suspected[dst]:
                feed(nw, dst, PeerEpochSeen(epoch, True))

        go(f"deliver {kind}({epoch}, active={active}) to {dst}", deliver, False)
        if w.budget.dups:
            go(f"duplicate {kind}({epoch}) to {dst}",
               lambda nw, d=deliver: d(nw, dup=True), False)
    for i, (n, epoch, since) in enumerate(w.persists):
        if w.paused[n]:
            continue

        def durable(nw, i=i, n=n, epoch=epoch, since=since):
            nw.persists = _without(nw.persists, i)
            nw.store[n] = (max(nw.store[n][0], epoch), since)
            feed(nw, n, Persisted(epoch))

        go(f"{n} epoch {epoch} durable", durable)
    for i, (n, attempt) in enumerate(w.fences):
        if not _up(w, n):
            continue
        other = 1 - n

        def answer(nw, ok, i=i, n=n, attempt=attempt, kill=False, spend=None,
                   outdated=False):
            nw.fences = _without(nw.fences, i)
            if spend:
                _spend(nw, spend)
            if kill and nw.nodes[1 - n] is not None:
                bury(nw, 1 - n)
            feed(nw, n, FenceResult(ok, "explorer", attempt, outdated))

        go(f"{n}'s fence {attempt} powers {other} off",
           lambda nw, a=answer: a(nw, True, kill=True))
        if w.budget.fence_failures:
            go(f"{n}'s fence {attempt} fails",
               lambda nw, a=answer: a(nw, False, spend="fence_failures"))
        # the device refuses: the peer served alone and marked this node Outdated
        if w.budget.fence_outdated and w.nodes[other] is not None and w.nodes[other].serving:
            go(f"{n}'s fence {attempt} refused: {n} is Outdated",
               lambda nw, a=answer: a(nw, False, spend="fence_outdated", outdated=True))
        if w.budget.fence_lies and w.nodes[other] is not None:
            go(f"{n}'s fence {attempt} says off, {other} runs on",
               lambda nw, a=answer: a(nw, True, spend="fence_lies"))
    for n in (X, Y):
        m = w.nodes[n]
        if m is None:
            if w.budget.restarts:
                def come_back(nw, n=n):
                    _spend(nw, "restarts")
                    restart(nw, n)

                go(f"{n} restarts from {w.store[n]}", come_back, False)
            continue
        if w.paused[n]:
            def resume(nw, n=n):
                nw.paused[n] = False

            go(f"{n} resumes", resume, False)
            continue
        if n in w.resyncs and m.state in (FoState.SYNC_SOURCE, FoState.SYNC_TARGET) \
                and w.nodes[1 - n] is not None:
            def synced(nw, n=n):
                nw.resyncs = tuple(r for r in nw.resyncs if r != n)
                feed(nw, n, ResyncDone())

            go(f"{n} resync done", synced)
        if m.deadline is not None:
            fencing = m.state is FoState.FENCING and any(f[0] == n for f in w.fences)
            if not fencing or w.budget.fence_timeouts:
                def expire(nw, n=n, t=m.deadline, spend=fencing):
                    if spend:
                        _spend(nw, "fence_timeouts")
                    feed(nw, n, Tick(), t)

                go(f"{n}'s timer passes in {m.state.value}", expire)
        # A dead peer with nothing in flight is suspected for sure (and without budget: the
        # liveness the terminal check relies on); any other suspicion is a fault.
        peer_gone = w.nodes[1 - n] is None
        if not w.suspected[n] and (w.budget.suspicions or peer_gone):
            def suspect(nw, n=n, fault=not peer_gone):
                if fault:
                    _spend(nw, "suspicions")
                nw.suspected[n] = True
                feed(nw, n, PeerSuspected())

            go(f"{n} suspects its peer", suspect, peer_gone)
        if w.budget.heartbeats and w.nodes[1 - n] is not None:
            def beat(nw, n=n):
                _spend(nw, "heartbeats")
                mm = nw.nodes[n]
                if mm.epoch > nw.store[n][0]:
                    raise Violation(f"node {n} sends epoch {mm.epoch} before persisting it")
                unfit = mm.data in (DataState.INCONSISTENT, DataState.OUTDATED)
                nw.net = _bag(nw.net + ((1 - n, "hb", mm.epoch, mm.serving, unfit),))

            go(f"{n} sends a heart beat ({m.epoch}, active={m.serving})", beat, False)
        if m.serving and w.budget.writes and w.nodes[1 - n] is not None:
            def write(nw, n=n):
                _spend(nw, "writes")
                nw.net = _bag(nw.net + ((1 - n, "write", nw.nodes[n].epoch, True, False),))

            go(f"{n} replicates a write of epoch {m.epoch}", write, False)
        if w.budget.pauses:
            def pause(nw, n=n):
                _spend(nw, "pauses")
                nw.paused[n] = True

            go(f"{n} pauses", pause, False)
        if w.budget.kills:
            def kill(nw, n=n):
                _spend(nw, "kills")
                bury(nw, n)

            go(f"{n} crashes", kill, False)
        for cmd, what in ((Promote(), "promotes"), (Demote(), "demotes")):
            if not getattr(w.budget, what):
                continue

            def command(nw, n=n, cmd=cmd, what=what):
                _spend(nw, what)
                if isinstance(cmd, Promote):
                    nw.promote_fed = _set(nw.promote_fed, n, True)
                probe = _clone(nw.nodes[n])
                try:
                    feed(nw, n, cmd)
                except FailoverRefused:
                    if _mkey(probe) != _mkey(nw.nodes[n]):
                        raise Violation(f"a refused {cmd} changed node {n}") from None
                    nw.nodes[n] = probe

            go(f"pacemaker: {type(cmd).__name__} {n}", command, False)
        if w.budget.switchovers and m.state is FoState.ACTIVE and _up(w, 1 - n) \
                and w.nodes[1 - n].state is FoState.STANDBY:
            def switch_over(nw, n=n):
                # The GSO engine's outcome: the old active stopped, the standby resumed from
                # its image; each failover machine learns it through the hook.
                _spend(nw, "switchovers")
                feed(nw, n, SwitchedOver(active=False))
                nw.promote_fed = _set(nw.promote_fed, 1 - n, True)
                feed(nw, 1 - n, SwitchedOver(active=True))

            go(f"planned switch-over {n} -> {1 - n}", switch_over, False)
    return out


def check_state(w: World, truthful: bool) -> None:
    serving = [n for n in (X, Y) if w.nodes[n] is not None and w.nodes[n].serving]
    if truthful and w.manager is Manager.SELF and len(serving) > 1:
        raise Violation("two nodes serve as active")


def check_terminal(w: World, truthful: bool) -> None:
    if not truthful or w.manager is not Manager.SELF:
        return
    alive = [n for n in (X, Y) if w.nodes[n] is not None]
    if not alive or any(w.nodes[n].serving or w.alarm[n] or w.paused[n] for n in alive):
        return
    # A restarted node that never heard its peer shows WAIT_PEER in its status; it has no
    # active to lose, so nothing to alarm about yet.
    if any(w.nodes[n].state is FoState.WAIT_PEER for n in alive):
        return
    raise Violation("quiescent with no node serving and no alarm raised")


@dataclass
class Report:
    states: int = 0
    terminals: int = 0
    failovers: int = 0  # terminal states where Y serves in a new epoch
    two_serving: int = 0  # states where two nodes serve (lying fence, Pacemaker)
    takeovers: int = 0  # moves where a restarted Consistent node took over an unfit peer
    spent: set = field(default_factory=set)


def explore(budget: Budget, manager: Manager = Manager.SELF, fence: bool = True,
            limit: int = 3_000_000) -> Report:
    """Breadth-first search of every reachable world; raises Violation with a trace."""
    truthful = budget.fence_lies == 0
    _TRUTHFUL[0] = truthful
    _TAKEOVERS[0] = 0
    report = Report()

    def expand(w):
        check_state(w, truthful)
        successors = moves(w)
        if sum(1 for m in w.nodes if m is not None and m.serving) > 1:
            report.two_serving += 1
        return successors

    def terminal(w) -> None:
        report.terminals += 1
        y = w.nodes[Y]
        if y is not None and y.serving and y.epoch > EPOCH:
            report.failovers += 1
        report.spent |= {name for name in _BUDGET_FIELDS
                         if getattr(w.budget, name) < getattr(budget, name)}
        check_terminal(w, truthful)

    report.states = search(initial_world(budget, manager, fence), expand, terminal, Violation,
                           limit)
    report.takeovers = _TAKEOVERS[0]
    return report


S = FoState
SELF_FAULTS = Budget(heartbeats=2, writes=1, dups=1, suspicions=2, pauses=1,
                     fence_failures=1, fence_timeouts=1)
KILL_RESTART = Budget(heartbeats=2, writes=1, dups=0, suspicions=1, pauses=1, kills=1,
                      restarts=1, fence_failures=1, fence_timeouts=0, fence_outdated=1)
LYING_FENCE = Budget(heartbeats=2, writes=1, dups=0, suspicions=1, pauses=0, kills=1,
                     restarts=1, fence_failures=0, fence_timeouts=0, fence_lies=1)
PACEMAKER = Budget(heartbeats=2, writes=1, dups=0, suspicions=1, pauses=0, fence_failures=0,
                   fence_timeouts=0, promotes=1, demotes=1)
PACEMAKER_KILL = Budget(heartbeats=2, writes=1, dups=0, suspicions=1, pauses=0, kills=1,
                        restarts=1, fence_failures=0, fence_timeouts=0, promotes=1)

RUNS = {
    # lost/duplicated/late heart beats and frames, a pause, a fence that fails or is late
    "self-net-pause-fence-faults": (SELF_FAULTS, Manager.SELF),
    # a crash (before or after persisting) and a restart from the persisted epoch
    "self-kill-restart": (KILL_RESTART, Manager.SELF),
    # a fence that confirms while the active runs: two serve, but never both committing
    "self-lying-fence": (LYING_FENCE, Manager.SELF),
    "pacemaker-promote-demote": (PACEMAKER, Manager.PACEMAKER),
    "pacemaker-kill-restart": (PACEMAKER_KILL, Manager.PACEMAKER),
    # a planned switch-over (the GSO hook), then faults around the new roles
    "self-switchover-then-faults": (replace(SELF_FAULTS, switchovers=1, dups=0, pauses=0),
                                    Manager.SELF),
}


@pytest.mark.parametrize("budget,manager", RUNS.values(), ids=RUNS.keys())
def test_explore(budget, manager):
    report = explore(budget, manager)
    assert report.failovers > 0  # the runs reach completed failovers, not only refusals
    # Every fault the budget allows happens somewhere (the runs are not vacuous).
    for name in _BUDGET_FIELDS:
        assert (name in report.spent) == (getattr(budget, name) > 0), name
    if budget.fence_lies or manager is Manager.PACEMAKER:
        # Two serve at once somewhere (the fence lied, or Pacemaker promoted while the other
        # ran), and the frame check above held in all of those states.
        assert report.two_serving > 0
    else:
        assert report.two_serving == 0


FULL = pytest.mark.skipif(not os.environ.get("HSP_EXPLORE_FULL"),
                          reason="about 70 s: set HSP_EXPLORE_FULL=1")


@FULL
def test_explore_restarts_with_fence_timeouts_and_two_suspicions():
    # About 360 000 states, 45 s on the 2-CPU host.
    report = explore(replace(KILL_RESTART, suspicions=2, fence_timeouts=1))
    assert report.failovers > 0 and report.two_serving == 0


@FULL
def test_explore_lying_fence_with_pauses_duplicates_and_two_suspicions():
    # About 230 000 states, 18 s.
    report = explore(replace(LYING_FENCE, suspicions=2, pauses=1, dups=1))
    assert report.two_serving > 0


@FULL
def test_explore_pacemaker_with_two_promotes_and_a_crash():
    # About 80 000 states, 6 s.
    report = explore(replace(PACEMAKER_KILL, promotes=2), Manager.PACEMAKER)
    assert report.two_serving > 0


def _patched_row(monkeypatch, state: FoState, on: failover.On, step: failover.Step) -> None:
    rows = dict(failover.TRANSITIONS[state])
    rows[on] = step
    monkeypatch.setitem(failover.TRANSITIONS, state, rows)


def test_a_restarted_consistent_node_takes_over_from_an_inconsistent_peer():
    # kill-active-during-resync: the standby became SyncTarget (Inconsistent), the active
    # crashed and came back Consistent; hearing the unfit peer it takes over, and in no
    # interleaving does that make two actives (the run's invariants hold).
    report = explore(KILL_RESTART)
    assert report.takeovers > 0


def test_explorer_catches_a_take_over_from_a_peer_that_could_serve(monkeypatch):
    # Mutation: a restarted Consistent node takes over from any peer that is not active,
    # whatever its data (an UpToDate standby may be fencing it and promoting meanwhile).
    real = FailoverMachine._may_take_over

    def careless(self, event):
        return real(self, replace(event, unfit=True))

    monkeypatch.setattr(FailoverMachine, "_may_take_over", careless)
    with pytest.raises(Violation, match="without a confirmed fence"):
        explore(KILL_RESTART)
    # not only bookkeeping: the standby fenced it, promoted, and both serve
    monkeypatch.setattr(sys.modules[__name__], "CHECK_FENCE", False)
    with pytest.raises(Violation, match="two nodes serve as active"):
        explore(KILL_RESTART)


def test_explorer_catches_a_promotion_without_fence(monkeypatch):
    # Mutation: the standby promotes on suspicion alone (no FencePeer, no FenceResult).
    _patched_row(monkeypatch, S.STANDBY, failover.On.SUSPECT_FENCE,
                 failover.Step(S.PROMOTING, (failover.Op.CLEAR_ALARM, failover.Op.PERSIST_NEXT)))
    small = replace(SELF_FAULTS, dups=0, pauses=0, fence_failures=0, fence_timeouts=0)
    with pytest.raises(Violation, match="without a confirmed fence"):
        explore(small)
    # And not only bookkeeping: without that check the explorer reaches two actives (the
    # active was only silent, and runs on).
    monkeypatch.setattr(sys.modules[__name__], "CHECK_FENCE", False)
    with pytest.raises(Violation, match="two nodes serve as active"):
        explore(small)


def test_explorer_catches_frames_accepted_without_the_epoch_check(monkeypatch):
    # Mutation: a standby applies replication frames whatever their epoch. With a lying
    # fence the old active runs on; the new active crashes and restarts as a standby, and
    # then takes the old active's writes (the split brain the epoch refusal prevents).
    def no_epoch_check(self, epoch):
        return Verdict.ACCEPT if self.state in failover.ACCEPTING else Verdict.REFUSE

    explore(LYING_FENCE)
    monkeypatch.setattr(FailoverMachine, "frame_verdict", no_epoch_check)
    with pytest.raises(Violation, match="accepted a write of epoch 2 after it served"):
        explore(LYING_FENCE)


def test_explorer_catches_an_epoch_used_before_it_is_persisted(monkeypatch):
    # Mutation: the promotion takes its epoch when it asks for the write, not when the
    # write is durable.
    apply = FailoverMachine._apply

    def eager(self, op, event, now):
        out = apply(self, op, event, now)
        if op is failover.Op.PERSIST_NEXT:
            self.epoch = self.pending
        return out

    monkeypatch.setattr(FailoverMachine, "_apply", eager)
    with pytest.raises(Violation, match="before it was persisted"):
        explore(replace(SELF_FAULTS, dups=0, pauses=0, fence_failures=0, fence_timeouts=0))


def test_explorer_catches_a_restart_that_forgets_its_epoch(monkeypatch):
    def forgetful(w: World, n: int, remember=restart) -> None:
        remember(w, n)
        w.nodes[n] = FailoverMachine.restarted(0, 0, RANKS[n])

    monkeypatch.setattr(sys.modules[__name__], "restart", forgetful)
    with pytest.raises(Violation, match="epoch went down|not above its durable"):
        explore(KILL_RESTART)


def test_without_a_fence_action_nobody_takes_over_and_an_alarm_says_so():
    # Self mode, no [fence]: every interleaving ends with X serving or an alarm up (the
    # terminal check), and Y never becomes active, not even after X crashed.
    report = explore(replace(KILL_RESTART, fence_failures=0), fence=False)
    assert report.failovers == 0 and report.terminals > 0 and report.two_serving == 0


def test_pacemaker_mode_never_promotes_itself():
    # No Promote in the budget: whatever happens, no node of a pacemaker pair becomes
    # active on its own (the explorer raises if one did), and Y never serves.
    report = explore(replace(PACEMAKER, promotes=0, demotes=0, kills=1, restarts=1),
                     Manager.PACEMAKER)
    assert report.failovers == 0 and report.terminals > 0
