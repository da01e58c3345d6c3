"""hsp-nplus1: an n+1 standby host (issue 13), one standby protecting n actives.

- ``hsp-nplus1 memory CONFIG...``: what each protected active costs this host (pinned bytes,
  resident, not pinned) and whether the set fits this process's RLIMIT_MEMLOCK; nothing is
  started (exit 1 with the reason when it does not fit).
- ``hsp-nplus1 run CONFIG... [--socket PATH]``: run the standby's side of every pair (one
  TOML per protected active, ``[node] role = "standby"``) until Ctrl-C or SIGTERM; the host's
  control socket answers ``status`` and ``memory``; each session's own socket answers
  ``hsp status --socket`` as any node's.
- ``hsp-nplus1 status --socket PATH``: every session of a running host, which one is active,
  the refused takeovers, the memory figures (tables, or --json).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rich.text import Text

from hsp_rdma.cli.common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    Parser,
    bounded,
    make_console,
    run_cli,
    table,
)
from hsp_rdma.errors import ControlError
from hsp_rdma.ha.config import load_node_config
from hsp_rdma.ha.control import control_request
from hsp_rdma.ha.standby_host import (
    GSO_BLOB,
    StandbyHost,
    check_memory,
    check_sessions,
    memlock_limit,
    pinned_now,
    session_memory,
)
from hsp_rdma.units import size_arg

console = make_console()


def build_parser() -> Parser:
    p = Parser(prog="hsp-nplus1", description="An n+1 standby host: one standby node "
               "protecting several actives, one pair session per active.",
               epilog=EXIT_CODES_HELP)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    me = sub.add_parser("memory", epilog=EXIT_CODES_HELP,
                        help="what each protected active costs this host, against "
                             "RLIMIT_MEMLOCK (nothing is started)")
    me.add_argument("configs", nargs="+", type=Path, metavar="CONFIG",
                    help="the standby's TOML of each pair")
    me.add_argument("--gso", nargs="?", const=GSO_BLOB, default=None, metavar="BLOB",
                    type=size_arg(0, 1 << 24, "--gso"),
                    help="each session also carries a GSO engine (its state image: header, "
                         f"P.mem and an application blob of BLOB bytes, default {GSO_BLOB}; "
                         "marker pages; control buffers), counted per fabric")
    me.add_argument("--json", action="store_true", help="print JSON instead of tables")
    run = sub.add_parser("run", epilog=EXIT_CODES_HELP,
                         help="run every session until Ctrl-C or SIGTERM")
    run.add_argument("configs", nargs="+", type=Path, metavar="CONFIG",
                     help="the standby's TOML of each pair")
    run.add_argument("--socket", type=Path, metavar="PATH",
                     help="the host's control socket (status, memory)")
    run.add_argument("--start-timeout", type=bounded(float, 1, 3600, "--start-timeout"),
                     metavar="SECONDS", help="how long the sessions may take to start "
                     "(default: the longest [timeouts] connect + 10 s)")
    st = sub.add_parser("status", epilog=EXIT_CODES_HELP,
                        help="every session of a running host")
    st.add_argument("--socket", type=Path, metavar="PATH", required=True,
                    help="the host's control socket (hsp-nplus1 run --socket)")
    st.add_argument("--timeout", type=bounded(float, 0.1, 3600, "--timeout"), default=5.0,
                    metavar="SECONDS", help="how long to wait for the host's answer")
    st.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def _mib(n: Any) -> str:
    return f"{n / (1 << 20):.2f}" if isinstance(n, int) else "-"


def memory_table(mem: dict) -> None:
    gso = any(m.get("gso") for m in mem["sessions"].values())
    t = table("memory per protected active (MiB)", "session", "fabrics", "P.mem",
              "channel buffers / fabric", *(("GSO engine / fabric",) if gso else ()),
              "pinned (RLIMIT_MEMLOCK)", "resident", "disks (not pinned)")
    for peer, m in mem["sessions"].items():
        t.add_row(Text(peer), str(m["fabrics"]), _mib(m["pmem_size"]),
                  _mib(m["per_fabric"]["channel_buffers"]),
                  *((_mib(m["per_fabric"].get("gso")),) if gso else ()),
                  _mib(m["pinned"]["total"]), _mib(m["resident"]),
                  _mib(m["not_pinned"]["disks"]))
    tot = mem["total"]
    t.add_row(Text("total", style="bold"), "", _mib(tot["pmem"]), "", *(("",) if gso else ()),
              _mib(tot["pinned"]), _mib(tot["resident"]), "")
    t.columns[0].justify = "left"
    console.print(t)
    limit = mem["memlock_limit"]
    console.print(Text(f"limit: {mem['limit_source']}" + (
        "" if limit is None else f" {limit} bytes; pinned already {mem['pinned_before']} "
                                 f"bytes, headroom {mem['headroom']} bytes")))


def cmd_memory(args: argparse.Namespace) -> int:
    cfgs = [load_node_config(p) for p in args.configs]
    check_sessions(cfgs)
    costs = {c.peer: session_memory(c, args.gso) for c in cfgs}
    limit, source = memlock_limit(f.rdma_device for c in cfgs for f in c.fabrics)
    before = pinned_now()
    total = sum(c["pinned"]["total"] for c in costs.values())
    mem = {"sessions": costs,
           "total": {"pinned": total, "resident": sum(c["resident"] for c in costs.values()),
                     "pmem": sum(c["pmem_size"] for c in costs.values())},
           "memlock_limit": limit, "limit_source": source, "pinned_before": before,
           "headroom": None if limit is None else limit - before - total}
    if args.json:
        print(json.dumps(mem, indent=1))
    else:
        memory_table(mem)
    check_memory(costs, limit, source, before)  # over the limit: the refusal, exit 1
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    host = StandbyHost(args.configs, control_socket=args.socket)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        host.start(args.start_timeout)
        for peer in host.configs:
            if peer in host.failed:
                console.print(Text(f"session {peer}: not started: {host.failed[peer]}",
                                   style="red"))
            else:
                console.print(Text(f"session {peer}: standby of {peer}, control socket "
                                   f"{host.configs[peer].socket_path}", style="green"))
        if args.socket:
            console.print(f"host: hsp-nplus1 status --socket {args.socket}")
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        host.close()
    return EXIT_OK


def show_status(st: dict) -> None:
    h = st["host"]
    t = table("sessions of the n+1 standby host", "session (active)", "node", "role",
              "failover state", "epoch", "carrier", "P.mem last applied", "heart beats in",
              "last alarm", justify="left")
    for peer, s in st["sessions"].items():
        if s.get("state") == "failed":
            t.add_row(Text(peer), str(s.get("node")), Text("failed", style="red"), "-", "-",
                      "-", "-", "-", Text(str(s.get("error")), style="red"))
            continue
        fo = s.get("failover") or {}
        carrier = next((f["name"] for f in s.get("fabrics", []) if f.get("carrier")), "-")
        alarms = s.get("alarms") or []
        role = str(s.get("role"))
        t.add_row(Text(peer), str(s.get("node")),
                  Text(role, style="bold green" if role == "active" else ""),
                  str(fo.get("state", "-")), str(s.get("epoch")), carrier,
                  str((s.get("pmem") or {}).get("last_applied")),
                  str((s.get("heartbeats") or {}).get("received")),
                  Text(alarms[-1] if alarms else "-", style="red" if alarms else ""))
    console.print(t)
    active = h.get("active_session")
    console.print(Text(f"active for: {active}" if active else "active for: none (standby for "
                       "every session)", style="bold"))
    if h.get("taking_over"):
        console.print(Text(f"taking over for: {h['taking_over']}", style="yellow"))
    for r in h.get("refused_takeovers", []):
        console.print(Text.assemble(("REFUSED ", "bold red"), (str(r.get("why")), "red")))
    mem = h.get("memory") or {}
    tot = mem.get("total") or {}
    console.print(f"memory: pinned {tot.get('pinned')} bytes, resident {tot.get('resident')} "
                  f"bytes; limit: {mem.get('limit_source')}")


def cmd_status(args: argparse.Namespace) -> int:
    answer = control_request(args.socket, "status", timeout_s=args.timeout)
    if answer.get("ok") is not True:
        raise ControlError(f"the host on {args.socket} refused 'status': "
                           f"{answer.get('error') or 'no reason given'}")
    st = {k: v for k, v in answer.items() if k != "ok"}
    if "host" not in st or "sessions" not in st:
        raise ControlError(f"{args.socket} is not an n+1 standby host's socket (no sessions "
                           "in its status): for one node, use hsp status --socket")
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        show_status(st)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    body = {"memory": cmd_memory, "run": cmd_run, "status": cmd_status}[args.cmd]
    return run_cli("hsp-nplus1", lambda: body(args))


if __name__ == "__main__":
    sys.exit(main())
