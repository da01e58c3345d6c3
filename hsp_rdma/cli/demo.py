"""scripts/demo, the main job (README's first command): a pair of nodes over real RDMA,
switching over.

It boots the built-in two-node lab (this host has no RDMA, or its devices have no peer here),
shows ib_write_bw and ib_send_lat on both fabrics and a cable pull that fabric y survives, then
a Graceful Switch Over of the running demo application (b -> a), the switch-back (a -> b),
hsp-bench gso beside ib_write_bw, and an unplanned failover: hsp-failover-test's drill
kill-active (the active's guest killed under the ledger workload; the standby fences it through
the lab's fence device and takes over; every acknowledged transfer checked). The work is in hsp_rdma.tools.demo; this module shows it.
"""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.text import Text

from hsp_rdma.cli.bench import show as show_bench
from hsp_rdma.cli.common import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_OK,
    Parser,
    RawDescriptionHelpFormatter,
    add_lab_id,
    literal,
    make_console,
    run_cli,
    table,
)
from hsp_rdma.cli.failover_test import show_drills
from hsp_rdma.lab import RDMA_KINDS
from hsp_rdma.tools.demo import demo_ok, host_rdma_devices, lab_demo

console = make_console()


PROG = "scripts/demo"


def show(result: dict, out: Console | None = None) -> None:
    """The lab's transfers on both fabrics and the cable pull, on OUT (default: console)."""
    out = console if out is None else out
    t = table(f"real RDMA between nodes b -> a ({result['rdma']}, lab booted in "
              f"{result['boot_s']} s)", "fabric", "device", "ib_write_bw 64 KiB [MB/sec]",
              "ib_send_lat 2 B typical [usec]", "99% [usec]", "retries")
    for r in result["transfers"]:
        t.add_row(r["fabric"], r["device"], f"{r['ib_write_bw_MBps']:.2f}",
                  f"{r['ib_send_lat_typical_us']:.1f}", f"{r['ib_send_lat_p99_us']:.1f}",
                  str(r["retries"]))
    out.print(t)
    p = result["cable_pull"]
    x_verdict = "failed as it should" if p["x_failed_while_pulled"] else "STILL WORKED"
    out.print(f"cable pull on fabric x: fabric y carried {p['y_MBps_with_x_pulled']:.2f} MB/s;"
              f" fabric x {x_verdict}")
    out.print("TCG-emulated guests: compare numbers only within one run.", style="dim")


def show_gso(result: dict, out: Console | None = None) -> None:
    """The demo application's switch-overs, then the GSO bench's tables, on OUT."""
    out = console if out is None else out
    t = table(f"Graceful Switch Over of the demo application ({result['rdma']})", "epoch",
              "from -> to", "counter at freeze", "counter at resume", "P.mem identical",
              "#bytes", "copy [MB/sec]", "blackout [msec]")
    for s in result["gso"]["steps"]:
        t.add_row(str(s["epoch"]), f"{s['from']} -> {s['to']}", str(s["counter_at_freeze"]),
                  str(s["counter_at_resume"]), "yes" if s["pmem_identical"] else "NO",
                  str(s["image_bytes"]), f"{s['copy_MBps']:.2f}", f"{s['blackout_ms']:.1f}")
    out.print(t)
    show_bench(result["bench"], out)
    if "drill" in result:
        show_drills([result["drill"]], out,
                    f"unplanned failover: drill {result['drill']['name']} ({result['rdma']})")


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__, epilog=EXIT_CODES_HELP,
               formatter_class=RawDescriptionHelpFormatter)
    p.add_argument("--rdma", choices=(*RDMA_KINDS, "both"), default="rxe",
                   help="soft device(s) for the lab; both = rxe then siw")
    add_lab_id(p, "demo", "the lab to boot; keeps it apart from other labs")
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        devs = host_rdma_devices()
        if devs:
            console.print(f"this host has RDMA devices ({', '.join(devs)}); the two-node demo "
                          "needs a peer: there run 'hsp-bench serve --device DEV --local-ip "
                          f"PEER_IP', here 'hsp-bench gso --peer PEER_IP --device {devs[0]} "
                          "--local-ip THIS_IP' (see README). Showing the lab instead.")
        kinds = RDMA_KINDS if args.rdma == "both" else (args.rdma,)
        results = []
        for k in kinds:
            with console.status(Text(f"{k}: starting")) as status:
                results.append(lab_demo(k, args.lab_id, args.keep and k == kinds[-1],
                                        step=literal(status.update)))
        if args.json:
            print(json.dumps({"runs": results}, indent=1))
        else:
            for r in results:
                show(r)
                show_gso(r)
        return EXIT_OK if demo_ok(results) else EXIT_FAILED

    return run_cli(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
