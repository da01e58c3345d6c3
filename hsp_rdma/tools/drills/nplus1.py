"""The n+1 drill (issue 13): N actives (nodes a, b, c, ...) and one n+1 standby host (the next
letter: d for three actives). Each active is a plain drill node (``drill_node.py``: Node +
FailoverEngine, the ledger workload while it serves), the active of its own pair with the
standby host; the standby host is one process (``standby_node.py``: ``StandbyHost``, one
session per active, each session's P.mem, journal disk, state directory, epochs and control
socket its own). A scenario says ``[nplus1] actives = N`` (``scenario.py``).

Steps: wait (for; until promoted: a session of the standby host promoted; refused: the host
refused a takeover, by failover or by GSO; suspected: a session suspected its active;
gso-done: a GSO with the host ended, on the host's side), kill, pause, resume (node: an
active by name, or "standby"), gso (node: the active that switches over to the standby host;
the drill command ``gso`` to that active, answered once its GSO started). Every pair has its
own ack log (the active's acks, then the standby session's once it serves).

Judged per pair (``judge_nplus1``): the pair's acknowledged transfers all on the standby
host's session for it (its P.mem ledger and journal, as the drill left them: the survivor's
copy for a pair it took over, the replica for the others; a running active's own copy too),
with the pair drills' ledger checks (``check_ledger``, ``check_replay``); who serves it at
the end; two actives (the active acknowledged after its session promoted or took it over by
GSO); a pair switched over by GSO: its active's GSO completed, the host acknowledged after
it (the old active, now its standby, stopped before the host: only the host's copy is
judged); a GSO the host refused: the active never froze for it (the Abort came before its
freeze), its GSO ended aborted and it acknowledged after the refusal; a pair whose
active still ran after the takeover must have had its commits acknowledged after it (still
protected). The host: never active for two pairs; every refusal alarm it raised.

Runners: ``SoftNPlus1Runner`` (processes on this host over the soft provider, like
``soft_runner``) and ``lab_nplus1`` (``lab_runner.LabRunner`` for an n+1 scenario: a lab of
N + 1 nodes, one fabric segment shared through the lab's hub).
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
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hsp_rdma.errors import ConfigError
from hsp_rdma.ha.config import parse_node_config
from hsp_rdma.lab.lab import mem_available_mib
from hsp_rdma.tools.drills.acklog import AckLog, AckServer, AckWriter, read_acklog
from hsp_rdma.tools.drills.ledger import ledger_problems, recover_image, verify_acked
from hsp_rdma.tools.drills.runner import (
    DrillResult,
    DrillsUnavailable,
    command_file,
    judge,
    send_command,
    wait_for,
)
from hsp_rdma.tools.drills.scenario import ACTIVE_NAMES, MAX_ACTIVES, Scenario
from hsp_rdma.tools.drills.soft_runner import _NodeProc
from hsp_rdma.tools.lab_config import node_config_text

SUPPORTED = {"wait", "kill", "pause", "resume", "gso"}
UNTIL = {"promoted", "refused", "suspected", "gso-done"}
# the standby host's failover note that ends ``wait until`` each event
UNTIL_NOTE = {"promoted": "active", "refused": "takeover_refused", "suspected": "suspected"}
REFUSAL = "n+1 standby already active for {active}; cannot take over for {other}"
# One drill node process over soft (Python, the node, its threads): what it may take of the
# host's memory, worst case (measured RSS ~60-80 MiB; room for the sessions' P.mem)
SOFT_NODE_MIB = 150
SOFT_X, SOFT_Y = 0, 2  # 127.0.<net>.<n>: fabric x and fabric y of the soft nodes


def names(actives: int) -> tuple[tuple[str, ...], str]:
    """The actives' names and the standby host's: (a, b, c), d."""
    if not 2 <= actives <= MAX_ACTIVES:
        raise ConfigError(f"an n+1 drill has 2 to {MAX_ACTIVES} actives, not {actives}")
    return ACTIVE_NAMES[:actives], "abcdefgh"[actives]


def unsupported(scenario: Scenario, where: str) -> str | None:
    """Why the n+1 SCENARIO cannot run (steps or events no n+1 runner does), or None."""
    bad = [f"step {do}: not built for n+1 drills" for do in
           sorted({s.do for s in scenario.steps} - SUPPORTED)]
    bad += [f"wait until {u}: an n+1 drill waits until {', '.join(sorted(UNTIL))}"
            for u in sorted({s.until for s in scenario.steps if s.until} - UNTIL)]
    return f"{'; '.join(bad)} ({where}; n+1 drill)" if bad else None


def soft_info(nodes: tuple[str, ...], fabrics: tuple[str, ...]) -> dict:
    """``Lab.info()``-shaped addresses of soft nodes: fabric x on soft:<node>, 127.0.0.<i>; y
    on soft:<node>-y, 127.0.2.<i> (i from 1), loopback only."""
    nets = {"x": ("{n}", SOFT_X), "y": ("{n}-y", SOFT_Y)}
    return {n: {f: {"rdma_dev": f"soft:{nets[f][0].format(n=n)}",
                    "ipv4": f"127.0.{nets[f][1]}.{i}"} for f in fabrics}
            for i, n in enumerate(nodes, start=1)}


def write_configs(info: Mapping[str, Any], out: Path, actives: tuple[str, ...], standby: str,
                  state_root: Path, disk_path: Callable[[str, str], str],
                  control_socket: Callable[[str, str], Path] | None = None,
                  **choices: Any) -> dict[str, dict[str, Path]]:
    """Each pair's two node TOMLs, OUT/<active>-<standby>/<node>.toml: active -> {active:
    path, standby: path}. State under STATE_ROOT/<pair>/<node>; the journal disk at
    DISK_PATH(node, pair), the control socket at CONTROL_SOCKET(node, pair) (default: in the
    state directory). Each file is checked by the node's own loader before any is written."""
    texts: dict[str, dict[str, str]] = {}
    disk_size = choices.pop("disk_size", None) or "16 MiB"
    for a in actives:
        pair = f"{a}-{standby}"
        texts[a] = {}
        for node, peer in ((a, standby), (standby, a)):
            disks = [{"name": "journal", "path": disk_path(node, pair),
                      "size": disk_size}]
            text = node_config_text(
                info, node, state_root / pair, active=a, peer=peer, disks=disks,
                control_socket=control_socket(node, pair) if control_socket else None,
                **choices)
            parse_node_config(text, out / pair / f"{node}.toml")
            texts[a][node] = text
    paths: dict[str, dict[str, Path]] = {}
    for a, by_node in texts.items():
        folder = out / f"{a}-{standby}"
        folder.mkdir(parents=True, exist_ok=True)
        paths[a] = {}
        for node, text in by_node.items():
            path = paths[a][node] = folder / f"{node}.toml"
            path.write_text(text, encoding="utf-8")
    return paths


# ---- the steps ----------------------------------------------------------------------------------

def host_gso(events: list[dict], phase: str, since: int = 0, session: str | None = None,
             **match: Any) -> dict | None:
    """The first ``gso`` event PHASE (of SESSION, with MATCH's values) from index SINCE on."""
    for e in events[since:]:
        if (e.get("event") == "gso" and e.get("phase") == phase
                and (session is None or e.get("session") == session)
                and all(e.get(k) == v for k, v in match.items())):
            return e
    return None


def took_over(events: list[dict], session: str) -> tuple[dict | None, str | None]:
    """The standby host's first event of taking over SESSION's pair and how: a GSO it resumed
    from ("gso"), else its failover promotion ("failover"); (None, None) when neither."""
    fo_e = host_note(events, "active", session=session)
    gso_e = host_gso(events, "switched", session=session, active=True)
    # a GSO's resume makes the session's failover engine active too (SwitchedOver): its
    # "active" note may come first; the earlier event is the takeover's time
    firsts = [e for e in (fo_e, gso_e) if e is not None]
    if not firsts:
        return None, None
    return min(firsts, key=lambda e: e.get("t", 0)), "gso" if gso_e is not None else "failover"


class Procs:
    """name -> object with ``events`` (list of dicts, ``t`` on the driver's clock)."""


def host_note(events: list[dict], what: str, since: int = 0,
              session: str | None = None) -> dict | None:
    """The standby host's first ``failover`` note WHAT (of SESSION) from index SINCE on."""
    for e in events[since:]:
        if (e.get("event") == "failover" and e.get("what") == what
                and (session is None or e.get("session") == session)):
            return e
    return None


class NPlus1Driver:
    """Runs an n+1 scenario's steps. PROCS: node name -> its events; STANDBY: the host's
    name; FAULT(node, do) kills, pauses or resumes NODE; WAIT(pred, timeout, what) waits
    (RuntimeError when it runs out); SLEEP(s); CLOCK(); PUT_COMMAND(node, seq, command)
    drops a drill command file in NODE's directory (a gso step). ``fault_t``: the clock at
    the first kill or pause; ``timeline``: (clock, step) as run; ``kills``: node -> clock of
    its kill; ``gsos``: (node, clock) of each gso step."""

    def __init__(self, procs: dict, standby: str, fault: Callable[[str, str], None],
                 wait: Callable[[Callable[[], Any], float, str], None],
                 sleep: Callable[[float], None], clock: Callable[[], float],
                 put_command: Callable[[str, int, dict], None] | None = None):
        self.procs, self.standby, self.fault = procs, standby, fault
        self.wait, self.sleep, self.clock = wait, sleep, clock
        self.put_command = put_command
        self.seq: dict[str, int] = {}
        self.gsos: list[tuple[str, float]] = []
        self.fault_t: float | None = None
        self.timeline: list[tuple[float, Any]] = []
        self.kills: dict[str, float] = {}
        self.since = 0
        self.done_t: float | None = None

    def run(self, steps) -> None:
        for step in steps:
            now = self.clock()
            self.timeline.append((now, step))
            if step.do == "wait":
                if step.until is not None:
                    since, host = self.since, self.procs[self.standby]
                    if step.until == "gso-done":
                        def seen(s=since, h=host):
                            return host_gso(h.events, "done", s)
                    else:
                        def seen(s=since, n=UNTIL_NOTE[step.until], h=host):
                            return host_note(h.events, n, s)
                    self.wait(seen, step.timeout_s or 60, f"event {step.until} from the "
                              f"standby host ({self.standby})")
                if step.wait_s:
                    self.sleep(step.wait_s)
                continue
            self.since = len(self.procs[self.standby].events)
            node = self.standby if step.node == "standby" else step.node
            if step.do in ("kill", "pause") and self.fault_t is None:
                self.fault_t = now
            if step.do == "kill":
                self.kills[node] = now
            if step.do == "gso":
                self.gsos.append((node, now))
                self.command(node, {"do": "gso"})
                continue
            self.fault(node, step.do)
        self.done_t = self.clock()

    def command(self, node: str, command: dict) -> dict:
        """Send COMMAND to NODE and wait for its command_done; RuntimeError if not ok."""
        if self.put_command is None:
            raise RuntimeError(f"this n+1 runner sends no drill command ({command['do']})")
        return send_command(self, node, command)


# ---- judging ------------------------------------------------------------------------------------

def judge_nplus1(scenario: Scenario, procs: dict, logs: dict[str, AckLog],
                 dumps: dict[str, dict[str, tuple[bytes | None, bytes | None]]],
                 driver: NPlus1Driver, problems: list[str]) -> DrillResult:
    """The drill's result. PROCS: node -> events (``t``: the driver's clock, s); LOGS: active
    -> its pair's ack log (acks by the active's name or the standby's); DUMPS: active ->
    {"standby": (P.mem, journal) of the host's session for it, "active": the active's own,
    when it ran to the end}; DRIVER: its kills and timeline."""
    actives, standby = names(scenario.nplus1 or 0)
    host = procs[standby].events
    targets = scenario.workload.targets
    final = next((e for e in host if e.get("event") == "final"), None)
    if final is None:
        problems.append(f"the standby host ({standby}) gave no final state")
    took_how = {a: took_over(host, a) for a in actives}
    promoted = {a: e for a, (e, _how) in took_how.items()}  # by failover or by GSO
    took = [a for a, e in promoted.items() if e is not None]
    if len(took) > 1:
        problems.append(f"the standby host became active for {len(took)} pairs "
                        f"({', '.join(took)}): it may serve one at a time")
    refusals = [{"session": e.get("session"), "why": e.get("why"), "t": e.get("t"),
                 **({"gso_epoch": e["gso_epoch"]} if "gso_epoch" in e else {})}
                for e in host if e.get("event") == "failover"
                and e.get("what") == "takeover_refused"]
    # the refusal alarm as the issue words it, naming the pair served and the one refused
    for r in refusals:
        if took and REFUSAL.format(active=took[0], other=r["session"]) not in (r["why"] or ""):
            problems.append(f"the standby host refused the takeover for {r['session']} with "
                            f"{r['why']!r}, not naming the pair it serves ({took[0]})")
    pairs: dict[str, dict] = {}
    lost_total = acked_total = 0
    two = False
    for a in actives:
        log = logs.get(a) or AckLog([])
        acks = list(log.acks)
        ids = log.ids
        row: dict[str, Any] = {"acknowledged": len(ids),
                               "by_active": sum(1 for x in acks if x.node == a),
                               "by_standby": sum(1 for x in acks if x.node == standby)}
        lost: set[int] = set()
        checked = []
        for who, (ledger, journal) in dumps.get(a, {}).items():
            if who == "active" and took_how[a][1] == "gso":
                # a switched over to the host: it is the host's standby now, stopped before
                # the host (which acknowledged on): the host's copy is the pair's
                continue
            if "pmem" not in targets:
                ledger = None
            if "disk" not in targets:
                journal = None
            if ledger is None and journal is None:
                continue
            name = standby if who == "standby" else a
            if who == "standby" and promoted[a] is None:
                # a session never promoted holds the image as the killed active left it: at
                # most one transfer between its journal write and its P.mem transaction,
                # which a takeover completes; judge what a takeover would serve
                ledger, journal = recover_image(ledger, journal, scenario.workload.transaction_size)
            checked.append(name)
            lost.update(verify_acked(ids, ledger, journal))
            problems.extend(ledger_problems(f"pair {a}, node {name}", ledger, journal))
        if not checked:
            problems.append(f"pair {a}: neither node left its P.mem and journal to check")
            lost.update(ids)
        row["lost"] = len(lost)
        row["checked_on"] = checked
        took_t = promoted[a]["t"] if promoted[a] is not None else None
        # two actives: the active acknowledged after its session on the host promoted
        if took_t is not None and any(x.node == a and x.t_ns / 1e9 > took_t for x in acks):
            two = True
            problems.append(f"pair {a}: node {a} acknowledged transfers after the standby host "
                            "took over for it (two actives)")
        killed = driver.kills.get(a)
        if took_t is not None:
            row["served_by"] = standby
        elif killed is None:
            row["served_by"] = a
        else:
            row["served_by"] = None  # its active is dead and nobody took over
        if took_how[a][1] == "gso":
            done = next((e for e in procs[a].events if e.get("event") == "gso"
                         and e.get("phase") == "done" and e.get("outcome") == "completed"),
                        None)
            row["gso"] = {"outcome": "completed" if done else None,
                          "blackout_ms": done.get("blackout_ms") if done else None,
                          "copy_ms": done.get("copy_ms") if done else None}
            if done is None:
                problems.append(f"pair {a}: the standby host resumed from {a}'s image, but "
                                f"{a}'s GSO did not say it completed")
            fin = procs[a].find("final") if hasattr(procs[a], "find") else None
            serves = (((fin or {}).get("status") or {}).get("failover") or {}).get("serving")
            if serves:
                two = True
                problems.append(f"pair {a}: node {a} still served at the end, after its GSO "
                                "to the standby host (two actives)")
        for r in refusals:
            if r["session"] != a or "gso_epoch" not in r:
                continue
            ev = [e for e in procs[a].events if e.get("event") == "gso"
                  and e.get("epoch") == r["gso_epoch"]]
            froze = any(e.get("phase") == "frozen" for e in ev)
            end = next((e for e in ev if e.get("phase") == "done"), None)
            after = sum(1 for x in acks if x.node == a and x.t_ns / 1e9 > (r["t"] or 0))
            row["gso_refused"] = {"epoch": r["gso_epoch"], "froze": froze,
                                  "outcome": end.get("outcome") if end else None,
                                  "reason": end.get("reason") if end else None,
                                  "acks_after": after}
            if froze:
                problems.append(f"pair {a}: node {a} froze for GSO epoch {r['gso_epoch']}, "
                                "which the standby host refused (the refusal must come "
                                "before the freeze)")
            if end is None or end.get("outcome") != "aborted":
                problems.append(f"pair {a}: node {a}'s refused GSO epoch {r['gso_epoch']} "
                                f"did not end aborted ({end.get('outcome') if end else 'no end'})")
            if killed is None and after == 0:
                problems.append(f"pair {a}: node {a} acknowledged nothing after the standby "
                                "host refused its GSO (it must keep serving)")
        if took_t is not None:
            old = [x.t_ns for x in acks if x.node == a]
            new = [x.t_ns for x in acks if x.node == standby]
            row["blackout_ms"] = (round((min(new) - max(old)) / 1e6, 1) if old and new
                                  else None)
            sus = host_note(host, "suspected", session=a)
            row["detect_ms"] = (round((sus["t"] - killed) * 1000, 1)
                                if sus is not None and killed is not None
                                and sus["t"] >= killed else None)
            if not new:
                problems.append(f"pair {a}: the standby host took over but acknowledged no "
                                "transfer of its ledger")
        # still protected: after every takeover, an active that was alive acknowledged on
        for other in took:
            if other == a:
                continue
            t0 = promoted[other]["t"]
            t1 = killed if killed is not None else driver.done_t
            after = sum(1 for x in acks if x.node == a and t0 < x.t_ns / 1e9 <= (t1 or 1e18))
            row["acks_after_takeover"] = after
            if after == 0:
                problems.append(f"pair {a}: no commit of node {a} was acknowledged after the "
                                f"standby host took over for {other} (while {a} ran): it was "
                                "no longer protected")
        if killed is not None and took_t is None:
            row["refused"] = any(r["session"] == a for r in refusals)
        if took_how[a][1] is not None:
            row["taken_by"] = took_how[a][1]
        lost_total += row["lost"]
        acked_total += row["acknowledged"]
        pairs[a] = row
    if final is not None and took and final["host"].get("active_session") != took[0]:
        problems.append(f"at the end the standby host was active for "
                        f"{final['host'].get('active_session')}, not {took[0]}")
    for e in host:
        if e.get("event") == "workload_stopped":
            problems.append(f"the standby host's workload for {e.get('session')} stopped: "
                            f"{e.get('why')}")
    for a in actives:
        for e in procs[a].events:
            if e.get("event") == "workload_stopped" and a not in driver.kills:
                problems.append(f"node {a}'s workload stopped: {e.get('why')}")
    first = pairs.get(took[0]) if took else None
    nplus1 = {"standby": standby, "active_for": took[0] if took else None,
              "pairs": pairs, "refusals": refusals}
    return DrillResult(scenario.name, acked_total, lost_total, two,
                       first.get("blackout_ms") if first else None,
                       first.get("detect_ms") if first else None,
                       0, 0, any(how == "failover" for _e, how in took_how.values()),
                       False, tuple(problems), nplus1=nplus1)


def describe(row: Mapping[str, Any]) -> list[str]:
    """Lines of an n+1 drill's report row (``runner.report``): each pair's acks, losses and
    who serves it; the host's refusals."""
    n1 = row.get("nplus1")
    if not n1:
        return []
    lines = []
    for a, p in n1["pairs"].items():
        serves = p.get("served_by") or "nobody"
        extra = ""
        if p.get("blackout_ms") is not None:
            extra += f", blackout {p['blackout_ms']:.0f} ms"
        if p.get("detect_ms") is not None:
            extra += f", detected in {p['detect_ms']:.0f} ms"
        if "acks_after_takeover" in p:
            extra += f", {p['acks_after_takeover']} acked after the takeover"
        if p.get("refused"):
            extra += ", takeover refused"
        if p.get("taken_by") == "gso":
            g = p.get("gso") or {}
            extra += (f", switched over by GSO (its blackout {g.get('blackout_ms')} ms, copy "
                      f"{g.get('copy_ms')} ms)")
        if p.get("gso_refused"):
            g = p["gso_refused"]
            extra += (f", GSO epoch {g['epoch']} refused ({g['outcome']} {g['reason']}, "
                      f"{'frozen' if g['froze'] else 'never frozen'}, {g['acks_after']} acked "
                      "after)")
        lines.append(f"{row['name']}: pair {a}-{n1['standby']}: acknowledged "
                     f"{p['acknowledged']} ({p['by_active']} by {a}, {p['by_standby']} by "
                     f"{n1['standby']}), lost {p['lost']}, served by {serves}{extra}")
    for r in n1.get("refusals") or ():
        lines.append(f"{row['name']}: standby host {n1['standby']} refused: {r['why']}")
    lab = n1.get("lab")
    if lab:
        boot = (f"booted in {lab['boot_s']:g} s" if lab.get("boot_s") is not None
                else "up already")
        lines.append(f"{row['name']}: {lab['kind']} lab {lab['lab_id']} of {lab['nodes']} "
                     f"nodes {boot}; pairs up {lab.get('pairs_up_s')} s after the start; the "
                     f"drill took {lab.get('drill_s')} s in all")
    return lines


# ---- over soft ----------------------------------------------------------------------------------

TIMEOUTS = {"heartbeat_interval": 100, "heartbeat_timeout": 1000, "connect": 30000,
            "commit": 5000}
PMEM_SIZE = "1 MiB"  # per pair (the ledger takes ~26 KiB); the host holds one per active
DISK_SIZE = 4 << 20


def check_soft_host(actives: int, available: int | None = None) -> None:
    """DrillsUnavailable when this host cannot run ACTIVES + 1 node processes (memory)."""
    available = mem_available_mib() if available is None else available
    need = (actives + 1) * SOFT_NODE_MIB
    if available is not None and need > available:
        fit = max(0, available // SOFT_NODE_MIB - 1)
        raise DrillsUnavailable(
            f"an n+1 drill of {actives} actives runs {actives + 1} node processes here, up to "
            f"{need} MiB ({SOFT_NODE_MIB} MiB each), but the host has {available} MiB "
            f"available: use [nplus1] actives = {fit} or fewer, or free memory")


class _AckLog:
    """One pair's ack log: the active connects first, the standby session when it serves."""

    def __init__(self, path: Path, active: str, standby: str):
        self.path = path
        self.writer = AckWriter(path)
        self.server = AckServer(socket.create_server(("127.0.0.1", 0)), self.writer,
                                order=(active, standby))
        self.addr = self.server.addr

    def close(self) -> None:
        self.server.close()
        self.writer.close()




def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


class SoftNPlus1Runner:
    """An n+1 drill on this host over soft: one process per active, one for the host."""

    def __init__(self, keep: bool = False):
        self.keep = keep

    def run(self, scenario: Scenario) -> DrillResult:
        check_soft_host(scenario.nplus1 or 0)
        work = Path(tempfile.mkdtemp(prefix=f"hsp-drill-{scenario.name}-"))
        keep = self.keep
        try:
            result = self._run(scenario, work)
            if judge(scenario, result):
                keep = True
                result = _with_problem(result, f"the nodes' events and stderr: {work}")
            return result
        finally:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)

    def _run(self, scenario: Scenario, work: Path) -> DrillResult:
        from hsp_rdma.tools.drills.standby_node import dump_names
        from hsp_rdma.via.providers import soft

        actives, standby = names(scenario.nplus1 or 0)
        nodes = (*actives, standby)
        problems: list[str] = []
        fence = f"{sys.executable} -m hsp_rdma.tools.drills.host_fence"
        paths = write_configs(
            soft_info(nodes, scenario.fabrics), work / "config", actives, standby,
            work / "state", lambda node, pair: str(work / "disks" / f"journal-{node}-{pair}.img"),
            pmem_size=PMEM_SIZE, pmem_persist=False, timeouts=TIMEOUTS, disk_size=DISK_SIZE,
            fence={"action": fence, "options": {"dir": str(work)}, "timeout": 10000})
        (work / "disks").mkdir()
        for a in actives:
            for node in (a, standby):
                (work / "disks" / f"journal-{node}-{a}-{standby}.img").write_bytes(
                    bytes(DISK_SIZE))
        dirs = {n: work / n for n in nodes}
        for d in dirs.values():
            d.mkdir()
        env = dict(os.environ, HSP_VIA_SOFT_PORT_BASE=str(soft.random_port_base()))
        acks = {a: _AckLog(work / f"acks-{a}.log", a, standby) for a in actives}
        spec = {"scenario": scenario.path, "dir": str(dirs[standby]),
                "sessions": {a: {"config": str(paths[a][standby]), "ack": acks[a].addr}
                             for a in actives}}
        (work / "standby.json").write_text(json.dumps(spec))
        py = [sys.executable, "-m", "hsp_rdma.tools.drills."]
        procs: dict[str, _NodeProc] = {
            standby: _NodeProc(standby, [py[0], py[1], py[2] + "standby_node",
                                     str(work / "standby.json")], work, env)}
        for a in actives:
            procs[a] = _NodeProc(a, [py[0], py[1], py[2] + "drill_node", str(paths[a][a]),
                                 str(scenario.path), acks[a].addr, str(dirs[a])], work, env)

        def fault(node: str, do: str) -> None:
            sig = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP,
                   "resume": signal.SIGCONT}[do]
            try:
                procs[node].proc.send_signal(sig)
            except ProcessLookupError:
                pass

        def put_command(node: str, seq: int, command: dict) -> None:
            command_file(dirs[node], seq, command)

        driver = NPlus1Driver(procs, standby, fault, wait_for, time.sleep, time.monotonic,
                              put_command)
        try:
            wait_for(lambda: _ready(procs, actives, standby, work), 90,
                  "n+1 pairs up (every active serving, the standby host started)")
            driver.run(scenario.steps)
        except RuntimeError as exc:
            problems.append(str(exc))
        finally:
            _stop_all(procs, dirs, actives, standby, problems)
            for s in acks.values():
                s.close()
        logs = {a: read_acklog(acks[a].path) for a in actives}
        dumps = {}
        for a in actives:
            pm, jn = dump_names(standby, a)
            dumps[a] = {"standby": (_read(dirs[standby] / pm), _read(dirs[standby] / jn))}
            if procs[a].find("final") is not None:
                dumps[a]["active"] = (_read(dirs[a] / f"pmem-{a}.bin"),
                                      _read(dirs[a] / f"journal-{a}.final"))
        return judge_nplus1(scenario, procs, logs, dumps, driver, problems)


def _ready(procs: dict, actives: tuple[str, ...], standby: str, work: Path) -> bool:
    """Every active serves and the standby host started; RuntimeError when a process ended
    or a session took over before the drill began."""
    for n, p in procs.items():
        if p.proc.poll() is not None:
            err = (work / f"{n}.stderr").read_text()[-800:]
            why = next((e.get("why") for e in p.events if e.get("event") == "error"), None)
            raise RuntimeError(f"node {n} ended before the drill began: {why or err}")
    early = host_note(procs[standby].events, "active")
    if early is not None:
        raise RuntimeError(f"the standby host took over for {early.get('session')} before the "
                           "drill's first step (a start stalled past the heart-beat timeout?)")
    return (procs[standby].find("started") is not None
            and all(procs[a].find("serving") is not None for a in actives))


def _stop_all(procs: dict, dirs: dict, actives: tuple[str, ...], standby: str,
              problems: list[str]) -> None:
    """The actives first (each acked commit of theirs is applied on the host by then), then
    the host: each dumps its P.mem and journal and says ``final``."""
    for group in ([a for a in actives], [standby]):
        for n in group:
            (dirs[n] / "stop").touch()
        for n in group:
            p = procs[n]
            if p.proc.poll() is None:
                try:
                    p.proc.wait(20)
                except subprocess.TimeoutExpired:
                    problems.append(f"node {n} did not stop in 20 s")
            p.close()


def _with_problem(result: DrillResult, problem: str) -> DrillResult:
    from dataclasses import replace
    return replace(result, problems=(*result.problems, problem))
