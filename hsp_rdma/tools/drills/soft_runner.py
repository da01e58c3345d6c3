"""Drills on this host over the soft VIA provider (``soft:NAME``, TCP on loopback): two
node processes (``tools/drills/drill_node.py``), each with its failover engine, on the
scenario's fabrics (``fabrics``; both by default): fabric x on NICs soft:a / soft:b
(127.0.0.1 / 127.0.0.2), fabric y on soft:a-y / soft:b-y (127.0.2.1 / 127.0.2.2); the fence
action is ``tools/drills/host_fence.py`` (kills the fenced node's process). Faults are done to
the processes: ``kill`` = SIGKILL, ``pause``/``resume`` = SIGSTOP/SIGCONT; ``pull``/``plug`` of
a fabric = the soft provider's link emulation of that fabric's NIC (each node runs with
HSP_VIA_SOFT_LINKS_DIR = WORK/links and its NIC soft:LABEL goes down while
WORK/links/LABEL.down exists: a.down, b.down for x, a-y.down, b-y.down for y),
``heal`` removes every such file; ``corrupt`` and ``audit`` are drill command files
(``runner.StepDriver``) in the node's own directory WORK/a or WORK/b. The driver keeps the
ack log (``acklog``: one TCP connection per serving node, each line stamped with this host's
monotonic clock, which the nodes share), then checks the survivor's P.mem ledger and disk
journal against it (``ledger.verify_acked``, ``check_replay``).

Steps supported: wait (for, until suspected/fenced/promoted/resync-started/resync-done/
audit-done/fabric-switched), kill, pause, resume, pull, plug (fabric x or y), heal,
corrupt, audit, restart (the killed node's process started again: it rejoins), gso (a
drill command ``{"do": "gso"}`` to the node serving, which starts a Graceful Switch Over to
its peer over its own Interface B VI: ``drill_node.GsoSide``; ``wait until
gso-copy-started`` / ``gso-done`` wait for the nodes' ``gso`` events, see ``GsoStepDriver``).
A scenario with any other step (netem) is refused before anything starts (``unsupported``).
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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from hsp_rdma.tools.drills.acklog import AckServer, AckWriter, blackout_ms, read_acklog
from hsp_rdma.tools.drills.ledger import ledger_problems, verify_acked
from hsp_rdma.tools.drills.runner import (
    UNTIL_EVENT,
    UNTIL_OWN,
    DrillResult,
    StepDriver,
    ack_interval_ms,
    command_file,
    event_results,
    fabric_problems,
    fabric_switches,
    judge,
    pair_ready,
    switch_count,
    traffic_stops,
    wait_for,
)
from hsp_rdma.tools.drills.scenario import Scenario
from hsp_rdma.tools.lab_config import write_node_configs
from hsp_rdma.via.providers import soft

SUPPORTED = {"wait", "kill", "pause", "resume", "pull", "plug", "heal", "corrupt", "audit",
             "restart", "gso"}
WHY_NOT = {"netem": "netem needs tc on a real interface (the soft provider has none): run it "
                    "in the lab (--lab rxe|siw)"}
# scenario events of a GSO -> the ``phase`` of a drill node's ``gso`` event (either node)
GSO_UNTIL = {"gso-copy-started": "copy_started", "gso-done": "done"}
# A drill that waits for gso-copy-started (to fault during the copy) gets a copy paced to
# last this long: the image is the node's P.mem (8 MiB), copied in milliseconds unpaced,
# too fast for a fault the driver starts when it sees the copy begin. A real state image of
# gigabytes takes seconds; the pace stands for that, and is named in the gso command.
DRILL_COPY_S = 10.0
SOFT_FABRICS = ("x", "y")  # the soft pair's fabrics: one soft NIC per node on each
# fabric -> (NIC label of node N: soft:LABEL, its link file LINKS/LABEL.down; the node's IPv4
# on it: 127.0.<net>.<1 for a, 2 for b>), loopback only. x keeps the names every soft test
# uses (soft:a, 127.0.0.1); y is a network of its own (the node config refuses one local
# address on both fabrics)
SOFT_NICS = {"x": ("{node}", 0), "y": ("{node}-y", 2)}


def soft_label(node: str, fabric: str) -> str:
    """The soft NIC label of NODE's FABRIC (its link file is LINKS/<label>.down)."""
    return SOFT_NICS[fabric][0].format(node=node)


def soft_info(fabrics: tuple[str, ...] = SOFT_FABRICS) -> dict:
    """``Lab.info()``-shaped addresses of the soft pair on FABRICS (write_node_configs)."""
    return {node: {fab: {"rdma_dev": f"soft:{soft_label(node, fab)}",
                         "ipv4": f"127.0.{SOFT_NICS[fab][1]}.{i}"} for fab in fabrics}
            for i, node in enumerate(("a", "b"), start=1)}


INFO = soft_info(("x",))  # the one-fabric pair (tests of one fabric)
TIMEOUTS = {"heartbeat_interval": 100, "heartbeat_timeout": 1000, "connect": 30000,
            "commit": 5000}
DISK_SIZE = 16 << 20
# P.mem of a drill node: room above the ledger (~26 KiB for the shipped drills: 1000 accounts,
# 64 memo slots) for the pages a corrupt step damages (corrupt-and-audit takes page 1024)
PMEM_SIZE = "8 MiB"


def unsupported(scenario: Scenario, supported: set[str] = SUPPORTED,
                fabrics: tuple[str, ...] | None = SOFT_FABRICS,
                where: str = "over the soft provider") -> str | None:
    """Why SCENARIO cannot run here (SUPPORTED steps, FABRICS that can be pulled; None:
    any), or None."""
    if scenario.nplus1 is not None:  # an n+1 drill: its own runner (tools/drills/nplus1.py)
        from hsp_rdma.tools.drills.nplus1 import unsupported as nplus1_unsupported
        return nplus1_unsupported(scenario, where)
    bad = []
    for do in sorted({s.do for s in scenario.steps} - supported):
        bad.append(f"step {do}: {WHY_NOT.get(do, 'not built yet')}")
    for until in sorted({s.until for s in scenario.steps if s.do == "wait" and s.until
                         and s.until not in UNTIL_EVENT and s.until not in GSO_UNTIL
                         and s.until not in UNTIL_OWN}):
        bad.append(f"wait until {until}: no runner waits for that event yet")
    if fabrics is not None:
        for fab in sorted({s.fabric for s in scenario.steps if s.fabric} - set(fabrics)):
            bad.append(f"fabric {fab}: the pair here has only {', '.join(fabrics)}")
    if not bad:
        return None
    return f"{'; '.join(bad)} ({where}; issue 12)"


def gso_event(procs: dict, phase: str, since: dict[str, int] | None = None,
              node: str | None = None) -> dict | None:
    """The first ``gso`` event of PHASE from either node (or NODE), after SINCE[node]."""
    for n in [node] if node else list(procs):
        for e in list(procs[n].events)[(since or {}).get(n, 0):]:
            if e.get("event") == "gso" and e.get("phase") == phase:
                return e
    return None


class GsoStepDriver(StepDriver):
    """``runner.StepDriver`` with the gso step: ``{"do": "gso"}`` to the node serving now
    (``copy_s`` = DRILL_COPY_S when a later step, before the next gso, waits for
    gso-copy-started: a window for its fault), answered once the GSO started; ``wait until
    gso-copy-started|gso-done`` waits for a ``gso`` event of that phase after the last action
    step. Every other step is StepDriver's. (Small enough to move into StepDriver.)"""

    def run(self, steps) -> None:
        steps = list(steps)
        for i, step in enumerate(steps):
            if step.do == "gso" or (step.do == "wait" and step.until in GSO_UNTIL):
                self.timeline.append((self.clock(), step))
            if step.do == "gso":
                self._mark()
                later = []
                for s in steps[i + 1:]:
                    if s.do == "gso":
                        break
                    later.append(s)
                window = any(s.do == "wait" and s.until == "gso-copy-started" for s in later)
                self.command(self.serving(), {"do": "gso",
                                              **({"copy_s": DRILL_COPY_S} if window else {})})
            elif step.do == "wait" and step.until in GSO_UNTIL:
                since = dict(self.since)
                self.wait(lambda p=GSO_UNTIL[step.until], s=since: gso_event(self.procs, p, s),
                          step.timeout_s or 60, f"event {step.until}")
                if step.wait_s:
                    self.sleep(step.wait_s)
            else:
                super().run([step])
        self.done_t = self.clock()


def gso_problems(scenario: Scenario, procs: dict, acks: list) -> list[str]:
    """What a drill with a gso step must show, beyond the ledger checks: every GSO ended
    (``done``), and one that was abandoned left the active thawed and acknowledging again
    (an ack from node a after its ``thawed``); one that completed is a problem until the
    completion path (roles changing in the drill nodes) is built."""
    if not any(s.do == "gso" for s in scenario.steps):
        return []
    problems = []
    for n, p in procs.items():
        for e in list(p.events):
            if e.get("event") == "gso" and e.get("phase") in ("error", "completion_not_built"):
                problems.append(f"node {n}: GSO {e['phase']}: {e.get('reason')}")
    requested = gso_event(procs, "requested", node="a")
    if requested is None:
        return [*problems, "no GSO was started on the active (node a)"]
    done = gso_event(procs, "done", node="a")
    if done is None:
        return [*problems, "the active's GSO never ended (no gso done event from node a)"]
    if done.get("outcome") == "completed":
        # the roles changed: b took over from the image and serves; a stopped
        took = gso_event(procs, "switched", node="b")
        if took is None or not took.get("active"):
            problems.append("the GSO completed but node b never switched to active")
        elif took.get("pages_differing"):
            problems.append(f"the GSO image and node b's replicated P.mem differed in "
                            f"{took['pages_differing']} page(s): Interface A's copy was not "
                            "exact at the freeze")
        elif not any(a.node == "b" and a.t_ns / 1e9 > took["t"] for a in acks):
            problems.append("the GSO completed but the new active (node b) acknowledged no "
                            "transfer after it")
        gave = gso_event(procs, "switched", node="a")
        if gave is None or gave.get("active"):
            problems.append("the GSO completed but node a never switched to standby")
        elif any(a.node == "a" and a.t_ns / 1e9 > gave["t"] for a in acks):
            problems.append("node a acknowledged transfers after it switched to standby")
        if took is not None and not any(st.do in StepDriver.FAULTS for st in scenario.steps):
            # no fault: the pair must stay whole, the old active the new active's replica
            after = [e for e in list(procs["b"].events) if e.get("event") == "failover"
                     and e.get("what") in ("refused", "suspected") and e["t"] >= took["t"]]
            if after:
                e = after[0]
                what = (f"refused its frames ({e.get('channel')}, epoch {e.get('epoch')})"
                        if e["what"] == "refused" else "suspected it")
                problems.append(
                    f"after the switch-over the new active (node b) {what}: the old active is "
                    "no working replica of the new one (b serves alone; the failover engines' "
                    "follow-up of SwitchedOver)")
        return problems
    thawed = gso_event(procs, "thawed", node="a")
    if gso_event(procs, "frozen", node="a") is None:
        # ended before the freeze: the application never stopped, and no switch-over happened
        problems.append(f"the active's GSO ended {done.get('outcome')} "
                        f"({done.get('reason') or 'no reason given'}) before its application "
                        "was frozen: no switch-over took place")
    elif thawed is None:
        problems.append(f"the active's GSO ended {done.get('outcome')} ({done.get('reason')}) "
                        "but its application was never thawed")
    elif not any(a.node == "a" and a.t_ns / 1e9 > thawed["t"] for a in acks):
        problems.append("the active thawed but acknowledged no transfer after it")
    return problems


class _NodeProc:
    def __init__(self, name: str, argv: list[str], work: Path, env: dict):
        self.name = name
        self._argv, self._work, self._env = argv, work, env
        self.events: list[dict] = []
        self.out = open(work / f"{name}.events", "w")  # noqa: SIM115 - closed in close()
        self.err = open(work / f"{name}.stderr", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.err, env=env,
                                     text=True)
        (work / f"{name}.pid").write_text(str(self.proc.pid))
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def respawn(self) -> None:
        """The drill's restart: the (killed) node started again, same configuration and
        state directory; its events go on in the same list."""
        if self.proc.poll() is None:
            raise RuntimeError(f"node {self.name} still runs: restart follows a kill")
        self._t.join(5)
        self.proc = subprocess.Popen(self._argv, stdout=subprocess.PIPE, stderr=self.err,
                                     env=self._env, text=True)
        (self._work / f"{self.name}.pid").write_text(str(self.proc.pid))
        self._t = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._t.start()

    def _read(self, proc=None) -> None:
        for line in (proc or self.proc).stdout:
            self.out.write(line)
            self.out.flush()
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def find(self, event: str, what: str | None = None) -> dict | None:
        for e in list(self.events):
            if e.get("event") == event and (what is None or e.get("what") == what):
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
    """Runs drills on this host over soft; ``keep`` leaves the work directories.

    Hooks for tools built on the drills (``tools/fabric_bench.py``): ``step_driver``, the
    class that runs the steps (GsoStepDriver or a subclass), and ``observe``, called once per
    run with what the judge is given (``procs``, ``log``: the ack log, ``timeline``,
    ``own_t``: each ack's time on its node's clock where known, ``done_t``)."""

    def __init__(self, keep: bool = False):
        self.keep = keep
        self.step_driver: type[GsoStepDriver] = GsoStepDriver
        self.observe: Callable[[dict], None] | None = None

    def run(self, scenario: Scenario) -> DrillResult:
        if scenario.nplus1 is not None:  # N actives and a standby host: its own processes
            from hsp_rdma.tools.drills.nplus1 import SoftNPlus1Runner
            return SoftNPlus1Runner(self.keep).run(scenario)
        work = Path(tempfile.mkdtemp(prefix=f"hsp-drill-{scenario.name}-"))
        keep = self.keep
        try:
            result = self._run(scenario, work)
            if result.problems or judge(scenario, result):  # the nodes' events and stderr
                # stay for the reader
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
            soft_info(scenario.fabrics), work, pmem_size=PMEM_SIZE, pmem_persist=True, timeouts=TIMEOUTS,
            disks=[{"name": "journal", "path": str(work / "journal-NODE.img"),
                    "size": DISK_SIZE}],
            fence={"action": fence, "options": {"dir": str(work)}, "timeout": 10000})
        for node, path in paths.items():
            path.write_text(path.read_text().replace("NODE", node))
            (work / f"journal-{node}.img").write_bytes(bytes(DISK_SIZE))
        links = work / "links"
        links.mkdir()
        dirs = {n: work / n for n in ("a", "b")}  # each node's own: its commands, its dumps
        for d in dirs.values():
            d.mkdir()
        env = dict(os.environ, HSP_VIA_SOFT_PORT_BASE=str(soft.random_port_base()),
                   **{soft.LINKS_DIR_ENV: str(links)})
        # the driver's ack log: one connection per serving node
        ack_path = work / "acks.log"
        writer = AckWriter(ack_path)
        acks = AckServer(socket.create_server(("127.0.0.1", 0)), writer)
        ack_addr = acks.addr
        scen_path = scenario.path or ""
        argv = [sys.executable, "-m", "hsp_rdma.tools.drills.drill_node"]
        procs = {n: _NodeProc(n, [*argv, str(paths[n]), scen_path, ack_addr, str(dirs[n])],
                              work, env) for n in ("a", "b")}

        def fault(node: str, step) -> None:
            if step.do in ("pull", "plug"):
                down = links / f"{soft_label(node, step.fabric)}.down"  # that fabric's NIC
                if step.do == "pull":
                    down.touch()
                else:
                    down.unlink(missing_ok=True)
                return
            if step.do == "restart":
                procs[node].respawn()
                return
            sig = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP,
                   "resume": signal.SIGCONT}[step.do]
            try:
                procs[node].proc.send_signal(sig)
            except ProcessLookupError:
                pass  # resumed after the fence powered it off: nothing to resume

        def heal() -> None:
            for f in links.glob("*.down"):
                f.unlink(missing_ok=True)

        driver = self.step_driver(procs, fault, heal,
                                  lambda n, seq, cmd: command_file(dirs[n], seq, cmd),
                                  wait_for, time.sleep, time.monotonic)
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
                wait_for(lambda: pair_ready(procs), 20, "the active's workload to start")
            driver.run(scenario.steps)
        except RuntimeError as exc:
            problems.append(str(exc))
        finally:
            heal()  # (a node still running must not stop on a pulled link)
            for d in dirs.values():
                (d / "stop").touch()
            for p in procs.values():
                if p.proc.poll() is None:
                    try:
                        p.proc.wait(15)
                    except subprocess.TimeoutExpired:
                        problems.append(f"node {p.name} did not stop in 15 s")
                p.close()
            acks.close()
            writer.close()
        return self._judge(scenario, dirs, procs, ack_path, driver.fault_t, problems,
                           driver.timeline, driver.done_t)

    def _judge(self, scenario: Scenario, dirs: dict[str, Path], procs: dict, ack_path: Path,
               fault_t: float | None, problems: list[str],
               timeline: list | None = None, done_t: float | None = None) -> DrillResult:
        survivor = "b" if procs["b"].find("failover", "active") else "a"
        pmem_file = dirs[survivor] / f"pmem-{survivor}.bin"
        journal_file = dirs[survivor] / f"journal-{survivor}.final"
        log = read_acklog(ack_path)
        if self.observe is not None:
            self.observe({"procs": procs, "log": log, "timeline": timeline, "own_t": None,
                          "done_t": done_t})
        return judge_drill(scenario, procs, log,
                           pmem_file.read_bytes() if pmem_file.exists() else None,
                           journal_file.read_bytes() if journal_file.exists() else None,
                           fault_t, problems, timeline, done_t=done_t)


def judge_drill(scenario: Scenario, procs: dict, log, ledger: bytes | None,
                journal: bytes | None, fault_t: float | None,
                problems: list[str], timeline: list | None = None,
                own_t: dict[int, float] | None = None,
                done_t: float | None = None) -> DrillResult:
    """The DrillResult of a drill of nodes a (first active) and b: PROCS[name].find(event,
    what) gives a node's events with ``t`` on the driver's clock (s), LOG the ack log, LEDGER
    and JOURNAL the survivor's P.mem and disk as it left them, FAULT_T the first fault,
    TIMELINE the driver's steps as it ran them (``StepDriver.timeline``: the traffic stop
    around each pull, ``runner.traffic_stops``), OWN_T each ack's time on the acknowledging
    node's own clock (s, by transfer id) when the runner has it (the lab), DONE_T the
    driver's clock when the last step was done (carrier moves after it, as the nodes stop,
    are not the drill's)."""
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
    problems.extend(ledger_problems("survivor", ledger, journal))
    # two actives: the old active acknowledged after the new one became active, or became
    # active again itself
    two = False
    if failover:
        t_new = b_active["t"]
        two = any(a.node == "a" and a.t_ns / 1e9 > t_new for a in acks)
        two = two or (procs["a"].find("failover", "active") is not None)
    # detection: the first suspicion after the fault, by whichever node survived it (the
    # standby of a killed active, the active of a killed standby or a pulled cable)
    detect = None
    if fault_t is not None:
        times = [e["t"] for p in procs.values() for e in list(p.events)
                 if e.get("event") == "failover" and e.get("what") == "suspected"
                 and e["t"] >= fault_t]
        if times:
            detect = round((min(times) - fault_t) * 1000, 1)
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
    problems.extend(gso_problems(scenario, procs, acks))
    resync, resync_bytes, audit_repairs = event_results(procs)
    ack_times = [a.t_ns for a in acks]
    switches = switch_count(procs, done_t)
    own = None if own_t is None else [(a.node, own_t.get(a.id)) for a in acks]
    stops = traffic_stops(ack_times, timeline or [], fabric_switches(procs, done_t), own)
    problems.extend(fabric_problems(scenario, switches, stops))
    return DrillResult(scenario.name, len(log.ids), len(lost), two,
                       None if blackout is None else round(blackout, 1), detect,
                       resync_bytes, audit_repairs, failover, resync, tuple(problems),
                       switches, stops, ack_interval_ms(ack_times))


