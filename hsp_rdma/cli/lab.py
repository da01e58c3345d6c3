"""hsp-lab: prepare, boot, drive, fault and end the soft-RDMA lab (QEMU + rxe/siw): a pair of
nodes a and b, or with `up --nodes N` N nodes a, b, c, ... on shared fabrics."""

from __future__ import annotations

import argparse
import json
import sys
import time

from rich.table import Table
from rich.text import Text

from hsp_rdma.cli.common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    Parser,
    add_lab_id,
    bounded,
    err_console,
    make_console,
    run_cli,
    table,
)
from hsp_rdma.errors import UsageError
from hsp_rdma.lab import ALL_NODES, FABRICS, MAX_NODES, RDMA_KINDS, Lab
from hsp_rdma.lab.lab import (
    DEFAULT_LAB_ID,
    FAULTS,
    QEMU_OVERHEAD_MIB,
    check_fault_args,
)
from hsp_rdma.lab.prepare import prepare

console = make_console()


LAB_ID_HELP = "keeps labs apart on ports and directories"


def build_parser() -> Parser:
    p = Parser(
        prog="hsp-lab",
        description="Soft-RDMA lab of two nodes (or N with up --nodes N): QEMU TCG guests on Debian's kernel with rdma_rxe "
        "(RoCE v2) or siw (iWARP), joined by virtual wires on 127.0.0.1 UDP. Artefacts live "
        "under HSP_LAB_DIR (default /var/tmp/hsp-lab). --lab-id goes before or after the "
        "subcommand.",
        epilog=EXIT_CODES_HELP,
    )
    add_lab_id(p, DEFAULT_LAB_ID, LAB_ID_HELP)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    def subcommand(name: str, **kw) -> Parser:
        sp = sub.add_parser(name, **kw)
        add_lab_id(sp, DEFAULT_LAB_ID, LAB_ID_HELP, subcommand=True)
        return sp

    subcommand("setup", help="prepare the cache: guest kernel, siw, vmlinux, initramfs "
               "(shared by every lab)")

    up = subcommand("up", help="boot nodes a and b (or --nodes N: a, b, c, ...); returns when "
                    "every RDMA port is ACTIVE")
    up.add_argument("--rdma", choices=RDMA_KINDS, default="rxe",
                    help="soft RDMA device of both nodes: rxe (RoCE v2) or siw (iWARP)")
    up.add_argument("--fabrics", type=int, choices=(1, 2), default=2,
                    help="1 = fabric x only, 2 = x and y")
    up.add_argument("--smp", type=bounded(int, 1, 4, "--smp"), default=1,
                    help="vCPUs per node (more is slower under TCG)")
    up.add_argument("--mem", type=bounded(int, 256, 8192, "--mem"), default=1024,
                    help="MiB per node")
    up.add_argument("--boot-timeout", type=bounded(float, 5, 1800, "--boot-timeout"),
                    default=180.0, help="seconds to wait for both nodes")
    up.add_argument("--ttl", type=bounded(float, 60, 86400, "--ttl"), default=7200.0,
                    help="every QEMU process ends after this many seconds")
    up.add_argument("--nodes", type=bounded(int, 2, MAX_NODES, "--nodes"), default=2,
                    help="nodes a, b, c, ...: 2 = a point-to-point pair; 3 or more put each "
                    "fabric on one shared segment (a hub process on 127.0.0.1). Each node "
                    f"costs up to --mem + ~{QEMU_OVERHEAD_MIB} MiB of host memory and a share "
                    "of the host's CPUs; more than the host's available memory is refused")
    up.add_argument("--json", action="store_true", help="print the node table as JSON")

    ex = subcommand("exec", help="run a command as root in a node, output streamed live",
                    description="Run CMD in NODE. The host's filesystem is visible at the "
                    "same paths (read-only, with a tmpfs overlay), so this checkout and "
                    "its .venv run unchanged. Exits with CMD's status (124 on timeout).")
    ex.add_argument("node", choices=ALL_NODES, metavar="NODE",
                    help="the node to run in: a, b (c, ... in a lab of --nodes 3 or more)")
    ex.add_argument("--timeout", type=bounded(float, 0.1, 86400, "--timeout"), default=600.0,
                    help="seconds before CMD is killed")
    ex.add_argument("argv", nargs="*", metavar="-- CMD ...",
                    help="the command; put it after '--' when it has options of its own")

    fa = subcommand("fault", help="inject a fault: link, netem, kill, pause, resume",
                    description="link x|y down|up pulls or plugs a cable from outside "
                    "the guest; netem x|y 'delay 5ms loss 1%'|clear shapes a fabric "
                    "inside the guest; kill is power loss; pause/resume freeze and thaw.")
    fa.add_argument("node", choices=ALL_NODES, metavar="NODE",
                    help="the node to fault: a, b (c, ... in a lab of --nodes 3 or more)")
    fa.add_argument("fault", choices=tuple(FAULTS), help="what to do to it")
    fa.add_argument("args", nargs="*",
                    help="link: x|y down|up; netem: x|y SPEC|clear; kill, pause, resume: none")

    st = subcommand("status", help="what runs, for how long, link states (every node)")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    subcommand("down", help="end every process of the lab (by pid) and remove its files")
    p.checks.append(_fault_problem)
    p.checks.append(_node_problem)
    return p


def _node_problem(args: argparse.Namespace) -> str | None:
    """A node this lab does not have (c in a pair; the lab as up, or a pair when it is down)
    is a usage error (64) before anything runs."""
    node = getattr(args, "node", None)
    if node is None:
        return None
    try:
        lab = Lab(args.lab_id)
    except UsageError:
        return None  # the lab id itself is reported where it is used
    if node not in lab.nodes:
        return (f"unknown node '{node}': lab '{lab.lab_id}' has nodes {', '.join(lab.nodes)} "
                f"(more nodes: '{lab.command('up --nodes N')}')")
    return None


def _fault_problem(args: argparse.Namespace) -> str | None:
    """The fault's arguments, checked at parse time: wrong ones exit 64 before any lab."""
    if args.cmd != "fault":
        return None
    try:
        check_fault_args(args.fault, args.args)
    except UsageError as exc:
        return str(exc)
    return None


def _node_table(info: dict) -> Table:
    t = table(f"hsp-lab nodes ({info['rdma']})", "node", "fabric", "netdev", "IPv4",
              "rdma device", "GID index", "port", justify="left")
    for node in [k for k in info if k != "rdma"]:
        for fab in FABRICS:
            f = info.get(node, {}).get(fab)
            if f:
                t.add_row(node, fab, f["netdev"], f["ipv4"], f["rdma_dev"],
                          str(f["gid_index"]), f["port_state"].split(": ")[-1])
    return t


def cmd_setup(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    with console.status(Text("preparing the lab cache")) as status:
        def log(msg: str) -> None:
            status.update(Text(msg))
            console.print(Text.assemble((f"{time.monotonic() - t0:6.1f} s", "dim"), f" {msg}"))
        prepare(log=log)
    return EXIT_OK


def cmd_up(args: argparse.Namespace, lab: Lab) -> int:
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        console.print(Text.assemble((f"{time.monotonic() - t0:5.1f} s", "dim"), f" {msg}"))

    with console.status(Text(f"booting lab '{lab.lab_id}' ({args.rdma}, {args.fabrics} "
                             f"fabric(s), {args.nodes} nodes)")):
        info = lab.up(rdma=args.rdma, fabrics=args.fabrics, smp=args.smp, mem=args.mem,
                      boot_timeout=args.boot_timeout, ttl=args.ttl, progress=progress,
                      nodes=args.nodes)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        console.print(_node_table(info))
        console.print(f"lab '{lab.lab_id}' up in {time.monotonic() - t0:.1f} s; "
                      f"'{lab.command('down')}' ends it")
    return EXIT_OK


def cmd_exec(args: argparse.Namespace, lab: Lab) -> int:
    argv = args.argv

    def out(chunk: bytes) -> None:
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    def err(chunk: bytes) -> None:
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()

    job = lab.spawn(args.node, argv, timeout=args.timeout, on_stdout=out, on_stderr=err)
    try:
        res = job.wait()
    except KeyboardInterrupt:
        job.kill()
        raise
    if res.timed_out:
        err_console.print(f"hsp-lab exec: '{' '.join(argv)}' timed out after {args.timeout:g} s "
                          "and was killed")
    return res.rc


def cmd_fault(args: argparse.Namespace, lab: Lab) -> int:
    lab.fault(args.node, args.fault, *args.args)
    console.print(f"node {args.node}: {args.fault} {' '.join(args.args)} done")
    return EXIT_OK


def status_table(st: dict) -> Table:
    """Lab.status() of a lab that has nodes, as a table."""
    t = table(f"lab '{st['lab_id']}': {st['rdma']}, kernel {st['kver']}", "node", "state",
              "qemu pid", "uptime [s]", "links", "RDMA ready", justify="left")
    for node, n in st["nodes"].items():
        links = " ".join(f"{f}:{s}" for f, s in n["links"].items())
        t.add_row(node, n["state"], str(n["qemu_pid"] or "-"),
                  f"{n['uptime_s']:.0f}" if n["uptime_s"] is not None else "-", links,
                  "yes" if n["ready"] else "no")
    return t


def cmd_status(args: argparse.Namespace, lab: Lab) -> int:
    st = lab.status()
    if args.json:
        print(json.dumps(st, indent=1))
        return EXIT_OK
    if not st["nodes"]:
        console.print(f"lab '{lab.lab_id}' is down")
        return EXIT_OK
    console.print(status_table(st))
    for fab, h in st.get("hubs", {}).items():
        console.print(f"fabric {fab}: shared segment, hub on 127.0.0.1:{h['port']} "
                      f"(pid {h['pid']}, {'running' if h['alive'] else 'NOT running'})")
    return EXIT_OK


def cmd_down(args: argparse.Namespace, lab: Lab) -> int:
    ended = lab.down()
    console.print(f"lab '{lab.lab_id}' down" + (f": ended {', '.join(ended)}" if ended else
                                                 " (nothing was running)"))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else list(argv)
    command: list[str] = []
    if "--" in raw:  # everything after '--' is the command for exec, options included
        at = raw.index("--")
        raw, command = raw[:at], raw[at + 1:]
    parser = build_parser()
    args = parser.parse_args(raw)
    if args.cmd == "exec":
        args.argv = [*args.argv, *command]
        if not args.argv:
            parser.error("exec needs a command: hsp-lab exec NODE -- CMD ...")
    elif command:
        parser.error(f"'--' is only for exec, not for {args.cmd}")

    def body() -> int:
        if args.cmd == "setup":
            return cmd_setup(args)
        lab = Lab(args.lab_id)
        return {"up": cmd_up, "exec": cmd_exec, "fault": cmd_fault, "status": cmd_status,
                "down": cmd_down}[args.cmd](args, lab)

    return run_cli("hsp-lab", body)


if __name__ == "__main__":
    sys.exit(main())
