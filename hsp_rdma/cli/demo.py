"""The main job (README's first command): a pair of nodes over real RDMA, switching over.

It boots the built-in two-node lab (this host has no RDMA, or its devices have no peer here),
shows ib_write_bw and ib_send_lat on both fabrics and a cable pull that fabric y survives, then
a Graceful Switch Over of the running demo application (b -> a), the switch-back (a -> b), and
hsp-bench gso beside ib_write_bw.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.table import Table

from hsp_rdma.cli.bench import bench_gso_lab
from hsp_rdma.cli.bench import show as show_bench
from hsp_rdma.cli.common import EXIT_CODES_HELP, EXIT_OK, Parser, make_console, run_cli
from hsp_rdma.errors import HspError, LabError
from hsp_rdma.ha.gso_pair import run_pair
from hsp_rdma.lab import FABRICS, RDMA_KINDS, Lab, perftest

console = make_console()


def host_rdma_devices() -> list[str]:
    p = Path("/sys/class/infiniband")
    return sorted(d.name for d in p.iterdir()) if p.is_dir() else []


def lab_demo(rdma: str, lab_id: str, keep: bool, gso_size: int = 16 << 20) -> dict:
    lab = Lab(lab_id)
    if lab.running():
        lab.down()
    t0 = time.monotonic()
    with console.status(f"booting the two-node lab with {rdma}"):
        lab.up(rdma=rdma, fabrics=2)
    boot_s = time.monotonic() - t0
    rows = []
    try:
        for fab in FABRICS:
            with console.status(f"{rdma}: perftest b -> a on fabric {fab}"):
                bw = perftest.run(lab, "ib_write_bw", fab, ("-s", "65536", "-n", "300"))
                lat = perftest.run(lab, "ib_send_lat", fab, ("-s", "2", "-n", "1000"))
            rows.append({"rdma": rdma, "fabric": fab, "device": bw.device,
                         "ib_write_bw_MBps": bw.row["bw_avg_MBps"],
                         "ib_send_lat_typical_us": lat.row["t_typical_us"],
                         "ib_send_lat_p99_us": lat.row["p99_us"],
                         "retries": bw.retries + lat.retries})
        with console.status(f"{rdma}: cable pull on fabric x, traffic on y"):
            lab.fault("a", "link", "x", "down")
            y = perftest.run(lab, "ib_write_bw", "y", ("-s", "65536", "-n", "100"))
            try:
                perftest.run(lab, "ib_write_bw", "x", ("-s", "65536", "-n", "100"),
                             timeout=15, retries=0)
                x_failed = False
            except LabError:
                x_failed = True
            lab.fault("a", "link", "x", "up")
        pull = {"y_MBps_with_x_pulled": y.row["bw_avg_MBps"], "x_failed_while_pulled": x_failed}
        with console.status(f"{rdma}: GSO of the demo application b -> a, then switch-back"):
            res = run_pair(lab, gso_size, runs=2, timeout=300)
        gso = gso_summary(res)
        bench = bench_gso_lab(argparse.Namespace(
            lab=rdma, lab_id=lab_id, size=gso_size, runs=3, chunk=0, depth=0, fabric="x",
            keep=True, json=False))
    finally:
        if not keep:
            lab.down()
    return {"mode": "lab", "rdma": rdma, "boot_s": round(boot_s, 1), "transfers": rows,
            "cable_pull": pull, "gso": gso, "bench": bench}


def gso_summary(res) -> dict:
    """Who froze at which counter, who resumed where, and whether every byte arrived."""
    steps = []
    by_node = {res.active.name: res.active, res.standby.name: res.standby}
    for src, dst in (("b", "a"), ("a", "b")):
        frozen = by_node[src].of("frozen")
        resumed = by_node[dst].of("resumed")
        gso = [e for e in by_node[src].of("gso") if e["role"] == "active"]
        if not (frozen and resumed and gso):
            errors = [e.get("error") for e in res.active.events + res.standby.events
                      if e["event"] == "error"]
            raise HspError(f"the GSO {src} -> {dst} did not complete: {errors or res.stderr}")
        f, r, g = frozen[0], resumed[0], gso[0]
        steps.append({"from": src, "to": dst, "epoch": g["epoch"],
                      "counter_at_freeze": f["counter"], "counter_at_resume": r["counter"],
                      "pmem_identical": f["pmem_crc"] == r["pmem_crc"],
                      "image_bytes": g["image_bytes"], "copy_MBps": round(g["copy_MBps"], 2),
                      "blackout_ms": round(g["blackout_s"] * 1000, 1)})
    return {"steps": steps, "ok": all(s["pmem_identical"] and
                                      s["counter_at_freeze"] == s["counter_at_resume"]
                                      for s in steps)}


def show(result: dict) -> None:
    t = Table(title=f"real RDMA between nodes b -> a ({result['rdma']}, lab booted in "
                    f"{result['boot_s']} s)")
    for col in ("fabric", "device", "ib_write_bw 64 KiB [MB/sec]",
                "ib_send_lat 2 B typical [usec]", "99% [usec]", "retries"):
        t.add_column(col, justify="right")
    for r in result["transfers"]:
        t.add_row(r["fabric"], r["device"], f"{r['ib_write_bw_MBps']:.2f}",
                  f"{r['ib_send_lat_typical_us']:.1f}", f"{r['ib_send_lat_p99_us']:.1f}",
                  str(r["retries"]))
    console.print(t)
    p = result["cable_pull"]
    console.print(f"cable pull on fabric x: fabric y carried {p['y_MBps_with_x_pulled']:.2f} MB/s;"
                  f" fabric x {'failed as it should' if p['x_failed_while_pulled'] else 'STILL WORKED'}")
    console.print("[dim]TCG-emulated guests: compare numbers only within one run.[/]")


def show_gso(result: dict) -> None:
    t = Table(title=f"Graceful Switch Over of the demo application ({result['rdma']})")
    for col in ("epoch", "from -> to", "counter at freeze", "counter at resume",
                "P.mem identical", "#bytes", "copy [MB/sec]", "blackout [msec]"):
        t.add_column(col, justify="right")
    for s in result["gso"]["steps"]:
        t.add_row(str(s["epoch"]), f"{s['from']} -> {s['to']}", str(s["counter_at_freeze"]),
                  str(s["counter_at_resume"]), "yes" if s["pmem_identical"] else "NO",
                  str(s["image_bytes"]), f"{s['copy_MBps']:.2f}", f"{s['blackout_ms']:.1f}")
    console.print(t)
    show_bench(result["bench"])


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="hsp-demo", description=__doc__, epilog=EXIT_CODES_HELP)
    p.add_argument("--rdma", choices=(*RDMA_KINDS, "both"), default="rxe",
                   help="soft device(s) for the lab (default rxe; both = rxe then siw)")
    p.add_argument("--lab-id", default="demo")
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)

    def body() -> int:
        devs = host_rdma_devices()
        if devs:
            console.print(f"this host has RDMA devices ({', '.join(devs)}); the two-node demo "
                          "needs a peer: run 'hsp-bench serve' there (see README). Showing "
                          "the lab instead.")
        kinds = RDMA_KINDS if args.rdma == "both" else (args.rdma,)
        results = [lab_demo(k, args.lab_id, args.keep and k == kinds[-1]) for k in kinds]
        if args.json:
            print(json.dumps({"runs": results}, indent=1))
        else:
            for r in results:
                show(r)
                show_gso(r)
        ok = all(r["cable_pull"]["x_failed_while_pulled"] and r["gso"]["ok"] for r in results)
        return EXIT_OK if ok else 1

    return run_cli("hsp-demo", body)


if __name__ == "__main__":
    sys.exit(main())
