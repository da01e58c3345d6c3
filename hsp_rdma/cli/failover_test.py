"""hsp-failover-test: scripted failover drills from scenario files, with a ledger workload whose
every acknowledged transfer must be on the survivor.

`hsp-failover-test` runs every shipped drill; name scenario files (or shipped drills) to run
those. `--lab rxe|siw` runs them in the built-in two-node lab, `--config A.toml B.toml` on two
real hosts named by their node configurations (A's node the active, B's the standby, no node
service running: the drill runs the nodes itself), reached as `--drill-hosts HOSTS.toml` says
(per node: `[node.NAME]` exec = ["ssh", "root@hostA"], python, workdir, netdev or pull/plug
commands; top-level ack_addr or `--ack-addr`: this driver as the nodes reach it; see
hsp_rdma/tools/drills/hosts_runner.py). `--list` shows the shipped drills. Every
scenario is parsed and checked before anything runs; a mistake names its file and line.
Each drill passes only with 0 lost transfers and never two actives, and the checks its file
adds. The n+1 drill (`nplus1`: 3 actives and one standby host) runs 4 node processes over
soft, and in the lab a lab of 4 nodes: booted for it and taken down after it, or the one
`--lab-id` names when it is up with 4 nodes or more (`hsp-lab --lab-id ID up --nodes 4`).
The work is in hsp_rdma.tools.drills.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

from hsp_rdma.cli.common import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    RawDescriptionHelpFormatter,
    add_lab_id,
    err_console,
    goal_cell,
    make_console,
    run_cli,
    table,
)
from hsp_rdma.errors import ConfigError
from hsp_rdma.lab import RDMA_KINDS
from hsp_rdma.tools.drills.nplus1 import describe as describe_nplus1
from hsp_rdma.tools.drills.runner import (
    DrillRunner,
    DrillsUnavailable,
    HostsTarget,
    LabTarget,
    SoftTarget,
    Target,
    describe_stops,
    judge,
    make_runner,
    report,
    why_unavailable,
)
from hsp_rdma.tools.drills.scenario import Scenario, find_scenario, load_scenario, shipped

PROG = "hsp-failover-test"
DEFAULT_LAB_ID = "drills"
console = make_console()


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"'{text}' is not an existing file: name each node's "
                                         "TOML configuration")
    return path


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__, epilog=EXIT_CODES_HELP,
               formatter_class=RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help="scenario files or shipped drill names (default: every shipped drill)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--lab", choices=RDMA_KINDS, default="rxe",
                       help="soft device of the built-in lab")
    where.add_argument("--config", nargs=2, type=existing_file, metavar=("A.toml", "B.toml"),
                       help="two real hosts: the node configuration of each, the active's "
                       "first, the standby's second (instead of --lab); with --drill-hosts, "
                       "unless both nodes run on this host")
    p.add_argument("--drill-hosts", type=existing_file, metavar="HOSTS.toml",
                   help="with --config: how the driver reaches each node's host, one "
                   "[node.NAME] table each: exec (command prefix, e.g. [\"ssh\", "
                   "\"root@hostA\"]; []: this host), python, workdir, netdev = { x = "
                   "\"eth1\" } or pull/plug commands; ack_addr")
    p.add_argument("--ack-addr", metavar="HOST:PORT",
                   help="with --config: this driver's address as the nodes reach it; it "
                   "listens there for their acknowledgements (default: the drill-hosts "
                   "file's ack_addr; 127.0.0.1 when both nodes are local)")
    p.add_argument("--provider", choices=("verbs", "soft"), default="verbs",
                   help="soft: run the drills on this host, two node processes over the "
                   "software VIA provider (no lab, no RDMA); verbs: the lab or --config hosts")
    add_lab_id(p, None, "the lab the drills use, booted when it is down (default: "
               f"{DEFAULT_LAB_ID})")
    p.add_argument("--json", action="store_true",
                   help="one JSON object on stdout: {\"scenarios\": [one object per drill]}")
    p.add_argument("--list", action="store_true",
                   help="list the drills (shipped, or those named) with their descriptions "
                   "and run nothing")
    p.checks.append(lambda ns: "--lab-id is for --lab, not --config"
                    if ns.config and "lab_id" in ns else None)
    p.checks.append(lambda ns: "--drill-hosts and --ack-addr go with --config"
                    if not ns.config and (ns.drill_hosts or ns.ack_addr) else None)
    return p


def load_all(args: list[str]) -> tuple[list[Scenario], list[str]]:
    """Every scenario named (all shipped when none is), and every problem found in them."""
    paths: list[Path] = []
    problems: list[str] = []
    for arg in args:
        try:
            paths.append(find_scenario(arg))
        except ConfigError as exc:
            problems.append(str(exc))
    if not args:
        paths = shipped()
        if not paths:
            problems.append("no shipped drills found: reinstall hsp_rdma (its scenarios/ "
                            "folder is missing)")
    scenarios = []
    for path in paths:
        try:
            scenarios.append(load_scenario(path))
        except ConfigError as exc:
            problems.append(str(exc))
    return scenarios, problems


def show_list(scenarios: list[Scenario], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"drills": [
            {"name": s.name, "description": s.description, "path": s.path,
             "steps": [step.describe() for step in s.steps]} for s in scenarios]}, indent=1))
        return
    t = table("failover drills", "drill", "steps", "description", justify="left")
    for s in scenarios:
        t.add_row(Text(s.name), Text(str(len(s.steps))), Text(s.description))
    console.print(t)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def show_drills(rows: list[dict], out: Console | None = None,
                title: str = "failover drills") -> None:
    """Drill reports (``runner.report``) as a table, then why each failed one failed."""
    out = console if out is None else out
    t = table(title, "drill", "passed", "acknowledged", "lost", "two actives",
              "blackout [msec]", "detect [msec]", "resync [bytes]", "audit repairs",
              "fabric switches", "traffic stop [msec]")
    for r in rows:
        t.add_row(Text(r["name"]), goal_cell("yes" if r["passed"] else "NO", r["passed"]),
                  str(r["acknowledged"]), goal_cell(str(r["lost"]), r["lost"] == 0),
                  goal_cell("yes" if r["two_actives"] else "no", not r["two_actives"]),
                  _ms(r["blackout_ms"]), _ms(r["detect_ms"]), str(r["resync_bytes"]),
                  str(r["audit_repairs"]), str(r.get("fabric_switches", 0)),
                  _ms(r.get("traffic_stop_ms")))
    out.print(t)
    for r in rows:  # the traffic stop around each pull, to quote
        for line in describe_stops(r):
            out.print(Text(line))
    for r in rows:  # an n+1 drill: each pair, who serves it, the standby host's refusals
        for line in describe_nplus1(r):
            out.print(Text(line))
    for r in rows:
        for why in r["failures"]:
            out.print(Text.assemble((f"{r['name']}: ", "bold red"), why))


def run_drills(scenarios: list[Scenario], runner: DrillRunner, as_json: bool,
               target: Target | SoftTarget | None = None) -> int:
    """Run each drill, report them all; EXIT_OK only when every one passed, 69 when none
    failed but some could not run (each named with what it lacks)."""
    rows = []
    skipped = [(s.name, why) for s in scenarios
               if target is not None and (why := why_unavailable(target, s))]
    names = {n for n, _ in skipped}
    for s in scenarios:
        if s.name in names:
            continue
        if as_json:
            result = runner.run(s)
        else:
            with console.status(Text(f"{s.name}: running {len(s.steps)} steps")):
                result = runner.run(s)
        rows.append(report(result, judge(s, result)))
    if as_json:
        print(json.dumps({"scenarios": rows,
                          "unavailable": [{"name": n, "why": w} for n, w in skipped]},
                         indent=1))
    else:
        show_drills(rows)
    for name, why in skipped:
        err_console.print(Text.assemble((f"{PROG}: {name} not run: ", "bold yellow"), why))
    if not all(r["passed"] for r in rows):
        return EXIT_FAILED
    return DrillsUnavailable.exit_code if skipped else EXIT_OK


def target_of(args: argparse.Namespace) -> Target | SoftTarget:
    if args.provider == "soft":
        return SoftTarget()
    if args.config:
        return HostsTarget(tuple(args.config), args.drill_hosts, args.ack_addr)
    return LabTarget(args.lab, getattr(args, "lab_id", DEFAULT_LAB_ID))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        scenarios, problems = load_all(args.scenarios)
        if problems:
            for problem in problems:
                err_console.print(Text.assemble((f"{PROG}:", "bold red"), f" {problem}"))
            return EXIT_USAGE
        if args.list:
            show_list(scenarios, args.json)
            return EXIT_OK
        target = target_of(args)
        try:
            runner = make_runner(target)
        except ConfigError as exc:  # a --config or --drill-hosts file's mistake, or a pair
            # in the wrong roles: refused before anything runs
            err_console.print(Text.assemble((f"{PROG}:", "bold red"), f" {exc}"))
            return EXIT_USAGE
        try:
            return run_drills(scenarios, runner, args.json, target)
        finally:
            close = getattr(runner, "close", None)
            if close is not None:
                close()  # a lab the runner booted goes down

    return run_cli(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
