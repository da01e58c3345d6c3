"""The failover engine of a node (issue 12): heart beats on the ``health`` channel feed the
failure detector (``core/detector.py``), whose verdicts feed the failover machine
(``core/failover.py``); this module carries out every action the machine emits and feeds back
every outcome. It does the I/O; the decisions stay in the two sans-IO cores.

Wiring into ``ha/node.py`` (small hooks there, all in the node's loop thread under its lock):
- ``tick(now)`` every heart-beat interval (the node's timer): the detector's timer, its
  ``SendHeartbeat`` (sent through ``Node.send_heartbeat``), and the machine's own timer.
- ``heard(message, now)``: a heart beat the session delivered (this node's epoch).
- ``admit(channel, frame)``: every received frame before the session sees it. A frame of
  this node's epoch goes on; one of an older epoch is refused (``frame_verdict``), counted,
  and dropped: a returning old active cannot write. A newer epoch tells the machine
  (``PeerEpochSeen``): an active that sees one stops serving.
- ``link_lost(channel, why)``: a broken channel is evidence (not a verdict) for the detector.
- ``commit_gate(channel, mode, message)``: the application's commit on this node: refused
  when the node does not serve; acknowledged locally, its blocks marked in the dirty bitmaps
  (``ha/resync.py``), when it serves alone after a confirmed fence: the peer powered off (a
  promotion), or outdated (below); held ("wait") while the outdate runs; refused at once
  with the reason when the peer could not be outdated (it may take over with what it had:
  the limit stated in ``core/failover.py``).

Link loss without node loss (one fabric, pulled): both sides suspect the other. The active
(ACTIVE -> ACTIVE_ALONE) asks the fence device to mark the standby Outdated (action
``outdate``, DRBD's outdate-peer; ``[fence] outdate``) and serves alone once that is
confirmed; commits in flight at the loss are acknowledged then too (the core sends them again
when the peer is back). The standby waits ``[fence] delay`` before its ``off`` of the active,
which the device refuses from an Outdated node: it stays standby (IN_DOUBT, alarm), and from
the refusal ("node NAME is Outdated") knows its data is behind: Outdated, it fences no more and
its heart beats say so (a restarted old active may then serve again in its epoch). When the
link is back the node's reconnect thread makes the channels again, heart beats restore both
machines (SYNC_SOURCE / SYNC_TARGET), the resync sends what the bitmaps hold, the target is
UpToDate at ``done`` and the active clears the mark (``unoutdate``). The arbitration is the
fence device's (``lab/fenced.py``, ``tools/drills/host_fence.py``): the machine and its
explorer see the outdate only as a fence of the standby that fails.

Actions: ``PersistEpoch`` -> ``EpochStore`` (``<state_dir>/failover/``; written and fsync'd
before ``Persisted`` is fed), ``FencePeer`` -> the configured fence agent (``ha/fence.py``,
action ``off``, plug = the peer's name) in a thread, its answer fed back through the node's
request queue; ``BecomeActive`` -> the session's epoch is the new one, the node's role is
active, ``on_role`` is called; ``StopServing`` -> role standby, commits refused;
``RaiseAlarm`` -> ``hsp status`` alarms and an ``oam`` report; ``StartDirtyTracking`` /
``StopDirtyTracking`` / ``StartResync`` -> ``ha/resync.py``. A node that ran here before
(persisted epochs) starts as a restarted standby and asks for a full resync. Not built yet
(an alarm says so): ``Rejoin`` of a demoted old active in the same process (today it is
restarted, which is the restarted-standby path).
"""

from __future__ import annotations

import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from hsp_rdma.core import detector as det
from hsp_rdma.core import failover as fo
from hsp_rdma.core.frames import Channel
from hsp_rdma.core.ifa import FRAME_DIR, HEADER, Commit, FrameType
from hsp_rdma.ha.fence import FenceAgent
from hsp_rdma.ha.persist import Epochs, EpochStore
from hsp_rdma.ha.resync import (
    REQUEST_WAIT_S,
    RESTARTED_REQUEST_WAIT_S,
    DirtyTracker,
    ResyncSource,
)

HEARTBEAT = struct.Struct("<dQQB")  # sender's clock, count, its epoch, flags:
SERVES, UNFIT = 1, 2  # it serves; its data cannot be promoted (Inconsistent or Outdated)


class FailoverEngine:
    """One node's detector + machine + the I/O of their actions. Build before
    ``Node.start()`` (``FailoverEngine(node)`` attaches itself)."""

    def __init__(self, node, on_role: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        cfg = node.config
        self.node = node
        self.on_role = on_role
        # n+1: a standby host protecting several actives asks before it takes over for one
        # (None: go ahead; a text: refused, why). Consulted when this node, not serving,
        # suspects its peer; a refusal is an alarm and the node stays a standby.
        self.takeover_guard: Callable[[], str | None] | None = None
        self.clock = clock
        self.fabric = cfg.fabrics[0].name
        self.fabrics = tuple(f.name for f in cfg.fabrics)  # heart beats on every one
        self.interval = cfg.timeouts.heartbeat_interval / 1000
        self.timeout = cfg.timeouts.heartbeat_timeout / 1000
        self.store = EpochStore(Path(cfg.state_dir) / "failover")
        saved = self.store.load()
        epoch = max(node.session.epoch, saved.epoch if saved else 0)
        self.agent: FenceAgent | None = None
        self.fence_timeout = 30.0
        self.fence_delay = 0.0
        self.outdate_peer = False
        if cfg.fence is not None:
            self.agent = FenceAgent.parse(cfg.fence.action,
                                          [f"{k}={v}" for k, v in cfg.fence.options])
            self.fence_timeout = cfg.fence.timeout / 1000
            self.fence_delay = cfg.fence.delay / 1000
            self.outdate_peer = cfg.fence.outdate
        rank = fo.FailoverMachine.rank_of(cfg.name, cfg.peer)
        kw = {"manager": fo.Manager(cfg.manager), "fence_configured": self.agent is not None,
              "timeouts": fo.Timeouts(fence=self.fence_timeout + 5.0,
                                      fence_retry=max(1.0, self.timeout))}
        # A node that ran here before (persisted epochs) restarts as a standby waiting for
        # its peer: Consistent when its P.mem came back ([pmem] persist) and its data was not
        # unfit when it stopped, Inconsistent otherwise; it asks for a full resync when it
        # becomes a SyncTarget. A first start takes the pair as established (both empty).
        self.restarted = saved is not None
        self._unfit_saved = self.store.load_unfit()
        if self.restarted:
            data = (fo.DataState.CONSISTENT if node.pmem_restored and not self._unfit_saved
                    else fo.DataState.INCONSISTENT)
            self.machine = fo.FailoverMachine.restarted(epoch, saved.active_since, rank,
                                                        data=data, **kw)
            node.role = "standby"
        else:
            make = (fo.FailoverMachine.active if cfg.role == "active"
                    else fo.FailoverMachine.standby)
            self.machine = make(epoch, rank, **kw)
        if saved is None or saved.epoch < epoch:
            self.store.save(Epochs(epoch, epoch, epoch if cfg.role == "active" else 0))
        node.session.set_epoch(epoch)
        # Made at the peer's first heart beat, or when the start grace runs out: a pair whose
        # start() returned on this side may still be finishing its start on the other (siw:
        # a channel's first message can take a 20 s reconnect), and a detector started
        # "heard" at this side's first tick suspected a live peer one timeout later (seen in
        # the lab: the active refused its first commits). Until then this side beats anyway.
        self.detector: det.FailureDetector | None = None
        self.start_grace = max(self.timeout, cfg.timeouts.connect / 1000)
        self._first_tick: float | None = None
        self.timer: float | None = None  # the machine's
        self.alone_ok = False  # serving alone after a confirmed fence (off or outdate)
        self.outdating = False  # an outdate of the lost peer is running: commits wait
        self.peer_outdated = False  # this node outdated its peer and has not cleared it yet
        self.alone_refusal = ""  # why commits are refused while alone (no outdate)
        self._outdate_retry_at: float | None = None
        self.dirty = DirtyTracker(node, Path(cfg.state_dir) / "failover")
        self.sync: ResyncSource | None = None  # this node is the SyncSource
        self.sync_target_since: float | None = None  # this node is the SyncTarget
        self._sync_request: dict | None = None  # the target's request, heard on oam
        self._request_wait = REQUEST_WAIT_S  # before a resync begins unasked (from bitmaps)
        self._full_for = ("", "")  # (target name-incarnation, request id) of the full
        # resync this process took on: that target's later "full" requests go on from the
        # bitmaps instead
        self._request_id: str | None = None  # this node's last request, as SyncTarget
        self._requests_made = 0
        self._stepping = False  # a resync step runs (its submissions report Progress)
        self._oam_seen = 0
        self.resync_rate = cfg.replication.resync_rate
        self.resyncs: list[dict] = []
        self.refused_frames: dict[str, int] = {}
        self.alarm: str | None = None
        self.history: list[dict] = []  # what happened, with the node's clock, for status
        self.noted = 0
        self.fence_runs: list[dict] = []
        self.suspected_at: float | None = None
        self.promoted_at: float | None = None
        self._events: deque = deque()
        self._state_before = self.machine.state
        self._local: dict[Channel, int] = {}
        self._busy = False
        self._rejoin_asked = False  # a Rejoin came (not built: this session stays stale)
        self._request_deferred = False  # a SyncTarget's request waits for the session epoch
        node.failover = self

    # ---- status -----------------------------------------------------------------------------
    @property
    def serving(self) -> bool:
        return self.machine.serving

    @property
    def dirty_tracking(self) -> bool:
        return self.dirty.on

    def status(self) -> dict:
        st = self.machine.status()
        now = self.clock()
        st.update({"alarm": self.alarm, "refused_frames": dict(self.refused_frames),
                   "dirty_tracking": self.dirty.on, "dirty": self.dirty.status(),
                   "resync": (self.sync.status(now) if self.sync is not None else
                              {"side": "SyncTarget",
                               "seconds": round(now - self.sync_target_since, 3)}
                              if self.sync_target_since is not None else None),
                   "resyncs": list(self.resyncs[-4:]),
                   "serving_alone": self.alone_ok, "outdating": self.outdating,
                   "fence_configured": self.agent is not None,
                   "fence_runs": list(self.fence_runs[-4:]),
                   "events": list(self.history[-16:])})
        if self.detector is not None:
            st["detector"] = {"silent": dict(self.detector.silent),
                              "pauses": self.detector.pauses,
                              "timeout_ms": round(self.timeout * 1000)}
        return st

    def _note(self, what: str, now: float, **kw) -> None:
        self.noted += 1  # numbers the notes: a reader of the (cut) history knows what is new
        self.history.append({"t": round(now, 3), "what": what, "n": self.noted, **kw})
        del self.history[:-64]

    # ---- hooks from the node's loop (under its lock) ------------------------------------------
    def _start_detector(self, now: float, why: str) -> None:
        # the pair is connected (start() returned): heard now, not suspected; a restarted node
        # (WAIT_PEER) has not heard its peer yet: its first heart beat is LinkRestored
        self.detector = det.FailureDetector(self.fabrics, self.interval, self.timeout, now)
        self.detector.suspected = not self.machine.connected
        self._note("detector", now, started=why)

    def tick(self, now: float) -> None:
        if self.detector is None:
            if self._first_tick is None:
                self._first_tick = now
            if now - self._first_tick < self.start_grace:
                self.node.send_heartbeat(now)  # no peer heart beat yet: beat, judge nothing
            else:
                self._start_detector(now, f"no heart beat from the peer in "
                                          f"{self.start_grace:g} s of start grace")
        if self.detector is not None:
            self._feed_detector(det.DetectorTick(), now)
        if self.timer is not None and now >= self.timer:
            self.timer = None
            self._feed(fo.Tick(), now)
        self._take_oam(now)
        if self.sync is not None:
            self._resync_step(now)
        if (self._outdate_retry_at is not None and now >= self._outdate_retry_at
                and self.machine.state is fo.FoState.ACTIVE_ALONE and not self.alone_ok
                and not self.outdating):
            self._outdate(now)

    def heard(self, message: bytes, now: float, fabric: str | None = None) -> None:
        """A heart beat from the peer on FABRIC (by name; None: fabric x)."""
        if len(message) < HEARTBEAT.size:
            return
        if self.detector is None:
            self._start_detector(now, "the peer's first heart beat")
        _clock, _count, epoch, flags = HEARTBEAT.unpack_from(message)
        self._feed_detector(det.HeartbeatReceived(fabric or self.fabric, epoch,
                                                  bool(flags & SERVES), bool(flags & UNFIT)),
                            now)

    def heartbeat(self, now: float, count: int) -> bytes:
        flags = (SERVES if self.serving else 0) | (UNFIT if self._unfit() else 0)
        return HEARTBEAT.pack(now, count, self.machine.epoch, flags)

    def _unfit(self) -> bool:
        return self.machine.data in (fo.DataState.INCONSISTENT, fo.DataState.OUTDATED)

    def admit(self, channel: Channel, frame: bytes) -> fo.Verdict:
        """What the node does with FRAME before the session sees it (see the module's
        docstring): ACCEPT; REFUSE (dropped and counted: a write of an older epoch); HOLD (a
        write of a newer epoch: kept by the node, fed once this node's session takes that
        epoch, in order, so the new active's stream is not cut by the few ms its epoch takes
        to persist). Only replication DATA frames are judged: HELLO, CREDIT and heart beats
        carry no write (the session takes them from any epoch; a heart beat tells the
        detector the sender's epoch)."""
        if len(frame) < HEADER.size or channel is Channel.HEALTH:
            return fo.Verdict.ACCEPT  # the session refuses a short frame with its own cause
        _magic, _version, _ch, ftype, epoch = HEADER.unpack_from(frame)[:5]
        if epoch == self.node.session.epoch or (ftype & ~FRAME_DIR) != FrameType.DATA:
            return fo.Verdict.ACCEPT
        verdict = self.machine.frame_verdict(epoch)
        name = channel.name.lower()
        if verdict is fo.Verdict.ACCEPT:
            # the machine took the epoch, the session not yet (_follow_epoch: after this event)
            return fo.Verdict.HOLD if epoch > self.node.session.epoch else fo.Verdict.REFUSE
        if verdict is fo.Verdict.REFUSE:
            key = f"{name}:older_epoch" if epoch < self.machine.epoch else f"{name}:not_taken"
            self.refused_frames[key] = self.refused_frames.get(key, 0) + 1
            if self.refused_frames[key] == 1:
                self._note("refused", self.clock(), channel=name, epoch=epoch)
            return fo.Verdict.REFUSE
        # HOLD: a newer epoch. Only a promotion makes one: its sender is the active of it.
        key = f"{name}:newer_epoch"
        self.refused_frames[key] = self.refused_frames.get(key, 0) + 1
        if self.detector is not None and not self.detector.suspected:
            self._feed(fo.PeerEpochSeen(epoch, True), self.clock())
        return fo.Verdict.HOLD

    def link_lost(self, channel: Channel, why: str, fabric: str | None = None) -> None:
        if self.detector is None:
            return
        self._feed_detector(det.LinkEvidence(fabric or self.fabric, det.Evidence.DISCONNECTED,
                                             f"{channel.name.lower()}: {why}"), self.clock())

    def commit_gate(self, channel: Channel, mode: Commit, message: bytes = b"") -> str:
        """What the node does with a commit: "replicate" (as usual), "local" (acknowledged
        here alone, its blocks marked dirty: serving alone after the peer was fenced off or
        outdated), "queue" (alone too, but sent when the peer is back: configuration and oam,
        which no bitmap can carry), "wait" (the peer was just lost and is being outdated: ask
        again). Raises CommitRefused when this node must not commit."""
        if channel is Channel.HEALTH:
            return "replicate"
        m = self.machine
        if not m.serving:
            raise CommitRefused(f"this node does not serve (failover state {m.state.value}, "
                                f"epoch {m.epoch}): commit on the active")
        if m.state is fo.FoState.ACTIVE_ALONE:
            if self.alone_ok:
                if channel is Channel.PMEM or channel is Channel.DISK:
                    self.dirty.mark(message)
                    return "local"
                return "queue"
            if self.outdating:
                return "wait"
            # Even async waits for the frame to be sent, which needs the link: fail now,
            # with the reason, rather than after the commit timeout.
            raise CommitRefused(self.alone_refusal or (
                f"the peer is not heard and was not fenced: a {mode.name.lower()} commit "
                "cannot be acknowledged now (the standby may take over with what it has)"))
        if (self.peer_outdated and (channel is Channel.PMEM or channel is Channel.DISK)
                and m.state is fo.FoState.SYNC_SOURCE):
            # heart beats are back but this channel is not yet: the peer is still Outdated
            # (until the resync ends), so this is acknowledged here and marked, as alone
            stream = self.node.session.streams[channel]
            if stream.link is None or not stream.link.synced:
                self.dirty.mark(message)
                return "local"
        return "replicate"

    def local_txid(self, channel: Channel) -> int:
        """A transaction acknowledged here alone: its number (counted per channel after the
        session's last one, so ids keep rising across the takeover)."""
        self._local[channel] = self._local.get(channel, 0) + 1
        return self.node.session.streams[channel].next_txid - 1 + self._local[channel]

    def fence_done(self, ok: bool, detail: str, attempt: int, started: float) -> None:
        """In the loop: the fence thread's answer."""
        now = self.clock()
        self.fence_runs.append({"attempt": attempt, "ok": ok, "detail": detail,
                                "took_ms": round((now - started) * 1000, 1)})
        # our fence devices (lab fenced.py, host_fence.py) refuse a node that its peer marked
        # Outdated with these words: then this node knows its data is behind the peer's
        outdated = not ok and f"node {self.node.config.name} is Outdated" in detail
        self._note("fence_result", now, ok=ok, detail=detail, **({"outdated": True}
                                                                  if outdated else {}))
        self._feed(fo.FenceResult(ok, detail, attempt, outdated), now)

    # ---- feeding ------------------------------------------------------------------------------
    def _feed_detector(self, event, now: float) -> None:
        for act in self.detector.feed(event, now):
            if isinstance(act, det.SendHeartbeat):
                self.node.send_heartbeat(now, act.fabric)
            elif isinstance(act, fo.Event):
                if isinstance(act, fo.PeerSuspected):
                    self.suspected_at = now
                    self._note("suspected", now, evidence=list(act.evidence))
                    if self.takeover_guard is not None and not self.machine.serving:
                        refused = self.takeover_guard()
                        if refused:
                            self._note("takeover_refused", now, why=refused)
                            self._raise_alarm(f"the peer is lost but this node does not take "
                                              f"over: {refused}", now)
                            continue
                self._feed(act, now)
            elif isinstance(act, (det.FabricSilent, det.FabricFailed, det.FabricHeard)):
                self._note(type(act).__name__, now, fabric=act.fabric)
            # the detector's ArmTimer: the node ticks every interval anyway

    def _feed(self, event, now: float) -> None:
        """Feed EVENT and everything its actions feed back, in order (no recursion)."""
        self._events.append(event)
        if self._busy:
            return
        self._busy = True
        try:
            while self._events:
                ev = self._events.popleft()
                try:
                    actions = self.machine.feed(ev, now)
                    if self._unfit() != self._unfit_saved:  # before anything acts on it
                        self._unfit_saved = self._unfit()
                        self.store.save_unfit(self._unfit_saved)
                except fo.FailoverRefused as exc:
                    self._raise_alarm(str(exc), now)
                    continue
                except Exception as exc:  # noqa: BLE001 - IllegalTransition: a sticky alarm
                    self._raise_alarm(f"failover machine stopped: {exc}", now)
                    self._events.clear()
                    return
                before = self._state_before
                for act in actions:
                    self._do(act, now)
                self._follow_epoch()
                self._transition(before, self.machine.state, now)
                self._state_before = self.machine.state
        finally:
            self._busy = False

    def _do(self, act, now: float) -> None:
        node = self.node
        if isinstance(act, fo.PersistEpoch):
            m = self.machine
            self.store.save(Epochs(act.epoch, max(act.epoch, m.seen), act.active_since))
            self._note("persisted", now, epoch=act.epoch)
            self._events.append(fo.Persisted(act.epoch))
        elif isinstance(act, fo.FencePeer):
            self._fence(act.attempt, now)
        elif isinstance(act, fo.ArmTimer):
            self.timer = act.at
        elif isinstance(act, fo.BecomeActive):
            node.session.set_epoch(act.epoch)
            # promoted after a confirmed fence of a peer not heard since: it is off, so
            # this node acknowledges alone
            self.alone_ok = (not self.machine.connected and bool(self.fence_runs)
                             and self.fence_runs[-1]["ok"])
            self.promoted_at = now
            node.role = "active"
            self._note("active", now, epoch=act.epoch)
            if self.on_role is not None:
                self.on_role("active")
        elif isinstance(act, fo.StopServing):
            node.role = "standby"
            self.alone_ok = False
            self._note("stopped", now, reason=act.reason)
            self._raise_alarm(f"stopped serving: {act.reason}", now)
            if self.on_role is not None:
                self.on_role("standby")
        elif isinstance(act, fo.Rejoin):
            self._rejoin_asked = True
            self._raise_alarm(f"rejoin as standby of epoch {act.epoch} needs a resync, which "
                              "is not built yet (issue 12): restart this node as standby "
                              "with an empty state", now)
        elif isinstance(act, fo.StartDirtyTracking):
            self.dirty.on = True
        elif isinstance(act, fo.StopDirtyTracking):
            self.dirty.on = False
        elif isinstance(act, fo.StartResync):
            self._start_resync(act.side, now)
        elif isinstance(act, fo.RaiseAlarm):
            self._raise_alarm(act.reason, now)
        elif isinstance(act, fo.ClearAlarm):
            self.alarm = None

    def _follow_epoch(self) -> None:
        """After each event (its actions done, or none: TAKE_EPOCH has none). A standby that
        adopted a newer epoch takes its frames, a SyncTarget too (the new active resyncs it:
        after a GSO, or a restarted node that follows); a demoted old active does not
        (Rejoin: its session is stale, and the rejoin in the same process is not built)."""
        m, node = self.machine, self.node
        if m.state not in (fo.FoState.STANDBY, fo.FoState.SYNC_TARGET) or self._rejoin_asked:
            return
        if m.epoch > node.session.epoch:
            node.session.set_epoch(m.epoch)
            node.call_in_loop(node.release_held)  # the new active's frames kept meanwhile
        if self._request_deferred and m.pending is None and m.epoch == node.session.epoch:
            self._request_deferred = False  # asked while the adopted epoch was persisted
            self._send_request()

    # ---- link loss without node loss: outdate, serve alone, resync ---------------------------
    def _transition(self, before: fo.FoState, after: fo.FoState, now: float) -> None:
        S = fo.FoState
        if before is after:
            return
        if after is S.ACTIVE_ALONE and before in (S.ACTIVE, S.SYNC_SOURCE):
            # the standby is lost while this node serves: stop the resync (what was in
            # flight stays dirty), then outdate it at the fence device before serving alone
            self._stop_resync(now)
            self.alone_ok = False
            self._outdate(now)
        elif before is S.ACTIVE_ALONE and after is not S.ACTIVE_ALONE:
            self.alone_ok = False  # the peer is back (or this node stopped serving)
            self.outdating = False
            self._outdate_retry_at = None
        if before is S.SYNC_TARGET and after is not S.SYNC_TARGET:
            self.sync_target_since = None
        if after is not S.SYNC_SOURCE:
            self._stop_resync(now)
        with self.node._cv:  # commits waiting for the outdate ask again
            self.node._cv.notify_all()

    def _outdate(self, now: float) -> None:
        self._outdate_retry_at = None
        if self.agent is None or not self.outdate_peer:
            self.alone_refusal = (
                "the peer is not heard and " + ("no fence action is configured" if self.agent
                                                 is None else "[fence] outdate is false")
                + ": commits are refused while alone (the standby may take over with what "
                "it has); with a fence action that can outdate the peer, this node would "
                "serve alone")
            self._raise_alarm(self.alone_refusal, now)
            return
        self.outdating = True
        self._note("outdating", now, peer=self.node.config.peer)
        self._agent_in_thread("outdate", lambda ok, detail: self._outdate_done(ok, detail, now))

    def _agent_in_thread(self, action: str, done: Callable[[bool, str], None],
                         delay: float = 0.0) -> None:
        """Run the fence agent's ACTION on the peer in its own thread (after DELAY s), as this
        node (``nodename=``); DONE(ok, detail) is then called in the node's loop."""
        node, peer, agent, timeout = self.node, self.node.config.peer, self.agent, \
            self.fence_timeout

        def run() -> None:
            if delay > 0:
                time.sleep(delay)
            res = agent.run(action, peer, timeout, nodename=node.config.name)
            node.call_in_loop(lambda: done(res.ok, res.detail))

        threading.Thread(target=run, name=f"hsp-{action}-{peer}", daemon=True).start()

    def _outdate_done(self, ok: bool, detail: str, started: float) -> None:
        now = self.clock()
        self.outdating = False
        self._note("outdated", now, ok=ok, detail=detail,
                   took_ms=round((now - started) * 1000, 1))
        if self.machine.state is not fo.FoState.ACTIVE_ALONE:
            pass  # the peer came back meanwhile: nothing to do with the answer
        elif ok:
            self.alone_ok = True
            self.peer_outdated = True
            self.alone_refusal = ""
            self.dirty.on = True
            self.dirty.save_all()  # what the bitmaps hold from now on survives a crash
        else:
            self.alone_refusal = (f"the peer is not heard and could not be outdated ({detail}): "
                                  "commits are refused while alone; outdating again in "
                                  f"{self.machine.timeouts.fence_retry:g} s")
            self._raise_alarm(self.alone_refusal, now)
            self._outdate_retry_at = now + self.machine.timeouts.fence_retry
        with self.node._cv:
            self.node._cv.notify_all()

    def _take_oam(self, now: float) -> None:
        """The peer's resync messages among the node's oam system events."""
        new, self._oam_seen = self.node.oam.since(self._oam_seen)
        for ev in new:
            what = ev.get("resync") if isinstance(ev, dict) else None
            if what == "request":
                self._on_request(ev, now)
            elif (what == "done" and self.machine.state is fo.FoState.SYNC_TARGET
                  and ev.get("for") == self._request_id):
                # (a "done" that answers another request, or none, leaves this one waiting)
                took = now - (self.sync_target_since or now)
                self._note("resync_done", now, side="SyncTarget",
                           bytes=int(ev.get("bytes", 0)), blocks=int(ev.get("blocks", 0)),
                           seconds=round(took, 3))
                self.resyncs.append({"side": "SyncTarget", "bytes": int(ev.get("bytes", 0)),
                                     "seconds": round(took, 3)})
                self._feed(fo.ResyncDone(), now)

    def _on_request(self, ev: dict, now: float) -> None:
        """The SyncTarget asks (for everything, or what the bitmaps hold): a resync running
        takes the request on (everything dirty when full); a serving node with none running
        starts one (the peer restarted within the heart-beat timeout, or asked after this
        side's resync ended); otherwise kept for the next StartResync(SyncSource)."""
        self._request_wait = REQUEST_WAIT_S
        full = self._full(ev)
        self._note("resync_request", now, full=full, id=ev.get("id"),
                   **({"asked_full": True} if full != bool(ev.get("full")) else {}))
        if self.sync is None and self.machine.serving and self.machine.connected:
            self.sync = ResyncSource(self.node, self.dirty, self.resync_rate, now)
        if self.sync is None:
            self._sync_request = ev
            return
        self.sync.answers = ev.get("id")
        self.sync.done_sent = False
        if not self.sync.began:
            self.sync.begin(full)
        elif full:
            self.sync.begin(True)  # everything dirty again, what is in flight included

    def _full(self, req: dict) -> bool:
        """Whether the SyncTarget's request REQ starts a full resync. Once one has begun for a
        target process (its request id names it: ``<node>-<incarnation>-<n>``), every block
        is dirty in this side's bitmaps (persisted) until that target applied it, and the
        target keeps what it applied; so its later full requests (it asks full at every
        SyncTarget start, after a link blip too) go on from the bitmaps. Starting over each
        time never finished a full resync on a link that blinks more often than one takes
        (rehearsal 8, siw kill-active-rejoin). A restarted target is a new incarnation (a
        new full resync); this process restarted forgets, and its persisted extents hold the
        full resync's rest. The same request asked again (kept for the next StartResync, then
        taken) is the same answer."""
        if not req.get("full"):
            return False
        rid = str(req.get("id", ""))
        who = rid.rpartition("-")[0]
        if who and who == self._full_for[0] and rid != self._full_for[1]:
            return False
        self._full_for = (who, rid)
        return True

    def peer_restarted(self) -> None:
        """In the loop: the node started a new session (the peer is a new process). A resync
        running for the old one starts over for the new one, from the bitmaps (the new peer
        asks for everything anyway)."""
        now = self.clock()
        self._note("peer_restarted", now)
        self._sync_request = None
        self._request_wait = RESTARTED_REQUEST_WAIT_S  # it asks: a resync unasked would end
        # in a done that answers no request (the restarted target keeps waiting for its own)
        if self.sync is not None:
            self._stop_resync(now)
            self.sync = ResyncSource(self.node, self.dirty, self.resync_rate, now)

    def _stop_resync(self, now: float) -> None:
        """A running resync stops (what was in flight stays dirty; the next one goes on from
        the bitmaps); the note says what it had sent, so that a resync cut and resumed is
        counted whole (``bytes`` of every resync_stopped and resync_done)."""
        if self.sync is None:
            return
        self.sync.abandon()
        self._note("resync_stopped", now, side="SyncSource", bytes=self.sync.sent_bytes,
                   out_of_sync=self.dirty.out_of_sync)
        self.sync = None

    def _start_resync(self, side: fo.SyncSide, now: float) -> None:
        self._note("resync_started", now, side=side.value, out_of_sync=self.dirty.out_of_sync)
        if side is fo.SyncSide.TARGET:
            self.sync_target_since = now
            self._requests_made += 1
            self._request_id = f"{self.node.config.name}-{self.node.session.incarnation:x}-" \
                               f"{self._requests_made}"
            if self.machine.pending is not None or self.machine.epoch != self.node.session.epoch:
                # the epoch it adopts is still being persisted: a request now would carry
                # the old one, which the active refuses; sent once the session has it
                self._request_deferred = True
                return
            self._send_request()
            return
        self.sync = ResyncSource(self.node, self.dirty, self.resync_rate, now)
        req, self._sync_request = self._sync_request, None
        if req is not None:
            self.sync.answers = req.get("id")
            self.sync.begin(self._full(req))

    def _send_request(self) -> None:
        # a node that restarted asks for everything: what it holds may differ from the active
        # in what it wrote last (not acknowledged, but in its own copy), or be empty
        self.node._report({"resync": "request", "full": self.restarted,
                           "id": self._request_id}, keep=True)

    def resync_progress(self) -> None:
        """In the loop: acknowledgements moved; the resync sends what they made room for at
        once (stepping only on the heart-beat tick bounded it to IN_FLIGHT per interval:
        ~5 MB/s at 512 KiB and 100 ms)."""
        if not self._stepping:
            self._resync_step(self.clock())

    def _resync_step(self, now: float) -> None:
        if self._stepping or self.sync is None:
            return
        self._stepping = True  # its own submissions report Progress too
        try:
            self._resync_step_once(now)
        finally:
            self._stepping = False

    def _resync_step_once(self, now: float) -> None:
        src = self.sync
        if not src.began and now - src.started >= self._request_wait:
            self._note("resync_request", now, full=False, waited_s=self._request_wait)
            src.begin(False)  # the peer did not ask: it may not have noticed the outage
        if not src.step(now) or src.done_sent:
            return
        src.done_sent = True
        self.node._report({"resync": "done", "bytes": src.sent_bytes,
                           "blocks": src.sent_blocks, "for": src.answers}, keep=True)
        took = now - src.started
        self._note("resync_done", now, side="SyncSource", bytes=src.sent_bytes,
                   blocks=src.sent_blocks, seconds=round(took, 3))
        self.resyncs.append({"side": "SyncSource", "bytes": src.sent_bytes,
                             "blocks": src.sent_blocks, "seconds": round(took, 3)})
        self.sync = None
        self.dirty.settled()
        self._feed(fo.ResyncDone(), now)
        self._unoutdate(now)

    def _unoutdate(self, now: float) -> None:
        """The peer has everything again: clear its Outdated mark at the fence device."""
        if self.agent is None or not self.outdate_peer:
            return
        self._agent_in_thread("unoutdate",
                              lambda ok, detail: self._unoutdated(ok, detail, now))

    def _unoutdated(self, ok: bool, detail: str, started: float) -> None:
        now = self.clock()
        self._note("unoutdated", now, ok=ok, detail=detail,
                   took_ms=round((now - started) * 1000, 1))
        if ok:
            self.peer_outdated = False
        if not ok:
            self._raise_alarm(f"the peer is UpToDate again but its Outdated mark could not be "
                              f"cleared at the fence device ({detail}): it cannot fence this "
                              "node until it is (fence agent action unoutdate)", now)

    def _raise_alarm(self, reason: str, now: float) -> None:
        self.alarm = reason
        self._note("alarm", now, reason=reason)
        self.node._alarm(f"failover: {reason}")
        self.node._report({"alarm": "failover", "state": self.machine.state.value,
                           "why": reason})

    def _fence(self, attempt: int, now: float) -> None:
        self._note("fencing", now, attempt=attempt)
        if self.agent is None:  # the machine fences only with a fence action configured
            self._events.append(fo.FenceResult(False, "no fence action", attempt))
            return
        # the standby waits before it fences, so that an active that still serves (one fabric
        # pulled) outdates it first and the fence device refuses this request
        self._agent_in_thread("off", lambda ok, detail: self.fence_done(ok, detail, attempt, now),
                              delay=self.fence_delay)


class CommitRefused(Exception):
    """Raised by ``commit_gate``; the node turns it into its NodeError."""
