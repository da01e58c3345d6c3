"""One node of a drill: ``python -m hsp_rdma.tools.drills.drill_node CONFIG SCENARIO ACK_ADDR
DIR`` (ACK_ADDR "-": no driver, acks only counted; "stdout": each ack is an ``ack`` event).
Starts the node engine with its failover engine; while this node serves, runs the
scenario's ledger workload on it (``tools/drills/app.py``) and sends each acknowledged
transfer's id to the driver (``ACK_ADDR`` = host:port, one TCP connection, ``ack N`` lines).

Prints JSON events on stdout, one per line, each with ``t`` (this host's monotonic clock):
``started`` (pid, role, epoch), ``fabric`` (phase switched, from, to, why: Interface A's
carrier moved), ``serving`` (the workload runs; epoch), ``failover`` events
(suspected, fencing, fence_result, persisted, active, stopped, alarm, refused) as the engine
notes them, ``final`` when the driver asked it to stop (``DIR/stop`` exists): its status, and
P.mem dumped to ``DIR/pmem-<node>.bin`` and the journal disk to ``DIR/journal-<node>.final``
for the driver's check. Exit 0 after ``final``.

Drill commands: the driver writes ``DIR/cmd-<seq>.json`` (a temp name renamed), seq from 1;
each is run once, in seq order, and answered by ``command_done`` (seq, ok, detail):
``{"do": "corrupt", "what": "page"|"block", "index": N}`` overwrites P.mem page N (4 KiB) or
4 KiB block N of the journal disk of this node with random bytes, behind the replication's
back (a damaged standby copy for the audit to find); ``{"do": "audit"}`` starts an audit
(``node.audit_now()``, on the active) and answers when it ended (or after
``AUDIT_ANSWER_S``, still running): its ``audit_done`` shows as a ``failover`` event (the
engine's note); an audit that failed answers ok false with the reason, and without an
engine an ``audit_done`` event carries its counters.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hsp_rdma.core import failover as fo
from hsp_rdma.core import gso
from hsp_rdma.core.profiles import load_profiles, pick_profile
from hsp_rdma.errors import GsoRefused, HspError
from hsp_rdma.ha.config import load_node_config
from hsp_rdma.ha.failover_engine import FailoverEngine
from hsp_rdma.ha.fence import FenceAgent
from hsp_rdma.ha.gso_node import DIGESTS
from hsp_rdma.ha.node import Node, NodeError
from hsp_rdma.ha.switchover import (
    KEEPALIVE_S,
    RESTING,
    Application,
    Engine,
    FabricLink,
    PeerLeft,
    SwitchoverError,
)
from hsp_rdma.tools.drills import app
from hsp_rdma.tools.drills.scenario import load_scenario

_out_lock = threading.Lock()
PAGE = 4096  # a corrupted P.mem page, a corrupted disk block
AUDIT_ANSWER_S = 20.0  # an audit command is answered when the audit ended, or after this
GSO_BLOB = 4096  # the application blob in a GSO image (the ledger workload's position)
GSO_CONNECT_S = 120.0  # the GSO's VI connects within this (the pair may start seconds apart)
GSO_ANSWER_S = 20.0  # a gso command is answered once the GSO started (or was refused)
GSO_MAX_COPY_S = 120.0  # the longest copy window a gso command may ask for


def emit(event: str, **kw) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **kw}) + "\n")
        sys.stdout.flush()


class _PmemSink:
    def __init__(self, node: Node):
        self.node = node

    def transaction(self, commit: str):
        return self.node.pmem.transaction(commit=commit)

    def view(self) -> memoryview:
        return memoryview(self.node.pmem.buf)


class _DiskSink:
    """A journal record: written, made stable and replicated as one transaction."""

    def __init__(self, disk, commit: str):
        self.disk, self.commit = disk, commit

    def write(self, offset: int, data) -> None:
        self.disk.write(offset, bytes(data), commit=self.commit, flush=True)

    def flush(self) -> None:
        pass  # each write was flushed with itself


def corrupt(node: Node, what: str, index: int) -> str:
    """Overwrite P.mem page INDEX or journal block INDEX of NODE with random bytes, here only;
    what was done (ValueError saying what is wrong)."""
    if what not in ("page", "block"):
        raise ValueError(f"corrupt what={what!r}: a 'page' (of P.mem) or a 'block' (of the "
                         "journal disk)")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError(f"corrupt index={index!r}: a page or block number, 0 or more")
    noise = os.urandom(PAGE)
    with node._lock:  # between two applied transactions
        if what == "page":
            size = len(node._pmem)
            if (index + 1) * PAGE > size:
                raise ValueError(f"P.mem page {index} is beyond this node's P.mem of {size} B "
                                 f"({size // PAGE} pages of {PAGE} B)")
            node._pmem[index * PAGE:(index + 1) * PAGE] = noise
            return f"P.mem page {index} of node {node.config.name} overwritten"
        disk = node.disk.get("journal") or next(iter(node.disk.values()), None)
        if disk is None:
            raise ValueError("this node has no disk: no block to corrupt")
        if (index + 1) * PAGE > disk.size:
            raise ValueError(f"block {index} is beyond disk {disk.config.name} of {disk.size} B "
                             f"({disk.size // PAGE} blocks of {PAGE} B)")
        os.pwrite(disk.fd, noise, index * PAGE)
        return f"block {index} of disk {disk.config.name} of node {node.config.name} overwritten"


def switched_over(engine: FailoverEngine, active: bool) -> None:
    """Tell the failover engine a GSO made this node the active (or the standby): the one
    place a drill node does so (``FailoverEngine.switched_over`` when the engine has it, else
    the machine fed ``SwitchedOver`` under the node's lock as the engine's hooks are)."""
    with engine.node._lock:
        if hasattr(engine, "switched_over"):
            engine.switched_over(active)
        else:
            engine._feed(fo.SwitchedOver(active), engine.clock())


class GsoSide:
    """This node's Interface B: a GSO engine (``ha/switchover.py``) on a VI of its own (its own
    discriminator, ``gso:<a>-<b>``), run by a thread of its own. The node configured active
    connects, the other listens and waits for a switch-over; ``request`` (the drill command
    ``gso``) makes the serving node start one.

    Fabrics: the engine opens every configured fabric's NIC (x, y). The link comes up on x,
    or on y when x does not answer (the listener listens on both). When it breaks while no
    GSO runs (a VI error, or the peer silent for a few keep-alives: a pulled cable shows on
    an idle link only so), it connects again on whichever fabric answers, x tried first. A
    GSO runs on the fabric the link is on; a fabric lost under a push copy, before the
    marker, moves the link to the other fabric and the copy starts again there (the engine's
    relink, a few seconds at most); when that fails too, the GSO aborts (the active thaws and
    serves), and the link then comes up again on the other fabric for the next one. A
    ``gso`` request waits for a link that was heard from lately.

    The image is this node's P.mem, the state Interface A protects: at the freeze (the
    engine's StopApplication) the ledger workload is stopped at its gate (a transfer in
    flight finishes, committed and acknowledged, first) and P.mem is copied, under the
    node's lock, into the engine's registered image buffer (header | P.mem | blob), with the
    workload's position as the blob. The engine's buffer is its own registration (the node's
    P.mem is a separate mmap, and the image needs its header in front of P.mem in one
    region), so the copy into it is a local memcpy inside the freeze. When the GSO ends
    without a switch, the engine's ResumeApplication thaws the gate and the workload goes on.

    The node's failure detector feeds the GSO machine: a ``suspected`` note is
    AllFabricsLost (every fabric to the peer silent), so a GSO in progress ends even when its
    own VI has not failed yet (a killed guest sends nothing: RC writes to it only fail after
    their retries).

    Roles: the failover engines are told (``SwitchedOver``) when the roles change: the old
    active when its marker goes out (the point of no return: the peer may resume from then
    on, and its heart beats carry its new epoch), the new active when it resumes from the
    image; the old active then follows the new one's epoch as its replica (SyncTarget, a
    resync of what the new active wrote meanwhile). A GSO that resumes the old active after
    its marker (a fence confirmed the peer down) tells its engine it serves again.

    Events (``gso``, with ``phase``): connected, requested, frozen, copy_started, relink
    (detail: the link moved to another fabric during the copy, or could not), handed_over,
    thawed, done (outcome, reason, role, blackout_ms, copy_ms, image_bytes, relinks,
    relink_ms), switched, link_gone, error.
    """

    def __init__(self, node: Node, engine: FailoverEngine, gate: app.Gate, stop: threading.Event,
                 position: Callable[[], dict], serving: threading.Event,
                 session: str | None = None):
        self.node, self.fo, self.gate, self.stop = node, engine, gate, stop
        self.session = session  # (an n+1 standby host's session: named in every event)
        self.position, self.serving = position, serving
        cfg = node.config
        fab = cfg.fabrics[0]
        connector = cfg.role == "active"
        self.links = [FabricLink(f.name, f.rdma_device, f.local, f.peer if connector else None)
                      for f in cfg.fabrics]
        profile = pick_profile(fab.rdma_device, load_profiles())
        fence = None
        if cfg.fence is not None:
            fence = FenceAgent.parse(cfg.fence.action,
                                     [f"{k}={v}" for k, v in cfg.fence.options])
        self.timeouts = gso.Timeouts(ready=5.0, copy=60.0, done=10.0,
                                     fence=max(5.0, (cfg.fence.timeout / 1000) if cfg.fence
                                               else 5.0), gso=90.0)
        self.eng = Engine.open(fab.rdma_device, profile, cfg.pmem_size, GSO_BLOB,
                               serving=cfg.role == "active", timeouts=self.timeouts,
                               app=Application(freeze=self._freeze, thaw=self._thaw,
                                               resume=self._resume,
                                               stop_standby=self._stop_standby,
                                               resume_standby=self._resume_standby),
                               fence=fence, peer_name=cfg.peer,
                               state_dir=str(Path(cfg.state_dir) / "gso"))
        self.eng.fabric = fab.name
        for other in cfg.fabrics[1:]:
            self.eng.add_fabric(other.name, other.rdma_device)
        if len(cfg.fabrics) > 1:
            self.eng.keepalive_s = KEEPALIVE_S
        a, b = sorted((cfg.name, cfg.peer))
        self.eng.discriminator = f"gso:{a}-{b}".encode()[:48]
        self.eng.digest_algo = DIGESTS[profile.digest]
        self.eng.on_alarm = lambda why: self._emit(phase="alarm", reason=why)
        self.eng.on_copy_start = self._copy_started
        self.eng.on_marker_write = self._handing_over
        self.eng.on_relink = lambda what: self._emit(phase="relink", detail=what,
                                               fabric=self.eng.fabric)
        self.connected = threading.Event()
        self.ended = ""  # why the GSO side stopped (its link gone, an error)
        self._cv = threading.Condition()
        self._requests: list[tuple[float, list]] = []  # (copy_s, answer box)
        self._suspected = False
        self._moved: str | None = None  # Interface A's carrier moved to this fabric
        self.completed = False
        self._handed_over = False  # the marker went out and no end of that GSO came yet
        self._reported = 0  # eng.reports told as gso done events
        self._thread = threading.Thread(target=self._run, name=f"gso-{session}" if session
                                        else "gso", daemon=True)

    def _emit(self, **kw) -> None:
        """A ``gso`` event (with the session it belongs to, on an n+1 standby host)."""
        emit("gso", **kw, **({"session": self.session} if self.session else {}))

    def start(self) -> None:
        """The engine's thread: connect, then serve. (Opening and registering every fabric's
        NIC is done before, in __init__, ahead of the node's start: in a 1-vCPU guest that
        work delayed the first heart beats past the timeout.)"""
        self._thread.start()

    # ---- from other threads ---------------------------------------------------------------
    def request(self, copy_s: float) -> str:
        """Start a GSO to the peer (this node must serve); what was started. ValueError or
        HspError saying why not."""
        deadline = time.monotonic() + GSO_ANSWER_S
        while not (self.connected.is_set() and self._can_start()):
            if self.ended or time.monotonic() >= deadline:
                why = self.ended or ("still connecting" if not self.connected.is_set() else
                                     self._on_live_carrier() or
                                     f"nothing heard on fabric {self.eng.fabric} for "
                                     f"{self.eng.silent_s():.1f} s")
                raise SwitchoverError(f"the GSO's VI is not connected ({why}): no "
                                      "switch-over can start")
            time.sleep(0.05)
        if not self.fo.serving:
            raise GsoRefused("GSO refused: this node does not serve; ask the active node")
        box: list = []
        with self._cv:
            self._requests.append((copy_s, box))
            while not box:
                if not self._cv.wait(GSO_ANSWER_S):
                    raise SwitchoverError(f"the GSO engine did not take the request in "
                                          f"{GSO_ANSWER_S:g} s")
        ok, detail = box[0]
        if not ok:
            raise GsoRefused(detail)
        return detail

    def _fresh(self) -> bool:
        """The link is up and was heard from lately (keep-alives; with one fabric: up). A
        request is taken only then: one taken on a link just given up would be refused."""
        eng = self.eng
        return eng.link_up and (not eng.keepalive_s or eng.silent_s() <= 2 * eng.keepalive_s)

    def _can_start(self) -> bool:
        """A GSO may start now: the link is fresh, on Interface A's live carrier, and not
        about to move."""
        return self._fresh() and self._moved is None and self._on_live_carrier() is None

    def _on_live_carrier(self) -> str | None:
        """None when the GSO's link is on the fabric Interface A carries its traffic on and
        Interface A heard that fabric within one heart-beat interval; else why not. (Its
        heart beats judge a fabric far sooner than the GSO link's keep-alive: a Start-GSO
        sent on a cable pulled a moment ago would be lost, and the GSO would end on its
        ready timer instead of running once the link is on the other fabric.)"""
        if len(self.links) < 2:
            return None
        carrier, quiet_s = self.node.carrier_heard()
        if carrier != self.eng.fabric:
            return (f"the GSO's link is on fabric {self.eng.fabric} while Interface A's "
                    f"traffic is on {carrier}")
        if quiet_s > self.node.heartbeat_interval_s:
            return f"nothing came in on fabric {carrier} for {quiet_s * 1000:.0f} ms"
        return None

    def carrier_moved(self, old: str, new: str) -> None:
        """Interface A moved its traffic from fabric OLD to NEW (its heart beats judge each
        fabric within a few intervals): a GSO link on OLD follows it, at the next moment no
        GSO runs (dropped, connected again with NEW tried first), rather than wait for its
        own keep-alive to find OLD silent, or for a GSO's first frame to be lost there."""
        if len(self.links) > 1:
            with self._cv:
                self._moved = new

    def suspected(self) -> None:
        """The failure detector suspects the peer: AllFabricsLost for the GSO machine."""
        with self._cv:
            self._suspected = True

    # ---- the engine's thread ----------------------------------------------------------------
    def _run(self) -> None:
        eng = self.eng
        lost = None  # the fabric the link was lost on: tried after the others
        try:
            while not self.stop.is_set():
                hello = eng.connect_fabrics(self.links, GSO_CONNECT_S, last=lost)
                self._emit(phase="connected", serving=eng.machine.serving,
                     peer_region=hello.region_size, epoch=eng.machine.epoch,
                     chunk=eng.chunk_size, depth=eng.queue_depth, fabric=eng.fabric)
                self.connected.set()
                try:
                    self._serve()
                except PeerLeft as exc:
                    self.connected.clear()
                    self._flush_reports()
                    self._emit(phase="link_gone", reason=str(exc), fabric=eng.fabric,
                         serving=eng.machine.serving)
                    if eng.peer_goodbye is not None:
                        raise  # the peer ended the pair: never again
                    lost = eng.fabric
        except PeerLeft as exc:
            self.ended = str(exc)
        except HspError as exc:
            self.ended = str(exc)
            self._emit(phase="error", reason=str(exc), state=eng.machine.state.value)
        finally:
            self.connected.clear()
            self._refuse_waiting()

    def _serve(self) -> None:
        """The connected link until the stop (PeerLeft when it is gone)."""
        eng = self.eng
        while not self.stop.is_set():
            if self._can_start():
                self._take_requests()
            with self._cv:
                suspected, self._suspected = self._suspected, False
            if suspected:
                eng.peer_lost()
            self._flush_reports()  # (a GSO the suspicion ended)
            with self._cv:
                moved = self._moved
            if moved is not None and eng.machine.state in RESTING:
                with self._cv:
                    self._moved = None
                if moved != eng.fabric and eng.link_up:
                    eng.drop_link(f"Interface A moved its traffic to fabric {moved}")
            eng.serve(until=lambda: self.stop.is_set()
                      or (self._requests and self._can_start())
                      or self._suspected or len(eng.reports) > self._reported
                      or (self._moved is not None and eng.machine.state in RESTING))
            self._flush_reports()

    def _take_requests(self) -> None:
        with self._cv:
            requests, self._requests = self._requests, []
        for copy_s, box in requests:
            eng = self.eng
            length = eng.image.capacity
            eng.copy_rate_Bps = length / copy_s if copy_s > 0 else 0.0
            try:
                eng.request_gso()
                ok, detail = True, (f"GSO epoch {eng.machine.epoch} started ({length} B image"
                                    + (f", copy paced to {copy_s:g} s" if copy_s else "") + ")")
                self._emit(phase="requested", epoch=eng.machine.epoch, image_bytes=length,
                     copy_s=copy_s, fabric=eng.fabric)
            except (GsoRefused, SwitchoverError) as exc:
                ok, detail = False, str(exc)
            with self._cv:
                box.append((ok, detail))
                self._cv.notify_all()

    def _refuse_waiting(self) -> None:
        with self._cv:
            for _copy_s, box in self._requests:
                box.append((False, f"the GSO side ended: {self.ended or 'stopped'}"))
            self._requests = []
            self._cv.notify_all()

    def _flush_reports(self) -> None:
        """A ``gso`` done event for each GSO the engine reported since the last call."""
        for rep in self.eng.reports[self._reported:]:
            self._report(rep)
        self._reported = len(self.eng.reports)

    def _report(self, rep) -> None:
        # the copy's time to its last write, or to the GSO's end when it never got there
        copy_ms = ((rep.copy_end_t or self.eng.clock()) - rep.copy_start_t) * 1000 \
            if rep.copy_start_t else None
        reason = rep.reason or (f"LINK_LOST: {self.eng.link_error}" if self.eng.link_error
                                else "")
        self._emit(phase="done", epoch=rep.epoch, outcome=rep.outcome, role=rep.role,
             fabric=self.eng.fabric,
             reason=reason, image_bytes=rep.image_bytes, writes=rep.writes,
             blackout_ms=round(rep.blackout_s * 1000, 1),
             copy_ms=None if copy_ms is None else round(copy_ms, 1),
             phases_ms=rep.phases_ms(), serving=self.eng.machine.serving,
             alarm=self.eng.alarm, link_error=self.eng.link_error,
             relinks=rep.relinks, relink_ms=round(rep.relink_s * 1000, 1))
        if rep.outcome == "completed" and rep.role == "active":
            # the peer resumed from our image and said "done": this node is the standby
            # now. Its workload (frozen at the gate) ends: it sees the node not serving.
            self.completed = True
            self._handed_over = False
            self.serving.clear()
            switched_over(self.fo, False)
            self.gate.thaw()  # (the workload leaves the gate: it no longer serves)
            self._emit(phase="switched", epoch=rep.epoch, active=False,
                 failover_state=self.fo.machine.state.value, **self.position())

    # ---- the application hooks (called by the engine, in its thread) -----------------------
    def _freeze(self) -> bytes:
        t0 = time.monotonic()
        self.gate.freeze()  # a transfer in flight finishes (committed, acknowledged) first
        pmem = self.node.pmem.buf
        with self.node._lock:  # at a transaction fence: no local write in progress
            self.eng.image.pmem[:] = pmem
        pos = self.position()
        self._emit(phase="frozen", epoch=self.eng.machine.epoch,
             took_ms=round((time.monotonic() - t0) * 1000, 1), **pos)
        return json.dumps({"from": self.node.config.name, **pos}).encode()

    def _copy_started(self, epoch: int, length: int) -> None:
        self._emit(phase="copy_started", epoch=epoch, image_bytes=length, fabric=self.eng.fabric,
             paced_Bps=round(self.eng.copy_rate_Bps))

    def _handing_over(self, value: int) -> None:
        """A: the marker goes out; from now on the peer may resume as the active, and its
        heart beats carry its new epoch: this node's failover engine is told it is the
        standby first (else it took that epoch for a newer active's and demoted, with a
        rejoin that is not built). A GSO that then resumes this node after all (a fence
        confirmed the peer down) tells it again that it is the active (_thaw)."""
        self._handed_over = True
        switched_over(self.fo, False)
        self._emit(phase="handed_over", epoch=self.eng.machine.epoch, marker=value,
             failover_state=self.fo.machine.state.value)

    def _thaw(self) -> None:
        if self._handed_over:  # resumed after the marker: this node serves again
            self._handed_over = False
            switched_over(self.fo, True)
        self.gate.thaw()
        self._emit(phase="thawed", epoch=self.eng.machine.epoch, **self.position())

    def _resume(self, pmem: memoryview, blob: bytes) -> None:
        """B ("IRET"): the verified image's P.mem becomes this node's P.mem. It should equal
        what Interface A replicated (commits were applied here before the freeze): pages that
        differ are counted and written here, behind the replication's (and a P.mem store's)
        back, and the drill fails on them. Then the failover engine
        is told this node is the active (its workload starts when it serves); "done" leaves
        after this returns."""
        t0 = time.monotonic()
        mine = self.node.pmem.buf
        with self.node._lock:
            differ = [off for off in range(0, len(pmem), PAGE)
                      if mine[off:off + PAGE] != pmem[off:off + PAGE]]
            for off in differ:  # (none when the replica was exact: the drill says so)
                mine[off:off + PAGE] = pmem[off:off + PAGE]
        switched_over(self.fo, True)
        self._emit(phase="switched", epoch=self.eng.machine.epoch, active=True,
             pages_differing=len(differ), failover_state=self.fo.machine.state.value,
             took_ms=round((time.monotonic() - t0) * 1000, 1),
             blob=blob.rstrip(b"\0").decode(errors="replace"))

    def _stop_standby(self) -> None:
        self._emit(phase="standby_stopped", epoch=self.eng.machine.epoch)

    def _resume_standby(self, needs_resync: bool) -> None:
        self._emit(phase="standby_resumed", epoch=self.eng.machine.epoch,
             needs_resync=needs_resync)

    def close(self) -> None:
        """After ``stop`` is set: the engine's thread leaves serve within a tick; its VI and
        NIC are closed once it did (a thread still connecting keeps them: the process ends)."""
        self._thread.join(5)
        if self._thread.is_alive():
            return
        try:
            self.eng.close(drain_s=0.5)
        except (HspError, OSError):
            pass


def run_command(node: Node, command: dict, gso_side: GsoSide | None = None) -> tuple[bool, str]:
    """(ok, detail) of one drill command."""
    do = command.get("do") if isinstance(command, dict) else None
    try:
        if do == "gso":
            if gso_side is None:
                return False, ("this drill node runs no GSO engine (it starts one only for a "
                               "scenario with a gso step)")
            copy_s = command.get("copy_s", 0)
            if not isinstance(copy_s, (int, float)) or isinstance(copy_s, bool) \
                    or not 0 <= copy_s <= GSO_MAX_COPY_S:
                raise ValueError(f"gso copy_s={copy_s!r}: seconds the copy should last, 0 "
                                 f"(as fast as it goes) to {GSO_MAX_COPY_S:g}")
            return True, gso_side.request(float(copy_s))
        if do == "corrupt":
            return True, corrupt(node, command.get("what"), command.get("index"))
        if do == "audit":
            audit_id = node.audit_now()
            rec = node.auditor.wait(audit_id, AUDIT_ANSWER_S)
            if rec is None:
                return True, f"audit {audit_id} started, still running after {AUDIT_ANSWER_S:g} s"
            if rec["error"] is not None:
                return False, f"audit {audit_id} failed: {rec['error']}"
            if node.failover is None:
                emit("audit_done", id=audit_id, repairs=rec["repairs"], chunks=rec["chunks"])
            return True, (f"audit {audit_id}: {rec['chunks']} chunks, {rec['repairs']} "
                          f"repaired, {rec['took_ms']} ms")
    except (ValueError, HspError, OSError) as exc:
        return False, str(exc)
    return False, f"unknown drill command {command!r}: do is 'corrupt', 'audit' or 'gso'"


class Commands:
    """``DIR/cmd-<seq>.json``, each run once in seq order, in a thread of its own (an audit
    command waits for its audit; the main loop keeps watching for ``stop``)."""

    def __init__(self, node: Node, work: Path, gso_side: GsoSide | None = None):
        self.node, self.work, self.gso_side = node, work, gso_side
        self.next_seq = 1
        self.queue: list[tuple[int, dict | None, str]] = []
        self.cv = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def poll(self, names: list[str]) -> None:
        while f"cmd-{self.next_seq}.json" in names:
            seq = self.next_seq
            self.next_seq += 1
            try:
                command, why = json.loads((self.work / f"cmd-{seq}.json").read_text()), ""
            except (OSError, ValueError) as exc:
                command, why = None, f"cmd-{seq}.json cannot be read as JSON: {exc}"
            with self.cv:
                self.queue.append((seq, command, why))
                self.cv.notify()

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.queue:
                    self.cv.wait()
                seq, command, why = self.queue.pop(0)
            ok, detail = ((False, why) if command is None
                          else run_command(self.node, command, self.gso_side))
            emit("command_done", seq=seq, ok=ok, detail=detail)


def main(argv: list[str]) -> int:
    cfg_path, scenario_path, ack_addr, work = argv
    work = Path(work)
    cfg = load_node_config(cfg_path)
    scenario = load_scenario(scenario_path)
    spec = scenario.workload
    node = Node(cfg)
    serving = threading.Event()
    stop = threading.Event()
    engine = FailoverEngine(node, on_role=lambda role: serving.set() if role == "active"
                            else serving.clear())
    seen = [0]

    def watch() -> None:  # the engine's notes, as events (the driver's view of the node)
        while not stop.is_set():
            with node._lock:
                notes = engine.history[:]
            # by note number: the engine keeps only its last 64 notes
            for n in notes:
                if n["n"] > seen[0]:
                    seen[0] = n["n"]
                    emit("failover", **n)
                    if n.get("what") == "suspected" and gso_side is not None:
                        gso_side.suspected()
            time.sleep(0.01)

    if hasattr(node, "on_fabric_switch"):  # Interface A's carrier moved (two fabrics)
        def fabric_switched(old: str, new: str, why: str) -> None:
            emit("fabric", phase="switched", **{"from": old, "to": new, "why": why})
            if gso_side is not None:
                gso_side.carrier_moved(old, new)

        node.on_fabric_switch = fabric_switched
    if hasattr(node, "on_alarm"):  # the node's own alarms (a loop held up, a link lost...)
        node.on_alarm = lambda text: emit("node_alarm", text=text)
    gate = app.Gate()  # where a GSO freezes the workload
    position: dict = {}  # the workload's, for the GSO's blob and events
    gso_side: GsoSide | None = None
    if any(step.do == "gso" for step in scenario.steps):
        gso_side = GsoSide(node, engine, gate, stop, lambda: dict(position, acked=acked[0]),
                           serving)
    node.start()
    if gso_side is not None:
        gso_side.start()
    emit("started", pid=os.getpid(), node=cfg.name, role=node.role, epoch=node.session.epoch,
         gso=gso_side is not None)
    threading.Thread(target=watch, daemon=True).start()
    if engine.serving:  # a restarted node serves only once its engine says so (on_role)
        serving.set()
    to_stdout = ack_addr == "stdout"  # the lab: acks go out as events on the command channel
    host, _, port = ack_addr.rpartition(":") if ack_addr not in ("-", "stdout") else ("", "", "")
    acked = [0]
    workload_error: list[str] = []

    def workload() -> None:
        # each time this node serves (a GSO may move the service away and back)
        while workload_once():
            if not engine.serving:
                serving.clear()  # (until on_role, or a GSO, makes it serve again)

    def workload_once() -> bool:
        """The workload while this node serves; True when it ended because the node no
        longer serves (it may serve again), False at the stop or on an error."""
        serving.wait()
        if stop.is_set():
            return False
        # "-": no driver to tell (a lab test reads the events); acks are only counted
        sock = socket.create_connection((host, int(port)), timeout=10) if port else None
        try:
            disk = node.disk["journal"] if "disk" in spec.targets else None
            content = disk.read(0, disk.size) if disk is not None else None
            wl = app.open_workload(spec, _PmemSink(node) if "pmem" in spec.targets else None,
                                   _DiskSink(disk, spec.commit) if disk else None, content)
            emit("serving", epoch=node.session.epoch, last_id=wl.last_id)
            if sock is not None:
                send = app.socket_ack(sock)
            elif to_stdout:
                def send(tid: int) -> None:
                    emit("ack", id=tid)
            else:
                def send(_tid: int) -> None:
                    pass

            def ack(tid: int) -> None:
                send(tid)
                acked[0] += 1
                position["last_id"] = tid

            app.run(wl, spec.rate, ack, lambda: stop.is_set() or not engine.serving,
                    random.Random(os.getpid()), gate=gate)
            if not stop.is_set():
                emit("not_serving", acked=acked[0])
            return not stop.is_set()
        except (HspError, OSError) as exc:
            if not stop.is_set() and isinstance(exc, HspError) and not engine.serving:
                # the node stopped serving under the workload (a commit refused for that):
                # it may serve again (on_role, a GSO)
                emit("not_serving", acked=acked[0], why=str(exc))
                return True
            if not stop.is_set():
                workload_error.append(str(exc))
                emit("workload_stopped", why=str(exc))
            return False
        finally:
            if sock is not None:
                sock.close()

    worker = threading.Thread(target=workload, daemon=True)
    worker.start()
    commands = Commands(node, work, gso_side)
    while True:
        names = os.listdir(work)  # listed, not stat'ed: a 9p share may cache "absent"
        if "stop" in names:
            break
        commands.poll(names)
        time.sleep(0.02)
    stop.set()
    serving.set()
    worker.join(10)
    st = node.status()
    (work / f"pmem-{cfg.name}.bin").write_bytes(bytes(node.pmem.buf))
    if "journal" in node.disk:
        d = node.disk["journal"]
        (work / f"journal-{cfg.name}.final").write_bytes(d.read(0, d.size))
    emit("final", status=st, acked=acked[0], workload_error=workload_error,
         gso=None if gso_side is None else {"state": gso_side.eng.machine.state.value,
                                            "epoch": gso_side.eng.machine.epoch,
                                            "fabric": gso_side.eng.fabric,
                                            "connected": gso_side.connected.is_set(),
                                            "frozen": gate.frozen, "freezes": gate.freezes})
    if gso_side is not None:
        gso_side.close()
    node.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (HspError, NodeError) as exc:
        emit("error", why=str(exc))
        print(f"drill_node: {exc}", file=sys.stderr)
        sys.exit(1)
