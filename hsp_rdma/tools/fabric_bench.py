"""`hsp-bench fabric`: how long traffic stops when the carrier fabric is pulled (issue 13),
beside the same run's ack gaps when nothing was pulled.

A two-node, two-fabric pair of drill nodes (``tools/drills/drill_node.py``) runs the ledger
workload while a scenario built here pulls THE CARRIER each time: x on the active (on both
nodes with ``both``), DOWN_S later plugs it, WARM_S later (x warm again: well above the
node's FAILBACK_STABLE_S) pulls y, which carries the traffic by then (``fabric_failback =
"stay"``), and so on, so every pull stops traffic. The scenario is written x, y, x, ...; the
steps are run by ``CarrierStepDriver``, which pulls (and then plugs) the fabric the nodes
last said carries the traffic (the ``to`` of the last ``fabric switched`` event, x before
any): when a pull did not move the carrier, the next pull is of the same fabric, never of
the spare. The drill machinery does the rest: ``LabRunner`` (``--lab rxe|siw``) or ``SoftRunner`` (the soft
provider's link emulation on this host). Each pull's stop is the drill report's
``traffic_stops`` (``runner.traffic_stops``: from the last ack before the pull to the first
after it; in the lab on the active guest's own clock). The baseline is the same run's ack
log: every gap between two consecutive acks that does not overlap a pull window (from the
pull to its plug), between the first step and the last, on the same clock as the stops.

The runners' hooks give the rest: ``observe`` hands over what their judge gets (the ack log,
the step timeline and, in the lab, each ack's time on its node's clock), and
``step_driver`` runs the steps with ``CarrierStepDriver``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from hsp_rdma.errors import HspError
from hsp_rdma.tools.drills import soft_runner
from hsp_rdma.tools.drills.runner import DrillResult, judge
from hsp_rdma.tools.drills.scenario import Scenario, parse_scenario
from hsp_rdma.units import percentile

MIN_PULLS, MAX_PULLS = 1, 50
LEAD_S = 3.0  # the workload runs this long before the first pull
DOWN_S = 2.0  # a pulled fabric stays down this long (well above 2 heart-beat intervals)
WARM_S = 4.0  # after a plug: the fabric warm again before the next pull (FAILBACK_STABLE_S: 1 s)
GOAL_INTERVALS = 2  # issue 13's goal: a stop of at most 2 heart-beat intervals
NAME = "fabric-bench"


class FabricBenchError(HspError):
    """The bench ran but measured nothing to report (the pair never served, no ack)."""


def fabrics_pulled(pulls: int) -> list[str]:
    """The fabric of each pull: x first (the carrier when the pair starts), then the other
    each time (the carrier moved there at the pull before)."""
    return ["x" if i % 2 == 0 else "y" for i in range(pulls)]


def scenario_text(pulls: int, both: bool, rate: int, commit: str,
                  transaction_size: int = 256, warm_s: float = WARM_S) -> str:
    """The bench's scenario as drill TOML (tools/drills/scenario.py)."""
    nodes = ("active", "standby") if both else ("active",)
    who = "both nodes" if both else "the active"
    lines = [(f'description = "Pull the carrier fabric on {who} {pulls} time(s), alternating '
             f'x and y, {DOWN_S:g} s down, {warm_s:g} s up between pulls: the traffic stop '
             'of each pull (hsp-bench fabric)"'), "",
             "[workload]", f"rate = {rate}", f"transaction_size = {transaction_size}",
             'targets = ["pmem", "disk"]', f'commit = "{commit}"', ""]

    def step(do: str, **fields: Any) -> None:
        lines.append("[[steps]]")
        lines.append(f'do = "{do}"')
        lines.extend(f'{k} = "{v}"' for k, v in fields.items())
        lines.append("")

    step("wait", **{"for": f"{LEAD_S:g}s"})
    for fab in fabrics_pulled(pulls):
        for node in nodes:
            step("pull", node=node, fabric=fab)
        step("wait", **{"for": f"{DOWN_S:g}s"})
        for node in nodes:
            step("plug", node=node, fabric=fab)
        step("wait", **{"for": f"{warm_s:g}s"})
    lines += ["[checks]", "lost = 0", "failover = false", ""]
    return "\n".join(lines)


def write_scenario(folder: Path, pulls: int, both: bool, rate: int, commit: str,
                   warm_s: float = WARM_S) -> Scenario:
    """The scenario, written into FOLDER (a drill node loads it from its path: in the lab,
    a folder the guests see) and parsed by the drills' own parser."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{NAME}-{time.time_ns()}.toml"
    text = scenario_text(pulls, both, rate, commit, warm_s=warm_s)
    path.write_text(text, encoding="utf-8")
    return parse_scenario(text, str(path), name=NAME)


def carrier_now(procs: dict[str, Any]) -> str:
    """The fabric carrying the traffic as the nodes last told it: the ``to`` of the latest
    ``fabric switched`` event of either node (x, where the pair starts, before any)."""
    moves = [e for p in procs.values() for e in list(p.events)
             if e.get("event") == "fabric" and e.get("phase") == "switched"]
    return max(moves, key=lambda e: e.get("t", 0.0))["to"] if moves else "x"


class CarrierStepDriver(soft_runner.GsoStepDriver):
    """The runners' step driver, with each pull of the bench's scenario aimed at the carrier
    (``carrier_now`` as the pull group begins) and its plug at the same fabric; the timeline
    holds the steps as run. Every other step is GsoStepDriver's."""

    def run(self, steps) -> None:
        fabric: str | None = None  # the fabric of the pull group under way
        prev = None
        for step in list(steps):
            if step.do == "pull":
                if prev is None or prev.do != "pull":
                    fabric = carrier_now(self.procs)
                step = replace(step, fabric=fabric)
            elif step.do == "plug" and fabric is not None:
                step = replace(step, fabric=fabric)
            super().run([step])
            prev = step


def pull_windows(timeline: list[tuple[float, Any]],
                 done_t: float | None) -> list[tuple[float, float]]:
    """(pull, plug) on the driver's clock for each pull group (pulls with no other step
    between them are one); a pull never plugged ends at DONE_T."""
    windows: list[list[float | None]] = []
    prev = None
    for t, step in timeline:
        if step.do == "pull" and not (prev is not None and prev.do == "pull"):
            windows.append([t, None])
        elif step.do not in ("pull", "wait"):
            for w in windows:
                if w[1] is None:
                    w[1] = t
        prev = step
    end = done_t if done_t is not None else float("inf")
    return [(float(s), float(e) if e is not None else end) for s, e in windows]


def baseline_gaps(ack_times_ns: list[int], timeline: list[tuple[float, Any]],
                  done_t: float | None, own: list[tuple[str, float | None]] | None = None,
                  where: list[tuple[float, float | None]] | None = None,
                  ) -> tuple[list[float], str]:
    """The gaps (ms) between consecutive acks outside every pull window, from the first step
    to the last (DONE_T), and the clock they were measured on. OWN (parallel to
    ACK_TIMES_NS: the acknowledging node and its own clock's time of each ack, s): the
    gaps of the node with most acks on its own clock (the lab's acks reach the driver in
    batches), windows moved onto it by the least (arrival - own time) seen, as
    ``runner.traffic_stops`` does; else the driver's clock. WHERE, when given, gets for each
    gap its start (s after the first step) and the time since the last plug before it (s;
    None: before the first pull)."""
    if not timeline:
        return [], "driver"
    windows = pull_windows(timeline, done_t)
    start, end = timeline[0][0], (done_t if done_t is not None else float("inf"))
    times = sorted(t / 1e9 for t in ack_times_ns)
    clock = "driver"
    if own is not None and any(o is not None for _, o in own):
        node = Counter(n for n, o in own if o is not None).most_common(1)[0][0]
        mine = [(t / 1e9, o) for t, (n, o) in zip(ack_times_ns, own, strict=True)
                if n == node and o is not None]
        offset = min(arrived - o for arrived, o in mine)
        times = sorted(o for _, o in mine)
        windows = [(s - offset, e - offset) for s, e in windows]
        start, end = start - offset, end - offset
        clock = f"node {node}"
    kept = [(a, b) for a, b in pairwise(times) if a >= start and b <= end
            and not any(a < we and b > ws for ws, we in windows)]
    if where is not None:
        for a, _ in kept:
            plugs = [we for _, we in windows if we <= a]
            where.append((a - start, a - max(plugs) if plugs else None))
    return [(b - a) * 1000 for a, b in kept], clock


def achieved_rate(ack_times_ns: list[int], timeline: list[tuple[float, Any]],
                  done_t: float | None) -> float | None:
    """Acks per second from the first step to the last (driver's clock), pulls included."""
    if not timeline or done_t is None or done_t <= timeline[0][0]:
        return None
    start = timeline[0][0]
    return sum(1 for t in ack_times_ns if start <= t / 1e9 <= done_t) / (done_t - start)


def keep_events(procs: dict[str, Any]) -> Path:
    """Each node's events into a new folder (NODE-events.json), which is returned: the runners
    keep them only for a drill that failed its checks, and a pull that moved nothing is no
    failure of the drill."""
    folder = Path(tempfile.mkdtemp(prefix=f"hsp-{NAME}-events-"))
    for name, p in procs.items():
        (folder / f"{name}-events.json").write_text(json.dumps(list(p.events), indent=0,
                                                               default=str))
    return folder


def fabrics_at_end(procs: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Each node's fabrics as its ``final`` status gave them (its links up, connecting or
    down; "carrier" marked), the nodes that gave one."""
    out = {}
    for name, p in procs.items():
        final = next((e for e in list(p.events) if e.get("event") == "final"), None)
        fabs = ((final or {}).get("status") or {}).get("fabrics") or []
        if fabs:
            out[name] = {f["name"]: f["state"] + (" (carrier)" if f.get("carrier") else "")
                         for f in fabs}
    return out


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(min(values), 1), "p50": round(statistics.median(values), 1),
            "max": round(max(values), 1)}


def make_runner(provider: str, kind: str, lab_id: str):
    """The drill runner and its node timeouts (the heart-beat interval the nodes run with)."""
    if provider == "soft":
        return soft_runner.SoftRunner(), soft_runner.TIMEOUTS
    from hsp_rdma.tools.drills import lab_runner
    return lab_runner.LabRunner(kind, lab_id), lab_runner.TIMEOUTS


def bench(provider: str, kind: str, lab_id: str, pulls: int, both: bool, rate: int,
          commit: str, step: Callable[[str], None] = lambda _m: None,
          warm_s: float = WARM_S) -> dict[str, Any]:
    """Run the bench once; its result as the --json object (see the module's docstring)."""
    if not MIN_PULLS <= pulls <= MAX_PULLS:
        raise ValueError(f"pulls should be between {MIN_PULLS} and {MAX_PULLS}")
    runner, timeouts = make_runner(provider, kind, lab_id)
    seen: dict[str, Any] = {}
    try:
        if provider == "soft":
            folder = Path(tempfile.mkdtemp(prefix=f"hsp-{NAME}-"))
        else:
            # the drill nodes load the scenario from its path: a folder the guests see
            # (beside the runner's own evidence); the run boots the lab when it is down
            folder = Path(runner.lab.root) / "drills" / lab_id
        scenario = write_scenario(folder, pulls, both, rate, commit, warm_s)
        length = LEAD_S + pulls * (DOWN_S + warm_s)
        step(f"{pulls} pull(s) of the carrier under {rate} tx/s ({length:.0f} s of steps"
             + (")" if provider == "soft" else f", after the {kind} lab {lab_id} is up)"))
        runner.step_driver = CarrierStepDriver  # each pull aimed at the carrier
        runner.observe = seen.update  # the ack log, timeline, ack times, end of steps
        try:
            result = runner.run(scenario)
        finally:
            Path(scenario.path).unlink(missing_ok=True)  # type: ignore[arg-type]
            try:
                folder.rmdir()  # (the lab's: only when the runner left nothing in it)
            except OSError:
                pass
    finally:
        close = getattr(runner, "close", None)
        if close is not None:
            close()  # a lab the runner booted goes down
    return summarize(result, judge(scenario, result), seen, provider=provider, kind=kind,
                     lab_id=lab_id, pulls=pulls, both=both, rate=rate, commit=commit,
                     heartbeat_ms=int(timeouts["heartbeat_interval"]), warm_s=warm_s)


def summarize(result: DrillResult, failures: list[str], seen: dict[str, Any], *,
              provider: str, kind: str, lab_id: str, pulls: int, both: bool, rate: int,
              commit: str, heartbeat_ms: int, warm_s: float = WARM_S) -> dict[str, Any]:
    """The --json object of one run from the drill's result and what the runner's ``observe``
    hook saw."""
    if result.acknowledged == 0:
        why = "; ".join(result.problems) or "no transfer was acknowledged"
        raise FabricBenchError(f"the fabric bench measured nothing (the workload never "
                               f"acknowledged a transfer): {why}")
    notes: list[str] = []
    fabrics = [s["pull"].split()[0] for s in result.traffic_stops]  # as run: the carrier
    where = "both nodes" if both else "the active"
    stops = []
    for i, s in enumerate(result.traffic_stops):
        stops.append({"pull": i + 1, "fabric": fabrics[i],
                      "what": s["pull"], "at_s": s["at_s"], "stop_ms": s["stop_ms"],
                      "resumed": s["resumed"], "clock": s["clock"],
                      "switches": list(s["switches"])})
        if s["stop_ms"] is None:
            notes.append(f"pull {i + 1} ({s['pull']}): no stop measured: no ack came after it "
                         "before the plug (traffic did not resume on the other fabric)")
        elif not s["switches"]:
            notes.append(f"pull {i + 1} ({s['pull']}): the carrier did not move (no node told "
                         f"a move): the spare was not there to take it, so the next pull is of "
                         f"{fabrics[i]} again")
    if any(not s["switches"] for s in stops) and seen.get("procs"):
        notes.append(f"the nodes' events (driver's clock, t) are kept for a look: "
                     f"{keep_events(seen['procs'])}")
    if len(stops) < pulls:
        notes.append(f"only {len(stops)} of {pulls} pull(s) ran: no stop measured for the "
                     "others (the drill stopped early; see the problems)")
    measured = [s["stop_ms"] for s in stops if s["stop_ms"] is not None]
    log = seen.get("log")
    own = None
    if log is not None and seen.get("own_t") is not None:
        own = [(a.node, seen["own_t"].get(a.id)) for a in log.acks]
    gap_where: list[tuple[float, float | None]] = []
    gaps, gap_clock = ([], "driver") if log is None else baseline_gaps(
        [a.t_ns for a in log.acks], seen.get("timeline") or [], seen.get("done_t"), own,
        gap_where)
    if log is None:
        notes.append("the runner's ack log was not seen: no baseline")
    elif not gaps:
        notes.append("no ack gaps outside the pull windows: no baseline")
    baseline = None if not gaps else {
        "gaps": len(gaps), "p50_ms": round(statistics.median(gaps), 2),
        "p99_ms": round(percentile(gaps, 99), 2), "max_ms": round(max(gaps), 2),
        "clock": gap_clock}
    if gaps:  # where the longest was: right after a plug (the spare made again) or not
        at, since_plug = gap_where[gaps.index(max(gaps))]
        baseline["max_at_s"] = round(at, 2)
        baseline["max_after_plug_s"] = None if since_plug is None else round(since_plug, 2)
    achieved = achieved_rate([a.t_ns for a in log.acks] if log is not None else [],
                             seen.get("timeline") or [], seen.get("done_t"))
    if achieved is not None and achieved < 0.9 * rate:
        notes.append(f"the workload acknowledged {achieved:.0f} tx/s of the {rate} asked (each "
                     "commit waits for the peer): a stop is seen to within one ack gap "
                     "(baseline)")
    at_end = fabrics_at_end(seen.get("procs") or {})
    for node, fabs in at_end.items():
        for fab, state in fabs.items():
            if not state.startswith("up"):
                notes.append(f"node {node}'s fabric {fab} was {state} when the node stopped "
                             f"({warm_s:g} s or more after its last plug)")
    goal_ms = GOAL_INTERVALS * heartbeat_ms
    summary = _summary(measured)
    met = None if summary is None else summary["p50"] <= goal_ms
    # the ratio to the same run's reference: how many ordinary ack gaps a pull costs
    ratio = (None if summary is None or baseline is None or not baseline["p50_ms"]
             else round(summary["p50"] / baseline["p50_ms"], 2))
    device = (f"{kind} in lab {lab_id} (two QEMU guests, fabrics x and y)" if provider != "soft"
              else "soft VIA provider on this host (TCP on loopback; a pull is its link "
                   "emulation's NIC down)")
    how = ("the lab's link down/up on that fabric's NIC (hsp-lab fault link)"
           if provider != "soft" else "the soft provider's link file of that fabric's NIC")
    method = (f"{pulls} pull(s) of the carrier fabric (as the nodes last told it; pulled: "
              f"{', '.join(fabrics) or 'none'}) on {where}, "
              f"by {how}: {DOWN_S:g} s down, plugged, {warm_s:g} s for it to be warm again, "
              f"first pull after {LEAD_S:g} s; ledger workload {rate} tx/s asked ("
              + ("-" if achieved is None else f"{achieved:.0f}") + " acknowledged per "
              f"second over the steps), 256 B to pmem and "
              f"disk, commit {commit}; fabric_failback stay; heart-beat interval "
              f"{heartbeat_ms} ms (the drill runner's node config); {device}. A pull's stop: "
              "from the last acknowledged transaction before it to the first after "
              "(drill report traffic_stops). Baseline: the same run's gaps between consecutive "
              "acks outside the pull windows (pull to plug), first step to last, on the "
              f"same clock ({gap_clock}).")
    notes.extend(f"drill: {p}" for p in result.problems)
    notes.extend(f"check: {f}" for f in failures if f not in result.problems)
    return {"bench": "fabric", "method": method, "provider": provider,
            "rdma": "soft" if provider == "soft" else kind,
            "lab_id": None if provider == "soft" else lab_id,
            "pulled": f"the carrier on {where}", "both": both, "pulls": pulls,
            "down_s": DOWN_S, "warm_s": warm_s, "rate_tx_per_s": rate,
            "achieved_tx_per_s": None if achieved is None else round(achieved, 1),
            "commit": commit,
            "heartbeat_interval_ms": heartbeat_ms, "goal_ms": goal_ms,
            "stops": stops, "stop_ms": summary, "goal_met": met,
            "baseline": baseline, "stop_vs_baseline": ratio,
            "ack_interval_ms": result.ack_interval_ms,
            "acknowledged": result.acknowledged, "lost": result.lost,
            "failover": result.failover, "fabric_switches": result.fabric_switches,
            "fabrics_at_end": at_end,
            "notes": notes}
