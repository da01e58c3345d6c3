"""hsp: ask a running node through its control socket. `hsp status` shows role, epoch, peer,
fabrics, channel counters, P.mem, disks and alarms (rich tables or --json, --watch to
follow); `hsp audit --now` asks for an audit."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hsp_rdma.cli.common import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_OK,
    Parser,
    bounded,
    make_console,
    run_cli,
    table,
)
from hsp_rdma.errors import ConfigError, ControlError, HspError
from hsp_rdma.ha.config import load_node_config
from hsp_rdma.ha.control import control_request

CONFIG_ENV = "HSP_CONFIG"
DEFAULT_CONFIG = Path("/etc/hsp/node.toml")
CHANNELS = ("health", "oam", "pmem", "disk", "config")  # shown first, in this order
CHANNEL_COUNTERS = {"sent_msgs": "sent [msgs]", "sent_bytes": "sent [bytes]",
                    "recv_msgs": "recv [msgs]", "recv_bytes": "recv [bytes]",
                    "credits": "credits"}
# In --json only: one more column folds the table's headers at 120 columns (the width
# off a terminal).
CHANNEL_JSON_ONLY = ("receives_posted",)
PMEM_FIELDS = {"size": "size [bytes]", "in_flight": "in flight [tx]",
               "last_committed": "last committed", "last_applied": "last applied"}
DISK_FIELDS = {"path": "path", "size": "size [bytes]", "writes": "writes",
               "bytes": "written [bytes]", "in_flight": "in flight",
               "last_applied": "last applied"}
HEADER_KEYS = ("node", "peer", "role", "epoch", "uptime_s", "config", "config_file")
SECTIONS = ("fabrics", "channels", "pmem", "disks", "config", "alarms")
GOOD = {"up", "connected", "active", "ok"}
BAD = {"down", "error", "failed", "inconsistent", "broken"}

console = make_console()


def default_config() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def build_parser() -> Parser:
    p = Parser(prog="hsp", description="Ask a running hsp_rdma node through its control "
               "socket (the node's [node].control_socket, found in its configuration).",
               epilog=EXIT_CODES_HELP)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    def subcommand(name: str, timeout: float, **kw) -> Parser:
        sp = sub.add_parser(name, epilog=EXIT_CODES_HELP, **kw)
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--config", metavar="FILE", type=Path,
                           help=f"the node's TOML configuration (default: ${CONFIG_ENV}, "
                                f"else {DEFAULT_CONFIG})")
        where.add_argument("--socket", metavar="PATH", type=Path,
                           help="the node's control socket, instead of reading its "
                                "configuration")
        sp.add_argument("--timeout", metavar="SECONDS", default=timeout,
                        type=bounded(float, 0.1, 3600, "--timeout"),
                        help="how long to wait for the node's answer")
        sp.add_argument("--json", action="store_true",
                        help="print the node's answer as JSON instead of tables")
        return sp

    st = subcommand("status", 5.0, help="role, epoch, peer, fabrics, channels and counters "
                    "of a running node")
    st.add_argument("--watch", metavar="SECONDS", type=bounded(float, 0.1, 3600, "--watch"),
                    help="ask again every SECONDS until Ctrl-C (--json: one line per answer)")
    st.add_argument("--count", metavar="N", type=bounded(int, 1, 1_000_000, "--count"),
                    help="with --watch: stop after N answers")
    st.checks.append(lambda a: "--count needs --watch" if a.count and not a.watch else None)

    au = subcommand("audit", 60.0, help="ask the node to compare its P.mem, disks and "
                    "configuration with the peer's")
    au.add_argument("--now", action="store_true", required=True,
                    help="audit now (the only kind there is)")
    return p


# ---- rendering ------------------------------------------------------------------------------
def cell(value: Any) -> Text:
    """Any value the node sent, as one literal cell; states coloured by their word."""
    if value is None:
        return Text("-")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, float):
        return Text(f"{value:.1f}")
    if isinstance(value, dict):
        return Text(" ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "-")
    if isinstance(value, list):
        return Text(", ".join(_plain(v) for v in value) or "-")
    text = str(value)
    style = "green" if text in GOOD else "red" if text in BAD else ""
    return Text(text, style=style)


def _plain(value: Any) -> str:
    return cell(value).plain


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _extra_keys(rows: Iterable[dict], known: Iterable[str]) -> list[str]:
    """Keys some row has beyond KNOWN, in first-seen order: shown as columns of their own."""
    known = set(known)
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in known:
                seen.setdefault(key)
    return list(seen)


def header_table(st: dict, socket: Path | None) -> Table:
    role = st.get("role", "?")
    t = table("", "", "", justify="left")
    t.title = None
    t.show_header = False
    rows = [("node", st.get("node")), ("peer", st.get("peer")), ("role", role),
            ("epoch", st.get("epoch")),
            ("uptime [s]", st.get("uptime_s")), ("config file", config_file(st))]
    if socket is not None:
        rows.append(("control socket", str(socket)))
    known = set(HEADER_KEYS) | set(SECTIONS) | {"ok"}
    rows += [(k, v) for k, v in st.items()
             if k not in known and not isinstance(v, (dict, list))]
    for key, value in rows:
        t.add_row(Text(key), cell(value))
    return t


def config_file(st: dict) -> Any:
    """The node's configuration file: "config_file", or "config" when that is a path (the
    contract names both the file and the replicated configuration's state "config")."""
    if "config_file" in st:
        return st["config_file"]
    return st["config"] if isinstance(st.get("config"), str) else None


def fabrics_table(fabrics: Any) -> Table:
    """One row per fabric: whether it carries the traffic (``carrier``; an older node says
    ``active``) and when the peer's last heart beat came on it."""
    rows = [f for f in fabrics if isinstance(f, dict)] if isinstance(fabrics, list) else []
    known = ("name", "rdma_device", "state", "carrier", "heard_ms_ago")
    extra = _extra_keys(rows, (*known, "active", "reconnect"))
    t = table("fabrics", "fabric", "rdma device", "state", "carries traffic",
              "heard [ms ago]", "reconnect thread", *extra, justify="left")
    for f in rows:
        f = {**f, "carrier": f.get("carrier", f.get("active"))}
        t.add_row(*(cell(f.get(k)) for k in known), _reconnect_cell(f.get("reconnect")),
                  *(cell(f.get(k)) for k in extra))
    return t


def _reconnect_cell(r: Any) -> str:
    """What a fabric's reconnect thread does, for how long, and what it has to connect."""
    if not isinstance(r, dict):
        return cell(r)
    text = f"{r.get('doing', '?')} ({cell(r.get('for_ms'))} ms)"
    pending = r.get("pending")
    return text + (f"; to connect: {', '.join(map(str, pending))}" if pending else "")


def channels_table(channels: Any) -> tuple[Table, Table | None]:
    """The channels' counters, and the refused frames by cause (None when nothing was
    refused): the causes are the node's words, as many as it has."""
    channels = _dict(channels)
    names = [c for c in CHANNELS if c in channels] + [c for c in channels if c not in CHANNELS]
    rows = [_dict(channels[n]) for n in names]
    extra = _extra_keys(rows, ("state", "refused", *CHANNEL_COUNTERS, *CHANNEL_JSON_ONLY))
    t = table("channels", "channel", "state", *CHANNEL_COUNTERS.values(), "refused [frames]",
              *extra)
    causes = table("refused frames by cause", "channel", "cause", "frames", justify="left")
    for name, ch in zip(names, rows, strict=True):
        refused = ch.get("refused")
        total: Any = None
        if isinstance(refused, dict):
            counts = {k: v for k, v in refused.items() if v}
            numbers = [v for v in counts.values() if isinstance(v, int)]
            total = sum(numbers) if len(numbers) == len(counts) else "?"
            for cause, count in counts.items():
                causes.add_row(Text(name), Text(str(cause), style="red"), cell(count))
        elif refused is not None:
            total = refused
        refused_cell = cell(total)
        if total:
            refused_cell.stylize("red")
        t.add_row(Text(name), cell(ch.get("state")),
                  *(cell(ch.get(k)) for k in CHANNEL_COUNTERS), refused_cell,
                  *(cell(ch.get(k)) for k in extra))
    for column in t.columns:
        column.overflow = "fold"  # squeezed by unknown counters: fold, never cut a word
    for i in (0, 1):
        t.columns[i].justify = "left"
    return t, (causes if causes.row_count else None)


def pmem_table(pmem: Any) -> Table:
    pmem = _dict(pmem)
    extra = _extra_keys([pmem], PMEM_FIELDS)
    t = table("P.mem", *PMEM_FIELDS.values(), *extra)
    t.add_row(*(cell(pmem.get(k)) for k in (*PMEM_FIELDS, *extra)))
    return t


def disks_table(disks: Any) -> Table:
    disks = _dict(disks)
    rows = [_dict(d) for d in disks.values()]
    extra = _extra_keys(rows, DISK_FIELDS)
    t = table("disks", "disk", *DISK_FIELDS.values(), *extra)
    for name, d in zip(disks, rows, strict=True):
        t.add_row(Text(str(name)), *(cell(d.get(k)) for k in (*DISK_FIELDS, *extra)))
    for i in (0, 1):
        t.columns[i].justify = "left"
    return t


def config_line(config: Any) -> Text:
    config = _dict(config)
    inconsistent = config.get("inconsistent")
    out = Text.assemble("configuration: applied ", _plain(config.get("applied")), ", ")
    out.append("INCONSISTENT with the peer" if inconsistent else "consistent",
               style="bold red" if inconsistent else "green")
    for key, value in config.items():
        if key not in ("applied", "inconsistent"):
            out.append(f", {key} {_plain(value)}")
    return out


def show(st: dict, out: Console, socket: Path | None = None) -> None:
    """The status dict of status_contract.md as tables; keys this version does not know are
    shown generically (extra columns, extra header rows, a table per extra section)."""
    out.print(Text(f"hsp status: node {_plain(st.get('node', '?'))} "
                   f"({_plain(st.get('role', '?'))}), epoch {_plain(st.get('epoch', '?'))}",
                   style="bold"))
    out.print(header_table(st, socket))
    out.print(fabrics_table(st.get("fabrics")))
    counters, causes = channels_table(st.get("channels"))
    out.print(counters)
    if causes is not None:
        out.print(causes)
    if "pmem" in st:
        out.print(pmem_table(st["pmem"]))
    if _dict(st.get("disks")):
        out.print(disks_table(st["disks"]))
    if "config" in st and isinstance(st["config"], dict):
        out.print(config_line(st["config"]))
    for key, value in st.items():
        if key not in SECTIONS and key not in HEADER_KEYS and isinstance(value, (dict, list)):
            out.print(generic_table(key, value))
    alarms = st.get("alarms")
    alarms = alarms if isinstance(alarms, list) else [alarms] if alarms else []
    if alarms:
        for alarm in alarms:
            out.print(Text.assemble(("ALARM ", "bold red"), (_plain(alarm), "red")))
    else:
        out.print(Text("alarms: none", style="green"))


def generic_table(title: str, value: Any) -> Table:
    t = table(str(title), "", "", justify="left")
    t.show_header = False
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, v in items:
        t.add_row(Text(str(key)), cell(v))
    return t


# ---- commands -----------------------------------------------------------------------------
def socket_of(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return args.socket
    path = args.config or default_config()
    if args.config is None and not path.exists():
        raise ConfigError(f"no node configuration here: give the node's with --config FILE "
                          f"(or set ${CONFIG_ENV}), or its control socket with --socket PATH",
                          str(path))
    return load_node_config(path).socket_path


def ask(sock: Path, cmd: str, timeout: float, **args: Any) -> dict:
    """The node's answer to CMD (with ARGS), ``ok`` removed; its refusal as a ControlError."""
    answer = control_request(sock, cmd, timeout_s=timeout, **args)
    if answer.get("ok") is not True:
        raise ControlError(f"the node on {sock} refused {cmd!r}: "
                           f"{answer.get('error') or 'no reason given'}")
    return {k: v for k, v in answer.items() if k != "ok"}


def cmd_status(args: argparse.Namespace) -> int:
    sock = socket_of(args)
    if not args.watch:
        st = ask(sock, "status", args.timeout)
        if args.json:
            print(json.dumps(st, indent=1))
        else:
            show(st, console, sock)
        return EXIT_OK
    rc, shown = EXIT_OK, 0
    try:
        while True:
            started = time.monotonic()
            try:
                st, problem = ask(sock, "status", args.timeout), None
            except HspError as exc:  # a restarting node: say so and keep watching
                st, problem = None, str(exc)
            rc = EXIT_OK if problem is None else EXIT_FAILED
            if args.json:
                print(json.dumps(st if problem is None else {"error": problem}), flush=True)
            else:
                if console.is_terminal:
                    console.clear()
                console.print(Text(f"every {args.watch:g} s, {time.strftime('%H:%M:%S')} "
                                   "(Ctrl-C ends)", style="dim"))
                if problem is None:
                    show(st, console, sock)
                else:
                    console.print(Text(f"hsp: {problem}", style="bold red"))
            shown += 1
            if args.count and shown >= args.count:
                return rc
            time.sleep(max(0.0, args.watch - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return rc


AUDIT_FIELDS = {"chunks": "chunks compared", "repairs": "repairs", "repaired": "repaired chunks",
                "verified": "chunks verified again", "bytes": "bytes sent", "took_ms": "took [ms]"}


def cmd_audit(args: argparse.Namespace) -> int:
    """Start an audit on the node (its active) and wait for its end, up to --timeout."""
    sock = socket_of(args)
    # the node answers when the audit ended, or (still running) a second before we give up
    answer = ask(sock, "audit", args.timeout, wait_s=max(0.0, args.timeout - 1.0))
    if args.json:
        print(json.dumps(answer, indent=1))
        return EXIT_OK
    if answer.get("done") is False:
        console.print(Text(f"hsp audit: {_plain(answer.get('detail') or 'the audit runs')}",
                           style="yellow"))
        return EXIT_OK
    if "id" in answer:
        repairs = answer.get("repairs")
        t = table(f"audit {_plain(answer['id'])} of the node on {sock}", "", "",
                  justify="left")
        t.show_header = False
        for key, label in AUDIT_FIELDS.items():
            if key in answer:
                t.add_row(Text(label), cell(answer[key]))
        for key, value in answer.items():
            if key not in AUDIT_FIELDS and key not in ("id", "done", "error"):
                t.add_row(Text(str(key)), cell(value))
        console.print(t)
        console.print(Text(f"{_plain(repairs)} chunk(s) repaired from the active",
                           style="yellow" if repairs else "green"))
        return EXIT_OK
    console.print(generic_table(f"audit of the node on {sock}", answer))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    body = {"status": cmd_status, "audit": cmd_audit}[args.cmd]
    return run_cli("hsp", lambda: body(args))


if __name__ == "__main__":
    sys.exit(main())
