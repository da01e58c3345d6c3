"""Drills in the built-in lab (rxe or siw): drill nodes (``tools/drills/drill_node.py``) in
guests a (the first active) and b, the lab's fence device as fence action
(``hsp_rdma.lab.fence_agent.SH_COMMAND``, the sh agent: ms to start in a busy guest, where
``python -m`` took ~2 s and ``-I -S`` ~1 s), faults through ``Lab.fault`` (kill = the guest's
QEMU killed, pause/resume = QMP stop/cont, pull/plug = the fabric's link down/up, netem = tc
netem in the guest, heal = every pulled link up and every netem cleared); corrupt and audit are
drill command files (``runner.StepDriver``) the driver writes into the node's share.

A guest has no network path to the host: the workload's acks come out as ``ack`` events on
the lab's command channel (the job's stdout, streamed through the node's 9p share) and the
driver stamps each with its own monotonic clock as it arrives, so every time here (acks,
``suspected``, ``active``) is the driver's, and detect_ms includes the channel's delay (an
upper bound). The traffic stop around a pull is measured on the active guest's own clock
(each ack event's ``t``), when every ack of that stretch came from one node (the channel
delivers acks in batches; ``runner.traffic_stops``). At the end the survivor writes its P.mem and journal into its share, where the
driver reads them. Before each drill the lab is healed (a killed node booted, a paused one
resumed), as the test fixture does.

The pair is set up on the scenario's ``fabrics`` only (``fabrics_only``: a one-fabric drill
leaves the lab's fabric y out of the node configurations).

Steps supported: those of ``soft_runner.SUPPORTED`` and netem, on either fabric (restart:
the killed guest booted again, its drill node started with the same configuration; each
node's state directory is in its share, so it finds its persisted epochs), gso (as over soft:
``soft_runner.GsoStepDriver``; the GSO's own VI runs over the guests' fabric x NIC).
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from hsp_rdma.errors import LabError
from hsp_rdma.lab import Lab, fence_agent, fenced
from hsp_rdma.lab.lab import PERSIST_DIR
from hsp_rdma.tools.drills.acklog import Ack, AckWriter, read_acklog
from hsp_rdma.tools.drills.runner import (
    DrillResult,
    DrillsUnavailable,
    command_file,
    find_event,
    judge,
    pair_ready,
    wait_for,
)
from hsp_rdma.tools.drills.scenario import Scenario
from hsp_rdma.tools.drills.soft_runner import PMEM_SIZE, SUPPORTED, GsoStepDriver, judge_drill
from hsp_rdma.tools.drills.soft_runner import unsupported as _unsupported
from hsp_rdma.tools.guest import GuestRun
from hsp_rdma.tools.lab_config import write_node_configs

TIMEOUTS = {"heartbeat_interval": 100, "heartbeat_timeout": 1000, "connect": 90000,
            "commit": 10000}
GUEST_SHARE = "/hsp"  # where a guest sees its writable share
LAB_SUPPORTED = SUPPORTED | {"netem"}


def unsupported(scenario: Scenario) -> str | None:
    """Why SCENARIO cannot run in the lab, or None."""
    return _unsupported(scenario, LAB_SUPPORTED, None, "in the lab")


def fabrics_only(info: dict, fabrics: tuple[str, ...]) -> dict:
    """``Lab.info()`` with only FABRICS of each node: a drill of ``fabrics = ["x"]`` sets the
    pair up on fabric x alone, though the lab boots x and y."""
    return {node: ({f: v for f, v in fabs.items() if f in fabrics}
                   if isinstance(fabs, dict) else fabs) for node, fabs in info.items()}


class _Events:
    """A guest run's events, with ``t`` replaced by the driver's clock at arrival."""

    def __init__(self, name: str, writer: AckWriter):
        self.run = GuestRun(name, on_event=self._on_event)
        self.events: list[dict] = []
        self.writer = writer
        self.own_t: dict[int, float] = {}  # transfer id -> the guest's clock at its ack

    def _on_event(self, name: str, ev: dict) -> None:
        now = time.monotonic()
        if ev.get("event") == "ack":
            self.writer.append(Ack(int(ev["id"]), int(now * 1e9), name))
            if isinstance(ev.get("t"), int | float):
                self.own_t[int(ev["id"])] = float(ev["t"])
            return
        ev["guest_t"], ev["t"] = ev.get("t"), now
        self.events.append(ev)

    def find(self, event: str, what: str | None = None) -> dict | None:
        return find_event(self, event, what)


def heal(lab: Lab) -> None:
    """Both nodes powered, running and cabled, and the fence device's marks of the drill
    before (Outdated, powered off) forgotten."""
    fenced.clear_marks(lab)
    for node, n in lab.status()["nodes"].items():
        if n["state"] in ("dead", "killed"):
            lab.boot_node(node)
        elif n["state"] == "paused":
            lab.fault(node, "resume")
        for fab, link in n["links"].items():
            if link != "up" and lab.node_alive(node):
                lab.fault(node, "link", fab, "up")


class LabRunner:
    """Runs drills in lab LAB_ID of KIND, booting it when it is down (and ending it on
    ``close`` when it booted it)."""

    def __init__(self, kind: str, lab_id: str):
        self.kind, self.lab = kind, Lab(lab_id)
        self.owned: bool | None = None
        # the hooks of soft_runner.SoftRunner (step_driver, observe), alike
        self.step_driver: type[GsoStepDriver] = GsoStepDriver
        self.observe: Callable[[dict], None] | None = None

    def close(self) -> None:
        if self.owned:
            self.lab.down()

    def _ready(self) -> Lab:
        if self.owned is None:
            try:
                self.owned = self.lab.ensure_up(self.kind)
            except LabError as exc:
                raise DrillsUnavailable(f"the {self.kind} lab cannot run: {exc}") from exc
        heal(self.lab)
        return self.lab

    def run(self, scenario: Scenario) -> DrillResult:
        if scenario.nplus1 is not None:  # N actives and a standby host: a lab of N + 1 nodes
            from hsp_rdma.tools.drills.nplus1_lab import lab_nplus1
            return lab_nplus1(self, scenario)
        lab = self._ready()
        problems: list[str] = []
        tag = f"drill-{scenario.name}-{time.time_ns()}"
        shares = {n: lab.node_dir(n) / "share" / tag for n in ("a", "b")}
        for d in shares.values():
            d.mkdir(parents=True)
        # the ack log, and after the drill each node's events and stderr: outside the lab's
        # directory (a lab the runner booted goes down with it), kept when the drill failed
        evidence = Path(lab.root) / "drills" / lab.lab_id / tag
        ack_path = evidence / "acks.log"
        evidence.mkdir(parents=True, exist_ok=True)
        # configs and state of this drill alone: a guest's writes under the lab's directory
        # stay in its overlay for as long as it runs, so a reused state directory would bring
        # the epoch of an earlier drill
        # each node's state (epochs, dirty bitmaps) on its persistent storage (the share's
        # PERSIST_DIR, kept when the guest boots again: a restarted node must find what it
        # persisted); its control socket in the guest's /tmp (a 9p share holds no socket)
        paths = write_node_configs(
            fabrics_only(lab.info(), scenario.fabrics), Path(lab.dir) / tag,
            state_root=Path(GUEST_SHARE) / PERSIST_DIR / tag / "state",
            control_socket=Path(f"/tmp/{tag}.sock"), pmem_size=PMEM_SIZE, pmem_persist=True,
            timeouts=TIMEOUTS,
            # the journal disk on the node's persistent storage too: a node killed and booted
            # again finds its disk as it left it (it may be the one up-to-date copy)
            disks=[{"name": "journal", "path": f"{GUEST_SHARE}/{PERSIST_DIR}/{tag}/journal.img",
                    "size": "16 MiB"}],
            fence={"action": fence_agent.SH_COMMAND, "timeout": 60000})
        writer = AckWriter(ack_path)
        procs = {n: _Events(n, writer) for n in ("a", "b")}
        pulled: set[tuple[str, str]] = set()
        netems: set[tuple[str, str]] = set()

        def poll() -> None:
            for p in procs.values():
                p.run.job.poll()

        def wait(pred, timeout: float, what: str) -> None:
            wait_for(pred, timeout, what, poll, step_s=0.01)

        def fault(node: str, step) -> None:
            if step.do in ("pull", "plug"):
                if not lab.node_alive(node):  # fenced (powered off) meanwhile: no cable to
                    return  # pull or plug; heal() boots it before the next drill
                lab.fault(node, "link", step.fabric, "down" if step.do == "pull" else "up")
                (pulled.add if step.do == "pull" else pulled.discard)((node, step.fabric))
                return
            if step.do == "netem":
                lab.fault(node, "netem", step.fabric, step.spec)
                (netems.discard if step.spec == "clear" else netems.add)((node, step.fabric))
                return
            if step.do == "restart":  # the killed node booted again, its drill node started
                # booted in a thread while this one goes on reading the other node's events:
                # acks are stamped as they arrive (a boot of ~14 s read nothing before: a
                # "blackout" of the command channel, not of the node)
                failed: list[BaseException] = []

                def boot() -> None:
                    try:
                        lab.boot_node(node)
                    except BaseException as exc:  # noqa: BLE001 - raised in the driver
                        failed.append(exc)

                booting = threading.Thread(target=boot, daemon=True)
                booting.start()
                wait(lambda: not booting.is_alive(), 400, f"node {node} to boot again")
                if failed:
                    raise failed[0]
                shares[node].mkdir(parents=True, exist_ok=True)  # (its share is made anew)
                spawn(node)
                return
            try:
                lab.fault(node, step.do)
            except LabError:
                if step.do != "resume" or lab.node_alive(node):
                    raise
                # resumed after the fence powered it off: nothing to resume

        def heal_links() -> None:
            for node, fab in sorted(pulled):
                if lab.node_alive(node):
                    lab.fault(node, "link", fab, "up")
            pulled.clear()
            for node, fab in sorted(netems):
                if lab.node_alive(node):
                    lab.fault(node, "netem", fab, "clear")
            netems.clear()

        def sleep(seconds: float) -> None:
            end = time.monotonic() + seconds
            wait(lambda: time.monotonic() >= end, seconds + 1, "time")

        driver = self.step_driver(procs, fault, heal_links,
                                  lambda n, seq, cmd: command_file(shares[n], seq, cmd),
                                  wait, sleep, time.monotonic)
        def spawn(n: str) -> None:
            procs[n].run.job = lab.spawn(n, [sys.executable, "-m",
                                             "hsp_rdma.tools.drills.drill_node", str(paths[n]),
                                             str(scenario.path), "stdout",
                                             f"{GUEST_SHARE}/{tag}"],
                                         timeout=600, on_stdout=procs[n].run.feed)

        try:
            for n in procs:
                spawn(n)
            wait(lambda: pair_ready(procs), 180, "pair serving")
            driver.run(scenario.steps)
        except (RuntimeError, LabError) as exc:
            problems.append(str(exc))
        finally:
            try:
                heal_links()  # (the survivor's final state goes out on a healthy pair)
            except LabError as exc:
                problems.append(f"healing the links after the drill: {exc}")
            survivor = "b" if procs["b"].find("failover", "active") else "a"
            (shares[survivor] / "stop").touch()
            try:
                wait(lambda: procs[survivor].find("final"), 60, f"final state of {survivor}")
            except RuntimeError as exc:
                problems.append(str(exc))
            for p in procs.values():
                if p.run.job is not None and p.run.job.poll() is None:
                    p.run.job.kill()
            writer.close()
            # what each node said (times: the driver's clock), beside the ack log; a node's
            # own directory is wiped when it boots again
            for n, p in procs.items():
                _out, err = p.run.job.output() if p.run.job is not None else ("", "")
                (ack_path.parent / f"{n}-events.json").write_text(json.dumps(p.events,
                                                                             indent=0))
                (ack_path.parent / f"{n}-stderr.txt").write_text(err)
        pmem = shares[survivor] / f"pmem-{survivor}.bin"
        journal = shares[survivor] / f"journal-{survivor}.final"
        log = read_acklog(ack_path)
        own_t = {i: t for p in procs.values() for i, t in p.own_t.items()}
        if self.observe is not None:
            self.observe({"procs": procs, "log": log, "timeline": driver.timeline,
                          "own_t": own_t, "done_t": driver.done_t})
        result = judge_drill(scenario, procs, log, _read(pmem), _read(journal),
                             driver.fault_t, problems, driver.timeline, own_t, driver.done_t)
        if judge(scenario, result):
            return replace(result, problems=(*result.problems,
                                             f"the nodes' events and stderr: {evidence}"))
        shutil.rmtree(evidence, ignore_errors=True)
        for n in ("a", "b"):  # this drill's persisted node state
            shutil.rmtree(lab.node_dir(n) / "share" / PERSIST_DIR / tag, ignore_errors=True)
        return result


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None
