"""The n+1 drill in the built-in lab (``nplus1.py`` says what it shows): a lab of N + 1 nodes
(actives a, b, c, ... and the standby host, the next letter), each fabric one segment shared
through the lab's hub (``hsp-lab up --nodes N``). The actives run ``drill_node.py`` in their
guests, the standby host ``standby_node.py`` in its guest; the lab's fence device is the
fence action (``fence_agent.SH_COMMAND``: the host's session for a fences plug=a); kill =
the guest's QEMU killed, pause/resume = QMP stop/cont. Acks come out as ``ack`` events on
each guest's command channel (the standby host's with the session they belong to), stamped
with the driver's clock on arrival, one ack log per pair.

The lab: ``LabRunner``'s lab id. Down: booted here with N + 1 nodes (and only the drill's
fabrics) and, as booted for this drill, taken down after it (the next pair drill boots its
own two-node lab). Up with enough nodes and the same kind: used as it is (healed first: a
killed node booted, a paused one resumed). Up with fewer nodes: taken down and booted again
when this runner booted it, else refused (DrillsUnavailable, naming the way out).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from hsp_rdma.errors import LabError
from hsp_rdma.lab import fence_agent
from hsp_rdma.lab.lab import PERSIST_DIR
from hsp_rdma.tools.drills.acklog import Ack, AckWriter, read_acklog
from hsp_rdma.tools.drills.nplus1 import NPlus1Driver, host_note, judge_nplus1, names, write_configs
from hsp_rdma.tools.drills.runner import (
    DrillResult,
    DrillsUnavailable,
    command_file,
    judge,
    wait_for,
)
from hsp_rdma.tools.drills.scenario import Scenario
from hsp_rdma.tools.drills.standby_node import dump_names
from hsp_rdma.tools.guest import GuestRun

GUEST_SHARE = "/hsp"
# N + 1 TCG guests share the host's CPUs (two here): a slower heart beat than the pair
# drills' (100/1000 ms), so a guest starved for a moment is not taken for dead
TIMEOUTS = {"heartbeat_interval": 200, "heartbeat_timeout": 3000, "connect": 120000,
            "commit": 15000}
PMEM_SIZE = "1 MiB"  # per pair; the standby host holds one per active
READY_S = 300.0  # every active serving and the standby host started, from the spawn
FINAL_S = 90.0  # a node's final state after its stop file


class _Events:
    """A guest process's events (``t`` the driver's clock at arrival, ``guest_t`` its own);
    its acks into its pair's ack log (the standby host's: the pair its ``session`` names)."""

    def __init__(self, name: str, writers: dict[str, AckWriter], pair: str | None):
        self.name, self.writers, self.pair = name, writers, pair
        self.run = GuestRun(name, on_event=self._on_event)
        self.events: list[dict] = []

    def _on_event(self, name: str, ev: dict) -> None:
        now = time.monotonic()
        if ev.get("event") == "ack":
            pair = ev.get("session") or self.pair
            if pair in self.writers:
                self.writers[pair].append(Ack(int(ev["id"]), int(now * 1e9), name))
            return
        ev["guest_t"], ev["t"] = ev.get("t"), now
        self.events.append(ev)

    def find(self, event: str) -> dict | None:
        return next((e for e in self.events if e.get("event") == event), None)


def _lab_ready(runner, scenario: Scenario, count: int) -> tuple[float | None, bool]:
    """RUNNER's lab up with COUNT nodes of its kind, healed: (seconds its boot took, None
    when it was up already; whether this drill booted it)."""
    from hsp_rdma.tools.drills.lab_runner import heal

    lab = runner.lab
    st = lab.status()
    if st["up"] and len(st["nodes"]) < count:
        if not runner.owned:
            raise DrillsUnavailable(
                f"the n+1 drill needs a lab of {count} nodes and lab '{lab.lab_id}' is up with "
                f"{len(st['nodes'])}: '{lab.command('down')}' first, or pick another "
                f"--lab-id (it boots one of {count} nodes: "
                f"'{lab.command(f'up --nodes {count} --rdma {runner.kind}')}')")
        lab.down()  # booted by this runner for the pair drills: booted again, bigger
        runner.owned = None
        st = lab.status()
    if st["up"]:
        if st.get("rdma") != runner.kind:
            raise DrillsUnavailable(f"lab '{lab.lab_id}' is up with {st.get('rdma')}, not "
                                    f"{runner.kind}: '{lab.command('down')}' or pick another "
                                    "--lab-id")
        if runner.owned is None:
            runner.owned = False
        try:
            heal(lab)
        except LabError as exc:
            raise DrillsUnavailable(f"the {runner.kind} lab cannot be healed for the drill: "
                                    f"{exc}") from exc
        return None, False
    t0 = time.monotonic()
    try:
        lab.up(rdma=runner.kind, fabrics=2 if "y" in scenario.fabrics else 1, nodes=count)
    except LabError as exc:
        raise DrillsUnavailable(f"the {runner.kind} lab of {count} nodes cannot run: "
                                f"{exc}") from exc
    runner.owned = True  # (LabRunner.close takes it down if the drill does not get there)
    return round(time.monotonic() - t0, 1), True


def lab_nplus1(runner, scenario: Scenario) -> DrillResult:
    """Run the n+1 SCENARIO in RUNNER's lab (a ``lab_runner.LabRunner``)."""
    from hsp_rdma.tools.drills.lab_runner import fabrics_only

    actives, standby = names(scenario.nplus1 or 0)
    nodes = (*actives, standby)
    t_start = time.monotonic()
    boot_s, booted = _lab_ready(runner, scenario, len(nodes))
    lab = runner.lab
    problems: list[str] = []
    tag = f"drill-{scenario.name}-{time.time_ns()}"
    shares = {n: lab.node_dir(n) / "share" / tag for n in nodes}
    for n, d in shares.items():
        d.mkdir(parents=True)
        # the journal disks and state directories: on the node's persistent storage
        (lab.node_dir(n) / "share" / PERSIST_DIR / tag).mkdir(parents=True, exist_ok=True)
    evidence = Path(lab.root) / "drills" / lab.lab_id / tag
    evidence.mkdir(parents=True, exist_ok=True)
    info = {n: v for n, v in fabrics_only(lab.info(), scenario.fabrics).items() if n in nodes}
    missing = [n for n in nodes if n not in info]
    if missing:
        raise DrillsUnavailable(f"lab '{lab.lab_id}' has no ready node {', '.join(missing)}")
    persist = f"{GUEST_SHARE}/{PERSIST_DIR}/{tag}"
    paths = write_configs(
        info, Path(lab.dir) / tag, actives, standby, Path(persist) / "state",
        lambda node, pair: f"{persist}/journal-{pair}.img",
        control_socket=lambda node, pair: Path(f"/tmp/{tag}-{pair}.sock"),
        pmem_size=PMEM_SIZE, timeouts=TIMEOUTS, disk_size="4 MiB",
        fence={"action": fence_agent.SH_COMMAND, "timeout": 60000})
    spec = {"scenario": str(scenario.path), "dir": f"{GUEST_SHARE}/{tag}",
            "sessions": {a: {"config": str(paths[a][standby]), "ack": "stdout"}
                         for a in actives}}
    spec_path = Path(lab.dir) / tag / "standby.json"
    spec_path.write_text(json.dumps(spec))
    writers = {a: AckWriter(evidence / f"acks-{a}.log") for a in actives}
    procs = {n: _Events(n, writers, None if n == standby else n) for n in nodes}

    def poll() -> None:
        for p in procs.values():
            if p.run.job is not None:
                p.run.job.poll()

    def wait(pred, timeout: float, what: str) -> None:
        wait_for(pred, timeout, what, poll, step_s=0.01)

    def sleep(seconds: float) -> None:
        end = time.monotonic() + seconds
        wait(lambda: time.monotonic() >= end, seconds + 1, "time")

    def fault(node: str, do: str) -> None:
        try:
            lab.fault(node, do)
        except LabError:
            if do != "resume" or lab.node_alive(node):
                raise

    def ready() -> bool:
        for n, p in procs.items():
            err = p.find("error")
            if err is not None or (p.run.job is not None and p.run.job.poll() is not None
                                   and p.find("final") is None):
                why = (err or {}).get("why") or "its process ended (see its stderr)"
                raise RuntimeError(f"node {n} ended before the drill began: {why}")
        early = host_note(procs[standby].events, "active")
        if early is not None:
            raise RuntimeError(f"the standby host took over for {early.get('session')} before "
                               "the drill's first step (a start stalled past the heart-beat "
                               "timeout?)")
        return (procs[standby].find("started") is not None
                and all(procs[a].find("serving") is not None for a in actives))

    py = [sys.executable, "-m"]
    def put_command(node: str, seq: int, command: dict) -> None:
        command_file(shares[node], seq, command)  # (the guest lists its share: 9p)

    driver = NPlus1Driver(procs, standby, fault, wait, sleep, time.monotonic, put_command)
    t_ready = None
    try:
        # the standby host first (its sessions listen), then the actives
        procs[standby].run.job = lab.spawn(
            standby, [*py, "hsp_rdma.tools.drills.standby_node", str(spec_path)],
            timeout=900, on_stdout=procs[standby].run.feed)
        for a in actives:
            procs[a].run.job = lab.spawn(
                a, [*py, "hsp_rdma.tools.drills.drill_node", str(paths[a][a]),
                    str(scenario.path), "stdout", f"{GUEST_SHARE}/{tag}"],
                timeout=900, on_stdout=procs[a].run.feed)
        t0 = time.monotonic()
        wait(ready, READY_S, "n+1 pairs up (every active serving, the standby host started)")
        t_ready = round(time.monotonic() - t0, 1)
        driver.run(scenario.steps)
    except (RuntimeError, LabError) as exc:
        problems.append(str(exc))
    finally:
        # the actives first (their acked commits are applied on the host by then), then the
        # host: each dumps its P.mem and journal into its share and says final
        for group in ([a for a in actives], [standby]):
            alive = [n for n in group if procs[n].run.job is not None
                     and procs[n].run.job.poll() is None and lab.node_alive(n)]
            for n in alive:
                (shares[n] / "stop").touch()
            try:  # (one wait for the group: a node stuck in its start says no final)
                wait(lambda g=alive: all(procs[n].find("final") for n in g), FINAL_S,
                     f"final state of {', '.join(alive)}")
            except RuntimeError as exc:
                problems.append(str(exc))
        for p in procs.values():
            if p.run.job is not None and p.run.job.poll() is None:
                p.run.job.kill()
        for w in writers.values():
            w.close()
        for n, p in procs.items():
            _out, err = p.run.job.output() if p.run.job is not None else ("", "")
            (evidence / f"{n}-events.json").write_text(json.dumps(p.events, indent=0))
            (evidence / f"{n}-stderr.txt").write_text(err)
    logs = {a: read_acklog(evidence / f"acks-{a}.log") for a in actives}
    dumps = {}
    for a in actives:
        pm, jn = dump_names(standby, a)
        dumps[a] = {"standby": (_read(shares[standby] / pm), _read(shares[standby] / jn))}
        if procs[a].find("final") is not None:
            dumps[a]["active"] = (_read(shares[a] / f"pmem-{a}.bin"),
                                  _read(shares[a] / f"journal-{a}.final"))
    result = judge_nplus1(scenario, procs, logs, dumps, driver, problems)
    result.nplus1["lab"] = {"kind": runner.kind, "lab_id": lab.lab_id, "nodes": len(nodes),
                            "boot_s": boot_s, "pairs_up_s": t_ready,
                            "drill_s": round(time.monotonic() - t_start, 1)}
    failed = judge(scenario, result)
    if booted:  # booted for this drill: down again (a pair drill boots its own two nodes)
        lab.down()
        runner.owned = None
    if failed:
        from dataclasses import replace
        return replace(result, problems=(*result.problems,
                                         f"the nodes' events and stderr: {evidence}"))
    shutil.rmtree(evidence, ignore_errors=True)
    if not booted:
        for n in nodes:
            shutil.rmtree(lab.node_dir(n) / "share" / PERSIST_DIR / tag, ignore_errors=True)
    return result


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None
