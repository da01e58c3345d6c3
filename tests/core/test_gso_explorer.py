"""Exhaustive check of the GSO protocol: two machines, a hostile network, every interleaving.

A breadth-first search over the joint state of two nodes, the messages in flight (any may be
lost, duplicated once, reordered or delivered late), RDMA marker writes in flight, the marker
words, the local completions the drivers owe, deadlines expiring at any point, the loss of
every fabric, a node killed and restarted from its persisted epochs, a fence that fails or
never answers (its late answer still comes), late heart beats, images that fail to verify.
Both data paths are explored: push (RDMA Write + marker) and pull (A seals, B reads); a run
gives each GSO request its mode in turn, so two requests can push then pull. Every reachable
state is checked: never two nodes serving, no protocol violation, a marker of another epoch
never completes a GSO, a node resumes as active only from an image that verified (and, in
pull mode, that it read completely while the active's read permission was open, and that it
verified only after the active's Digest of this epoch came, against that digest), the active
sends its Digest only while its application is still frozen, a node never
serves while its image is open for remote read, and no read permission outlives its GSO, B never both aborts and completes one epoch (in one life), a restarted node never
completes or joins an epoch it had seen, refusals stop nothing, and a state where nothing
more can happen has one node serving or an alarm raised.

The fence is trusted, as every HA stack trusts its fence: "never two serving" holds for a
fence that tells the truth. A fence that confirms while the peer still runs (``fence_lies``)
does make two actives, and ``test_a_lying_fence_makes_two_actives`` shows it, so that nobody
mistakes the protocol for one that survives it (see ``hsp_rdma.core.gso``).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field, fields, replace

import pytest
from explore_bfs import search

from hsp_rdma.core import gso
from hsp_rdma.core.gso import (
    Abort,
    AllFabricsLost,
    CancelPull,
    CopyComplete,
    CopyFailed,
    Digest,
    DigestImage,
    Done,
    FenceConfirmed,
    FenceFailed,
    FencePeer,
    GsoMachine,
    GsoMode,
    GsoState,
    ImageDigested,
    ImageSealed,
    ImageVerified,
    MarkerSeen,
    PeerActive,
    PollMarker,
    PullComplete,
    PullFailed,
    Quiesced,
    Ready,
    RequestGso,
    RestartAsStandby,
    ResumeAsActive,
    RevokeRead,
    Sealed,
    SealFailed,
    SealImage,
    SendMessage,
    StartCopy,
    StartGso,
    StartPull,
    Tick,
    VerifyImage,
    WriteMarker,
    ZeroMarker,
    marker_value,
)
from hsp_rdma.errors import GsoRefused

REGION = 4096
IMAGE = 1000
X, Y = 0, 1  # X starts active, Y standby
PUSH, PULL = (GsoMode.PUSH,), (GsoMode.PULL,)
DIGEST = bytes(32)


def _bag(items) -> tuple:
    # A multiset as a canonical tuple; equal bags sort alike (ties only cost deduplication).
    return tuple(sorted(items, key=hash))


def _without(bag: tuple, i: int) -> tuple:
    return bag[:i] + bag[i + 1:]


@dataclass(frozen=True)
class Budget:
    """How many faults and user requests one run may contain."""

    requests: int = 2
    dups: int = 1
    kills: int = 1
    fabric_losses: int = 1
    fence_failures: int = 1
    heartbeats: int = 1
    fence_timeouts: int = 1  # a fence attempt's deadline passes before it answers
    fence_lies: int = 0  # a fence confirms while the peer still runs: two actives, by design
    restarts: int = 1  # a dead (killed or fenced) node comes back as a standby


_BUDGET_FIELDS = tuple(f.name for f in fields(Budget))


def _spend(w: World, what: str) -> None:
    w.budget = replace(w.budget, **{what: getattr(w.budget, what) - 1})


_MACHINE_SLOTS = GsoMachine.__slots__


def _clone_machine(m: GsoMachine) -> GsoMachine:
    # copy.copy is the explorer's bottleneck; a slotted machine copies field by field.
    c = object.__new__(GsoMachine)
    for name in _MACHINE_SLOTS:
        setattr(c, name, getattr(m, name))
    return c


@dataclass(slots=True)
class World:
    """The joint state. ``key()`` leaves out clocks and deadlines: every timed state holds
    exactly one armed deadline, and ticks are explored as "that deadline has passed".
    Machines are shared between worlds and copied only by ``feed`` (copy on write)."""

    nodes: list[GsoMachine]
    dead: list[bool]
    clock: list[float]
    net: tuple = ()  # (destination, message): sent, not yet delivered (maybe never)
    writes: tuple = ()  # (destination, marker value): RDMA writes not yet landed
    mem: list[int] = field(default_factory=lambda: [0, 0])
    polls: list[int | None] = field(default_factory=lambda: [None, None])
    last_seen: list[int] = field(default_factory=lambda: [0, 0])  # last MarkerSeen value
    pending: tuple = ()  # (node, "quiesce" | "copy" | "verify" | "fence", epoch)
    budget: Budget = field(default_factory=Budget)
    markers_written: frozenset = frozenset()
    done_sent: frozenset = frozenset()
    abort_sent: frozenset = frozenset()
    verified: frozenset = frozenset()  # (node, epoch): ImageVerified(ok=True) fed to node
    read_open: frozenset = frozenset()  # (node, epoch): its image is open for remote read
    pulled: frozenset = frozenset()  # (node, epoch): PullComplete fed to node
    # (node, epoch, digest): a Digest message delivered to node (the standby received it)
    digest_received: frozenset = frozenset()
    # (epoch, seen) a node persisted when it last went down; None if it never did.
    persisted: tuple = (None, None)

    def key(self) -> tuple:
        machines = tuple((m.state.value, m.epoch, m.seen, m.active_since, m.mode,
                          m.pull_digest) for m in self.nodes)
        return (machines, tuple(self.dead), self.net, self.writes, tuple(self.mem),
                tuple(self.polls), tuple(self.last_seen), self.pending, self.budget,
                self.markers_written, self.done_sent, self.abort_sent, self.verified,
                self.read_open, self.pulled, self.digest_received, self.persisted)

    def clone(self) -> World:
        return World(list(self.nodes), list(self.dead), list(self.clock), self.net,
                     self.writes, list(self.mem), list(self.polls), list(self.last_seen),
                     self.pending, self.budget, self.markers_written, self.done_sent,
                     self.abort_sent, self.verified, self.read_open, self.pulled,
                     self.digest_received, self.persisted)


class Violation(AssertionError):
    """An invariant failed; the message carries the trace that led there."""


def initial_world(budget: Budget, modes: tuple = PUSH) -> World:
    """X active and Y standby after two earlier switch-overs (epochs 1 and 2), with their
    leftovers: a stale marker in Y's region, a late marker write of epoch 1 still in flight,
    late messages of epoch 2 (a Sealed too when the run pulls)."""
    nodes = [GsoMachine.active(2, REGION), GsoMachine.standby(2, REGION)]
    late = [(Y, Done(2)), (X, StartGso(2, IMAGE)), (Y, Ready(2))]
    if GsoMode.PULL in modes:
        late += [(X, Sealed(2, 0x1000, 7, IMAGE, gso.DigestAlgo.CRC32)), (X, Digest(2, DIGEST))]
    return World(
        nodes=nodes, dead=[False, False], clock=[0.0, 0.0],
        net=_bag(late),
        writes=_bag([(Y, marker_value(1))]),
        mem=[marker_value(2), marker_value(1)],
        budget=budget,
    )


def feed(w: World, n: int, event, now: float | None = None) -> None:
    """Feed ``event`` to node ``n`` and let the environment execute its actions."""
    if w.dead[n]:
        return
    if now is not None:
        w.clock[n] = max(w.clock[n], now)
    if isinstance(event, ImageVerified) and event.ok:
        w.verified |= {(n, event.epoch)}
    if isinstance(event, PullComplete):
        w.pulled |= {(n, event.epoch)}
    if isinstance(event, Digest):
        w.digest_received |= {(n, event.epoch, event.digest)}
    w.nodes[n] = machine = _clone_machine(w.nodes[n])
    actions = machine.feed(event, w.clock[n])
    other = 1 - n
    # A restarted node never joins (Ready), completes (Done, resume, restart as standby) or
    # otherwise finishes an epoch it had seen before it went down.
    floor = w.persisted[n][1] if w.persisted[n] is not None else 0
    for action in actions:
        if isinstance(action, SendMessage) and isinstance(action.message, (Ready, Done)):
            old = action.message.epoch
        elif isinstance(action, (ResumeAsActive, RestartAsStandby)):
            old = action.epoch
        else:
            old = None
        if old is not None and old <= floor:
            raise Violation(f"restarted node {n} (persisted seen {floor}) acted on epoch {old}: "
                            f"{action}")
        if isinstance(action, SendMessage):
            msg = action.message
            if isinstance(msg, Done):
                w.done_sent |= {(n, msg.epoch)}
            if isinstance(msg, Abort):
                w.abort_sent |= {(n, msg.epoch)}
            if isinstance(msg, Digest) and machine.serving:
                raise Violation(f"node {n} sent the digest of epoch {msg.epoch} while serving "
                                "(its image may have changed since it was frozen)")
            if w.done_sent & w.abort_sent:
                raise Violation(f"{sorted(w.done_sent & w.abort_sent)} both done and aborted")
            if not w.dead[other]:
                w.net = _bag(w.net + ((other, msg),))
        elif isinstance(action, StartCopy):
            w.pending = _bag(w.pending + ((n, "copy", action.epoch),))
        elif isinstance(action, SealImage):
            w.pending = _bag(w.pending + ((n, "seal", action.epoch),))
        elif isinstance(action, DigestImage):
            w.pending = _bag(w.pending + ((n, "digest", action.epoch),))
        elif isinstance(action, RevokeRead):
            w.read_open -= {(n, action.epoch)}
        elif isinstance(action, StartPull):
            w.pending = _bag(w.pending + ((n, "pull", action.epoch),))
        elif isinstance(action, CancelPull):
            w.pending = tuple(p for p in w.pending if p != (n, "pull", action.epoch))
        elif isinstance(action, WriteMarker):
            w.markers_written |= {action.value >> 16}
            if not w.dead[other]:
                w.writes = _bag(w.writes + ((other, action.value),))
        elif isinstance(action, ZeroMarker):
            w.mem[n] = 0
            w.pending = _bag(w.pending + ((n, "quiesce", w.nodes[n].epoch),))
        elif isinstance(action, PollMarker):
            w.polls[n] = action.not_equal_to
        elif isinstance(action, VerifyImage):
            if machine.mode is GsoMode.PULL and \
                    (n, action.epoch, action.digest) not in w.digest_received:
                raise Violation(f"node {n} verified its pulled image of epoch {action.epoch} "
                                "without the active's digest")
            w.pending = _bag(w.pending + ((n, "verify", action.epoch),))
        elif isinstance(action, FencePeer):
            w.pending = _bag(w.pending + ((n, "fence", action.epoch),))
        elif isinstance(action, ResumeAsActive):
            seen = w.last_seen[n]
            if machine.mode is GsoMode.PULL:
                if (n, action.epoch) not in w.pulled:
                    raise Violation(f"node {n} resumed in epoch {action.epoch} without having "
                                    "pulled the image")
                if not any(d[:2] == (n, action.epoch) for d in w.digest_received):
                    raise Violation(f"node {n} resumed in epoch {action.epoch} without having "
                                    "received the active's digest")
            elif action.epoch not in w.markers_written or seen != marker_value(action.epoch):
                raise Violation(f"node resumed in epoch {action.epoch} without its marker")
            if (n, action.epoch) not in w.verified:
                raise Violation(f"node {n} resumed in epoch {action.epoch} from an image "
                                "whose digest did not verify")


_CORPSE = GsoMachine.standby()


def bury(w: World, n: int) -> None:
    """Node ``n`` is down: what it owed vanishes, what it persisted (epoch and seen) stays for
    its restart. What was addressed to it vanishes too, unless it may restart: then it may
    still reach it after the restart (late, on the other fabric), stale or not."""
    if w.dead[n]:
        return
    m = w.nodes[n]
    w.persisted = tuple((m.epoch, m.seen) if i == n else p for i, p in enumerate(w.persisted))
    w.dead[n] = True
    w.nodes[n] = _CORPSE  # one canonical machine for the visited set; never fed again
    if not w.budget.restarts:
        w.net = tuple(item for item in w.net if item[0] != n)
        w.writes = tuple(item for item in w.writes if item[0] != n)
    w.pending = tuple(item for item in w.pending if item[0] != n)
    # Its registrations die with it: nothing is readable any more, nothing it read counts.
    w.read_open = frozenset(item for item in w.read_open if item[0] != n)
    w.pulled = frozenset(item for item in w.pulled if item[0] != n)
    w.digest_received = frozenset(item for item in w.digest_received if item[0] != n)
    w.polls[n], w.mem[n], w.last_seen[n] = None, 0, 0


def restart(w: World, n: int) -> None:
    """Node ``n`` comes back as a standby from its persisted epochs, as a new session: the
    peer destroyed the old session's queue pairs first, so nothing the node sent in its
    previous life still arrives (RDMA writes it posted may still land: the peer's CPU has no
    say in those). Its region holds the newest marker ever written, the worst stale value."""
    epoch, seen = w.persisted[n]
    w.nodes[n] = GsoMachine.standby(epoch, REGION, seen=seen)
    w.dead[n] = False
    w.net = tuple(item for item in w.net if item[0] == n)
    newest = max(w.markers_written | {epoch})
    w.mem[n] = marker_value(newest) if newest >= 1 else 0
    # Done and Abort are exclusive within one life: after a restart the node answers A's
    # question with Abort although it may have sent Done before it went down (it no longer
    # serves, so the Abort is true; and the Done of its previous life cannot arrive any more).
    w.done_sent = frozenset(item for item in w.done_sent if item[0] != n)
    w.abort_sent = frozenset(item for item in w.abort_sent if item[0] != n)


def collect_garbage(w: World) -> None:
    """Drop what can only ever be ignored: messages and completions of an epoch below the
    receiver's (epochs only grow, and the table ignores those as stale). Fence completions
    stay: the fence takes the peer down whatever the machine thinks of the confirmation."""
    epochs = [m.epoch for m in w.nodes]
    w.net = tuple(item for item in w.net if item[1].epoch >= epochs[item[0]])
    w.pending = tuple(item for item in w.pending
                      if item[1] == "fence" or item[2] >= epochs[item[0]])
    # A node resumes only in its current epoch: older verifications can never be asked for.
    w.verified = frozenset(item for item in w.verified if item[1] >= epochs[item[0]])
    w.pulled = frozenset(item for item in w.pulled if item[1] >= epochs[item[0]])
    w.digest_received = frozenset(item for item in w.digest_received
                                  if item[1] >= epochs[item[0]])


def moves(w: World, modes: tuple = PUSH, requests: int = 0):
    """Every (label, successor) pair, and whether any of them is progress (not a fault).
    A request for a GSO uses ``modes`` in turn (REQUESTS: the run's budget of them)."""
    out: list[tuple[str, World, bool]] = []

    def go(label: str, fn, progress: bool = True) -> None:
        nxt = w.clone()
        fn(nxt)
        out.append((label, nxt, progress))

    for i, (dst, msg) in enumerate(w.net):
        def deliver(nw, i=i, dst=dst, msg=msg):
            nw.net = _without(nw.net, i)
            feed(nw, dst, msg)

        go(f"deliver {msg} to {dst}", deliver, False)
        if w.budget.dups and not w.dead[dst]:
            def dup(nw, dst=dst, msg=msg):
                _spend(nw, "dups")
                feed(nw, dst, msg)

            go(f"duplicate {msg} to {dst}", dup, False)
    for i, (dst, value) in enumerate(w.writes):
        def land(nw, i=i, dst=dst, value=value):
            nw.writes = _without(nw.writes, i)
            nw.mem[dst] = value

        go(f"marker write {value:#x} lands on {dst}", land, False)
    for i, (n, what, epoch) in enumerate(w.pending):
        def complete(nw, event, i=i, n=n):
            nw.pending = _without(nw.pending, i)
            feed(nw, n, event)

        if what == "quiesce":
            go(f"{n} quiesced", lambda nw, c=complete, e=epoch: c(nw, Quiesced(e)))
        elif what == "copy":
            go(f"{n} copy complete", lambda nw, c=complete, e=epoch: c(nw, CopyComplete(e)))
            go(f"{n} copy failed", lambda nw, c=complete, e=epoch: c(nw, CopyFailed(e)))
        elif what == "seal":
            def sealed(nw, c=complete, e=epoch, n=n):
                # The engine opens the read as it reports the seal (one synchronous step).
                nw.read_open |= {(n, e)}
                c(nw, ImageSealed(e, 0x1000, 7))

            go(f"{n} sealed the image", sealed)
            go(f"{n} seal failed", lambda nw, c=complete, e=epoch: c(nw, SealFailed(e)))
        elif what == "digest":
            # A's digest of its frozen image, taken while B reads it (a digest that never
            # comes is B's copy timer running out first, also explored).
            go(f"{n} digested the image",
               lambda nw, c=complete, e=epoch: c(nw, ImageDigested(e, DIGEST)))
        elif what == "pull":
            # A read completes only while the source's image is open for it.
            if (1 - n, epoch) in w.read_open and not w.dead[1 - n]:
                go(f"{n} pulled the image",
                   lambda nw, c=complete, e=epoch: c(nw, PullComplete(e)))
            go(f"{n} pull failed", lambda nw, c=complete, e=epoch: c(nw, PullFailed(e)))
        elif what == "verify":
            for ok in (True, False):
                go(f"{n} verified {ok}",
                   lambda nw, c=complete, e=epoch, ok=ok: c(nw, ImageVerified(e, ok)))
        else:
            def fenced(nw, i=i, n=n, epoch=epoch):
                nw.pending = _without(nw.pending, i)
                bury(nw, 1 - n)
                # FenceConfirmed's contract: the peer's queue pairs are gone, nothing it
                # sent can still arrive.
                nw.net = tuple(item for item in nw.net if item[0] != n)
                nw.writes = tuple(item for item in nw.writes if item[0] != n)
                feed(nw, n, FenceConfirmed(epoch))

            go(f"{n} fenced the peer", fenced)
            if w.budget.fence_lies:
                def fence_lied(nw, i=i, n=n, epoch=epoch):
                    nw.pending = _without(nw.pending, i)
                    _spend(nw, "fence_lies")
                    # This node keeps its side of the contract (its queue pairs are gone);
                    # the peer was never taken down and keeps running.
                    nw.net = tuple(item for item in nw.net if item[0] != n)
                    nw.writes = tuple(item for item in nw.writes if item[0] != n)
                    feed(nw, n, FenceConfirmed(epoch))

                go(f"{n}'s fence confirmed, the peer still runs", fence_lied)
            if w.budget.fence_failures:
                def fence_failed(nw, c=complete, e=epoch):
                    _spend(nw, "fence_failures")
                    c(nw, FenceFailed(e))

                go(f"{n} fence failed", fence_failed)
    for n in (X, Y):
        if w.dead[n]:
            if w.budget.restarts:
                def come_back(nw, n=n):
                    _spend(nw, "restarts")
                    restart(nw, n)

                go(f"{n} restarts as standby from epochs {w.persisted[n]}", come_back, False)
            continue
        m = w.nodes[n]
        seen = w.polls[n]
        if seen is not None and w.mem[n] != seen:
            def poll(nw, n=n):
                value, nw.polls[n] = nw.mem[n], None
                nw.last_seen[n] = value
                feed(nw, n, MarkerSeen(value))

            go(f"{n} sees marker {w.mem[n]:#x}", poll)
        if m.deadline is not None and m.state is GsoState.FENCING:
            # The fence does not answer in time; its answer may still come later.
            if w.budget.fence_timeouts:
                def fence_timeout(nw, n=n, t=m.deadline):
                    _spend(nw, "fence_timeouts")
                    feed(nw, n, Tick(), t)

                go(f"{n}'s fence does not answer in time", fence_timeout)
        elif m.deadline is not None:
            go(f"{n} deadline passes in {m.state.value}",
               lambda nw, n=n, t=m.deadline: feed(nw, n, Tick(), t))
        if m.state is GsoState.NORMAL_ACTIVE and w.budget.requests:
            mode = modes[(requests - w.budget.requests) % len(modes)]

            def request(nw, n=n, mode=mode):
                _spend(nw, "requests")
                feed(nw, n, RequestGso(IMAGE, REGION, mode=mode))

            go(f"{n} asked for a {mode.name.lower()} GSO", request, False)
        if m.serving and w.budget.heartbeats and not w.dead[1 - n]:
            def heartbeat(nw, n=n, since=m.active_since):
                _spend(nw, "heartbeats")
                nw.net = _bag(nw.net + ((1 - n, PeerActive(since)),))

            go(f"{n} sends a heart beat", heartbeat, False)
        if w.budget.kills and not w.dead[1 - n]:
            def kill(nw, n=n):
                _spend(nw, "kills")
                bury(nw, n)

            go(f"{n} killed", kill, False)
        if w.budget.fabric_losses:
            def lose_fabrics(nw, n=n):
                _spend(nw, "fabric_losses")
                feed(nw, n, AllFabricsLost())

            go(f"{n} loses every fabric", lose_fabrics, False)
    return out


def check_state(w: World) -> None:
    """Invariants that hold in every reachable state."""
    serving = [n for n in (X, Y) if not w.dead[n] and w.nodes[n].serving]
    if len(serving) > 1:
        raise Violation("two nodes serve as active")
    for n, epoch in w.read_open:
        if n in serving:
            raise Violation(f"node {n} serves while its image of epoch {epoch} is open for "
                            "remote read")
    for n in (X, Y):
        m = w.nodes[n]
        if w.dead[n] or m.state is GsoState.NORMAL_ACTIVE:
            continue
        # A GSO asked of any node that is not idle-active is refused and stops nothing.
        probe = _clone_machine(m)
        try:
            probe.feed(RequestGso(IMAGE, REGION), w.clock[n])
        except GsoRefused:
            pass
        else:
            raise Violation(f"a GSO asked in {m.state.value} was not refused")
        if (probe.state, probe.epoch, probe.deadline) != (m.state, m.epoch, m.deadline):
            raise Violation("a refused GSO changed the machine")


def check_terminal(w: World) -> None:
    """Nothing more can happen: one node serves, or an alarm is up, or a node died after
    the other became standby (unplanned failover: the Monitor's job, not the GSO's), maybe
    to come back as a standby itself."""
    alive = [n for n in (X, Y) if not w.dead[n]]
    left_open = [item for item in w.read_open if not w.nodes[item[0]].alarmed]
    if left_open:
        raise Violation(f"read permission left open after the GSO: {sorted(left_open)}")
    serving = [n for n in alive if w.nodes[n].serving]
    if len(serving) == 1 or any(w.nodes[n].alarmed for n in alive):
        return
    died = any(p is not None for p in w.persisted)
    if died and all(w.nodes[n].state is GsoState.NORMAL_STANDBY for n in alive):
        return
    raise Violation(f"quiescent with {len(serving)} serving and no alarm")


@dataclass
class Report:
    states: int = 0
    terminals: int = 0
    switched: int = 0  # terminal states where a node serves since a new epoch
    spent: Counter = field(default_factory=Counter)  # terminal states per fault kind used


def explore(budget: Budget, modes: tuple = PUSH, limit: int = 2_000_000) -> Report:
    """Breadth-first search of every reachable world; raises Violation with a trace. GSO
    requests take their mode from MODES in turn."""
    report = Report()

    def expand(w):
        check_state(w)
        successors = moves(w, modes, budget.requests)
        for _label, nxt, _progress in successors:
            collect_garbage(nxt)
        return successors

    def terminal(w) -> None:
        report.terminals += 1
        if any(m.epoch > 2 and m.active_since == m.epoch for m in w.nodes):
            report.switched += 1
        report.spent.update(name for name in _BUDGET_FIELDS
                            if getattr(w.budget, name) < getattr(budget, name))
        check_terminal(w)

    report.states = search(initial_world(budget, modes), expand, terminal, Violation, limit)
    return report


# Each run names its modes: GSO requests take them in turn, so a two-GSO run pushes then
# pulls (or the reverse), and the second GSO also starts from scratch when the first aborts.
BUDGETS = {
    # one GSO, every kind of fault once (restarts and fence timeouts have their own runs)
    "one-gso-all-faults": (Budget(requests=1, dups=1, kills=1, fabric_losses=1,
                                  fence_failures=1, heartbeats=1, fence_timeouts=0, restarts=0),
                           PUSH),
    "one-gso-all-faults-pull": (Budget(requests=1, dups=1, kills=1, fabric_losses=1,
                                       fence_failures=1, heartbeats=1, fence_timeouts=0,
                                       restarts=0), PULL),
    # two GSO requests: a retry after an abort, or a switch-back right after a completion
    "two-gsos-duplicates": (Budget(requests=2, dups=1, kills=0, fabric_losses=0,
                                   fence_failures=0, heartbeats=0, fence_timeouts=0,
                                   restarts=0), PUSH + PULL),
    "two-gsos-link-loss": (Budget(requests=2, dups=0, kills=0, fabric_losses=1,
                                  fence_failures=0, heartbeats=1, fence_timeouts=0, restarts=0),
                           PULL + PUSH),
    "two-gsos-kill-fence": (Budget(requests=2, dups=0, kills=1, fabric_losses=0,
                                   fence_failures=1, heartbeats=1, fence_timeouts=0,
                                   restarts=0), PUSH + PULL),
    # a fence that does not answer in time, answering late (in doubt, or after B's Done)
    "one-gso-fence-timeout": (Budget(requests=1, dups=1, kills=0, fabric_losses=1,
                                     fence_failures=1, heartbeats=1, fence_timeouts=1,
                                     restarts=0), PUSH),
    # a node killed or fenced comes back as a standby, stale messages and markers around it
    "one-gso-kill-restart": (Budget(requests=1, dups=1, kills=1, fabric_losses=1,
                                    fence_failures=1, heartbeats=1, fence_timeouts=0,
                                    restarts=1), PUSH),
    "one-gso-kill-restart-pull": (Budget(requests=1, dups=1, kills=1, fabric_losses=1,
                                         fence_failures=1, heartbeats=1, fence_timeouts=0,
                                         restarts=1), PULL),
}


@pytest.mark.parametrize(("budget", "modes"), BUDGETS.values(), ids=BUDGETS.keys())
def test_explore(budget, modes):
    report = explore(budget, modes)
    assert report.terminals > 0
    assert report.switched > 0  # the exploration reaches completed switch-overs, not only aborts
    # Every fault the budget allows happens somewhere (the runs are not vacuous).
    for name in _BUDGET_FIELDS:
        assert (report.spent[name] > 0) == (getattr(budget, name) > 0), name


FULL = pytest.mark.skipif(not os.environ.get("HSP_EXPLORE_FULL"),
                          reason="a minute or two: set HSP_EXPLORE_FULL=1")


@FULL
def test_explore_two_gsos_with_every_fault():
    # About 450 000 states, a minute. Push only: a pull after a push, with every fault, is
    # three times that (the push's late marker writes stay in flight through the pull);
    # "two-gsos-*" above cover that pair with fewer faults, "one-gso-all-faults-pull" a pull.
    report = explore(Budget(requests=2, dups=1, kills=1, fabric_losses=1, fence_failures=1,
                            heartbeats=1, fence_timeouts=0, restarts=0))
    assert report.switched > 0


@FULL
def test_explore_two_gsos_with_restarts_and_fence_timeouts():
    # A pull, then a push: about 145 000 states, 15 s (a push then a push: 360 000; the
    # push's fence timeouts are covered by "one-gso-fence-timeout"). A restart keeps what was
    # addressed to the dead node in flight, which multiplies the space: duplicates, fabric
    # losses and fence failures are left to the runs above (with fence failures too: a
    # million states).
    budget = Budget(requests=2, dups=0, kills=1, fabric_losses=0, fence_failures=0,
                    heartbeats=1, fence_timeouts=1, restarts=1)
    report = explore(budget, PULL + PUSH)
    assert report.switched > 0
    assert report.spent["restarts"] > 0 and report.spent["fence_timeouts"] > 0


def test_explorer_catches_a_broken_table(monkeypatch):
    # Sanity of the checker: let A resume on a "done" timeout after the marker (the classic
    # bug) and the explorer must find two actives.
    broken = dict(gso.TRANSITIONS[gso.Role.ACTIVE])
    awaiting = dict(broken[GsoState.AWAIT_DONE])
    awaiting[gso.On.TICK_EXPIRED] = gso.Step(
        GsoState.NORMAL_ACTIVE, (gso.Effect(gso.Op.RESUME_APPLICATION),))
    broken[GsoState.AWAIT_DONE] = awaiting
    monkeypatch.setitem(gso.TRANSITIONS, gso.Role.ACTIVE, broken)
    with pytest.raises(Violation, match="two nodes serve"):
        explore(Budget(requests=1, dups=0, kills=0, fabric_losses=0, fence_failures=0,
                       heartbeats=0, fence_timeouts=0, restarts=0))


NO_FAULTS = Budget(requests=1, dups=0, kills=0, fabric_losses=0, fence_failures=0,
                   heartbeats=0, fence_timeouts=0, fence_lies=0, restarts=0)


def test_explorer_catches_a_resume_from_an_image_that_did_not_verify(monkeypatch):
    # Sanity of the checker: let B resume after a digest mismatch, as if it were a match.
    broken = dict(gso.TRANSITIONS[gso.Role.STANDBY])
    verifying = dict(broken[GsoState.VERIFYING])
    verifying[gso.On.IMAGE_BAD] = verifying[gso.On.IMAGE_OK]
    broken[GsoState.VERIFYING] = verifying
    monkeypatch.setitem(gso.TRANSITIONS, gso.Role.STANDBY, broken)
    with pytest.raises(Violation, match="from an image whose digest did not verify"):
        explore(NO_FAULTS)


def test_explorer_catches_a_restart_that_forgets_its_epochs(monkeypatch):
    # Sanity of the checker: a node that restarts without what it persisted takes a late
    # Start-GSO of an epoch it had already seen (one it started itself) for a new one.
    def forgetful(w: World, n: int, remember=restart) -> None:
        remember(w, n)
        w.nodes[n] = GsoMachine.standby(0, REGION)

    monkeypatch.setattr(sys.modules[__name__], "restart", forgetful)
    with pytest.raises(Violation, match="restarted node .* acted on epoch"):
        explore(replace(NO_FAULTS, kills=1, restarts=1))


def test_a_lying_fence_makes_two_actives():
    # Safety after the marker rests on the fence, as Pacemaker's rests on STONITH: A fences B
    # exactly when it cannot hear B, so nothing B could say can stop A from resuming. With a
    # truthful fence the same run never has two serving; with a fence that confirms while B
    # still runs, the explorer finds two actives.
    explore(NO_FAULTS)
    with pytest.raises(Violation, match="two nodes serve as active"):
        explore(replace(NO_FAULTS, fence_lies=1))


def test_stop_application_only_after_ready():
    # Refusals and cancellations never reach StopApplication: it follows Ready only.
    for states in gso.TRANSITIONS.values():
        for state, steps in states.items():
            for on, step in steps.items():
                if any(e.op is gso.Op.STOP_APPLICATION for e in step.effects):
                    assert state is GsoState.PRE_GSO
                    assert on in (gso.On.READY, gso.On.READY_PULL)


def _mutate(monkeypatch, role, state, on, step) -> None:
    table = dict(gso.TRANSITIONS[role])
    rows = dict(table[state])
    rows[on] = step
    table[state] = rows
    monkeypatch.setitem(gso.TRANSITIONS, role, table)


E = gso.Effect


@pytest.mark.parametrize(("role", "state", "on", "step", "found"), [
    # B takes a failed pull for a complete one
    (gso.Role.STANDBY, GsoState.PULLING, gso.On.PULL_FAILED,
     gso.Step(GsoState.AWAIT_DIGEST, ()), "without having pulled"),
    # A becomes standby and forgets to revoke the read
    (gso.Role.ACTIVE, GsoState.AWAIT_DONE, gso.On.DONE,
     gso.Step(GsoState.NORMAL_STANDBY, (E(gso.Op.RESTART_AS_STANDBY),
                                        E(gso.Op.NOTIFY, gso.Outcome.COMPLETED))),
     "read permission left open"),
    # A thaws on B's Abort with the image still open for read
    (gso.Role.ACTIVE, GsoState.AWAIT_DONE, gso.On.ABORT,
     gso.Step(GsoState.NORMAL_ACTIVE, (E(gso.Op.RESUME_APPLICATION),
                                       E(gso.Op.NOTIFY, gso.Outcome.ABORTED))),
     "serves while its image"),
    # A resumes when B's pull takes too long, after Sealed (the point of no return)
    (gso.Role.ACTIVE, GsoState.AWAIT_DONE, gso.On.TICK_EXPIRED,
     gso.Step(GsoState.NORMAL_ACTIVE, (E(gso.Op.REVOKE_READ), E(gso.Op.RESUME_APPLICATION))),
     "two nodes serve"),
    # B's pull goes straight to verify when it completes before A's Digest came
    (gso.Role.STANDBY, GsoState.PULLING, gso.On.PULL_COMPLETE_EARLY,
     gso.Step(GsoState.VERIFYING, (E(gso.Op.VERIFY_IMAGE),)), "without the active's digest"),
    # B gives up waiting for the digest and verifies the image anyway
    (gso.Role.STANDBY, GsoState.AWAIT_DIGEST, gso.On.TICK_EXPIRED,
     gso.Step(GsoState.VERIFYING, (E(gso.Op.VERIFY_IMAGE),)), "without the active's digest"),
    # A sends a digest that completes after it resumed (its image runs again)
    (gso.Role.ACTIVE, GsoState.NORMAL_ACTIVE, gso.On.IMAGE_DIGESTED,
     gso.Step(GsoState.NORMAL_ACTIVE, (E(gso.Op.SEND_DIGEST),)),
     "sent the digest .* while serving"),
], ids=["resume-after-failed-pull", "no-revoke-on-done", "thaw-without-revoke",
        "resume-on-pull-timeout", "verify-without-digest", "verify-on-digest-timeout",
        "digest-after-thaw"])
def test_explorer_catches_broken_pull_tables(monkeypatch, role, state, on, step, found):
    # Sanity of the checker in pull mode: each mutation of the table is found.
    explore(NO_FAULTS, PULL)
    _mutate(monkeypatch, role, state, on, step)
    with pytest.raises(Violation, match=found):
        explore(NO_FAULTS, PULL)
