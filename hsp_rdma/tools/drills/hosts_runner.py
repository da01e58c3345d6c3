"""Drills on two real hosts: ``hsp-failover-test --config A.toml B.toml --drill-hosts H.toml``.
A.toml and B.toml are the two nodes' own configurations (hsp_rdma.ha.config): A's node must
be the active (``[node] role = "active"``), B's the standby, each naming the other as peer.

How the driver reaches a host, per node, in the drill-hosts file H.toml (the node loader
refuses tables it does not know, so these settings are not in the node's own TOML; once it
takes a ``[drill]`` table, the same fields there are read too, and a ``[drill]`` it refuses is
said so, pointing here)::

    ack_addr = "192.0.2.9:7600"    # this driver as the nodes reach it (or --ack-addr)

    [node.alpha]                   # the node named "alpha" in its [node] name
    exec = ["ssh", "-o", "BatchMode=yes", "root@hostA"]   # [] (default): this host
    python = "/opt/hsp/venv/bin/python"                    # default: python3
    workdir = "/var/tmp/hsp-drill"                         # the default
    netdev = { x = "eth1" }        # fabric -> interface (default: the RDMA device's own)
    pull = ["ip", "link", "set", "dev", "{netdev}", "down"]  # the defaults
    plug = ["ip", "link", "set", "dev", "{netdev}", "up"]
    env = { }                      # environment of the drill node

Every command on a host is one POSIX shell command line given as the last argument of
``exec`` (``ssh HOST CMD`` runs it in the remote shell; an empty ``exec`` runs ``sh -c CMD``
here; another wrapper must take a command line the same way, e.g. ``["sudo", "sh", "-c"]``).
A ``pull``/``plug`` argv template may use ``{netdev}``, ``{fabric}``, ``{node}`` and
``{workdir}``. Each node's drill directory is WORKDIR/NAME (made anew for each drill); the
drill node's pid is in WORKDIR/NAME.pid while it runs (a site's fence agent for drills, like
``tools/drills/host_fence.py``, may read it there).

A drill: both hosts are reached (python and hsp_rdma there) and asked whether a node already
runs (``hsp status`` on its control socket: a running node is refused, naming its role: stop
the node service first; the drill runs the node itself); each node's configuration and the
scenario go to its drill directory (on stdin); ``python -m hsp_rdma.tools.drills.drill_node``
starts on each host through ``exec``; its JSON events come on that command's stdout and are
stamped with this driver's monotonic clock as they arrive (the hosts' clocks are not
compared); a pair whose drill nodes start in other roles than A active, B standby is stopped
before any step. Then ``soft_runner.GsoStepDriver`` (``runner.StepDriver`` with gso) runs
the steps: kill = ``kill -9`` of the drill
node's pid on its host, pause/resume = SIGSTOP/SIGCONT, pull/plug = the ``pull``/``plug``
command on that node's host, heal = every pulled fabric plugged, corrupt/audit = drill
command files written into the node's drill directory, restart = the drill node started again
in the same directory. The workload's acks come to the driver over TCP (``ack_addr``) and go
to the ack log (``acklog``); at the end the survivor's P.mem and journal are read back
(``cat`` through ``exec``) and checked (``soft_runner.judge_drill``).

A drill of fewer fabrics than the nodes have (``fabrics = ["x"]``) runs on those alone: the
others' [fabric.NAME] tables are cut out of the drill's copy of each node's TOML
(``fabrics_text``).

Refused before anything runs (``unsupported``): netem steps, the restart of the
active when its node does not persist P.mem (``[pmem] persist``), a fabric the pair does not
have, a disk workload without a disk named ``journal`` in both nodes, a failover drill whose
standby has no ``[fence]`` action. The nodes' own fence actions are used as configured: on
real hosts a failover drill fences for real (fence_ipmilan powers the old active's host off),
and nothing powers it on again.

Measured on this host (two soft nodes on 127.0.0.1, the tests' setup with P.mem persisted;
one run of every shipped drill, 100 s): all 7 pass with 0 lost, never two actives
(kill-standby-during-gso in a run of its own, with gso support).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hsp_rdma.core.profiles import load_toml
from hsp_rdma.errors import ConfigError, HspError
from hsp_rdma.ha.config import (
    _NAME,
    SUN_PATH_MAX,
    NodeConfig,
    _line_map,
    _Reader,
    load_node_config,
    parse_node_config,
)
from hsp_rdma.ha.config import KEYS as NODE_KEYS
from hsp_rdma.tools.drills.acklog import AckServer, AckWriter, read_acklog
from hsp_rdma.tools.drills.runner import (
    UNTIL_EVENT,
    UNTIL_OWN,
    DrillResult,
    find_event,
    judge,
    pair_ready,
    wait_for,
)
from hsp_rdma.tools.drills.scenario import Scenario
from hsp_rdma.tools.drills.soft_runner import GSO_UNTIL, GsoStepDriver, judge_drill
from hsp_rdma.tools.drills.soft_runner import unsupported as _unsupported

DEFAULT_PYTHON = "python3"
DEFAULT_WORKDIR = "/var/tmp/hsp-drill"
DEFAULT_PULL = ("ip", "link", "set", "dev", "{netdev}", "down")
DEFAULT_PLUG = ("ip", "link", "set", "dev", "{netdev}", "up")
PLACEHOLDERS = ("netdev", "fabric", "node", "workdir")
HOST_KEYS = ("exec", "python", "workdir", "netdev", "pull", "plug", "env")
FILE_KEYS = ("ack_addr", "node")
REMOTE_TIMEOUT_S = 30.0  # one command on a host (reach it, write a file, send a signal)
START_TIMEOUT_S = 90.0  # both drill nodes started and the active serving
FINAL_TIMEOUT_S = 60.0  # a stopped drill node's final state
# the steps soft_runner.GsoStepDriver (runner.StepDriver and gso) runs
HOSTS_SUPPORTED = {"wait", "kill", "pause", "resume", "pull", "plug", "heal", "corrupt",
                   "audit", "restart", "gso"}
JOURNAL_ZEROED = 1 << 20  # the start of each node's journal disk, zeroed before a drill
# the drill directory made anew, the node's configuration and the scenario written into it,
# the start of the journal disks zeroed (a JSON object on stdin: "files" name -> text, "zero"
# paths): no file content goes through a shell's quoting; it also proves hsp_rdma is there
_PREPARE = """import json, os, shutil, sys
d = sys.argv[1]
f = json.load(sys.stdin)
shutil.rmtree(d, ignore_errors=True)
os.makedirs(d)
for n, t in f["files"].items():
    with open(os.path.join(d, n), "w") as out:
        out.write(t)
for p in f.get("zero", ()):
    if os.path.exists(p):
        fd = os.open(p, os.O_WRONLY)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            os.pwrite(fd, bytes(min(size, ZEROED)), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
import hsp_rdma.tools.drills.drill_node
""".replace("ZEROED", str(JOURNAL_ZEROED))


class HostsError(HspError):
    """A drill on two hosts cannot go on: a host out of reach, a pair in the wrong roles."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class HostDrill:
    """How the driver reaches one node's host (its table in the drill-hosts file)."""

    exec: tuple[str, ...] = ()
    python: str = DEFAULT_PYTHON
    workdir: str = DEFAULT_WORKDIR
    netdev: tuple[tuple[str, str], ...] = ()
    pull: tuple[str, ...] = DEFAULT_PULL
    plug: tuple[str, ...] = DEFAULT_PLUG
    env: tuple[tuple[str, str], ...] = ()

    def argv(self, script: str) -> list[str]:
        """The argv that runs shell command line SCRIPT on this host."""
        if not self.exec:
            return ["sh", "-c", script]
        return [*self.exec, shlex.join(["sh", "-c", script])]

    @property
    def local(self) -> bool:
        return not self.exec


@dataclass(frozen=True, slots=True)
class Pair:
    """The two nodes of a drill on hosts: a (A.toml, the active) and b (B.toml)."""

    configs: dict[str, NodeConfig]
    texts: dict[str, str]  # each node's TOML as written
    hosts: dict[str, HostDrill]
    ack_addr: str | None


def _argv_list(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(v, str) and v and "\0" not in v
                                       for v in value):
        return tuple(value)
    return None


def _nonempty_argv(value: Any) -> tuple[str, ...] | None:
    argv = _argv_list(value)
    return argv if argv else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() and "\0" not in value else None


def _str_table(value: Any) -> tuple[tuple[str, str], ...] | None:
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return tuple(value.items())
    return None


def _ack_addr(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return None
    return value


ACK_RULE = 'HOST:PORT, this driver\'s address as the nodes reach it, e.g. "192.0.2.9:7600"'


def parse_drill_hosts(text: str, source: str | Path | None = None) -> tuple[dict[str, HostDrill],
                                                                          str | None]:
    """The drill-hosts file in TEXT: node name -> HostDrill, and its ack_addr (or None). A
    mistake is a ConfigError naming the file, line and field."""
    src = str(source) if source is not None else None
    raw = load_toml(text, src)
    r = _Reader(text, src)
    r.known(raw, (), FILE_KEYS)
    ack = r.get(raw, (), "ack_addr", _ack_addr, ACK_RULE, None)
    nodes = r.get(raw, (), "node", lambda v: v if isinstance(v, dict) else None,
                  "tables [node.NAME], one per node", {})
    hosts: dict[str, HostDrill] = {}
    for name, table in nodes.items():
        at = ("node", name)
        if not _NAME.match(name):
            raise r.fail(at, f"table [node.{name}]: NAME is a node's [node] name")
        if not isinstance(table, dict):
            raise r.wrong(at, table, f"a table [node.{name}]")
        hosts[name] = _host_table(r, table, at)
    return hosts, ack


def parse_node_drill(text: str, source: str | Path | None = None) -> tuple[HostDrill | None,
                                                                         str | None]:
    """A node TOML's own ``[drill]`` table (the fields of a drill-hosts file's [node.NAME],
    and ack_addr), or (None, None) without one; ConfigError naming file, line and field."""
    src = str(source) if source is not None else None
    raw = load_toml(text, src)
    if "drill" not in raw:
        return None, None
    r = _Reader(text, src)
    table = raw["drill"]
    if not isinstance(table, dict):
        raise r.wrong(("drill",), table, "a table [drill]")
    ack = r.get(table, ("drill",), "ack_addr", _ack_addr, ACK_RULE, None)
    return _host_table(r, {k: v for k, v in table.items() if k != "ack_addr"},
                       ("drill",)), ack


def _node_loader_takes_drill(path: Path) -> None:
    """A [drill] table in a node's own TOML, while the node loader refuses tables it does not
    know (hsp_rdma.ha.config.KEYS): say where its settings go instead."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        raw = load_toml(text, str(path))
    except (OSError, UnicodeDecodeError, ConfigError):
        return  # the node loader says what is wrong with the file
    if "drill" in raw and "drill" not in NODE_KEYS[""]:
        raise ConfigError("table [drill]: this node's loader refuses tables it does not know, "
                          "so the node would not start with it; move its fields into a "
                          "--drill-hosts file as [node.NAME] (ack_addr at its top)", str(path),
                          _line_of(text, "[drill]"), field="drill")


def _host_table(r: _Reader, table: dict, at: tuple) -> HostDrill:
    """One host's settings (a [node.NAME] table of a drill-hosts file, or a node's [drill])."""
    label = r.label(at)
    r.known(table, at, HOST_KEYS)
    argv_rule = 'a list of strings, e.g. ["ssh", "-o", "BatchMode=yes", "root@hostA"]'
    tmpl_rule = ('a command as a list of strings, e.g. ["ip", "link", "set", "dev", '
                 '"{netdev}", "down"]')
    host = HostDrill(
        exec=r.get(table, at, "exec", _argv_list, argv_rule + " ([]: this host)", ()),
        python=r.get(table, at, "python", _text, "the python of the host's hsp_rdma, "
                     'e.g. "/opt/hsp/venv/bin/python"', DEFAULT_PYTHON),
        workdir=r.get(table, at, "workdir", lambda v: v if _text(v) and v.startswith("/")
                      else None, "an absolute path on the host", DEFAULT_WORKDIR),
        netdev=r.get(table, at, "netdev", _str_table,
                     'a table fabric -> interface, e.g. { x = "eth1" }', ()),
        pull=r.get(table, at, "pull", _nonempty_argv, tmpl_rule, DEFAULT_PULL),
        plug=r.get(table, at, "plug", _nonempty_argv, tmpl_rule, DEFAULT_PLUG),
        env=r.get(table, at, "env", _str_table, 'a table of strings, e.g. { K = "v" }', ()))
    for key in ("pull", "plug"):
        for word in getattr(host, key):
            try:
                word.format(**{p: "" for p in PLACEHOLDERS})
            except (KeyError, IndexError, ValueError) as exc:
                raise r.fail((*at, key), f"field {label}.{key}: {word!r} names "
                                         f"{exc}; the placeholders are "
                                         f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                             ) from None
    for key, _value in host.env:
        if not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise r.fail((*at, "env", key), f"field {label}.env.{key}: not an "
                                            "environment variable's name")
    return host


def load_pair(configs: tuple[Path, Path], drill_hosts: Path | None,
              ack_addr: str | None = None) -> Pair:
    """The pair of A and B (CONFIGS) with their hosts (DRILL_HOSTS; None: both on this host,
    default settings); ConfigError for a file's mistake or a pair in the wrong roles."""
    cfgs, texts, own = {}, {}, {}
    for n, path in zip(("a", "b"), configs, strict=True):
        _node_loader_takes_drill(path)
        cfgs[n] = load_node_config(path)
        texts[n] = Path(path).read_text(encoding="utf-8")
        _check_paths(texts[n], cfgs[n])
        own[n] = parse_node_drill(texts[n], path)
    a, b = cfgs["a"], cfgs["b"]
    for n, want in (("a", "active"), ("b", "standby")):
        c = cfgs[n]
        if c.role != want:
            first = "first" if n == "a" else "second"
            raise ConfigError(f"node {c.name} is configured {c.role} ([node] role), but the "
                              f"{first} --config file names the {want}: give the active's "
                              "configuration first, then the standby's; the drill was refused, "
                              "nothing was done", str(c.source), _line_of(texts[n], "role"),
                              field="node.role")
    if a.peer != b.name or b.peer != a.name:
        raise ConfigError(f"{a.source} (node {a.name}, peer {a.peer}) and {b.source} (node "
                          f"{b.name}, peer {b.peer}) are not one pair: each names the other "
                          "in [node] peer")
    hosts: dict[str, HostDrill] = {}
    file_ack = None
    if drill_hosts is not None:
        try:
            text = Path(drill_hosts).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the drill-hosts file: {exc}",
                              str(drill_hosts)) from None
        hosts, file_ack = parse_drill_hosts(text, drill_hosts)
        for name in hosts:
            if name not in (a.name, b.name):
                raise ConfigError(f"table [node.{name}]: no node of the pair is named {name} "
                                  f"(they are {a.name} and {b.name})", str(drill_hosts),
                                  _line_of(text, f"[node.{name}]"), field=f"node.{name}")
    for n, (host, _ack) in own.items():
        if host is not None and cfgs[n].name in hosts:
            raise ConfigError(f"node {cfgs[n].name}'s host is given twice, in the [drill] table "
                              f"of {cfgs[n].source} and in [node.{cfgs[n].name}] of "
                              f"{drill_hosts}: keep one", str(drill_hosts))
        if host is not None:
            hosts[cfgs[n].name] = host
    file_ack = file_ack or own["a"][1] or own["b"][1]
    by_node = {n: hosts.get(cfgs[n].name, HostDrill()) for n in ("a", "b")}
    for n, host in by_node.items():
        for fab, _dev in host.netdev:
            if fab not in {f.name for f in cfgs[n].fabrics}:
                raise ConfigError(f"field node.{cfgs[n].name}.netdev.{fab}: node "
                                  f"{cfgs[n].name} has no fabric {fab}", str(drill_hosts))
    for n, host in by_node.items():  # (the rewrite the drills will make, tried now)
        drill_config_text(texts[n], cfgs[n], f"{host.workdir.rstrip('/')}/{cfgs[n].name}")
    ack = ack_addr or file_ack
    if ack is None and all(h.local for h in by_node.values()):
        ack = "127.0.0.1:0"
    if ack is None:
        raise ConfigError("the nodes must reach this driver to stream their acknowledgements: "
                          f"give --ack-addr HOST:PORT or ack_addr in the drill-hosts file "
                          f"({ACK_RULE})")
    if _ack_addr(ack) is None:
        raise ConfigError(f"ack address {ack!r}: should be {ACK_RULE}")
    return Pair(cfgs, texts, by_node, ack)


def drill_config_text(text: str, config: NodeConfig, drill_dir: str) -> str:
    """The node's TOML TEXT with its state directory and control socket moved into the
    drill's directory DRILL_DIR: a drill's epochs and dirty bitmaps are its own (the node's
    real state is not touched, and every drill starts from the configured roles)."""
    lines = text.splitlines()
    where = _line_map(text)
    state = f"{drill_dir}/state"
    sock = f"{drill_dir}/control.sock"
    if len(sock.encode()) > SUN_PATH_MAX:
        sock = f"/tmp/hsp-drill-{zlib.crc32(drill_dir.encode()):08x}-{config.name}.sock"
    moved, why, out = None, "", text
    if ("node", "state_dir") in where:  # (not when written in an inline table)
        at = where[("node", "state_dir")] - 1
        lines[at] = f"state_dir = {json.dumps(state)}"
        if ("node", "control_socket") in where:
            lines[where[("node", "control_socket")] - 1] = (f"control_socket = "
                                                            f"{json.dumps(sock)}")
        else:
            lines.insert(at + 1, f"control_socket = {json.dumps(sock)}")
        out = "\n".join(lines) + "\n"
        try:
            moved = parse_node_config(out)
        except ConfigError as exc:
            why = str(exc)
    if moved is None or str(moved.state_dir) != state or str(moved.socket_path) != sock:
        raise ConfigError("the drill moves the node's state directory into its drill directory "
                          "by rewriting the state_dir line, and could not here"
                          f"{': ' + why if why else ''}: write [node] state_dir "
                          "(and control_socket) as keys on lines of their own",
                          str(config.source), where.get(("node", "state_dir")),
                          field="node.state_dir")
    return out


def fabrics_text(text: str, config: NodeConfig, fabrics: tuple[str, ...]) -> str:
    """The node's TOML TEXT with only FABRICS (a drill of ``fabrics = ["x"]`` on hosts with
    x and y: the [fabric.y] table cut out, so the pair runs on x alone, as over soft and in
    the lab); ConfigError when a fabric to leave out is not a [fabric.NAME] table of its own."""
    drop = [f.name for f in config.fabrics if f.name not in fabrics]
    if not drop:
        return text
    lines = text.splitlines()
    header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
    keep, cutting = [], False
    for line in lines:
        m = header.match(line)
        if m:
            cutting = m.group(1) in {f"fabric.{f}" for f in drop}
        if not cutting:
            keep.append(line)
    out = "\n".join(keep) + "\n"
    try:
        left = [f.name for f in parse_node_config(out).fabrics]
    except ConfigError as exc:
        left, why = None, f": {exc}"
    else:
        why = ""
    if left != [f for f in (x.name for x in config.fabrics) if f in fabrics]:
        raise ConfigError(f"the drill runs on fabric(s) {', '.join(fabrics)} alone and leaves "
                          f"out {', '.join(drop)} by cutting its [fabric.NAME] table, and could "
                          f"not here{why}: write each fabric as a [fabric.NAME] table of its "
                          "own", str(config.source), field=f"fabric.{drop[0]}")
    return out


def _check_paths(text: str, config: NodeConfig) -> None:
    """The node's disks must be named by absolute paths: the drill node reads its
    configuration from the drill directory on its host."""
    raw = load_toml(text, str(config.source))
    where = _line_map(text)
    for i, disk in enumerate(raw.get("disk") or ()):
        path = disk.get("path") if isinstance(disk, dict) else None
        if isinstance(path, str) and not Path(path).expanduser().is_absolute():
            raise ConfigError(f"field disk[{i + 1}].path = {json.dumps(path)}: a drill runs "
                              "the node from a copy of this file in its drill directory on the "
                              "host, where a relative path means something else: give the "
                              "absolute path", str(config.source),
                              where.get(("disk", i, "path")), field=f"disk[{i + 1}].path")


def _line_of(text: str, needle: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith(needle):
            return number
    return None


def unsupported(pair: Pair, scenario: Scenario) -> str | None:
    """Why SCENARIO cannot run on PAIR's hosts, or None."""
    fabrics = tuple(f.name for f in pair.configs["a"].fabrics)
    why = _unsupported(scenario, HOSTS_SUPPORTED, fabrics, "on two hosts")
    bad = [why] if why else []
    for until in sorted({s.until for s in scenario.steps if s.do == "wait" and s.until
                         and s.until not in UNTIL_EVENT and s.until not in GSO_UNTIL
                         and s.until not in UNTIL_OWN}):
        bad.append(f"wait until {until}: the hosts runner does not wait for that event yet")
    a = pair.configs["a"]
    if (any(s.do == "restart" and s.node == "active" for s in scenario.steps)
            and not getattr(a, "pmem_persist", False)):
        bad.append(f"step restart of the active: the restarted old active must find its P.mem "
                   f"again, and node {a.name} keeps it only in memory: set [pmem] persist = "
                   f"true in {a.source}")
    if "disk" in scenario.workload.targets:
        for c in pair.configs.values():
            if not any(d.name == "journal" for d in c.disks):
                bad.append(f"the workload writes its journal on a disk named journal, and "
                           f"node {c.name} has none: add a [[disk]] name = \"journal\" to "
                           f"{c.source}")
    for n, c in pair.configs.items():
        try:
            fabrics_text(pair.texts[n], c, scenario.fabrics)
        except ConfigError as exc:
            bad.append(str(exc))
    if scenario.checks.failover and pair.configs["b"].fence is None:
        bad.append(f"the standby {pair.configs['b'].name} has no [fence] action: it would "
                   "raise an alarm and not promote; configure its fence agent")
    return "; ".join(bad) if bad else None


# ---- one host ------------------------------------------------------------------------------

class Host:
    """Commands on one node's host, through its ``exec`` prefix."""

    def __init__(self, node: str, config: NodeConfig, drill: HostDrill, tag: str = ""):
        self.node, self.config, self.drill = node, config, drill
        self.name = config.name
        self.dir = f"{drill.workdir.rstrip('/')}/{self.name}"
        self.pid_file = f"{drill.workdir.rstrip('/')}/{self.name}.pid"

    def where(self) -> str:
        via = shlex.join(self.drill.exec) if self.drill.exec else "this host"
        return f"node {self.name}'s host ({via})"

    def run(self, script: str, stdin: bytes = b"", timeout: float = REMOTE_TIMEOUT_S,
            what: str = "") -> bytes:
        """SCRIPT's stdout; HostsError naming the host and what failed when it fails or
        runs past TIMEOUT."""
        argv = self.drill.argv(script)
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise HostsError(f"{what or script} on {self.where()}: no answer in {timeout:g} s "
                             "(is the host up, does the exec prefix ask for a password?)"
                             ) from None
        except OSError as exc:
            raise HostsError(f"{what or script} on {self.where()}: cannot run "
                             f"{argv[0]!r}: {exc}") from None
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip()[-600:]
            raise HostsError(f"{what or script} on {self.where()} failed (exit "
                             f"{done.returncode}): {err or 'no message'}")
        return done.stdout

    def python(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.drill.env)
        return (f"env {env} " if env else "") + shlex.quote(self.drill.python)

    def prepare(self, files: dict[str, str], zero: tuple[str, ...] = ()) -> None:
        """The drill directory made anew with FILES in it, the first JOURNAL_ZEROED bytes of
        each disk in ZERO zeroed; also proves python and hsp_rdma on the host."""
        self.run(f"{self.python()} -c {shlex.quote(_PREPARE)} {shlex.quote(self.dir)}",
                 json.dumps({"files": files, "zero": list(zero)}).encode(),
                 what="preparing the drill directory "
                 f"{self.dir} (python {self.drill.python} with hsp_rdma)")

    def running_node(self) -> dict | None:
        """The status of a node already running on this host (its control socket), or None."""
        script = (f"{self.python()} -m hsp_rdma.cli.status status --json --timeout 3 "
                  f"--config {shlex.quote(self.dir + '/config.toml')}")
        try:
            out = self.run(script, what="hsp status")
        except HostsError:
            return None  # no node answers there
        try:
            st = json.loads(out)
        except ValueError:
            return None
        return st if isinstance(st, dict) else None

    def start_argv(self, ack_addr: str) -> list[str]:
        d = shlex.quote(self.dir)
        return self.drill.argv(
            f"echo $$ > {shlex.quote(self.pid_file)} && cd {d} && exec {self.python()} -m "
            f"hsp_rdma.tools.drills.drill_node {d}/drill.toml {d}/scenario.toml "
            f"{shlex.quote(ack_addr)} {d}")

    def signal(self, pid: int, sig: str) -> None:
        self.run(f"kill -{sig} {int(pid)} 2>/dev/null || ! kill -0 {int(pid)} 2>/dev/null",
                 what=f"kill -{sig} of the drill node (pid {pid})")

    def put_command(self, seq: int, command: dict) -> None:
        d = shlex.quote(self.dir)
        self.run(f"cat > {d}/.cmd-{seq}.json.tmp && mv {d}/.cmd-{seq}.json.tmp "
                 f"{d}/cmd-{seq}.json", json.dumps(command).encode(),
                 what=f"drill command {seq} ({command.get('do')})")

    def touch_stop(self) -> None:
        self.run(f"touch {shlex.quote(self.dir)}/stop", what="stopping the drill node")

    def read(self, name: str) -> bytes | None:
        path = shlex.quote(f"{self.dir}/{name}")
        try:
            return self.run(f"test -f {path} && cat {path} || true", timeout=120,
                            what=f"reading {name}") or None
        except HostsError:
            return None

    def link(self, fabric: str, up: bool) -> None:
        """Pull (UP false) or plug FABRIC on this host with the ``pull``/``plug`` command."""
        netdev = dict(self.drill.netdev).get(fabric)
        template = self.drill.plug if up else self.drill.pull
        if netdev is None and any("{netdev}" in w for w in template):
            netdev = self._netdev(fabric)
        values = {"netdev": netdev or "", "fabric": fabric, "node": self.name,
                  "workdir": self.drill.workdir}
        argv = [w.format(**values) for w in template]
        self.run(shlex.join(argv), what=f"{'plug' if up else 'pull'} of fabric {fabric}")

    def _netdev(self, fabric: str) -> str:
        dev = next(f.rdma_device for f in self.config.fabrics if f.name == fabric)
        if dev.startswith("soft:"):
            raise HostsError(f"fabric {fabric} of node {self.name} is the soft provider's "
                             f"{dev}: it has no network interface; give pull/plug commands "
                             f"in [node.{self.name}] of the drill-hosts file")
        path = f"/sys/class/infiniband/{dev}/ports/1/gid_attrs/ndevs/0"
        out = self.run(f"cat {shlex.quote(path)}", what=f"the interface of {dev} ({path}; "
                       f"or give netdev = {{ {fabric} = \"IFACE\" }} in [node.{self.name}])")
        name = out.decode(errors="replace").strip()
        if not name:
            raise HostsError(f"{dev} on {self.where()} names no interface in {path}: give "
                             f"netdev = {{ {fabric} = \"IFACE\" }} in [node.{self.name}]")
        return name


class _NodeRun:
    """A drill node started through its host's prefix; its events (``t``: this driver's
    clock at arrival, the host's own kept as ``node_t``)."""

    def __init__(self, host: Host, ack_addr: str, out_dir: Path):
        self.host, self.ack_addr = host, ack_addr
        self.events: list[dict] = []
        self.out = open(out_dir / f"{host.node}.events", "w")  # noqa: SIM115 - close()
        self.err = open(out_dir / f"{host.node}.stderr", "w")  # noqa: SIM115
        self.proc: subprocess.Popen | None = None
        self._t: threading.Thread | None = None
        self.spawn()

    def spawn(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                raise RuntimeError(f"node {self.host.node} still runs: restart follows a kill")
            if self._t is not None:
                self._t.join(5)
        self.proc = subprocess.Popen(self.host.start_argv(self.ack_addr), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True)
        self._t = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._t.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            now = time.monotonic()
            self.out.write(line)
            self.out.flush()
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and "event" in ev:
                ev["node_t"], ev["t"] = ev.get("t"), now
                self.events.append(ev)

    def find(self, event: str, what: str | None = None) -> dict | None:
        return find_event(self, event, what)

    def last(self, event: str) -> dict | None:
        for e in reversed(list(self.events)):
            if e["event"] == event:
                return e
        return None

    def pid(self) -> int | None:
        started = self.last("started")
        return int(started["pid"]) if started else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()  # the local end of the prefix (the node: signalled before)
            self.proc.wait(10)
        if self._t is not None:
            self._t.join(5)
        self.out.close()
        self.err.close()


def _ack_server(ack_addr: str, writer: AckWriter) -> AckServer:
    """The driver's end of the ack streams, listening at ACK_ADDR (acklog.AckServer: one
    connection per serving node, the first from a, the active when the drill began)."""
    host, _, port = ack_addr.rpartition(":")
    host = host.strip("[]")
    try:
        sock = socket.create_server((host, int(port)))
    except OSError as exc:
        raise HostsError(f"cannot listen for acknowledgements on {ack_addr}: {exc} (the "
                         "ack address is this driver's own address as the nodes reach "
                         "it, with a free port)") from None
    return AckServer(sock, writer, host)




class HostsRunner:
    """Runs drills on the two hosts of PAIR; ``keep`` keeps the driver's evidence folder."""

    def __init__(self, pair: Pair, keep: bool = False):
        self.pair, self.keep = pair, keep
        self.hosts = {n: Host(n, pair.configs[n], pair.hosts[n]) for n in ("a", "b")}
        self.checked = False

    def preflight(self) -> None:
        """Both hosts reached (python with hsp_rdma there) and no node running already;
        HostsError otherwise, before anything was started."""
        if self.checked:
            return
        for n, host in self.hosts.items():
            host.prepare({"config.toml": self.pair.texts[n]})
        for n, host in self.hosts.items():
            st = host.running_node()
            if st is not None:
                want = "active" if n == "a" else "standby"
                role = st.get("role", "?")
                wrong = (f"; it is the {role} where the drill needs the {want}: the pair is "
                         "in the wrong roles" if role != want else "")
                raise HostsError(f"node {host.name} already runs on {host.where()} (role "
                                 f"{role}, epoch {st.get('epoch', '?')}){wrong}. The drill "
                                 "runs the nodes itself: stop the node service on both "
                                 "hosts first; the drill was refused, nothing was done")
        self.checked = True

    def run(self, scenario: Scenario) -> DrillResult:
        self.preflight()
        evidence = Path(tempfile.mkdtemp(prefix=f"hsp-drill-{scenario.name}-"))
        result = self._run(scenario, evidence)
        if self.keep or result.problems or judge(scenario, result):
            return replace(result, problems=(*result.problems,
                                             f"the nodes' events and stderr: {evidence}"))
        shutil.rmtree(evidence, ignore_errors=True)
        return result

    def _run(self, scenario: Scenario, evidence: Path) -> DrillResult:
        problems: list[str] = []
        hosts = self.hosts
        scen_text = Path(scenario.path).read_text(encoding="utf-8") if scenario.path else ""
        for n, host in hosts.items():
            text = fabrics_text(self.pair.texts[n], self.pair.configs[n], scenario.fabrics)
            journal = tuple(str(d.path) for d in self.pair.configs[n].disks
                            if d.name == "journal" and "disk" in scenario.workload.targets)
            host.prepare({"config.toml": text, "scenario.toml": scen_text,
                          "drill.toml": drill_config_text(text, self.pair.configs[n],
                                                          host.dir)}, journal)
        writer = AckWriter(evidence / "acks.log")
        try:
            acks = _ack_server(self.pair.ack_addr, writer)
        except HostsError:
            writer.close()
            raise
        procs = {n: _NodeRun(hosts[n], acks.addr, evidence) for n in ("a", "b")}
        pulled: set[tuple[str, str]] = set()
        paused: set[str] = set()

        def fault(node: str, step) -> None:
            if step.do in ("pull", "plug"):
                hosts[node].link(step.fabric, step.do == "plug")
                (pulled.add if step.do == "pull" else pulled.discard)((node, step.fabric))
                return
            if step.do == "restart":
                procs[node].spawn()
                return
            pid = procs[node].pid()
            if pid is None:
                raise RuntimeError(f"node {node} gave no pid (no started event)")
            try:
                hosts[node].signal(pid, {"kill": "KILL", "pause": "STOP",
                                         "resume": "CONT"}[step.do])
            except HostsError:
                if step.do != "resume" or procs[node].alive():
                    raise
                # resumed after the fence powered it (or its host) off: nothing to resume
            (paused.add if step.do == "pause" else paused.discard)(node)

        def heal() -> None:
            for node, fab in sorted(pulled):
                hosts[node].link(fab, True)
            pulled.clear()

        driver = GsoStepDriver(procs, fault, heal,
                            lambda n, seq, cmd: hosts[n].put_command(seq, cmd),
                            wait_for, time.sleep, time.monotonic)
        started = False
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not all(p.find("started") for p in procs.values()):
                for n, p in procs.items():
                    if not p.alive() and not p.find("started"):
                        raise RuntimeError(f"the drill node of {hosts[n].name} ended before it "
                                           f"started: {_tail(evidence / f'{n}.stderr')}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the pair did not start in {START_TIMEOUT_S:g} s")
                time.sleep(0.05)
            for n, want in (("a", "active"), ("b", "standby")):
                role = procs[n].find("started").get("role")
                if role != want:
                    raise RuntimeError(f"node {hosts[n].name} started as {role}, the drill needs "
                                       f"it {want}: the pair is in the wrong roles; the drill "
                                       "was refused before any step")
            wait_for(lambda: pair_ready(procs), START_TIMEOUT_S,
                  "the active's workload to start")
            started = True
            driver.run(scenario.steps)
        except (RuntimeError, HostsError) as exc:
            problems.append(str(exc))
        finally:
            self._stop(procs, heal, paused, problems)
            acks.close()
            writer.close()
        if not started and not problems:
            problems.append("the drill did not start")
        survivor = "b" if procs["b"].find("failover", "active") else "a"
        host = hosts[survivor]
        ledger = host.read(f"pmem-{host.name}.bin") if procs[survivor].find("final") else None
        journal = (host.read(f"journal-{host.name}.final") if procs[survivor].find("final")
                   else None)
        return judge_drill(scenario, procs, read_acklog(evidence / "acks.log"), ledger, journal,
                           driver.fault_t, problems, driver.timeline, done_t=driver.done_t)

    def _stop(self, procs: dict[str, _NodeRun], heal: Callable[[], None], paused: set[str],
              problems: list[str]) -> None:
        """Every pull plugged, every paused node resumed, ``stop`` to the drill nodes still
        running; their final states awaited; any node left is killed."""
        hosts = self.hosts
        try:
            heal()
        except HostsError as exc:
            problems.append(f"plugging the pulled fabrics after the drill: {exc}")
        for n in sorted(paused):
            pid = procs[n].pid()
            if pid is not None and procs[n].alive():
                try:
                    hosts[n].signal(pid, "CONT")
                except HostsError as exc:
                    problems.append(str(exc))
        for n, p in procs.items():
            if p.alive():
                try:
                    hosts[n].touch_stop()
                except HostsError as exc:
                    problems.append(str(exc))
        for n, p in procs.items():
            if p.alive():
                try:
                    wait_for(lambda p=p: p.find("final") or not p.alive(), FINAL_TIMEOUT_S,
                          f"final state of node {hosts[n].name}")
                except RuntimeError as exc:
                    problems.append(str(exc))
            if p.proc is not None:
                try:
                    p.proc.wait(15)
                except subprocess.TimeoutExpired:
                    pid = p.pid()
                    if pid is not None:
                        try:
                            hosts[n].signal(pid, "KILL")
                        except HostsError:
                            pass
                    problems.append(f"node {hosts[n].name} did not stop in 15 s: killed")
            p.close()


def _tail(path: Path, size: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-size:].strip() or "(no stderr)"
    except OSError:
        return "(no stderr)"
