"""The main job's work (README's first command; `scripts/demo` is its CLI): a pair of nodes
over real RDMA in the built-in lab, perftest on both fabrics, a cable pull that fabric y
survives, a Graceful Switch Over of the demo application and its switch-back, the GSO
bench beside ib_write_bw, and last the failover drill kill-active (hsp-failover-test's: the
active's guest killed under the ledger workload, the standby fences it and takes over; lost
transfers counted)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from hsp_rdma.errors import HspError, LabError
from hsp_rdma.lab import FABRICS, Lab, perftest
from hsp_rdma.tools.drills.lab_runner import LabRunner, heal
from hsp_rdma.tools.drills.runner import judge, report
from hsp_rdma.tools.drills.scenario import find_scenario, load_scenario
from hsp_rdma.tools.gso_bench import bench_gso_lab
from hsp_rdma.tools.gso_pair import PairResult, run_pair

DEMO_DRILL = "kill-active"


def host_rdma_devices() -> list[str]:
    p = Path("/sys/class/infiniband")
    return sorted(d.name for d in p.iterdir()) if p.is_dir() else []


def lab_demo(rdma: str, lab_id: str, keep: bool, gso_size: int = 16 << 20,
             step: Callable[[str], None] = lambda _msg: None) -> dict:
    """Boot a fresh lab with RDMA, run every part of the demo, end the lab (unless KEEP)."""
    lab = Lab(lab_id)
    if lab.running():
        lab.down()
    t0 = time.monotonic()
    step(f"booting the two-node lab with {rdma}")
    lab.up(rdma=rdma, fabrics=2)
    boot_s = time.monotonic() - t0
    rows = []
    try:
        for fab in FABRICS:
            step(f"{rdma}: perftest b -> a on fabric {fab}")
            bw = perftest.run(lab, "ib_write_bw", fab, ("-s", "65536", "-n", "300"))
            lat = perftest.run(lab, "ib_send_lat", fab, ("-s", "2", "-n", "1000"))
            rows.append({"rdma": rdma, "fabric": fab, "device": bw.device,
                         "ib_write_bw_MBps": bw.row["bw_avg_MBps"],
                         "ib_send_lat_typical_us": lat.row["t_typical_us"],
                         "ib_send_lat_p99_us": lat.row["p99_us"],
                         "retries": bw.retries + lat.retries})
        step(f"{rdma}: cable pull on fabric x, traffic on y")
        lab.fault("a", "link", "x", "down")
        try:
            y = perftest.run(lab, "ib_write_bw", "y", ("-s", "65536", "-n", "100"))
            try:
                perftest.run(lab, "ib_write_bw", "x", ("-s", "65536", "-n", "100"),
                             timeout=15, retries=0)
                x_failed = False
            except LabError:
                x_failed = True
        finally:
            lab.fault("a", "link", "x", "up")
        pull = {"y_MBps_with_x_pulled": y.row["bw_avg_MBps"], "x_failed_while_pulled": x_failed}
        step(f"{rdma}: GSO of the demo application b -> a, then switch-back")
        gso = gso_summary(run_pair(lab, gso_size, runs=2, timeout=300))
        bench = bench_gso_lab(argparse.Namespace(
            lab=rdma, lab_id=lab_id, size=gso_size, runs=3, chunk=0, depth=0, fabric="x",
            keep=True, profiles=None), step=step)[0]
        step(f"{rdma}: failover drill {DEMO_DRILL} (the active's guest killed under load)")
        drill = run_drill(rdma, lab_id, DEMO_DRILL)
    finally:
        if not keep:
            lab.down()
        elif lab.running():
            heal(lab)  # the drill killed a node: the kept lab is whole again
    return {"mode": "lab", "rdma": rdma, "boot_s": round(boot_s, 1), "transfers": rows,
            "cable_pull": pull, "gso": gso, "bench": bench, "drill": drill}


def run_drill(rdma: str, lab_id: str, name: str) -> dict:
    """The shipped drill NAME in the running lab LAB_ID, as hsp-failover-test reports it."""
    scenario = load_scenario(find_scenario(name))
    result = LabRunner(rdma, lab_id).run(scenario)  # the lab is up: the runner does not own it
    return report(result, judge(scenario, result))


def gso_summary(res: PairResult) -> dict:
    """Who froze at which counter, who resumed where, and whether every byte arrived."""
    steps = []
    by_node = {res.active.name: res.active, res.standby.name: res.standby}
    crc = {(e["role"], e["epoch"]): e["pmem_crc"]
           for run in (res.active, res.standby) for e in run.of("pmem")}
    for src, dst in (("b", "a"), ("a", "b")):
        frozen = by_node[src].of("frozen")
        resumed = by_node[dst].of("resumed")
        gso = [e for e in by_node[src].of("gso") if e["role"] == "active"]
        if not (frozen and resumed and gso):
            errors = [e.get("error") for e in res.active.events + res.standby.events
                      if e["event"] == "error"]
            raise HspError(f"the GSO {src} -> {dst} did not complete: {errors or res.stderr}")
        f, r, g = frozen[0], resumed[0], gso[0]
        sent, got = crc.get(("active", g["epoch"])), crc.get(("standby", g["epoch"]))
        steps.append({"from": src, "to": dst, "epoch": g["epoch"],
                      "counter_at_freeze": f["counter"], "counter_at_resume": r["counter"],
                      "pmem_identical": sent is not None and sent == got,
                      "image_bytes": g["image_bytes"], "copy_MBps": round(g["copy_MBps"], 2),
                      "blackout_ms": round(g["blackout_s"] * 1000, 1)})
    return {"steps": steps, "ok": all(s["pmem_identical"] and
                                      s["counter_at_freeze"] == s["counter_at_resume"]
                                      for s in steps)}


def demo_ok(results: list[dict]) -> bool:
    return all(r["cable_pull"]["x_failed_while_pulled"] and r["gso"]["ok"]
               and r["drill"]["passed"] for r in results)
