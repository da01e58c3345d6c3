"""One node of a drill: ``python -m hsp_rdma.tools.drills.drill_node CONFIG SCENARIO ACK_ADDR
DIR`` (ACK_ADDR "-": no driver, acks only counted; "stdout": each ack is an ``ack`` event).
Starts the node engine with its failover engine; while this node serves, runs the
scenario's ledger workload on it (``tools/drills/app.py``) and sends each acknowledged
transfer's id to the driver (``ACK_ADDR`` = host:port, one TCP connection, ``ack N`` lines).

Prints JSON events on stdout, one per line, each with ``t`` (this host's monotonic clock):
``started`` (pid, role, epoch), ``serving`` (the workload runs; epoch), ``failover`` events
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
from pathlib import Path

from hsp_rdma.errors import HspError
from hsp_rdma.ha.config import load_node_config
from hsp_rdma.ha.failover_engine import FailoverEngine
from hsp_rdma.ha.node import Node, NodeError
from hsp_rdma.tools.drills import app
from hsp_rdma.tools.drills.scenario import load_scenario

_out_lock = threading.Lock()
PAGE = 4096  # a corrupted P.mem page, a corrupted disk block
AUDIT_ANSWER_S = 20.0  # an audit command is answered when the audit ended, or after this


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


def run_command(node: Node, command: dict) -> tuple[bool, str]:
    """(ok, detail) of one drill command."""
    do = command.get("do") if isinstance(command, dict) else None
    try:
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
    return False, f"unknown drill command {command!r}: do is 'corrupt' or 'audit'"


class Commands:
    """``DIR/cmd-<seq>.json``, each run once in seq order, in a thread of its own (an audit
    command waits for its audit; the main loop keeps watching for ``stop``)."""

    def __init__(self, node: Node, work: Path):
        self.node, self.work = node, work
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
            ok, detail = (False, why) if command is None else run_command(self.node, command)
            emit("command_done", seq=seq, ok=ok, detail=detail)


def main(argv: list[str]) -> int:
    cfg_path, scenario_path, ack_addr, work = argv
    work = Path(work)
    cfg = load_node_config(cfg_path)
    spec = load_scenario(scenario_path).workload
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
            time.sleep(0.01)

    node.start()
    emit("started", pid=os.getpid(), node=cfg.name, role=node.role, epoch=node.session.epoch)
    threading.Thread(target=watch, daemon=True).start()
    if cfg.role == "active":
        serving.set()
    to_stdout = ack_addr == "stdout"  # the lab: acks go out as events on the command channel
    host, _, port = ack_addr.rpartition(":") if ack_addr not in ("-", "stdout") else ("", "", "")
    acked = [0]
    workload_error: list[str] = []

    def workload() -> None:
        serving.wait()
        if stop.is_set():
            return
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

            app.run(wl, spec.rate, ack, lambda: stop.is_set() or not engine.serving,
                    random.Random(os.getpid()))
        except (HspError, OSError) as exc:
            if not stop.is_set():
                workload_error.append(str(exc))
                emit("workload_stopped", why=str(exc))
        finally:
            if sock is not None:
                sock.close()

    worker = threading.Thread(target=workload, daemon=True)
    worker.start()
    commands = Commands(node, work)
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
    emit("final", status=st, acked=acked[0], workload_error=workload_error)
    node.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (HspError, NodeError) as exc:
        emit("error", why=str(exc))
        print(f"drill_node: {exc}", file=sys.stderr)
        sys.exit(1)
