"""The failure detector of one peer over every fabric, sans-IO: heart beats in, link events and
the failover machine's ``PeerSuspected``/``LinkRestored``/``PeerEpochSeen`` out.

``feed(event, now)`` returns actions, as in ``core/failover.py``; time comes only with ``now``.
Rules (DESIGN.md "Interface A protocol"):
- Every ``interval`` s it sends a heart beat on every fabric, silent ones included (a heart
  beat is also the probe that finds a healed fabric).
- A fabric not heard for ``timeout`` s is silent: ``FabricSilent(F)``, a link event for the
  dual-fabric layer, not a node failure. A heart beat on it again: ``FabricHeard(F)``.
- The peer is suspected (``PeerSuspected``) only when *every* fabric is silent past the
  timeout. The first heart beat after that (or the first ever) is ``LinkRestored`` with the
  epoch and role it carries; later ones are ``PeerEpochSeen`` (the machine drops repeats).
- Evidence (an RC completion with retry-exceeded, a cm DISCONNECTED, a port down) on fabric F
  is reported at once as ``FabricFailed(F, evidence)`` so traffic leaves F without waiting,
  and is listed in the next ``PeerSuspected``; it shortens nothing: the verdict still needs
  every fabric silent for the whole timeout since its last heart beat. (A retry-exceeded
  completion says the queue pair broke, not that the node died: a cable or switch does it.)
- A node that was itself paused (a gap between two feeds longer than the timeout, although
  the timer asked for one every ``interval``) does not trust its own silence measurements:
  every fabric's silence restarts from ``now``. The verdict comes at most one timeout late;
  safety never depends on it (fencing and epochs do), it only spares a needless fence.
- One timer: every feed that changes the next deadline returns ``ArmTimer(at)`` (the engine
  replaces the armed timer), so the engine sleeps between heart beats.
The detector starts with the peer not heard (suspected without a verdict): a node that never
heard its peer has no active to lose, so it never emits ``PeerSuspected`` before a
``LinkRestored``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hsp_rdma.core.failover import ArmTimer, LinkRestored, PeerEpochSeen, PeerSuspected


class Evidence(enum.Enum):
    """What an engine saw on a fabric besides silence."""

    RETRY_EXCEEDED = "retry-exceeded"  # IBV_WC_RETRY_EXC_ERR on an RC queue pair
    DISCONNECTED = "disconnected"  # RDMA_CM_EVENT_DISCONNECTED
    PORT_DOWN = "port-down"  # IBV_EVENT_PORT_ERR


# ----------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    """A heart beat from the peer on ``fabric``, carrying the peer's epoch and role, and
    whether its data cannot be promoted (Inconsistent or Outdated)."""

    fabric: str
    epoch: int
    active: bool
    unfit: bool = False


@dataclass(frozen=True, slots=True)
class LinkEvidence:
    """Something broke on ``fabric`` (not a verdict on the node)."""

    fabric: str
    evidence: Evidence
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DetectorTick:
    """The armed timer fired (``now`` says when)."""


# ---------------------------------------------------------------------------- actions
@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    """Send one heart beat (this node's epoch and role) on ``fabric``'s health channel."""

    fabric: str


@dataclass(frozen=True, slots=True)
class FabricSilent:
    """Link event: ``fabric`` has not been heard for the timeout."""

    fabric: str


@dataclass(frozen=True, slots=True)
class FabricFailed:
    """Link event: ``fabric`` broke (evidence); move traffic off it now."""

    fabric: str
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class FabricHeard:
    """Link event: ``fabric`` carries heart beats again after silence or a failure."""

    fabric: str


class FailureDetector:
    """One peer's detector. ``fabrics`` names them ("x", "y"); ``interval`` and ``timeout``
    in seconds (the node's TOML gives milliseconds: ``[timeouts] heartbeat_interval`` and
    ``heartbeat_timeout``)."""

    def __init__(self, fabrics: tuple[str, ...], interval: float, timeout: float, now: float):
        if not fabrics or len(set(fabrics)) != len(fabrics):
            raise ValueError(f"a detector needs one or more distinct fabrics, got {fabrics!r}")
        if not 0 < interval < timeout:
            raise ValueError(f"heart beat interval ({interval:g} s) should be > 0 and below "
                             f"the timeout ({timeout:g} s); a timeout of 3 intervals or more "
                             "survives a lost heart beat")
        self.fabrics = tuple(fabrics)
        self.interval = interval
        self.timeout = timeout
        self.last_heard = dict.fromkeys(fabrics, now)
        self.silent = dict.fromkeys(fabrics, False)
        self.failed: dict[str, Evidence | None] = dict.fromkeys(fabrics, None)
        self.suspected = True  # never heard: no verdict until a LinkRestored
        self.evidence: list[str] = []
        self.next_send = now
        self.last_feed = now
        self.armed: float | None = None
        self.pauses = 0  # feeds that found this node itself had been stalled

    def feed(self, event: HeartbeatReceived | LinkEvidence | DetectorTick,
             now: float) -> list[object]:
        """Apply ``event`` at ``now``; return the actions, in order."""
        out: list[object] = []
        if now - self.last_feed > self.timeout:
            self.pauses += 1
            for f in self.fabrics:
                self.last_heard[f] = max(self.last_heard[f], now)
        self.last_feed = max(self.last_feed, now)
        if isinstance(event, HeartbeatReceived):
            self._heard(event, now, out)
        elif isinstance(event, LinkEvidence):
            self._check_fabric(event.fabric)
            if self.failed[event.fabric] is None:
                self.failed[event.fabric] = event.evidence
                out.append(FabricFailed(event.fabric, event.evidence))
            self.evidence.append(f"{event.evidence.value} on {event.fabric}"
                                 + (f": {event.detail}" if event.detail else ""))
        elif not isinstance(event, DetectorTick):
            raise TypeError(f"not a detector event: {event!r}")
        if now >= self.next_send:
            out.extend(SendHeartbeat(f) for f in self.fabrics)
            self.next_send = now + self.interval
        for f in self.fabrics:
            if not self.silent[f] and now - self.last_heard[f] >= self.timeout:
                self.silent[f] = True
                out.append(FabricSilent(f))
        if not self.suspected and all(self.silent.values()):
            self.suspected = True
            out.append(PeerSuspected(tuple(self.evidence)))
            self.evidence = []
        at = min([self.next_send] + [self.last_heard[f] + self.timeout
                                      for f in self.fabrics if not self.silent[f]])
        if at != self.armed:
            self.armed = at
            out.append(ArmTimer(at))
        return out

    def _heard(self, hb: HeartbeatReceived, now: float, out: list[object]) -> None:
        self._check_fabric(hb.fabric)
        f = hb.fabric
        self.last_heard[f] = max(self.last_heard[f], now)
        if self.silent[f] or self.failed[f] is not None:
            self.silent[f], self.failed[f] = False, None
            out.append(FabricHeard(f))
        if self.suspected:
            self.suspected = False
            self.evidence = []
            out.append(LinkRestored(hb.epoch, hb.active, hb.unfit))
        else:
            out.append(PeerEpochSeen(hb.epoch, hb.active, hb.unfit))

    def _check_fabric(self, fabric: str) -> None:
        if fabric not in self.last_heard:
            raise ValueError(f"fabric {fabric!r} is not one of this detector's "
                             f"{', '.join(self.fabrics)}")
