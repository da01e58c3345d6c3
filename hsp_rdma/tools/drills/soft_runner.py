"""Drills on this host over the soft VIA provider (``soft:NAME``, TCP on 127.0.0.1/.2): two
node processes (``tools/drills/drill_node.py``), each with its failover engine; the fence
action is ``tools/drills/host_fence.py`` (kills the fenced node's process). Faults are done to
the processes: ``kill`` = SIGKILL, ``pause``/``resume`` = SIGSTOP/SIGCONT. The driver keeps the
ack log (``acklog``: one TCP connection per serving node, each line stamped with this host's
monotonic clock, which the nodes share), then checks the survivor's P.mem ledger and disk
journal against it (``ledger.verify_acked``, ``check_replay``).

Steps supported: wait (for, until suspected/fenced/promoted), kill, pause, resume. A scenario
with any other step (pull, plug, netem, gso, corrupt, heal, audit, restart) is refused before
anything starts (``unsupported``): those need link control, resync or audit, not built yet.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from hsp_rdma.tools.drills.acklog import AckWriter, blackout_ms, pump, read_acklog
from hsp_rdma.tools.drills.ledger import check_ledger, check_replay, verify_acked
from hsp_rdma.tools.drills.runner import DrillResult
from hsp_rdma.tools.drills.scenario import Scenario
from hsp_rdma.tools.lab_config import write_node_configs
from hsp_rdma.via.providers import soft

SUPPORTED = {"wait", "kill", "pause", "resume"}
UNTIL_EVENT = {"suspected": "suspected", "fenced": "fence_result", "promoted": "active"}
INFO = {"a": {"x": {"rdma_dev": "soft:a", "ipv4": "127.0.0.1"}},
        "b": {"x": {"rdma_dev": "soft:b", "ipv4": "127.0.0.2"}}}
TIMEOUTS = {"heartbeat_interval": 100, "heartbeat_timeout": 1000, "connect": 30000,
            "commit": 5000}
DISK_SIZE = 16 << 20


def unsupported(scenario: Scenario, supported: set[str] = SUPPORTED) -> str | None:
    """Why SCENARIO cannot run yet, or None."""
    bad = sorted({s.do for s in scenario.steps} - supported)
    bad += [f"wait until {s.until}" for s in scenario.steps
            if s.do == "wait" and s.until is not None and s.until not in UNTIL_EVENT]
    if scenario.checks.resync:
        bad.append("a resync check")
    if scenario.checks.audit_repairs is not None:
        bad.append("an audit check")
    if not bad:
        return None
    return (f"its step(s) {', '.join(bad)} need link control, resync or audit in the node "
            "engine, not built yet (issue 12); kill, pause, resume and wait run today")


class _NodeProc:
    def __init__(self, name: str, argv: list[str], work: Path, env: dict):
        self.name = name
        self.events: list[dict] = []
        self.out = open(work / f"{name}.events", "w")  # noqa: SIM115 - closed in close()
        self.err = open(work / f"{name}.stderr", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.err, env=env,
                                     text=True)
        (work / f"{name}.pid").write_text(str(self.proc.pid))
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.out.write(line)
            self.out.flush()
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def find(self, event: str, what: str | None = None) -> dict | None:
        for e in list(self.events):
            if e["event"] == event and (what is None or e.get("what") == what):
                return e
        return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
        self._t.join(5)
        self.out.close()
        self.err.close()


class SoftRunner:
    """Runs drills on this host over soft; ``keep`` leaves the work directories."""

    def __init__(self, keep: bool = False):
        self.keep = keep

    def run(self, scenario: Scenario) -> DrillResult:
        work = Path(tempfile.mkdtemp(prefix=f"hsp-drill-{scenario.name}-"))
        keep = self.keep
        try:
            result = self._run(scenario, work)
            if result.problems:  # the nodes' events and stderr stay for the reader
                keep = True
                result = replace(result, problems=(*result.problems,
                                                   f"the nodes' events and stderr: {work}"))
            return result
        finally:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)

    def _run(self, scenario: Scenario, work: Path) -> DrillResult:
        problems: list[str] = []
        fence = f"{sys.executable} -m hsp_rdma.tools.drills.host_fence"
        paths = write_node_configs(
            INFO, work, pmem_size="4 MiB", timeouts=TIMEOUTS,
            disks=[{"name": "journal", "path": str(work / "journal-NODE.img"),
                    "size": DISK_SIZE}],
            fence={"action": fence, "options": {"dir": str(work)}, "timeout": 10000})
        for node, path in paths.items():
            path.write_text(path.read_text().replace("NODE", node))
            (work / f"journal-{node}.img").write_bytes(bytes(DISK_SIZE))
        env = dict(os.environ, HSP_VIA_SOFT_PORT_BASE=str(soft.random_port_base()))
        # the driver's ack log: one connection per serving node
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)
        ack_addr = f"127.0.0.1:{listener.getsockname()[1]}"
        ack_path = work / "acks.log"
        writer = AckWriter(ack_path)
        stop_acks = threading.Event()
        pumps: list[threading.Thread] = []
        serving_by: dict[str, str] = {}  # peer address -> node, unknown: "?"

        def accept() -> None:
            while not stop_acks.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                who = "a" if not pumps else "b"  # the first to serve is the active (a)
                serving_by[str(len(pumps))] = who
                t = threading.Thread(target=lambda c=conn, w=who: pump(c.makefile("rb"),
                                                                       writer, w), daemon=True)
                t.start()
                pumps.append(t)

        threading.Thread(target=accept, daemon=True).start()
        scen_path = scenario.path or ""
        argv = [sys.executable, "-m", "hsp_rdma.tools.drills.drill_node"]
        procs = {n: _NodeProc(n, [*argv, str(paths[n]), scen_path, ack_addr, str(work)],
                              work, env) for n in ("a", "b")}
        role_of = {"active": "a", "standby": "b"}
        fault_t: float | None = None
        try:
            deadline = time.monotonic() + 60
            while not all(p.find("started") for p in procs.values()):
                for p in procs.values():
                    if p.proc.poll() is not None:
                        raise RuntimeError(f"node {p.name} ended before it started: "
                                           f"{(work / f'{p.name}.stderr').read_text()[-800:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("the pair did not start in 60 s")
                time.sleep(0.05)
            if not procs["a"].find("serving"):
                _wait(lambda: procs["a"].find("serving"), 20, "the active's workload to start")
            for step in scenario.steps:
                if step.do == "wait":
                    if step.until is not None:
                        ev = UNTIL_EVENT[step.until]
                        _wait(lambda ev=ev: procs["b"].find("failover", ev),
                              step.timeout_s or 60, f"event {step.until}")
                    if step.wait_s:
                        time.sleep(step.wait_s)
                    continue
                p = procs[role_of[step.node]]
                sig = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP,
                       "resume": signal.SIGCONT}[step.do]
                if fault_t is None and step.do in ("kill", "pause"):
                    fault_t = time.monotonic()
                try:
                    p.proc.send_signal(sig)
                except ProcessLookupError:
                    pass  # resumed after the fence powered it off: nothing to resume
        except RuntimeError as exc:
            problems.append(str(exc))
        finally:
            (work / "stop").touch()
            for p in procs.values():
                if p.proc.poll() is None:
                    try:
                        p.proc.wait(15)
                    except subprocess.TimeoutExpired:
                        problems.append(f"node {p.name} did not stop in 15 s")
                p.close()
            stop_acks.set()
            listener.close()
            for t in pumps:
                t.join(5)
            writer.close()
        return self._judge(scenario, work, procs, ack_path, fault_t, problems)

    def _judge(self, scenario: Scenario, work: Path, procs: dict, ack_path: Path,
               fault_t: float | None, problems: list[str]) -> DrillResult:
        survivor = "b" if procs["b"].find("failover", "active") else "a"
        pmem_file = work / f"pmem-{survivor}.bin"
        journal_file = work / f"journal-{survivor}.final"
        return judge_drill(scenario, procs, read_acklog(ack_path),
                           pmem_file.read_bytes() if pmem_file.exists() else None,
                           journal_file.read_bytes() if journal_file.exists() else None,
                           fault_t, problems)


def judge_drill(scenario: Scenario, procs: dict, log, ledger: bytes | None,
                journal: bytes | None, fault_t: float | None,
                problems: list[str]) -> DrillResult:
    """The DrillResult of a drill of nodes a (first active) and b: PROCS[name].find(event,
    what) gives a node's events with ``t`` on the driver's clock (s), LOG the ack log, LEDGER
    and JOURNAL the survivor's P.mem and disk as it left them, FAULT_T the first fault."""
    acks = list(log.acks)
    b_active = procs["b"].find("failover", "active")
    failover = b_active is not None
    survivor = "b" if failover else "a"
    final = procs[survivor].find("final")
    if final is None:
        problems.append(f"the survivor (node {survivor}) gave no final state")
    if "pmem" not in scenario.workload.targets:
        ledger = None
    if "disk" not in scenario.workload.targets:
        journal = None
    lost = verify_acked(log.ids, ledger, journal) if final is not None else log.ids
    if ledger is not None:
        ok, why = check_ledger(ledger)
        if not ok:
            problems.extend(f"survivor's ledger: {w}" for w in why)
        if journal is not None:
            problems.extend(f"survivor: {w}" for w in check_replay(ledger, journal))
    # two actives: the old active acknowledged after the new one became active, or became
    # active again itself
    two = False
    if failover:
        t_new = b_active["t"]
        two = any(a.node == "a" and a.t_ns / 1e9 > t_new for a in acks)
        two = two or (procs["a"].find("failover", "active") is not None)
    suspected = procs["b"].find("failover", "suspected")
    detect = None
    if fault_t is not None and suspected is not None:
        detect = round((suspected["t"] - fault_t) * 1000, 1)
    blackout = blackout_ms(acks, int(fault_t * 1e9)) if fault_t is not None else None
    if failover:
        # the old active's last ack to the new active's first, each as the driver got it:
        # acks still on their way at the fault (the lab's channel streams them) count as
        # the old active's, not as the end of the blackout
        old = [a.t_ns for a in acks if a.node == "a"]
        new = [a.t_ns for a in acks if a.node == "b"]
        blackout = (min(new) - max(old)) / 1e6 if old and new else None
    err = procs[survivor].find("workload_stopped")
    if err:
        problems.append(f"node {survivor}'s workload stopped: {err['why']}")
    return DrillResult(scenario.name, len(log.ids), len(lost), two,
                       None if blackout is None else round(blackout, 1), detect, 0, 0,
                       failover, False, tuple(problems))


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} in {timeout:g} s")
        time.sleep(0.02)
