"""scripts/demo, the main job (README's first command): a pair of nodes over real RDMA,
switching over.

It boots the built-in two-node lab (this host has no RDMA, or its devices have no peer here),
shows ib_write_bw and ib_send_lat on both fabrics and a cable pull that fabric y survives, then
a Graceful Switch Over of the running demo application (b -> a), the switch-back (a -> b), and
hsp-bench gso beside ib_write_bw. The work is in hsp_rdma.tools.demo; this module shows it.
"""

from __future__ import annotations

import json
import sys

from rich.table import Table

from hsp_rdma.cli.bench import show as show_bench
from hsp_rdma.cli.common import EXIT_CODES_HELP, EXIT_OK, Parser, make_console, run_cli
from hsp_rdma.lab import RDMA_KINDS
from hsp_rdma.tools.demo import demo_ok, host_rdma_devices, lab_demo

console = make_console()


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
        results = []
        for k in kinds:
            with console.status(f"{k}: starting") as status:
                results.append(lab_demo(k, args.lab_id, args.keep and k == kinds[-1],
                                        step=status.update))
        if args.json:
            print(json.dumps({"runs": results}, indent=1))
        else:
            for r in results:
                show(r)
                show_gso(r)
        return EXIT_OK if demo_ok(results) else 1

    return run_cli("hsp-demo", body)


if __name__ == "__main__":
    sys.exit(main())
