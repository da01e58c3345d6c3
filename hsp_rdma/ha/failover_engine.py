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
- ``commit_gate(channel, mode)``: the application's commit on this node: refused when the
  node does not serve; acknowledged locally when it serves alone after a confirmed fence
  (the peer is powered off, nothing can be replicated); commits of an active that lost
  its peer without fencing it are refused at once with the reason (the peer may take over
  with what it had: the limit stated in ``core/failover.py``; and without resync nothing
  written alone could reach the peer later).

Actions: ``PersistEpoch`` -> ``EpochStore`` (``<state_dir>/failover/``; written and fsync'd
before ``Persisted`` is fed), ``FencePeer`` -> the configured fence agent (``ha/fence.py``,
action ``off``, plug = the peer's name) in a thread, its answer fed back through the node's
request queue; ``BecomeActive`` -> the session's epoch is the new one, the node's role is
active, ``on_role`` is called; ``StopServing`` -> role standby, commits refused;
``RaiseAlarm`` -> ``hsp status`` alarms and an ``oam`` report. Not built yet (an alarm says
so): dirty bitmaps while alone, resync, rejoin of an old active as standby.
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
from hsp_rdma.core.ifa import HEADER, Commit
from hsp_rdma.ha.fence import FenceAgent
from hsp_rdma.ha.persist import Epochs, EpochStore

HEARTBEAT = struct.Struct("<dQQB")  # sender's clock, count, its epoch, 1 when it serves


class FailoverEngine:
    """One node's detector + machine + the I/O of their actions. Build before
    ``Node.start()`` (``FailoverEngine(node)`` attaches itself)."""

    def __init__(self, node, on_role: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        cfg = node.config
        self.node = node
        self.on_role = on_role
        self.clock = clock
        self.fabric = cfg.fabrics[0].name
        self.interval = cfg.timeouts.heartbeat_interval / 1000
        self.timeout = cfg.timeouts.heartbeat_timeout / 1000
        self.store = EpochStore(Path(cfg.state_dir) / "failover")
        saved = self.store.load()
        epoch = max(node.session.epoch, saved.epoch if saved else 0)
        self.agent: FenceAgent | None = None
        self.fence_timeout = 30.0
        if cfg.fence is not None:
            self.agent = FenceAgent.parse(cfg.fence.action,
                                          [f"{k}={v}" for k, v in cfg.fence.options])
            self.fence_timeout = cfg.fence.timeout / 1000
        rank = fo.FailoverMachine.rank_of(cfg.name, cfg.peer)
        kw = {"manager": fo.Manager(cfg.manager), "fence_configured": self.agent is not None,
              "timeouts": fo.Timeouts(fence=self.fence_timeout + 5.0,
                                      fence_retry=max(1.0, self.timeout))}
        make = fo.FailoverMachine.active if cfg.role == "active" else fo.FailoverMachine.standby
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
        self.alone_ok = False  # serving alone after a confirmed fence of the peer
        self.dirty_tracking = False
        self.refused_frames: dict[str, int] = {}
        self.alarm: str | None = None
        self.history: list[dict] = []  # what happened, with the node's clock, for status
        self.fence_runs: list[dict] = []
        self.suspected_at: float | None = None
        self.promoted_at: float | None = None
        self._events: deque = deque()
        self._local: dict[Channel, int] = {}
        self._busy = False
        node.failover = self

    # ---- status -----------------------------------------------------------------------------
    @property
    def serving(self) -> bool:
        return self.machine.serving

    def status(self) -> dict:
        st = self.machine.status()
        st.update({"alarm": self.alarm, "refused_frames": dict(self.refused_frames),
                   "dirty_tracking": self.dirty_tracking, "serving_alone": self.alone_ok,
                   "fence_configured": self.agent is not None,
                   "fence_runs": list(self.fence_runs[-4:]),
                   "events": list(self.history[-16:])})
        if self.detector is not None:
            st["detector"] = {"silent": dict(self.detector.silent),
                              "pauses": self.detector.pauses,
                              "timeout_ms": round(self.timeout * 1000)}
        return st

    def _note(self, what: str, now: float, **kw) -> None:
        self.history.append({"t": round(now, 3), "what": what, **kw})
        del self.history[:-64]

    # ---- hooks from the node's loop (under its lock) ------------------------------------------
    def _start_detector(self, now: float, why: str) -> None:
        # the pair is connected (start() returned): heard now, not suspected
        self.detector = det.FailureDetector((self.fabric,), self.interval, self.timeout, now)
        self.detector.suspected = False
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

    def heard(self, message: bytes, now: float) -> None:
        if len(message) < HEARTBEAT.size:
            return
        if self.detector is None:
            self._start_detector(now, "the peer's first heart beat")
        _clock, _count, epoch, active = HEARTBEAT.unpack_from(message)
        self._feed_detector(det.HeartbeatReceived(self.fabric, epoch, bool(active)), now)

    def heartbeat(self, now: float, count: int) -> bytes:
        return HEARTBEAT.pack(now, count, self.machine.epoch, 1 if self.serving else 0)

    def admit(self, channel: Channel, frame: bytes) -> bool:
        """Whether the session may see FRAME (see the module's docstring)."""
        if len(frame) < HEADER.size:
            return True  # the session refuses it with its own cause
        epoch = HEADER.unpack_from(frame)[4]
        if epoch == self.machine.epoch:
            return True
        verdict = self.machine.frame_verdict(epoch)
        name = channel.name.lower()
        if verdict is fo.Verdict.REFUSE:
            key = f"{name}:older_epoch"
            self.refused_frames[key] = self.refused_frames.get(key, 0) + 1
            if self.refused_frames[key] == 1:
                self._note("refused", self.clock(), channel=name, epoch=epoch)
            return False
        # HOLD: a newer epoch. Only a promotion makes one: its sender is the active of it.
        key = f"{name}:newer_epoch"
        self.refused_frames[key] = self.refused_frames.get(key, 0) + 1
        if self.detector is not None and not self.detector.suspected:
            self._feed(fo.PeerEpochSeen(epoch, True), self.clock())
        return False

    def link_lost(self, channel: Channel, why: str) -> None:
        if self.detector is None:
            return
        self._feed_detector(det.LinkEvidence(self.fabric, det.Evidence.DISCONNECTED,
                                             f"{channel.name.lower()}: {why}"), self.clock())

    def commit_gate(self, channel: Channel, mode: Commit) -> bool:
        """True: acknowledge locally (serving alone after a fence); False: replicate.
        Raises NodeError-like text through ``refuse`` when this node must not commit."""
        if channel is Channel.HEALTH:
            return False
        m = self.machine
        if not m.serving:
            raise CommitRefused(f"this node does not serve (failover state {m.state.value}, "
                                f"epoch {m.epoch}): commit on the active")
        if m.state is fo.FoState.ACTIVE_ALONE:
            if self.alone_ok:
                return True
            # Even async waits for the frame to be sent, which needs the link: fail now,
            # with the reason, rather than after the commit timeout.
            raise CommitRefused(
                f"the peer is not heard and was not fenced: a {mode.name.lower()} commit "
                "cannot be acknowledged now (the standby may take over with what it has; "
                "resync after a link loss is not built yet)")
        return False

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
        self._note("fence_result", now, ok=ok, detail=detail)
        self._feed(fo.FenceResult(ok, detail, attempt), now)

    # ---- feeding ------------------------------------------------------------------------------
    def _feed_detector(self, event, now: float) -> None:
        for act in self.detector.feed(event, now):
            if isinstance(act, det.SendHeartbeat):
                self.node.send_heartbeat(now)
            elif isinstance(act, fo.Event):
                if isinstance(act, fo.PeerSuspected):
                    self.suspected_at = now
                    self._note("suspected", now, evidence=list(act.evidence))
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
                except fo.FailoverRefused as exc:
                    self._raise_alarm(str(exc), now)
                    continue
                except Exception as exc:  # noqa: BLE001 - IllegalTransition: a sticky alarm
                    self._raise_alarm(f"failover machine stopped: {exc}", now)
                    self._events.clear()
                    return
                for act in actions:
                    self._do(act, now)
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
            self._raise_alarm(f"rejoin as standby of epoch {act.epoch} needs a resync, which "
                              "is not built yet (issue 12): restart this node as standby "
                              "with an empty state", now)
        elif isinstance(act, fo.StartDirtyTracking):
            self.dirty_tracking = True  # bitmaps not kept yet (issue 12, resync)
        elif isinstance(act, fo.StopDirtyTracking):
            self.dirty_tracking = False
        elif isinstance(act, fo.StartResync):
            self._raise_alarm(f"a resync ({act.side.value}) is needed and is not built yet "
                              "(issue 12)", now)
        elif isinstance(act, fo.RaiseAlarm):
            self._raise_alarm(act.reason, now)
        elif isinstance(act, fo.ClearAlarm):
            self.alarm = None
        # A standby that adopted a newer epoch (TAKE_EPOCH on Persisted) takes its frames;
        # a demoted old active does not (its session is stale: it needs a resync first).
        if self.machine.state is fo.FoState.STANDBY and self.machine.epoch > node.session.epoch:
            node.session.set_epoch(self.machine.epoch)

    def _raise_alarm(self, reason: str, now: float) -> None:
        self.alarm = reason
        self._note("alarm", now, reason=reason)
        self.node._alarm(f"failover: {reason}")
        self.node._report({"alarm": "failover", "state": self.machine.state.value,
                           "why": reason})

    def _fence(self, attempt: int, now: float) -> None:
        self._note("fencing", now, attempt=attempt)
        node, peer = self.node, self.node.config.peer
        if self.agent is None:  # the machine fences only with a fence action configured
            self._events.append(fo.FenceResult(False, "no fence action", attempt))
            return
        agent, timeout = self.agent, self.fence_timeout

        def run() -> None:
            res = agent.run("off", peer, timeout)
            node.call_in_loop(lambda: self.fence_done(res.ok, res.detail, attempt, now))

        threading.Thread(target=run, name=f"hsp-fence-{peer}", daemon=True).start()


class CommitRefused(Exception):
    """Raised by ``commit_gate``; the node turns it into its NodeError."""
