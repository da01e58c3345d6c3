"""Unplanned failover of one pair session as a sans-IO state machine: roles, cluster epochs,
fencing, dirty tracking and resync (issue 12; DESIGN.md "Unplanned failover, split brain,
fencing" and "Under a cluster manager").

Two rules, as in ``core/gso.py``: every transition lives in ``TRANSITIONS`` (state, event kind)
-> (next state, effects), classified by ``_kind`` and carried out by ``_apply``; a missing
entry raises ``IllegalTransition`` and stays raised. The machine does no I/O: ``feed(event,
now)`` returns the actions its engine executes, in order. One machine per pair session (n+1:
one per protected active on the standby). The failure detector (``core/detector.py``) turns
heart beats into the ``PeerSuspected``/``LinkRestored``/``PeerEpochSeen`` events fed here.

States (``FoState``; the role is ``ROLE_OF[state]``, ordered like Pacemaker's roles):
  active side  ACTIVE        serving, the peer connected and in sync
               ACTIVE_ALONE  serving, the peer lost: dirty tracking on (a link loss, or start)
               SYNC_SOURCE   serving, resyncing the returned peer (dirty tracking still on)
               DEMOTING      stopped serving: a newer epoch exists; persisting it, then Rejoin
  standby side STANDBY       the peer is active and heard, data UpToDate
               SYNC_TARGET   receiving a resync, data Inconsistent (never promotable)
               WAIT_PEER     no active heard yet (start, restart, after a demotion)
               STANDBY_PAIR  the peer is heard but is no active either: alarm in self mode
               PEER_LOST     pacemaker mode: the active is suspected; Pacemaker decides
               FENCING       self mode: the active is suspected, FencePeer issued, timer armed
               IN_DOUBT      self mode: the active is suspected and this node cannot promote
                             (no fence action, fence failed or timed out, data not UpToDate):
                             alarm up; with a fence action it fences again when the retry
                             timer passes (every ``Timeouts.fence_retry`` s, without end)
               PROMOTING     persisting the new epoch; serving only after ``Persisted``
Events: PeerSuspected, LinkRestored, PeerEpochSeen (detector); FenceResult, Persisted, Tick,
ResyncDone (engine); Promote, Demote (Pacemaker's OCF agent or the operator); SwitchedOver
(the GSO engine's hook: a planned switch-over completed). Actions: PersistEpoch, FencePeer,
ArmTimer, BecomeActive, StopServing, Rejoin, StartDirtyTracking, StopDirtyTracking,
StartResync, RaiseAlarm, ClearAlarm.

Epochs. The cluster epoch says which active is current. A promotion takes the next epoch that
is above every epoch this node has seen **and** belongs to this node (epoch % 2 == rank, rank
0 for the name that sorts first): two promotions can never take the same epoch, even
concurrent ones (a lying fence, two operators). Every epoch a node takes, by promotion or from
the peer, is persisted before it is used: the machine emits ``PersistEpoch`` and changes its
``epoch`` only on ``Persisted``; ``BecomeActive`` comes after, so no frame carries an epoch that
a crash could forget. Replication frames are judged by ``frame_verdict(epoch)``: older than this
node's epoch -> REFUSE; newer -> HOLD (feed ``PeerEpochSeen``; judge again once persisted);
equal -> ACCEPT only on the standby side while the peer may be active (STANDBY, SYNC_TARGET,
PEER_LOST, FENCING, IN_DOUBT). An active that sees a newer epoch (any heart beat or frame)
stops serving at once, persists it, and rejoins as a standby needing resync (Outdated).

Who promotes. ``manager = "self"``: a standby promotes only after the detector suspected the
active (every fabric silent past the timeout) **and** a fence of it was confirmed (FenceResult
ok of an attempt of this suspicion, or the operator's confirmation ``attempt=None``, Pacemaker's
``stonith_admin --confirm``), and only with data UpToDate. No fence action: alarm, stay standby.
A fence that fails or does not answer in ``Timeouts.fence``: alarm (raised again each time),
stay standby, fence again every ``fence_retry`` s until it works or the peer is heard again; a
late confirmation of this suspicion still counts (the peer is down whichever attempt did it). A
node restarted from persisted state (data Consistent) does not promote itself on silence: it
cannot tell whether the peer went on after it. It serves again (in its own epoch, as the
active it was) only when it was the active of its epoch and hears the peer not active, in that
epoch, with data that cannot be promoted (Inconsistent: a resync from this node was cut by its
crash; Outdated): then nobody else can serve, and this node holds the only complete copy
(DRBD's Consistent node meeting an Inconsistent peer becomes SyncSource).
Heart beats carry the sender's fitness for that (``unfit``). A node whose state did not survive
(no persisted P.mem, a resync it received was cut) restarts Inconsistent. ``manager = "pacemaker"``: the machine never promotes itself;
``Promote`` (refused unless data is UpToDate or Consistent) and ``Demote`` drive it; Pacemaker's
STONITH fences. In self mode ``Promote`` is the operator's ``drbdadm primary``: taken only when
the peer is heard and not active. Both modes change roles through the same two effects
(``Op.PERSIST_NEXT`` then ``Op.BECOME_ACTIVE``; ``Op.STOP_SERVING``).

Guarantees (checked by tests/core/test_failover_explorer.py over lost, duplicated, reordered
and late heart beats and frames, pauses, crashes with restarts from the persisted epoch, and
fences that succeed, fail, time out or lie):
  1. With a fence that tells the truth, never two nodes serving (self mode).
  2. Whatever the fence does (a lying fence makes two nodes serve, and nothing the machine can
     do stops it, because it fences exactly when it cannot hear the peer): a node never accepts
     a replication frame of an epoch below one it has served in or already accepted frames
     of, and no two promotions share an epoch. So the new active refuses the old active's
     writes, as active and again after a crash and restart as standby (its epoch is
     persisted): the old active can never commit in modes received/applied, and "two actives
     whose writes the other accepts" never happens. In async mode the old active acknowledges
     alone and those writes are lost when it rejoins (split brain, alarmed as soon as a heart
     beat crosses). Engine contract for HOLD: feed ``PeerEpochSeen`` only while the detector
     hears the peer; otherwise drop the frame (the heart beats bring the epoch).
  3. Self mode: no node promotes itself without a confirmed fence of this suspicion, except
     a restarted Consistent node taking over from a peer that cannot serve (above);
     pacemaker mode: no node becomes active without Promote (or SwitchedOver).
  4. A node's epoch never decreases (restarts included), and no frame carries an epoch
     before it is persisted.
Not guaranteed: what an active acknowledges *alone* (ACTIVE_ALONE, its peer unreachable but
alive) survives a failover to that peer; the standby fences it and promotes with the data it
had at the link loss (the same window as DRBD without resource-level fencing). To close it
the engine must not acknowledge received/applied commits while alone (they fail after
``timeouts.commit``); then "acknowledged" means "on both nodes" in those modes.

Data states use DRBD's words (``DataState``) for status and Pacemaker promotion scores
(``promotion_score``: UpToDate 100, Consistent 10, otherwise 0 = not promotable).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from hsp_rdma.core.frames import MAX_EPOCH
from hsp_rdma.errors import HspError, IllegalTransition


class FailoverRefused(HspError):
    """A Promote or Demote command was refused before anything changed; says why."""


class Role(enum.IntEnum):
    """Ordered like Pacemaker's roles: unpromoted < promoted."""

    STANDBY = 1
    ACTIVE = 2


class Manager(enum.Enum):
    SELF = "self"  # the failure detector and a confirmed fence promote the standby
    PACEMAKER = "pacemaker"  # Promote/Demote from the OCF agent; never promotes itself


class DataState(enum.Enum):
    """DRBD's disk states, for status and promotion scores."""

    UP_TO_DATE = "UpToDate"
    CONSISTENT = "Consistent"  # consistent, but maybe behind (restarted alone)
    INCONSISTENT = "Inconsistent"  # a resync is running, or never synced
    OUTDATED = "Outdated"  # known to be behind (a demoted old active)


class SyncSide(enum.Enum):
    SOURCE = "SyncSource"
    TARGET = "SyncTarget"


class Verdict(enum.Enum):
    """What the engine does with a replication frame of some epoch (``frame_verdict``)."""

    ACCEPT = "accept"
    REFUSE = "refuse"  # an older epoch, or a node that takes no writes now
    HOLD = "hold"  # a newer epoch: feed PeerEpochSeen, judge again once it is persisted


class FoState(enum.Enum):
    ACTIVE = "ACTIVE"
    ACTIVE_ALONE = "ACTIVE_ALONE"
    SYNC_SOURCE = "SYNC_SOURCE"
    DEMOTING = "DEMOTING"
    STANDBY = "STANDBY"
    SYNC_TARGET = "SYNC_TARGET"
    WAIT_PEER = "WAIT_PEER"
    STANDBY_PAIR = "STANDBY_PAIR"
    PEER_LOST = "PEER_LOST"
    FENCING = "FENCING"
    IN_DOUBT = "IN_DOUBT"
    PROMOTING = "PROMOTING"


# ----------------------------------------------------------------------------- events
class Event:
    """Base of everything fed to the machine."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class PeerSuspected(Event):
    """Detector: every fabric has been silent past the timeout; ``evidence`` lists the
    retry-exhausted completions and cm disconnects seen meanwhile (for the alarm text)."""

    evidence: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LinkRestored(Event):
    """Detector: the first heart beat after a suspicion (or ever): the peer's epoch and role,
    and ``unfit``: the peer's data cannot be promoted (Inconsistent or Outdated)."""

    epoch: int
    active: bool
    unfit: bool = False


@dataclass(frozen=True, slots=True)
class PeerEpochSeen(Event):
    """A heart beat or frame of the connected peer whose epoch, role or data fitness differs
    from the last (``unfit`` as in ``LinkRestored``)."""

    epoch: int
    active: bool
    unfit: bool = False


@dataclass(frozen=True, slots=True)
class FenceResult(Event):
    """The fence action's answer to ``FencePeer(attempt)``; ``attempt=None`` is the operator
    confirming by hand that the peer is down (Pacemaker's ``stonith_admin --confirm``)."""

    ok: bool
    detail: str = ""
    attempt: int | None = None
    # refused because the fence device holds THIS node Outdated (its peer served alone and
    # marked it, DRBD's outdate-peer): its data is behind; it is never promoted until resynced
    outdated: bool = False


@dataclass(frozen=True, slots=True)
class Persisted(Event):
    """``PersistEpoch(epoch)`` is durable (written, fsync'd)."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Tick(Event):
    """The timer armed by ``ArmTimer`` fired (or any time passed: ``now`` decides)."""


@dataclass(frozen=True, slots=True)
class ResyncDone(Event):
    """The resync of this session ended: every dirty block acknowledged."""


@dataclass(frozen=True, slots=True)
class Promote(Event):
    """Pacemaker's promote (or the operator's ``hsp promote``)."""


@dataclass(frozen=True, slots=True)
class Demote(Event):
    """Pacemaker's demote (or the operator's ``hsp demote``)."""


@dataclass(frozen=True, slots=True)
class SwitchedOver(Event):
    """Hook for the GSO engine: a planned switch-over completed; this node is now ``active``
    (it takes a new cluster epoch) or the standby (the new active's epoch comes by heart beat)."""

    active: bool


# ---------------------------------------------------------------------------- actions
class Action:
    """Base of everything the machine asks its engine to do, in list order."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class PersistEpoch(Action):
    """Write ``epoch`` and ``active_since`` durably, then feed ``Persisted(epoch)``."""

    epoch: int
    active_since: int


@dataclass(frozen=True, slots=True)
class FencePeer(Action):
    """Run the fence action (``off``) on the peer; feed ``FenceResult(ok, detail, attempt)``."""

    attempt: int


@dataclass(frozen=True, slots=True)
class ArmTimer(Action):
    """Feed ``Tick`` at ``at`` (replaces the timer armed before)."""

    at: float


@dataclass(frozen=True, slots=True)
class BecomeActive(Action):
    """Start serving as the active of ``epoch``; every frame sent from now carries it."""

    epoch: int


@dataclass(frozen=True, slots=True)
class StopServing(Action):
    """Stop the application and refuse new transactions; this node is no longer active."""

    reason: str


@dataclass(frozen=True, slots=True)
class Rejoin(Action):
    """Open the session again as the standby of ``epoch`` (new queue pairs); needs resync."""

    epoch: int


@dataclass(frozen=True, slots=True)
class StartDirtyTracking(Action):
    """Mark every write in the dirty bitmaps (persisted): the peer does not get them now."""


@dataclass(frozen=True, slots=True)
class StopDirtyTracking(Action):
    """The peer has everything again; the bitmaps are clean."""


@dataclass(frozen=True, slots=True)
class StartResync(Action):
    """SOURCE: send the dirty blocks from the bitmap's cursor (rate-limited), new writes go on
    being replicated; TARGET: merge this node's own bitmap into the request (what it wrote
    alone), or ask for everything when it has none; feed ``ResyncDone`` at the end."""

    side: SyncSide


@dataclass(frozen=True, slots=True)
class RaiseAlarm(Action):
    """Tell the operator (``oam``, ``hsp status``) what is wrong and what to do."""

    reason: str


@dataclass(frozen=True, slots=True)
class ClearAlarm(Action):
    """The condition of the last RaiseAlarm is over."""


# ---------------------------------------------------------------- the table and its keys
class On(enum.Enum):
    """Event kinds: the table's keys. ``_kind`` maps an event (and the machine) to one."""

    SUSPECT_FENCE = "PeerSuspected (self, fence action, UpToDate)"
    SUSPECT_NO_FENCE = "PeerSuspected (self, no fence action)"
    SUSPECT_UNFIT = "PeerSuspected (self, data not UpToDate)"
    SUSPECT_MANAGED = "PeerSuspected (pacemaker)"
    RESTORED_ACTIVE = "LinkRestored (peer active, not newer than an active)"
    RESTORED_STANDBY = "LinkRestored (peer not active, or stale)"
    TAKE_OVER = ("LinkRestored/PeerEpochSeen (self, this node restarted Consistent as the "
                 "active of its epoch, the peer not active in that epoch, its data not "
                 "promotable)")
    SEEN_ACTIVE = "PeerEpochSeen (peer active, not newer than an active)"
    SEEN_STANDBY = "PeerEpochSeen (peer not active, or stale)"
    NEWER = "LinkRestored/PeerEpochSeen (newer epoch, this node active)"
    FENCE_OK = "FenceResult ok (this suspicion)"
    FENCE_OK_UNFIT = "FenceResult ok (data not UpToDate)"
    FENCE_FAILED = "FenceResult failed"
    FENCE_REFUSED_OUTDATED = "FenceResult refused (this node Outdated by its peer)"
    FENCE_FAILED_PEER_ACTIVE = "FenceResult failed / fence timeout (peer back, active)"
    FENCE_FAILED_PEER_STANDBY = "FenceResult failed / fence timeout (peer back, not active)"
    PERSISTED = "Persisted (peer not heard)"
    PERSISTED_PEER_ACTIVE = "Persisted (peer heard, active)"
    PERSISTED_PEER_STANDBY = "Persisted (peer heard, not active)"
    TICK = "Tick"
    TICK_EXPIRED = "Tick (deadline passed)"
    RESYNC_DONE = "ResyncDone"
    PROMOTE = "Promote"
    PROMOTE_BAD = "Promote (refused)"
    DEMOTE = "Demote"
    SWITCHED_ACTIVE = "SwitchedOver (to active)"
    SWITCHED_STANDBY = "SwitchedOver (to standby)"


class Op(enum.Enum):
    """What a transition does; ``_apply`` turns each into machine updates and actions."""

    REFUSE = "refuse (raise FailoverRefused)"
    FENCE_PEER = "FencePeer"
    ARM_FENCE = "arm timer (fence)"
    ARM_RETRY = "arm timer (fence retry)"
    PERSIST_NEXT = "PersistEpoch (next own epoch)"
    ADOPT = "PersistEpoch (peer's epoch, if newer)"
    TAKE_EPOCH = "epoch := persisted"
    BECOME_ACTIVE = "BecomeActive"
    STOP_SERVING = "StopServing"
    OUTDATE = "data Outdated"
    REJOIN = "Rejoin"
    DIRTY_ON = "StartDirtyTracking"
    DIRTY_OFF = "StopDirtyTracking"
    RESYNC_SOURCE = "StartResync (SyncSource)"
    RESYNC_TARGET = "StartResync (SyncTarget), data Inconsistent"
    UP_TO_DATE = "data UpToDate"
    ALARM = "RaiseAlarm"
    ALARM_NO_ACTIVE = "RaiseAlarm (self mode: no active)"
    CLEAR_ALARM = "ClearAlarm"
    DISARM = "no timer (nothing to retry)"


@dataclass(frozen=True, slots=True)
class Step:
    """A table entry: the next state and the effects, in order."""

    next: FoState
    effects: tuple[Op, ...] = ()


S = FoState
_SAME = None  # in the table source: "this state"


def _steps(state: FoState, rows: dict, defaults: dict | None = None) -> dict[On, Step]:
    """A state's rows; a key named twice is an error. ``defaults`` fill only the keys the
    rows leave out (the rows every standby state shares)."""
    out: dict[On, Step] = {}
    for keys, (nxt, effects) in rows.items():
        for key in keys if isinstance(keys, tuple) else (keys,):
            if key in out:
                raise AssertionError(f"{state.value}: {key.value} has two rows")
            out[key] = Step(state if nxt is _SAME else nxt, effects)
    for keys, (nxt, effects) in (defaults or {}).items():
        for key in keys:
            out.setdefault(key, Step(state if nxt is _SAME else nxt, effects))
    return out


SUSPECTS = (On.SUSPECT_FENCE, On.SUSPECT_NO_FENCE, On.SUSPECT_UNFIT, On.SUSPECT_MANAGED)
_LATE = (On.FENCE_OK, On.FENCE_OK_UNFIT, On.FENCE_FAILED, On.TICK, On.TICK_EXPIRED,
         On.RESYNC_DONE)  # answers and timers of a situation that is over
_ADOPTED = (On.PERSISTED, On.PERSISTED_PEER_ACTIVE, On.PERSISTED_PEER_STANDBY)
_IGNORE: tuple[Op, ...] = ()
_DEMOTED = (Op.STOP_SERVING, Op.OUTDATE, Op.ALARM, Op.ADOPT)
_TO_TARGET = (Op.CLEAR_ALARM, Op.ADOPT, Op.RESYNC_TARGET)
_PROMOTE = (Op.CLEAR_ALARM, Op.PERSIST_NEXT)
# A restarted active resumes in its own epoch (persisted, and nobody else took it): no new one
_RESUME = (Op.CLEAR_ALARM, Op.BECOME_ACTIVE, Op.DIRTY_ON, Op.RESYNC_SOURCE)
# Rows every standby state shares: a newer epoch is persisted and taken; late answers ignored.
_STANDBY_COMMON = {
    _ADOPTED: (_SAME, (Op.TAKE_EPOCH,)),
    (On.DEMOTE, On.SWITCHED_STANDBY, *_LATE): (_SAME, _IGNORE),
}

TRANSITIONS: dict[FoState, dict[On, Step]] = {
    S.ACTIVE: _steps(S.ACTIVE, {
        SUSPECTS: (S.ACTIVE_ALONE, (Op.DIRTY_ON,)),
        On.NEWER: (S.DEMOTING, _DEMOTED),
        (On.SEEN_ACTIVE, On.SEEN_STANDBY, On.PROMOTE, On.SWITCHED_ACTIVE) + _ADOPTED + _LATE:
            (_SAME, _IGNORE),
        On.DEMOTE: (S.STANDBY_PAIR, (Op.STOP_SERVING,)),
        On.SWITCHED_STANDBY: (S.STANDBY_PAIR, ()),
    }),
    S.ACTIVE_ALONE: _steps(S.ACTIVE_ALONE, {
        (On.RESTORED_ACTIVE, On.RESTORED_STANDBY): (S.SYNC_SOURCE, (Op.RESYNC_SOURCE,)),
        On.NEWER: (S.DEMOTING, _DEMOTED),
        (On.PROMOTE, On.SWITCHED_ACTIVE) + _ADOPTED + _LATE: (_SAME, _IGNORE),
        # Demoted alone: its data is the newest there is; whoever is promoted next resyncs it.
        On.DEMOTE: (S.WAIT_PEER, (Op.STOP_SERVING,)),
    }),
    S.SYNC_SOURCE: _steps(S.SYNC_SOURCE, {
        On.RESYNC_DONE: (S.ACTIVE, (Op.DIRTY_OFF,)),
        # The resync stops; the bitmap keeps what was not acknowledged, and its cursor.
        SUSPECTS: (S.ACTIVE_ALONE, _IGNORE),
        On.NEWER: (S.DEMOTING, _DEMOTED),
        (On.SEEN_ACTIVE, On.SEEN_STANDBY, On.PROMOTE, On.SWITCHED_ACTIVE) + _ADOPTED
        + _LATE[:-1]: (_SAME, _IGNORE),
        # The peer is Inconsistent: no node could serve after this demotion.
        On.DEMOTE: (_SAME, (Op.REFUSE,)),
    }),
    S.DEMOTING: _steps(S.DEMOTING, {
        On.PERSISTED: (S.WAIT_PEER, (Op.TAKE_EPOCH, Op.REJOIN)),
        On.PERSISTED_PEER_ACTIVE: (S.SYNC_TARGET, (Op.TAKE_EPOCH, Op.REJOIN, Op.RESYNC_TARGET)),
        On.PERSISTED_PEER_STANDBY: (S.STANDBY_PAIR, (Op.TAKE_EPOCH, Op.REJOIN,
                                                     Op.ALARM_NO_ACTIVE)),
        SUSPECTS + (On.RESTORED_ACTIVE, On.RESTORED_STANDBY, On.SEEN_ACTIVE, On.SEEN_STANDBY,
                    On.NEWER, On.DEMOTE, On.SWITCHED_STANDBY) + _LATE: (_SAME, _IGNORE),
        (On.PROMOTE, On.PROMOTE_BAD): (_SAME, (Op.REFUSE,)),
    }),
    S.STANDBY: _steps(S.STANDBY, {
        On.SUSPECT_FENCE: (S.FENCING, (Op.FENCE_PEER, Op.ARM_FENCE)),
        # A fence of this suspicion answered after the peer was heard again: it is down now.
        On.FENCE_OK: (S.PROMOTING, _PROMOTE),
        On.SUSPECT_NO_FENCE: (S.IN_DOUBT, (Op.ALARM,)),
        On.SUSPECT_MANAGED: (S.PEER_LOST, _IGNORE),
        (On.SEEN_ACTIVE, On.SEEN_STANDBY): (_SAME, (Op.ADOPT,)),
        (On.PROMOTE, On.SWITCHED_ACTIVE): (S.PROMOTING, _PROMOTE),
        On.PROMOTE_BAD: (_SAME, (Op.REFUSE,)),
    }, _STANDBY_COMMON),
    S.SYNC_TARGET: _steps(S.SYNC_TARGET, {
        On.RESYNC_DONE: (S.STANDBY, (Op.UP_TO_DATE,)),
        On.SUSPECT_UNFIT: (S.IN_DOUBT, (Op.ALARM,)),
        # A fence of this suspicion took the active down after it was heard again, and this
        # node's resync had begun: nobody can serve; say so.
        On.FENCE_OK_UNFIT: (S.IN_DOUBT, (Op.ALARM,)),
        On.SUSPECT_MANAGED: (S.PEER_LOST, _IGNORE),
        (On.SEEN_ACTIVE, On.SEEN_STANDBY): (_SAME, (Op.ADOPT,)),
        On.PROMOTE_BAD: (_SAME, (Op.REFUSE,)),
    }, _STANDBY_COMMON),
    S.WAIT_PEER: _steps(S.WAIT_PEER, {
        On.RESTORED_ACTIVE: (S.SYNC_TARGET, _TO_TARGET),
        # Restarted Consistent, the peer Inconsistent or Outdated and not active: this node
        # holds the only complete copy and nobody else can serve (DRBD: it becomes SyncSource).
        On.TAKE_OVER: (S.SYNC_SOURCE, _RESUME),
        On.RESTORED_STANDBY: (S.STANDBY_PAIR, (Op.ADOPT, Op.ALARM_NO_ACTIVE)),
        # Pacemaker (or the operator) decides; in self mode the peer must be heard: refused.
        On.PROMOTE: (S.PROMOTING, _PROMOTE),
        On.PROMOTE_BAD: (_SAME, (Op.REFUSE,)),
    }, _STANDBY_COMMON),
    S.STANDBY_PAIR: _steps(S.STANDBY_PAIR, {
        On.SEEN_ACTIVE: (S.SYNC_TARGET, _TO_TARGET),
        On.TAKE_OVER: (S.SYNC_SOURCE, _RESUME),
        On.SEEN_STANDBY: (_SAME, (Op.ADOPT,)),
        (On.PROMOTE, On.SWITCHED_ACTIVE): (S.PROMOTING, _PROMOTE),
        On.PROMOTE_BAD: (_SAME, (Op.REFUSE,)),
        # No active was lost: nothing to fence; wait for the peer (alarm stays up).
        SUSPECTS: (S.WAIT_PEER, _IGNORE),
    }, _STANDBY_COMMON),
    S.PEER_LOST: _steps(S.PEER_LOST, {
        On.RESTORED_ACTIVE: (S.SYNC_TARGET, _TO_TARGET),
        On.RESTORED_STANDBY: (S.STANDBY_PAIR, (Op.ADOPT,)),
        On.PROMOTE: (S.PROMOTING, _PROMOTE),
        On.PROMOTE_BAD: (_SAME, (Op.REFUSE,)),
    }, _STANDBY_COMMON),
    S.FENCING: _steps(S.FENCING, {
        On.FENCE_OK: (S.PROMOTING, _PROMOTE),
        (On.FENCE_FAILED, On.TICK_EXPIRED): (S.IN_DOUBT, (Op.ALARM, Op.ARM_RETRY)),
        # Its data is behind the peer's (the peer outdated it): it can never take over, so it
        # does not fence again (it would only take down the one up-to-date copy).
        On.FENCE_REFUSED_OUTDATED: (S.IN_DOUBT, (Op.DISARM, Op.ALARM)),
        # The peer was heard again while the fence ran, and the fence did not take it down.
        On.FENCE_FAILED_PEER_ACTIVE: (S.SYNC_TARGET, _TO_TARGET),
        On.FENCE_FAILED_PEER_STANDBY: (S.STANDBY_PAIR, (Op.ADOPT, Op.ALARM_NO_ACTIVE)),
        # Heard again (and maybe lost again) while the fence runs: the fence's answer decides
        # (it may take the peer down).
        SUSPECTS + (On.RESTORED_ACTIVE, On.RESTORED_STANDBY, On.SEEN_ACTIVE, On.SEEN_STANDBY,
                    On.PROMOTE): (_SAME, _IGNORE),
        On.PROMOTE_BAD: (_SAME, (Op.REFUSE,)),
    }, _STANDBY_COMMON),
    S.IN_DOUBT: _steps(S.IN_DOUBT, {
        On.TICK_EXPIRED: (S.FENCING, (Op.FENCE_PEER, Op.ARM_FENCE)),
        On.FENCE_REFUSED_OUTDATED: (_SAME, (Op.DISARM, Op.ALARM)),
        # A late confirmation of this suspicion, or the operator's: the peer is down.
        On.FENCE_OK: (S.PROMOTING, _PROMOTE),
        (On.RESTORED_ACTIVE, On.SEEN_ACTIVE): (S.SYNC_TARGET, _TO_TARGET),
        (On.RESTORED_STANDBY, On.SEEN_STANDBY): (S.STANDBY_PAIR, (Op.ADOPT, Op.ALARM_NO_ACTIVE)),
        SUSPECTS: (_SAME, _IGNORE),
        On.PROMOTE_BAD: (_SAME, (Op.REFUSE,)),
    }, _STANDBY_COMMON),
    S.PROMOTING: _steps(S.PROMOTING, {
        On.PERSISTED: (S.ACTIVE_ALONE, (Op.TAKE_EPOCH, Op.BECOME_ACTIVE, Op.DIRTY_ON)),
        (On.PERSISTED_PEER_ACTIVE, On.PERSISTED_PEER_STANDBY):
            (S.SYNC_SOURCE, (Op.TAKE_EPOCH, Op.BECOME_ACTIVE, Op.DIRTY_ON, Op.RESYNC_SOURCE)),
        SUSPECTS + (On.RESTORED_ACTIVE, On.RESTORED_STANDBY, On.SEEN_ACTIVE, On.SEEN_STANDBY,
                    On.PROMOTE, On.SWITCHED_ACTIVE) + _LATE: (_SAME, _IGNORE),
        (On.DEMOTE, On.PROMOTE_BAD): (_SAME, (Op.REFUSE,)),
    }),
}

ROLE_OF: dict[FoState, Role] = {
    s: Role.ACTIVE if s in (S.ACTIVE, S.ACTIVE_ALONE, S.SYNC_SOURCE, S.DEMOTING) else Role.STANDBY
    for s in FoState
}
SERVING = frozenset({S.ACTIVE, S.ACTIVE_ALONE, S.SYNC_SOURCE})
# Standby states in which the peer may be the active: its replication frames are applied.
ACCEPTING = frozenset({S.STANDBY, S.SYNC_TARGET, S.PEER_LOST, S.FENCING, S.IN_DOUBT})
TIMED = frozenset({S.FENCING, S.IN_DOUBT})


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. From the node's TOML: ``fence`` = ``[fence] timeout`` / 1000."""

    fence: float = 30.0  # a fence action not answering in this time has failed
    fence_retry: float = 10.0  # after a failed fence, fence again after this long

    def __post_init__(self) -> None:
        for name in ("fence", "fence_retry"):
            if not getattr(self, name) > 0:
                raise ValueError(f"failover timeout {name} should be > 0 s, "
                                 f"got {getattr(self, name)}")


_PROMOTABLE = {DataState.UP_TO_DATE: 100, DataState.CONSISTENT: 10}


@dataclass(slots=True)
class FailoverMachine:
    """One node's view of one pair session. Build with ``start``, ``restarted`` or (tests,
    an established pair) ``active``/``standby``; drive with ``feed``."""

    state: FoState
    rank: int  # 0 or 1: this node takes the epochs e with e % 2 == rank
    epoch: int  # persisted; frames carry it
    manager: Manager = Manager.SELF
    fence_configured: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    data: DataState = DataState.UP_TO_DATE
    active_since: int = 0  # the epoch this node last became active in (persisted with epoch)
    seen: int = 0  # highest epoch heard of (maybe not persisted yet)
    pending: int | None = None  # the epoch being persisted
    connected: bool = False  # the detector hears the peer
    peer_epoch: int = 0
    peer_active: bool = False
    peer_unfit: bool = False  # the peer's last heart beat: its data cannot be promoted
    fence_attempt: int = 0  # the last FencePeer's attempt number
    round_start: int = 1  # the first attempt of the current suspicion
    deadline: float | None = None
    stale_ignored: int = 0
    broken: IllegalTransition | None = None

    # ------------------------------------------------------------------ construction
    @staticmethod
    def rank_of(name: str, peer: str) -> int:
        """0 for the node whose name sorts first, 1 for the other."""
        if name == peer:
            raise ValueError(f"node and peer are both named {name!r}: give them distinct names")
        return 0 if name < peer else 1

    @classmethod
    def start(cls, role: str, rank: int, manager: Manager = Manager.SELF,
              fence_configured: bool = True, timeouts: Timeouts | None = None
              ) -> tuple[FailoverMachine, list[Action]]:
        """A node's first start ever (no persisted state), in the role of its config. The
        active takes its first epoch (persisted before it serves); the standby is
        Inconsistent until its first resync."""
        if role not in ("active", "standby"):
            raise ValueError(f"role should be active or standby, got {role!r}")
        m = cls(S.WAIT_PEER, rank, 0, manager, fence_configured, timeouts or Timeouts(),
                DataState.INCONSISTENT)
        if role == "standby":
            return m, []
        m.state, m.data = S.PROMOTING, DataState.UP_TO_DATE
        return m, m._apply(Op.PERSIST_NEXT, Tick(), 0.0)

    @classmethod
    def restarted(cls, epoch: int, active_since: int, rank: int,
                  manager: Manager = Manager.SELF, fence_configured: bool = True,
                  timeouts: Timeouts | None = None,
                  data: DataState = DataState.CONSISTENT) -> FailoverMachine:
        """A node back from a crash or a fence, with what it persisted: a standby waiting to
        hear the peer, whose data is Consistent (it cannot know whether the peer went on) when
        its state survived intact, otherwise ``data`` says what it is (Inconsistent: a resync
        was cut, or its P.mem is not kept across a restart; Outdated)."""
        if data is DataState.UP_TO_DATE:
            data = DataState.CONSISTENT  # nobody is UpToDate alone after a restart
        return cls(S.WAIT_PEER, rank, epoch, manager, fence_configured,
                   timeouts or Timeouts(), data, active_since, epoch)

    @classmethod
    def active(cls, epoch: int, rank: int, **kw) -> FailoverMachine:
        """An established active of ``epoch`` with its peer connected and in sync."""
        return cls(S.ACTIVE, rank, epoch, active_since=epoch, seen=epoch, connected=True,
                   peer_epoch=epoch, **kw)

    @classmethod
    def standby(cls, epoch: int, rank: int, **kw) -> FailoverMachine:
        """An established, UpToDate standby of the active of ``epoch``."""
        return cls(S.STANDBY, rank, epoch, seen=epoch, connected=True, peer_epoch=epoch,
                   peer_active=True, **kw)

    # ------------------------------------------------------------------ status
    @property
    def role(self) -> Role:
        return ROLE_OF[self.state]

    @property
    def serving(self) -> bool:
        """Whether the application runs as active here."""
        return self.state in SERVING

    @property
    def promotion_score(self) -> int:
        """For Pacemaker's ``crm_master``: 100 UpToDate, 10 Consistent, 0 not promotable."""
        return _PROMOTABLE.get(self.data, 0)

    def status(self) -> dict[str, object]:
        """For ``hsp status`` and the OCF agent's monitor, in DRBD's words where they fit."""
        replication = {S.SYNC_SOURCE: "SyncSource", S.SYNC_TARGET: "SyncTarget"}.get(
            self.state, "Established" if self.connected else "Off")
        return {
            "role": self.role.name.lower(),
            "state": self.state.value,
            "serving": self.serving,
            "epoch": self.epoch,
            "disk": self.data.value,
            "connection": "Connected" if self.connected else "Connecting",
            "replication": replication,
            "peer_epoch": self.peer_epoch,
            "peer_role": ("active" if self.peer_active else "standby") if self.connected
            else "unknown",
            "promotion_score": self.promotion_score,
            "fence_attempts": self.fence_attempt,
        }

    def frame_verdict(self, epoch: int) -> Verdict:
        """What to do with a replication frame (write, P.mem transaction) of ``epoch``."""
        if epoch < self.epoch:
            return Verdict.REFUSE
        if epoch > self.epoch:
            return Verdict.HOLD
        return Verdict.ACCEPT if self.state in ACCEPTING else Verdict.REFUSE

    def next_epoch(self) -> int:
        """The epoch this node would take if it promoted now."""
        floor = max(self.epoch, self.seen, self.pending or 0)
        e = floor + 1
        return e if e % 2 == self.rank else e + 1

    # ------------------------------------------------------------------ feed
    def feed(self, event: Event, now: float) -> list[Action]:
        """Apply ``event`` at ``now``; return the actions to execute, in order.

        Raises FailoverRefused (nothing changed) for a refused command, IllegalTransition
        (sticky) for an event the current state has no entry for.
        """
        if self.broken is not None:
            raise self.broken
        kind = self._kind(event, now)
        if kind is None:
            self.stale_ignored += 1
            return []
        step = TRANSITIONS[self.state].get(kind)
        if step is None:
            self.broken = IllegalTransition(
                f"failover protocol violation: {kind.value} ({event!r}) in state "
                f"{self.state.value} at epoch {self.epoch}; this failover machine is now "
                "broken, raise an alarm")
            raise self.broken
        if Op.REFUSE in step.effects:
            raise FailoverRefused(self._refusal(event))
        self._observe(event)
        if step.next not in TIMED:
            self.deadline = None
        actions: list[Action] = []
        for op in step.effects:
            actions.extend(self._apply(op, event, now))
        self.state = step.next
        return actions

    def _observe(self, event: Event) -> None:
        # What the detector says about the peer is kept whatever the state does with it.
        if isinstance(event, PeerSuspected):
            self.connected = False
        elif isinstance(event, (LinkRestored, PeerEpochSeen)):
            self.connected = True
            if event.epoch >= self.peer_epoch:  # heart beats overtake each other on 2 fabrics
                self.peer_epoch, self.peer_active = event.epoch, event.active
                self.peer_unfit = event.unfit
            self.seen = max(self.seen, event.epoch)
        elif isinstance(event, Persisted):
            self.pending = None
        elif isinstance(event, FenceResult) and event.outdated and not event.ok \
                and self.state in (S.FENCING, S.IN_DOUBT):
            # this suspicion's fence, refused because the peer outdated this node: its data
            # is behind (a late answer after a resync made it UpToDate again says nothing)
            self.data = DataState.OUTDATED

    def _kind(self, event: Event, now: float) -> On | None:
        active_side = self.role is Role.ACTIVE
        if isinstance(event, PeerSuspected):
            if self.manager is Manager.PACEMAKER:
                return On.SUSPECT_MANAGED
            if self.data is not DataState.UP_TO_DATE:
                return On.SUSPECT_UNFIT
            return On.SUSPECT_FENCE if self.fence_configured else On.SUSPECT_NO_FENCE
        if isinstance(event, (LinkRestored, PeerEpochSeen)):
            restored = isinstance(event, LinkRestored)
            if active_side and event.epoch > self.epoch:
                return On.NEWER
            # A peer claiming active at an epoch below this node's is a stale active: not one
            # to follow (it will see this node's epoch and demote).
            follow = event.active and event.epoch >= self.epoch
            if not restored and self.connected and (event.epoch, event.active, event.unfit) \
                    == (self.peer_epoch, self.peer_active, self.peer_unfit):
                return None  # nothing new
            if self._may_take_over(event):
                return On.TAKE_OVER
            if restored:
                return On.RESTORED_ACTIVE if follow else On.RESTORED_STANDBY
            return On.SEEN_ACTIVE if follow else On.SEEN_STANDBY
        if isinstance(event, FenceResult):
            if event.attempt is not None and event.attempt < self.round_start:
                return None  # an answer about an earlier suspicion
            if not event.ok:
                if self.state is S.FENCING and self.connected:
                    return self._peer_back()
                if event.outdated and self.state in (S.FENCING, S.IN_DOUBT):
                    return On.FENCE_REFUSED_OUTDATED
                return On.FENCE_FAILED
            return On.FENCE_OK if self.data is DataState.UP_TO_DATE else On.FENCE_OK_UNFIT
        if isinstance(event, Tick):
            if self.deadline is None or now < self.deadline:
                return On.TICK
            if self.state is S.FENCING and self.connected:
                return self._peer_back()
            return On.TICK_EXPIRED
        if isinstance(event, Persisted):
            if event.epoch != self.pending:
                self.epoch = max(self.epoch, event.epoch)
                return None
            if not self.connected:
                return On.PERSISTED
            return On.PERSISTED_PEER_ACTIVE if self.peer_active else On.PERSISTED_PEER_STANDBY
        if isinstance(event, Promote):
            return On.PROMOTE if self._promote_problem() is None else On.PROMOTE_BAD
        if isinstance(event, SwitchedOver):
            return On.SWITCHED_ACTIVE if event.active else On.SWITCHED_STANDBY
        simple = {ResyncDone: On.RESYNC_DONE, Demote: On.DEMOTE}
        if type(event) not in simple:
            raise TypeError(f"not a failover event: {event!r}")
        return simple[type(event)]

    def _may_take_over(self, event: LinkRestored | PeerEpochSeen) -> bool:
        """A node restarted with Consistent data (its state was persisted), which was the
        active of its epoch, serves again in that epoch when it hears its peer not active, in
        the same epoch, with data that cannot be promoted: the peer cannot serve (Inconsistent
        or Outdated data is never promoted, and only a resync from an active makes it
        UpToDate), nobody took a newer epoch, so this node holds the only complete copy. A
        heart beat that says so was sent after this node restarted (it came on connections
        made since), so it is not a stale one from before. Resuming in the same epoch, not a
        new one, keeps both sides' sessions on one epoch; only this node ever served in it."""
        return (self.manager is Manager.SELF and self.state in (S.WAIT_PEER, S.STANDBY_PAIR)
                and self.data is DataState.CONSISTENT and event.unfit and not event.active
                and event.epoch == self.epoch == self.active_since)

    def _peer_back(self) -> On:
        return On.FENCE_FAILED_PEER_ACTIVE if self.peer_active else On.FENCE_FAILED_PEER_STANDBY

    def _promote_problem(self) -> str | None:
        if self.role is Role.ACTIVE:
            return None  # nothing to do (ignored), or refused by the row (DEMOTING)
        if self.data not in _PROMOTABLE:
            return (f"promotion refused: this node's data is {self.data.value}; only an "
                    "UpToDate or Consistent node may be promoted (wait for the resync)")
        if self.manager is Manager.SELF and not self.connected:
            return ("promotion refused: the peer is not heard; confirm it is down "
                    "(fence it, then `hsp fence --confirm`) instead of promoting by hand")
        if self.manager is Manager.SELF and self.peer_active and self.peer_epoch >= self.epoch:
            return ("promotion refused: the peer is the active; request a GSO "
                    "(`hsp gso`) or demote it first")
        if self.next_epoch() > MAX_EPOCH:
            return f"promotion refused: epoch {self.epoch} is the last one a frame can carry"
        return None

    def _refusal(self, event: Event) -> str:
        if isinstance(event, Promote):
            if self.state is S.DEMOTING:
                return "promotion refused: this node is demoting (a newer epoch exists)"
            problem = self._promote_problem()
            if problem is not None:
                return problem
        if isinstance(event, Demote):
            if self.state is S.SYNC_SOURCE:
                return ("demotion refused: the peer is Inconsistent (resync running); no node "
                        "could serve: wait for the resync to end")
            return "demotion refused: a promotion is being persisted; demote after it"
        return f"{type(event).__name__} refused in {self.state.value}"

    def _apply(self, op: Op, event: Event, now: float) -> list[Action]:
        match op:
            case Op.FENCE_PEER:
                if self.state not in TIMED:  # a new suspicion: older answers are stale
                    self.round_start = self.fence_attempt + 1
                self.fence_attempt += 1
                return [FencePeer(self.fence_attempt)]
            case Op.ARM_FENCE | Op.ARM_RETRY:
                wait = self.timeouts.fence if op is Op.ARM_FENCE else self.timeouts.fence_retry
                self.deadline = now + wait
                return [ArmTimer(self.deadline)]
            case Op.PERSIST_NEXT:
                self.pending = self.next_epoch()
                return [PersistEpoch(self.pending, self.pending)]
            case Op.ADOPT:
                new = self.peer_epoch
                if new <= max(self.epoch, self.pending or 0):
                    return []
                self.pending = new
                return [PersistEpoch(new, self.active_since)]
            case Op.TAKE_EPOCH:
                assert isinstance(event, Persisted) and event.epoch >= self.epoch
                self.epoch = event.epoch
                self.seen = max(self.seen, event.epoch)
                return []
            case Op.BECOME_ACTIVE:
                self.active_since, self.data = self.epoch, DataState.UP_TO_DATE
                self.round_start = self.fence_attempt + 1  # answers about the old one: stale
                return [BecomeActive(self.epoch)]
            case Op.STOP_SERVING:
                if isinstance(event, (LinkRestored, PeerEpochSeen)):
                    return [StopServing(f"the peer is active at epoch {event.epoch}")]
                return [StopServing(f"{type(event).__name__} command")]
            case Op.OUTDATE:
                self.data = DataState.OUTDATED
                return []
            case Op.REJOIN:
                return [Rejoin(self.epoch)]
            case Op.DIRTY_ON:
                return [StartDirtyTracking()]
            case Op.DIRTY_OFF:
                return [StopDirtyTracking()]
            case Op.RESYNC_SOURCE:
                return [StartResync(SyncSide.SOURCE)]
            case Op.RESYNC_TARGET:
                self.data = DataState.INCONSISTENT
                return [StartResync(SyncSide.TARGET)]
            case Op.UP_TO_DATE:
                self.data = DataState.UP_TO_DATE
                return []
            case Op.ALARM:
                return [RaiseAlarm(self._alarm_text(event))]
            case Op.ALARM_NO_ACTIVE:
                if self.manager is Manager.PACEMAKER:
                    return []
                return [RaiseAlarm("no active: both nodes are standby; promote the node with "
                                   "the newest data by hand (`hsp promote`)")]
            case Op.CLEAR_ALARM:
                return [ClearAlarm()]
            case Op.DISARM:
                self.deadline = None
                return []
        raise AssertionError(f"unhandled effect {op}")

    def _alarm_text(self, event: Event) -> str:
        if isinstance(event, PeerSuspected):
            seen = f" (evidence: {', '.join(event.evidence)})" if event.evidence else ""
            if self.data is not DataState.UP_TO_DATE:
                return (f"the active is not heard on any fabric{seen}, and this node's data "
                        f"is {self.data.value}: it cannot take over; bring the active back")
            return (f"the active is not heard on any fabric{seen}, and no fence action is "
                    "configured: this node will not take over; add [fence] to its config, or "
                    "confirm the active is down (`hsp fence --confirm`)")
        if isinstance(event, FenceResult) and event.ok:
            return ("the fence took the active down after it was heard again, while this "
                    f"node's data is {self.data.value}: no node can serve; bring the active "
                    "back (power it on)")
        if isinstance(event, FenceResult) and event.outdated:
            why = event.detail or "no detail"
            return (f"the fence device refused: this node is Outdated ({why}): its peer "
                    "served alone after it, so its data is behind and it will not take "
                    "over; bring the active back, it resyncs this node")
        if isinstance(event, FenceResult):
            return (f"fencing the active failed ({event.detail or 'no detail'}); this node "
                    f"stays standby and fences again in {self.timeouts.fence_retry:g} s")
        if isinstance(event, Tick):
            return (f"the fence action did not answer in {self.timeouts.fence:g} s; this node "
                    f"stays standby and fences again in {self.timeouts.fence_retry:g} s")
        return (f"the peer is active at epoch {self.peer_epoch}, above this node's "
                f"{self.epoch}: this node stopped serving and rejoins as its standby; what "
                "it committed alone since is discarded by the resync")


def render_markdown() -> str:
    """The transition table as Markdown (for the docs)."""
    lines = ["# Failover transitions (generated from hsp_rdma.core.failover.TRANSITIONS)", "",
             "| state | event | next state | effects |", "|---|---|---|---|"]
    for state, steps in TRANSITIONS.items():
        for on, step in steps.items():
            nxt = "—" if step.next is state else step.next.value
            effects = ", ".join(op.value for op in step.effects) or "ignore"
            lines.append(f"| {state.value} | {on.value} | {nxt} | {effects} |")
    return "\n".join(lines)
