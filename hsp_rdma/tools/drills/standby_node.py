"""The n+1 standby host of a drill: ``python -m hsp_rdma.tools.drills.standby_node SPEC.json``.

SPEC: ``{"scenario": PATH, "dir": DIR, "sessions": {PEER: {"config": PATH, "ack": ACK}}}``, one
session per protected active (the standby's side of that pair), ACK as drill_node's ACK_ADDR
("host:port": one TCP connection per serving session, ``ack N`` lines; "stdout": each ack an
``ack`` event with its ``session``; "-": only counted). Runs ``StandbyHost`` (one Node +
FailoverEngine per session, takeover exclusivity: ``hsp_rdma.ha.standby_host``); when a session
promotes (its active lost, fenced), it runs the scenario's ledger workload on that session's
P.mem and journal disk (continuing the active's ledger, as drill_node does on a pair's
standby) and sends its acks to that pair's ACK.

GSO (a scenario with a gso step): every session carries a GSO engine (drill_node's
``GsoSide``, listening with its pair's discriminator, its image the session's P.mem, its
epochs under the session's state_dir; ``StandbyHost.attach_gso`` guards it), so an active can
switch over to this host: the session becomes that pair's active (its workload as after a
promotion), the active its standby. A Start-GSO while another session serves is refused by
the host (``takeover_refused`` note, Abort BUSY to that active, which keeps serving).

Events on stdout, one JSON line each, ``t`` this host's monotonic clock: ``started`` (pid, node,
sessions, failed), ``failover`` (a session's engine note, with ``session``: suspected, fencing,
fence_result, active, takeover_refused, alarm, ...), ``serving`` (session, epoch, last_id),
``ack`` (session, id; ACK "stdout" only), ``workload_stopped`` (session, why), ``gso``
(session, phase: drill_node's GSO events), ``final`` (the host's status: active session,
refusals, GSO states; each session's acked count) once ``DIR/stop`` exists,
after each session's P.mem is dumped to ``DIR/pmem-<node>-<peer>.bin`` and its journal disk to
``DIR/journal-<node>-<peer>.final``; ``error`` (why) when the host cannot start (exit 1).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path

from hsp_rdma.errors import HspError
from hsp_rdma.ha.node import NodeError
from hsp_rdma.ha.standby_host import StandbyHost
from hsp_rdma.tools.drills import app
from hsp_rdma.tools.drills.drill_node import GsoSide, _DiskSink, _PmemSink, emit
from hsp_rdma.tools.drills.scenario import load_scenario


def dump_names(node: str, peer: str) -> tuple[str, str]:
    """The files a session's P.mem and journal are dumped to, in DIR."""
    return f"pmem-{node}-{peer}.bin", f"journal-{node}-{peer}.final"


class Session:
    """One session's workload: while the session serves, the ledger on its P.mem and disk."""

    def __init__(self, host: StandbyHost, peer: str, spec, ack: str, stop: threading.Event):
        self.host, self.peer, self.spec, self.ack, self.stop = host, peer, spec, ack, stop
        self.node = host.nodes[peer]
        self.engine = host.engines[peer]
        self.serving = threading.Event()
        self.gate = app.Gate()  # where a GSO from this session (switch-back) freezes it
        self.engine.on_role = lambda role: (self.serving.set() if role == "active"
                                            else self.serving.clear())
        self.acked = 0
        self.error = ""
        self.thread = threading.Thread(target=self._run, name=f"n1-wl-{peer}", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.serving.wait(0.2)
            if self.stop.is_set():
                return
            if not (self.serving.is_set() or self.engine.serving):
                continue
            if not self._once():
                return

    def _once(self) -> bool:
        """The workload while the session serves; False at the stop or on an error."""
        spec = self.spec.workload
        host, _, port = (self.ack.rpartition(":") if self.ack not in ("-", "stdout")
                         else ("", "", ""))
        sock = None
        try:
            sock = socket.create_connection((host, int(port)), timeout=10) if port else None
            disk = self.node.disk["journal"] if "disk" in spec.targets else None
            content = disk.read(0, disk.size) if disk is not None else None
            wl = app.open_workload(spec, _PmemSink(self.node) if "pmem" in spec.targets
                                   else None,
                                   _DiskSink(disk, spec.commit) if disk else None, content)
            emit("serving", session=self.peer, epoch=self.node.session.epoch,
                 last_id=wl.last_id)
            if sock is not None:
                send = app.socket_ack(sock)
            elif self.ack == "stdout":
                def send(tid: int) -> None:
                    emit("ack", session=self.peer, id=tid)
            else:
                def send(_tid: int) -> None:
                    pass

            def ack(tid: int) -> None:
                send(tid)
                self.acked += 1

            app.run(wl, spec.rate, ack, lambda: self.stop.is_set() or not self.engine.serving,
                    random.Random(os.getpid() ^ hash(self.peer)), gate=self.gate)
            if not self.stop.is_set():
                emit("not_serving", session=self.peer, acked=self.acked)
                self.serving.clear()
            return not self.stop.is_set()
        except (HspError, OSError) as exc:
            if not self.stop.is_set():
                self.error = str(exc)
                emit("workload_stopped", session=self.peer, why=str(exc))
            return False
        finally:
            if sock is not None:
                sock.close()


def main(argv: list[str]) -> int:
    (spec_path,) = argv
    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["dir"])
    scenario = load_scenario(spec["scenario"])
    sessions_spec = spec["sessions"]
    with_gso = any(step.do == "gso" for step in scenario.steps)
    host = StandbyHost([s["config"] for s in sessions_spec.values()], gso=with_gso)
    stop = threading.Event()
    sessions = {peer: Session(host, peer, scenario, s["ack"], stop)
                for peer, s in sessions_spec.items() if peer in host.nodes}
    seen = {peer: 0 for peer in host.engines}
    sides: dict[str, GsoSide] = {}
    try:
        for peer, s in sessions.items() if with_gso else ():
            # NICs opened and registered before the sessions start (as drill_node does)
            sides[peer] = GsoSide(host.nodes[peer], host.engines[peer], s.gate, stop,
                                  lambda s=s: {"acked": s.acked}, s.serving, session=peer)
            host.attach_gso(peer, sides[peer].eng)
    except BaseException:
        host.close()
        raise

    def watch() -> None:  # every session's engine notes, as events
        while not stop.is_set():
            for peer, engine in host.engines.items():
                with host.nodes[peer]._lock:
                    notes = engine.history[:]
                for n in notes:
                    if n["n"] > seen[peer]:
                        seen[peer] = n["n"]
                        emit("failover", session=peer, **n)
                        if n.get("what") == "suspected" and peer in sides:
                            sides[peer].suspected()  # AllFabricsLost for its GSO machine
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()
    try:
        host.start()
        name = next(iter(host.configs.values())).name
        emit("started", pid=os.getpid(), node=name, sessions=sorted(host.started),
             failed=dict(host.failed))
        for s in sessions.values():
            s.thread.start()
        for peer, side in sides.items():
            if peer in host.started:
                side.start()
        while "stop" not in os.listdir(work):  # listed, not stat'ed (a 9p share)
            time.sleep(0.02)
        stop.set()
        for s in sessions.values():
            s.serving.set()
            s.thread.join(10)
        st = host.status()
        for peer, node in host.nodes.items():
            if peer in host.failed:
                continue
            pmem_name, journal_name = dump_names(name, peer)
            (work / pmem_name).write_bytes(bytes(node.pmem.buf))
            if "journal" in node.disk:
                d = node.disk["journal"]
                (work / journal_name).write_bytes(d.read(0, d.size))
        emit("final", host=st["host"], acked={p: s.acked for p, s in sessions.items()},
             gso={p: {"state": side.eng.machine.state.value, "epoch": side.eng.machine.epoch,
                      "connected": side.connected.is_set(), "ended": side.ended}
                  for p, side in sides.items()},
             workload_error={p: s.error for p, s in sessions.items() if s.error},
             roles={p: ss.get("role") for p, ss in st["sessions"].items()})
    finally:
        stop.set()
        for side in sides.values():
            if side._thread.ident is not None:
                side.close()
            else:  # (its session never started)
                side.eng.close(drain_s=0)
        host.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (HspError, NodeError, OSError) as exc:
        emit("error", why=f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError)
             else str(exc))
        print(f"standby_node: {exc}", file=sys.stderr)
        sys.exit(1)
