"""What a drill runner must give back and how a drill is judged: ``DrillRunner.run(scenario)``
returns a ``DrillResult`` (what was measured); ``judge`` holds it against the scenario's
checks. Running a drill needs the node engine (hsp_rdma.ha.node) and the failover machine
(hsp_rdma.core.failover); until a runner is built on them, ``make_runner`` says so.

``StepDriver`` runs a scenario's steps for the soft and lab runners, which give it their own
faults (``fault``), command files (``put_command``) and clock-keeping wait (``wait``): a
``wait until`` takes only an event that came after the last action step, ``corrupt`` goes to
the node that was standby when the drill began, ``audit`` to the node serving now, each as a
drill command file (``command_file``) answered by a ``command_done`` event.
"""

from __future__ import annotations

import json
import os
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

from hsp_rdma.errors import HspError
from hsp_rdma.tools.drills.scenario import Scenario

# the --json fields of one drill, in the order
REPORT_FIELDS = ("name", "passed", "acknowledged", "lost", "two_actives", "blackout_ms",
                 "detect_ms", "resync_bytes", "audit_repairs", "fabric_switches",
                 "traffic_stop_ms", "ack_interval_ms", "traffic_stops")


class DrillsUnavailable(HspError):
    """Drills cannot run here (yet): what is missing and what to do."""

    exit_code = 69  # sysexits EX_UNAVAILABLE


@dataclass(frozen=True, slots=True)
class LabTarget:
    """The built-in two-node lab of soft-RDMA ``kind`` (rxe or siw)."""

    kind: str
    lab_id: str


@dataclass(frozen=True, slots=True)
class HostsTarget:
    """Two real hosts, each named by its node TOML (hsp_rdma.ha.config); DRILL_HOSTS: how the
    driver reaches each (tools/drills/hosts_runner.py), ACK_ADDR: the driver as they see it."""

    configs: tuple[Path, Path]
    drill_hosts: Path | None = None
    ack_addr: str | None = None


Target = LabTarget | HostsTarget


@dataclass(frozen=True, slots=True)
class DrillResult:
    """What one drill measured. Times come from the driver's own clock: ``blackout_ms`` from
    the last ack before the first fault to the first ack after it, ``detect_ms`` from the
    fault to the survivor's suspicion; None when the drill had no such moment."""

    name: str
    acknowledged: int  # transfers in the driver's ack log
    lost: int  # of those, missing from the survivor's ledger or journal
    two_actives: bool  # two nodes acknowledged, or were active, in one epoch or overlapping
    blackout_ms: float | None
    detect_ms: float | None
    resync_bytes: int
    audit_repairs: int
    failover: bool  # a standby promoted itself
    resync: bool  # a resync ran
    problems: tuple[str, ...] = ()  # what the runner saw go wrong (ledger damage, errors)
    # how many times the carrier moved to the other fabric (on the node that moved most)
    fabric_switches: int = 0
    # one dict per pull (pulls with no step between them are one): see ``traffic_stops``
    traffic_stops: tuple[dict, ...] = ()
    ack_interval_ms: float | None = None  # the median time between two acks, for scale
    # an n+1 drill's per-pair figures, the standby host's refusals (``nplus1.judge_nplus1``)
    nplus1: dict | None = None

    @property
    def traffic_stop_ms(self) -> float | None:
        """The longest traffic stop around a pull (None: no pull, or traffic never came
        back after any)."""
        stops = [s["stop_ms"] for s in self.traffic_stops if s["stop_ms"] is not None]
        return max(stops) if stops else None


class DrillRunner(Protocol):
    """Runs one scenario against a pair in the right roles (or refuses before any step) and
    verifies the survivor with tools.drills.ledger.verify_acked."""

    def run(self, scenario: Scenario) -> DrillResult: ...


# scenario events (``wait until``) -> the engine's history note (a node's ``failover`` event,
# ``what``) and whose events tell it: "b" the node that was standby when the drill began,
# None either node
UNTIL_EVENT = {"suspected": "suspected", "fenced": "fence_result", "promoted": "active",
               "resync-started": "resync_started", "resync-done": "resync_done",
               "audit-done": "audit_done"}
UNTIL_NODE = {"suspected": "b", "fenced": "b", "promoted": "b"}
# scenario events told by a drill node's own event (either node) -> (event, phase)
UNTIL_OWN = {"fabric-switched": ("fabric", "switched")}
COMMAND_TIMEOUT_S = 30.0  # a drill command file is answered (command_done) within this
AUDIT_TIMEOUT_S = 60.0  # an audit's audit_done follows its command_done within this


class Events(Protocol):
    """One node's events as a runner collected them (dicts with ``event``, ``t``, ...)."""

    events: list[dict]


def wait_for(pred: Callable[[], Any], timeout: float, what: str,
             poll: Callable[[], None] | None = None, step_s: float = 0.02) -> None:
    """Until PRED() is true (calling POLL first each time round, when given), every STEP_S;
    RuntimeError "no WHAT in TIMEOUT s" past TIMEOUT. The drill drivers' wait."""
    deadline = time.monotonic() + timeout
    while not pred():
        if poll is not None:
            poll()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} in {timeout:g} s")
        time.sleep(step_s)


def find_event(node: Events, event: str, what: str | None = None, since: int = 0,
               ok: bool | None = None) -> dict | None:
    """NODE's first EVENT (with ``what`` = WHAT, ``ok`` = OK when given) from index SINCE
    on. A fence_result counts for ``fenced`` only when ok (when OK is True)."""
    for e in node.events[since:]:
        if e.get("event") != event or (what is not None and e.get("what") != what):
            continue
        if ok is not None and bool(e.get("ok")) != ok:
            continue
        return e
    return None


def until_event(procs: dict[str, Events], until: str,
                since: dict[str, int] | None = None) -> dict | None:
    """The event that ends ``wait until UNTIL``, if it came (after SINCE[node])."""
    if until in UNTIL_OWN:
        event, phase = UNTIL_OWN[until]
        for n, p in procs.items():
            for e in list(p.events)[(since or {}).get(n, 0):]:
                if e.get("event") == event and e.get("phase") == phase:
                    return e
        return None
    what = UNTIL_EVENT[until]
    nodes = [UNTIL_NODE[until]] if until in UNTIL_NODE else list(procs)
    for n in nodes:
        start = (since or {}).get(n, 0)
        e = find_event(procs[n], "failover", what, start, True if until == "fenced" else None)
        if e is None and what == "audit_done":
            e = find_event(procs[n], "audit_done", None, start)
        if e is not None:
            return e
    return None


def _audit_events(events: list[dict]) -> list[dict]:
    return [e for e in events if (e.get("event") == "failover" and e.get("what") == "audit_done")
            or e.get("event") == "audit_done"]


def event_results(procs: dict[str, Events]) -> tuple[bool, int, int]:
    """(resync, resync_bytes, audit_repairs) from the nodes' events: a resync ran when a
    ``resync_done`` was noted; its bytes are those the SyncSource side noted sending (in its
    ``resync_done`` and any ``resync_stopped``: a resync cut and resumed); audit repairs
    are the ``repairs`` of the audits of the node serving at the time (a's before b's
    promotion, b's from it on), so an audit both sides note is counted once."""
    resync_done = [e for p in procs.values() for e in p.events
                   if e.get("event") == "failover" and e.get("what") == "resync_done"]
    # what the SyncSource sent, a resync cut (the link lost again) and resumed included
    resync_bytes = sum(int(e.get("bytes") or 0) for p in procs.values() for e in p.events
                       if e.get("event") == "failover" and e.get("side") == "SyncSource"
                       and e.get("what") in ("resync_done", "resync_stopped"))
    promoted = find_event(procs["b"], "failover", "active") if "b" in procs else None
    t_b = promoted["t"] if promoted is not None else None
    repairs = 0
    for name, p in procs.items():
        for e in _audit_events(p.events):
            if name == "a" and t_b is not None and e.get("t", 0) >= t_b:
                continue  # the old active's, after the standby took over
            if name == "b" and (t_b is None or e.get("t", 0) < t_b):
                continue  # the standby's side of an audit (the active counts it)
            repairs += int(e.get("repairs") or 0)
    return bool(resync_done), resync_bytes, repairs


def pair_ready(procs: dict[str, Events]) -> bool:
    """The pair is up for a drill's first step: the active (a) serves, the standby (b)
    started; RuntimeError when the standby took over before the drill began
    (``startup_failure``)."""
    why = startup_failure(procs)
    if why:
        raise RuntimeError(why)
    return bool(find_event(procs["a"], "serving") and find_event(procs["b"], "started"))


def startup_failure(procs: dict[str, Events]) -> str | None:
    """Why the pair did not come up whole before the drill's first step: the standby (b)
    suspected the active and fenced it, or promoted (None: it did not)."""
    b = procs["b"]
    suspected = find_event(b, "failover", "suspected")
    acted = find_event(b, "failover", "fencing") or find_event(b, "failover", "active")
    if acted is None:
        return None
    evidence = "; ".join((suspected or {}).get("evidence") or []) or "heart beats stopped"
    did = "promoted" if find_event(b, "failover", "active") else "began fencing it"
    return (f"before the drill's first step the standby (node b) suspected the active "
            f"({evidence[:300]}) and {did}: the pair did not come up whole, so no step ran "
            "(a node's start stalled past the heart-beat timeout? see the nodes' events)")


def command_file(folder: Path, seq: int, command: dict[str, Any]) -> Path:
    """Write drill command SEQ into FOLDER as ``cmd-SEQ.json`` (a temp name renamed: the
    node never reads half a file)."""
    path = folder / f"cmd-{seq}.json"
    tmp = folder / f".cmd-{seq}.json.tmp"
    tmp.write_text(json.dumps(command), encoding="utf-8")
    os.replace(tmp, path)
    return path



def send_command(driver, node: str, command: dict) -> dict:
    """DRIVER's (its procs, seq, put_command, wait) COMMAND to NODE, and the wait for NODE's
    command_done of it; RuntimeError if it does not come or is not ok."""
    seq = driver.seq[node] = driver.seq.get(node, 0) + 1
    start = len(driver.procs[node].events)
    driver.put_command(node, seq, command)
    done: list[dict] = []

    def answered() -> bool:
        for e in driver.procs[node].events[start:]:
            if e.get("event") == "command_done" and e.get("seq") == seq:
                done.append(e)
                return True
        return False

    driver.wait(answered, COMMAND_TIMEOUT_S, f"command_done of {command['do']} (cmd-{seq}) "
                f"from node {node}")
    if not done[0].get("ok"):
        raise RuntimeError(f"node {node} could not {command['do']}: "
                           f"{done[0].get('detail') or 'no detail given'}")
    return done[0]


class StepDriver:
    """Runs a scenario's steps on nodes a (the active when the drill began) and b. PROCS:
    name -> the node's events; FAULT(node, step) does kill/pause/resume/pull/plug/netem;
    HEAL() clears every pull and netem done; PUT_COMMAND(node, seq, command) drops a drill
    command file in the node's directory; WAIT(pred, timeout_s, what) waits (RuntimeError
    when it runs out); SLEEP(seconds). ``fault_t``: the driver's clock at the first kill,
    pause or pull."""

    FAULTS = ("kill", "pause", "pull")

    def __init__(self, procs: dict[str, Events], fault: Callable[[str, Any], None],
                 heal: Callable[[], None], put_command: Callable[[str, int, dict], None],
                 wait: Callable[[Callable[[], Any], float, str], None],
                 sleep: Callable[[float], None], clock: Callable[[], float]):
        self.procs, self.fault, self.heal = procs, fault, heal
        self.put_command, self.wait, self.sleep, self.clock = put_command, wait, sleep, clock
        self.fault_t: float | None = None
        # (driver's clock as it began, step) of every step, in order
        self.timeline: list[tuple[float, Any]] = []
        self.done_t: float | None = None  # the driver's clock when the last step was done
        self.since = {n: 0 for n in procs}
        self.seq = {n: 0 for n in procs}

    def serving(self) -> str:
        """The node serving now: b once it promoted, else a."""
        return "b" if find_event(self.procs["b"], "failover", "active") else "a"

    def _mark(self) -> None:
        self.since = {n: len(p.events) for n, p in self.procs.items()}

    def command(self, node: str, command: dict) -> dict:
        """Send COMMAND to NODE and wait for its command_done; RuntimeError if not ok."""
        return send_command(self, node, command)

    def run(self, steps) -> None:
        role_of = {"active": "a", "standby": "b"}
        for step in steps:
            self.timeline.append((self.clock(), step))
            if step.do == "wait":
                if step.until is not None:
                    since = dict(self.since)
                    self.wait(lambda u=step.until, s=since: until_event(self.procs, u, s),
                              step.timeout_s or 60, f"event {step.until}")
                if step.wait_s:
                    self.sleep(step.wait_s)
                continue
            self._mark()
            if step.do == "corrupt":
                self.command("b", {"do": "corrupt", "what": step.what, "index": step.index})
            elif step.do == "audit":
                node = self.serving()
                start = len(self.procs[node].events)
                self.command(node, {"do": "audit"})
                self.wait(lambda n=node, s=start: until_event({n: self.procs[n]}, "audit-done",
                                                              {n: s}),
                          AUDIT_TIMEOUT_S, f"audit_done from node {node}")
            elif step.do == "heal":
                self.heal()
            else:
                if self.fault_t is None and step.do in self.FAULTS:
                    self.fault_t = self.clock()
                self.fault(role_of[step.node], step)
        self.done_t = self.clock()


def fabric_switches(procs: dict[str, Events],
                    until: float | None = None) -> list[tuple[str, dict]]:
    """Every carrier move the nodes told (drill_node's ``{"event": "fabric", "phase":
    "switched", "from", "to", "why"}``) up to UNTIL (the drill's last step done: a node that
    stops after it breaks its peer's carrier, which is no move of the drill), as (node,
    event), in time order."""
    moves = [(n, e) for n, p in procs.items() for e in list(p.events)
             if e.get("event") == "fabric" and e.get("phase") == "switched"
             and (until is None or e.get("t", 0.0) <= until)]
    return sorted(moves, key=lambda m: m[1].get("t", 0.0))


def switch_count(procs: dict[str, Events], until: float | None = None) -> int:
    """How many times the carrier moved up to UNTIL, on the node that moved it most (the
    ``fabric`` events its drill node told; a node's own ``fabric_switches`` counter is not
    used: its final status comes after the drill, when a peer that stops breaks the
    carrier)."""
    return max([sum(1 for m, _ in fabric_switches({n: p}, until) if m == n)
                for n, p in procs.items()] or [0])


def _pulls(timeline: list[tuple[float, Any]]) -> list[tuple[float, float | None, list]]:
    """The pulls of a timeline as (time, end of its window, steps): pulls one right after
    the other (no wait between) are one; its window ends at the next step that is not a
    wait (None: none came)."""
    groups: list[list] = []
    prev = None
    for t, step in timeline:
        if step.do == "pull":
            if prev is not None and prev.do == "pull":
                groups[-1][2].append(step)
            else:
                groups.append([t, None, [step]])
        elif step.do != "wait":
            for g in groups:
                if g[1] is None:
                    g[1] = t
        prev = step
    return [(t, end, steps) for t, end, steps in groups]


# A pull stops the traffic at once (a commit waits for the peer): the stop it causes begins
# within this of the pull (the fault's own call, acks on their way); a longer time between
# acks that begins later is not the pull's (a hiccup of a busy host) and is not counted.
STOP_BEGINS_S = 1.0


def _longest_stop(times: list[float], t: float, end: float | None) -> float | None:
    """The longest time between consecutive TIMES (sorted, s) from the last at or before T
    on, among the gaps that begin before END; None: nothing before T or after it."""
    k = bisect_right(times, t) - 1
    if k < 0:
        return None
    gaps = [b - a for a, b in pairwise(times[k:]) if end is None or a < end]
    return max(gaps) if gaps else None


def traffic_stops(ack_times_ns: list[int], timeline: list[tuple[float, Any]],
                  moves: list[tuple[str, dict]] = (),
                  own: list[tuple[str, float | None]] | None = None) -> tuple[dict, ...]:
    """Around each pull (one or several pulls with no other step between them): how long
    the traffic stopped. ``stop_ms``: from the last ack before the pull to the first after
    it, i.e. the longest time between two consecutive acks from the last before the pull on,
    among those that begin within STOP_BEGINS_S of the pull and before the next step (the
    plug): acks still on their way at the pull do not hide the stop that follows, a stop
    counts whole however long, and a hiccup seconds later is not the pull's. None
    (``resumed`` false) when no ack came after it.

    ``clock`` says whose clock measured it: "driver" (each ack as the driver got it:
    ACK_TIMES_NS), or "node a" when OWN (parallel to ACK_TIMES_NS: the acknowledging node and
    its own clock's time of each ack, s) has the times of the last ack before the pull and of
    every ack that reached the driver from the pull to the next step, all from that one node
    (not across a failover): the lab's acks reach the driver
    in batches through the guest's command channel, the node's own times are free of that.
    The pull is put on the node's clock by the smallest difference seen between the two
    (an ack's arrival less its own time: the clocks' offset plus the channel's least delay).
    ``at_s``: the pull, seconds after the first ack (driver's clock); ``switches``: the
    carrier moves the nodes told from the pull to the next step."""
    times = sorted(t / 1e9 for t in ack_times_ns)
    out = []
    for t_s, end_s, steps in _pulls(timeline):
        until = t_s + STOP_BEGINS_S if end_s is None else min(end_s, t_s + STOP_BEGINS_S)
        stop, clock = _longest_stop(times, t_s, until), "driver"
        if own is not None:
            # the last ack before the pull and every ack from it to the next step
            last = max((i for i, t in enumerate(ack_times_ns) if t / 1e9 <= t_s),
                       key=lambda i: ack_times_ns[i], default=None)
            after = [own[i] for i, t in enumerate(ack_times_ns)
                     if t / 1e9 > t_s and (end_s is None or t / 1e9 < end_s)]
            came = bool(after)  # (none in the window: a stop that outlasted it; the
            # driver's clock measures it whole)
            after += [own[last]] if last is not None else []
            nodes = {n for n, _ in after}
            if came and len(nodes) == 1 and all(o is not None for _, o in after):
                node = nodes.pop()
                mine = [(t / 1e9, o) for t, (n, o) in zip(ack_times_ns, own, strict=True)
                        if n == node and o is not None]
                offset = min(arrived - o for arrived, o in mine)
                stop = _longest_stop(sorted(o for _, o in mine), t_s - offset, until - offset)
                clock = f"node {node}"
        told = [f"{n}: {e.get('from')} -> {e.get('to')}" + (f" ({e['why']})" if e.get("why")
                                                             else "")
                for n, e in moves if e.get("t", 0.0) >= t_s
                and (end_s is None or e.get("t", 0.0) < end_s)]
        out.append({"pull": ", ".join(f"{s.fabric} on {s.node}" for s in steps),
                    "at_s": round(t_s - times[0], 3) if times else None,
                    "stop_ms": None if stop is None else round(stop * 1000, 1),
                    "resumed": stop is not None, "clock": clock, "switches": told})
    return tuple(out)


def ack_interval_ms(ack_times_ns: list[int]) -> float | None:
    """The median time between two consecutive acks (ms): the traffic stops' scale."""
    times = sorted(ack_times_ns)
    gaps = sorted(b - a for a, b in pairwise(times))
    return round(gaps[len(gaps) // 2] / 1e6, 2) if gaps else None


def describe_stops(row: dict[str, Any]) -> list[str]:
    """One line per pull of a drill's report row (``report``), to quote: when, what was
    pulled, how long traffic stopped (from the last ack before the pull to the first after,
    on whose clock), against the usual time between two acks, and the carrier moves."""
    lines = []
    for s in row.get("traffic_stops") or ():
        when = f" at {s['at_s']:g} s" if s.get("at_s") is not None else ""
        if s["stop_ms"] is None:
            what = "traffic never came back (no ack after it)"
        else:
            what = (f"traffic stopped {s['stop_ms']:.0f} ms (last ack before to first after, "
                    f"{s.get('clock', 'driver')}'s clock")
            if row.get("ack_interval_ms") is not None:
                what += f"; an ack every {row['ack_interval_ms']:g} ms otherwise"
            what += ")"
        moved = ("; carrier moved: " + ", ".join(s["switches"])) if s.get("switches") else ""
        lines.append(f"{row['name']}: pull of {s['pull']}{when}: {what}{moved}")
    return lines


def fabric_problems(scenario: Scenario, switches: int, stops: tuple[dict, ...]) -> list[str]:
    """What the fabric checks (fabric_switch, max_fabric_switches, max_traffic_stop_ms) say
    of a drill's carrier moves and traffic stops."""
    c = scenario.checks
    problems = []
    if c.fabric_switch is True and switches == 0:
        problems.append("the carrier never moved to the other fabric (no fabric switch; "
                        "expected one)")
    elif c.fabric_switch is False and switches:
        problems.append(f"the carrier moved {switches} time(s), expected it to stay")
    if c.max_fabric_switches is not None and switches > c.max_fabric_switches:
        problems.append(f"the carrier moved {switches} times (allowed: at most "
                        f"{c.max_fabric_switches})")
    if c.max_traffic_stop_ms is not None:
        for s in stops:
            if s["stop_ms"] is None:
                problems.append(f"traffic never came back after the pull of {s['pull']} "
                                "(no ack after it)")
            elif s["stop_ms"] > c.max_traffic_stop_ms:
                problems.append(f"traffic stopped {s['stop_ms']:.0f} ms around the pull of "
                                f"{s['pull']} (at {s['at_s']:g} s) > "
                                f"{c.max_traffic_stop_ms:g} ms")
    return problems


def judge(scenario: Scenario, result: DrillResult) -> list[str]:
    """Why the drill failed; empty when it passed."""
    c = scenario.checks
    failed = list(result.problems)
    if result.acknowledged == 0:
        failed.append("no transfer was acknowledged: the workload never ran, so nothing "
                      "was shown")
    if result.lost > c.lost:
        failed.append(f"{result.lost} acknowledged transfer(s) lost (allowed: {c.lost})")
    if result.two_actives:
        failed.append("two actives")
    for what, value, bound in (("blackout", result.blackout_ms, c.max_blackout_ms),
                               ("detection", result.detect_ms, c.max_detect_ms)):
        if bound is None:
            continue
        if value is None:
            failed.append(f"no {what} time was measured (bound {bound:g} ms)")
        elif value > bound:
            failed.append(f"{what} {value:.0f} ms > {bound:g} ms")
    for what, happened, wanted in (("failover", result.failover, c.failover),
                                   ("resync", result.resync, c.resync)):
        if wanted is not None and happened != wanted:
            failed.append(f"{what} {'happened' if happened else 'did not happen'}, expected "
                          f"{'one' if wanted else 'none'}")
    if c.takeover_refused is not None and result.nplus1 is not None:  # (an n+1 runner's)
        refused = bool(result.nplus1.get("refusals"))
        if refused != c.takeover_refused:
            failed.append("the n+1 standby host refused " + (
                "no takeover, expected one" if c.takeover_refused else
                "a takeover, expected none"))
    if c.audit_repairs is not None and result.audit_repairs != c.audit_repairs:
        failed.append(f"audit repaired {result.audit_repairs} chunk(s), expected "
                      f"{c.audit_repairs}")
    return failed


def report(result: DrillResult, failures: list[str]) -> dict[str, Any]:
    """One drill's --json object: REPORT_FIELDS, then ``failures`` (why it did not pass)."""
    row = {"name": result.name, "passed": not failures}
    row.update({f: getattr(result, f) for f in REPORT_FIELDS[2:]})
    row["traffic_stops"] = [dict(s) for s in result.traffic_stops]
    if result.nplus1 is not None:  # an n+1 drill: per pair, who serves, the refusals
        row["nplus1"] = result.nplus1
    row["failures"] = failures
    return row


@dataclass(frozen=True, slots=True)
class SoftTarget:
    """Two node processes on this host over the soft VIA provider (no RDMA, no lab)."""


def make_runner(target: Target | SoftTarget) -> DrillRunner:
    """The runner for ``target``: this host over soft, the built-in lab, or two real hosts
    (``hosts_runner``; their configurations are checked here: ConfigError)."""
    if isinstance(target, SoftTarget):
        from hsp_rdma.tools.drills.soft_runner import SoftRunner
        return SoftRunner()
    if isinstance(target, LabTarget):
        from hsp_rdma.tools.drills.lab_runner import LabRunner
        return LabRunner(target.kind, target.lab_id)
    from hsp_rdma.tools.drills.hosts_runner import HostsRunner, load_pair
    return HostsRunner(load_pair(target.configs, target.drill_hosts, target.ack_addr))


def why_unavailable(target: Target | SoftTarget, scenario: Scenario) -> str | None:
    """Why ``scenario`` cannot run on ``target`` today (None: it can)."""
    if isinstance(target, SoftTarget):
        from hsp_rdma.tools.drills.soft_runner import unsupported
        return unsupported(scenario)
    if isinstance(target, LabTarget):
        from hsp_rdma.tools.drills.lab_runner import unsupported as lab_unsupported
        return lab_unsupported(scenario)
    if scenario.nplus1 is not None:
        return ("an n+1 drill on real hosts is not built (it needs a standby host's "
                "configuration per active): run it over soft (--provider soft) or in the lab "
                "(--lab rxe|siw)")
    from hsp_rdma.tools.drills.hosts_runner import load_pair
    from hsp_rdma.tools.drills.hosts_runner import unsupported as hosts_unsupported
    return hosts_unsupported(load_pair(target.configs, target.drill_hosts, target.ack_addr),
                             scenario)
