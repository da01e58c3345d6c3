"""A node's configuration: one TOML file drives the node and every tool that talks to it.

This module holds the *shape* (frozen dataclasses, the contract between the loader and the
engine) and the loader ``load_node_config(path)``, which names the file, line and field of a
wrong or missing value, like the hw-profiles loader. Example (every key shown; those with a
default may be left out)::

    [node]
    name = "a"                      # this node; letters, digits, '-', '_'
    peer = "b"                      # the other node of the pair
    role = "active"                 # the role it starts in: active | standby
    state_dir = "/var/lib/hsp/a"    # epochs, dirty bitmaps (fsync'd)
    control_socket = "/run/hsp/a.sock"   # default: <state_dir>/control.sock
    manager = "self"                # self | pacemaker (who decides promotions)

    [fabric.x]                      # one table per fabric: x, then optionally y
    rdma_device = "rxe0"            # a verbs device, or soft:NAME for the software provider
    local = "10.0.0.1"              # IPv4 of this node on that fabric
    peer = "10.0.0.2"               # IPv4 of the peer on that fabric
    port = 7471                     # rdma_cm port base of Interface A (default 7471)

    [pmem]
    size = "16 MiB"                 # the protected memory region (also the GSO state image)
    persist = false                 # keep P.mem in <state_dir>/pmem (image + write-ahead log)

    [[disk]]                        # zero or more replicated files or block devices
    name = "data"
    path = "/dev/ram0"
    size = "64 MiB"                 # optional: default is the file's / device's size

    [replication]
    commit = "applied"              # async | received | applied (DRBD protocols A, B, C)
    message_size = "64 KiB"         # one receive buffer; larger messages are fragmented
    credits = 32                    # receives posted per channel = sends the peer may have out
    resync_rate = "64 MiB"          # bytes per second a resync may send (DRBD's resync-rate)
    audit_interval = 0              # ms between two audits on the active (0: only on demand)
    audit_rate = "64 MiB"           # bytes of P.mem and disk an audit digests per second
    fabric_failback = "stay"        # two fabrics: x healed after a move to y: "stay" on y
                                    # (x is the spare) or go "back" to x

    [timeouts]                      # milliseconds
    heartbeat_interval = 100
    heartbeat_timeout = 1000
    commit = 5000                   # a commit not acknowledged in this time fails
    connect = 10000

    [fence]                         # optional: fence-agents convention (ha/fence.py)
    action = "fence_ipmilan"        # program
    options = { ip = "10.1.1.1", username = "admin" }
    timeout = 30000
    delay = 1000                    # ms the standby waits before it fences the active (below)
    outdate = true                  # the active outdates a lost standby before serving alone

Relative paths (``state_dir``, ``control_socket``, a disk's ``path``) are taken from the
directory of the file. Sizes are bytes (an integer) or a string with a binary unit ("64 KiB",
"16MiB"). Keys not shown above are refused, with the nearest known key suggested.

With a fence action, an active that loses its standby asks the fence device to mark it
Outdated (action ``outdate``: DRBD's outdate-peer) and serves alone only once that is
confirmed; the standby waits ``delay`` before its own ``off`` of the active (Pacemaker's
``pcmk_delay_base``), so with one fabric pulled the active, which still serves, wins: the
device refuses a fence from an Outdated node. ``outdate = false``: the active refuses commits
while alone instead (for fence agents without the action).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsp_rdma.core.frames import MAX_PAYLOAD
from hsp_rdma.core.profiles import MAX_QUEUE_DEPTH, load_toml
from hsp_rdma.errors import ConfigError
from hsp_rdma.units import format_size, parse_size

ROLES = ("active", "standby")
COMMIT_MODES = ("async", "received", "applied")
FAILBACK_CHOICES = ("stay", "back")
MANAGERS = ("self", "pacemaker")
FABRICS = ("x", "y")
DEFAULT_PORT = 7471


@dataclass(frozen=True, slots=True)
class FabricConfig:
    name: str              # "x" or "y"
    rdma_device: str       # "rxe0", "mlx5_0", or "soft:NAME"
    local: str             # IPv4
    peer: str              # IPv4
    port: int = DEFAULT_PORT


@dataclass(frozen=True, slots=True)
class DiskConfig:
    name: str
    path: Path
    size: int | None = None  # bytes; None: the file's or device's size


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    commit: str = "applied"
    message_size: int = 64 * 1024
    credits: int = 32
    resync_rate: int = 64 << 20  # bytes per second
    audit_interval: int = 0  # ms; 0: audits only on demand (hsp audit --now)
    audit_rate: int = 64 << 20  # bytes digested per second
    fabric_failback: str = "stay"  # "stay" | "back" (two fabrics: see ha/node.py)


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:  # all in milliseconds
    heartbeat_interval: int = 100
    heartbeat_timeout: int = 1000
    commit: int = 5000
    connect: int = 10000


@dataclass(frozen=True, slots=True)
class FenceConfig:
    action: str
    options: tuple[tuple[str, str], ...] = ()
    timeout: int = 30000  # ms
    delay: int = 1000  # ms the standby waits before fencing the active
    outdate: bool = True  # the active outdates a lost standby, then serves alone


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    peer: str
    role: str
    state_dir: Path
    fabrics: tuple[FabricConfig, ...]      # x first, then y when configured
    pmem_size: int
    control_socket: Path | None = None     # None: state_dir / "control.sock"
    manager: str = "self"
    disks: tuple[DiskConfig, ...] = ()
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    fence: FenceConfig | None = None
    source: Path | None = None             # the file it was loaded from
    pmem_persist: bool = False             # P.mem kept under state_dir/pmem (ha/pmem_store.py)

    @property
    def socket_path(self) -> Path:
        return self.control_socket or self.state_dir / "control.sock"


# ---- the loader -------------------------------------------------------------------------

MIN_MESSAGE = 4 << 10
MAX_MESSAGE = MAX_PAYLOAD
MIN_CREDITS = 2  # one for the peer's data, one for its credit return
MIN_PMEM = 4 << 10
MAX_PMEM = 1 << 40
MAX_TIMEOUT_MS = 3_600_000  # an hour: anything longer is a typo in a unit
MAX_NAME = 32
SUN_PATH_MAX = 107  # bytes of a UNIX socket's path (sun_path is 108 with its NUL)
NAME_RULE = f"1 to {MAX_NAME} letters, digits, '-' or '_', starting with a letter or digit"
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_NAME - 1}}}\Z")

# table -> its keys; "fabric.*" stands for fabric.x and fabric.y, "disk" for each [[disk]]
KEYS: dict[str, tuple[str, ...]] = {
    "": ("node", "fabric", "pmem", "disk", "replication", "timeouts", "fence"),
    "node": ("name", "peer", "role", "state_dir", "control_socket", "manager"),
    "fabric": FABRICS,
    "fabric.*": ("rdma_device", "local", "peer", "port"),
    "pmem": ("size", "persist"),
    "disk": ("name", "path", "size"),
    "replication": ("commit", "message_size", "credits", "resync_rate", "audit_interval",
                    "audit_rate", "fabric_failback"),
    "timeouts": ("heartbeat_interval", "heartbeat_timeout", "commit", "connect"),
    "fence": ("action", "options", "timeout", "delay", "outdate"),
}
_HEADER = re.compile(r"\s*(\[\[?)\s*(.+?)\s*\]\]?\s*(?:#.*)?\Z")
_KEY = re.compile(r"""\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
                  r"""(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def _key_parts(text: str) -> tuple[str, ...]:
    return tuple(p.strip("\"'") for p in _PART.findall(text))


def _line_map(text: str) -> dict[tuple, int]:
    """(table..., key) -> the line it is written on, for the TOML this loader reads: tables,
    arrays of tables (indexed: ("disk", 0, "path")), dotted keys. Lines inside multi-line
    strings are skipped; an inline table's keys are found by their parent's line."""
    lines: dict[tuple, int] = {}
    table: tuple = ()
    arrays: dict[tuple, int] = {}
    in_string = None
    for number, line in enumerate(text.splitlines(), 1):
        if in_string:
            if line.count(in_string) % 2:
                in_string = None
            continue
        header = _HEADER.match(line)
        if header:
            table = _key_parts(header.group(2))
            for end in range(1, len(table)):  # [fabric.y] also opens [fabric]
                lines.setdefault(table[:end], number)
            if header.group(1) == "[[":
                arrays[table] = arrays.get(table, -1) + 1
                table = (*table, arrays[table])
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            parts = _key_parts(key.group(1))
            for end in range(1, len(parts) + 1):  # a.b.c = 1 also writes tables a and a.b
                lines.setdefault((*table, *parts[:end]), number)
            rest = line[key.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2:
                    in_string = quote
    return lines


class _Reader:
    """Checks the parsed TOML, failing with the file, line and field of what is wrong."""

    def __init__(self, text: str, source: str | None):
        self.source = source
        self.lines = _line_map(text)
        self.base = Path(source).parent if source else None

    def line(self, where: tuple) -> int | None:
        while where:
            if where in self.lines:
                return self.lines[where]
            where = where[:-1]
        return None

    @staticmethod
    def label(where: tuple) -> str:
        out = ""
        for part in where:
            out += f"[{part + 1}]" if isinstance(part, int) else ("." if out else "") + part
        return out

    def fail(self, where: tuple, message: str) -> ConfigError:
        return ConfigError(message, self.source, self.line(where), field=self.label(where))

    def wrong(self, where: tuple, value: Any, allowed: str) -> ConfigError:
        return self.fail(where, f"field {self.label(where)} = {_shown(value)}: "
                                f"should be {allowed}")

    def table(self, raw: dict, where: tuple, known: tuple[str, ...],
              required: bool = True) -> dict | None:
        """The table at WHERE in RAW, its keys checked against KNOWN (typos refused)."""
        key = where[-1]
        if key not in raw:
            if required:
                raise self.fail(where, f"missing table [{self.label(where)}]: add it (see the "
                                       "example in hsp_rdma/ha/config.py)")
            return None
        value = raw[key]
        if not isinstance(value, dict):
            raise self.wrong(where, value, f"a table [{self.label(where)}]")
        self.known(value, where, known)
        return value

    def known(self, table: dict, where: tuple, known: tuple[str, ...]) -> None:
        for key in table:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                inside = f"[{self.label(where)}]" if where else "the file"
                raise self.fail((*where, key),
                                f"unknown field {self.label((*where, key))!r}: {hint}the "
                                f"fields of {inside} are: {', '.join(known)}")

    def get(self, table: dict, where: tuple, key: str, check, allowed: str,
            default: Any = ...) -> Any:
        """TABLE[KEY] through CHECK (None: not allowed); DEFAULT when absent (none: required)."""
        at = (*where, key)
        if key not in table:
            if default is ...:
                raise self.fail(at, f"missing field {self.label(at)}: should be {allowed}")
            return default
        parsed = check(table[key])
        if parsed is None:
            raise self.wrong(at, table[key], allowed)
        return parsed

    def path(self, value: Any) -> Path | None:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute() and self.base is not None:
            path = self.base / path
        return path


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _int_in(low: int, high: int):
    def check(value: Any) -> int | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return value if ok else None

    return check, f"an integer from {low} to {high}"


def _size_in(low: int, high: int):
    def check(value: Any) -> int | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, str):
            try:
                value = parse_size(value)
            except ValueError:
                return None
        return value if isinstance(value, int) and low <= value <= high else None

    return check, (f'a size from {format_size(low)} to {format_size(high)}: bytes, or a '
                   f'string like "64 KiB", "16 MiB"')


def _one_of(choices: tuple[str, ...]):
    return ((lambda v: v if isinstance(v, str) and v in choices else None),
            "one of " + ", ".join(f'"{c}"' for c in choices))


def _name(value: Any) -> str | None:
    return value if isinstance(value, str) and _NAME.match(value) else None


def _ipv4(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        return None


def _device(value: Any) -> str | None:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        return None
    if value.startswith("soft:"):
        return value if _name(value[5:]) else None
    return value if "/" not in value else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


NAME = (_name, f'a name of {NAME_RULE}, e.g. "a"')
IPV4 = (_ipv4, 'an IPv4 address in dotted quads, e.g. "10.0.0.1"')
DEVICE = (_device, 'a verbs device name (e.g. "rxe0", "mlx5_0") or "soft:NAME"')
PORT = _int_in(1, 65535)
TIMEOUT_MS = _int_in(1, MAX_TIMEOUT_MS)


def parse_node_config(text: str, source: str | Path | None = None) -> NodeConfig:
    """The node configuration in TOML ``text``; ``source`` names the file in errors and
    anchors relative paths."""
    src = str(source) if source is not None else None
    raw = load_toml(text, src)
    r = _Reader(text, src)
    r.known(raw, (), KEYS[""])

    node = r.table(raw, ("node",), KEYS["node"])
    at = ("node",)
    name = r.get(node, at, "name", *NAME)
    peer = r.get(node, at, "peer", *NAME)
    if peer == name:
        raise r.fail((*at, "peer"), f"field node.peer = {_shown(peer)}: the peer is the "
                                    "other node of the pair; give it another name than "
                                    "node.name")
    role = r.get(node, at, "role", *_one_of(ROLES))
    path_rule = "a path (absolute, or relative to this file's directory)"
    state_dir = r.get(node, at, "state_dir", r.path, path_rule)
    control_socket = r.get(node, at, "control_socket", r.path, path_rule, None)
    manager = r.get(node, at, "manager", *_one_of(MANAGERS), "self")
    sock = control_socket or state_dir / "control.sock"
    if len(str(sock).encode()) > SUN_PATH_MAX:
        where = "control_socket" if control_socket else "state_dir"
        raise r.fail((*at, where), f"field node.{where}: the control socket {sock} is "
                                   f"{len(str(sock).encode())} bytes long; a UNIX socket's "
                                   f"path holds at most {SUN_PATH_MAX}: set "
                                   "node.control_socket to a shorter path")

    fabrics_raw = r.table(raw, ("fabric",), KEYS["fabric"])
    if "x" not in fabrics_raw:
        raise r.fail(("fabric", "x"), "missing table [fabric.x]: fabric x is required "
                                      "(y is optional)")
    fabrics = []
    for fab in FABRICS:
        table = r.table(fabrics_raw, ("fabric", fab), KEYS["fabric.*"], required=False)
        if table is None:
            continue
        at = ("fabric", fab)
        local = r.get(table, at, "local", *IPV4)
        remote = r.get(table, at, "peer", *IPV4)
        if local == remote:
            raise r.fail((*at, "peer"), f"field fabric.{fab}.peer = {_shown(remote)}: the "
                                        f"same address as fabric.{fab}.local; give the "
                                        "peer's address on this fabric")
        fabrics.append(FabricConfig(fab, r.get(table, at, "rdma_device", *DEVICE), local,
                                    remote, r.get(table, at, "port", *PORT, DEFAULT_PORT)))
    if len(fabrics) == 2 and fabrics[0].local == fabrics[1].local:
        raise r.fail(("fabric", "y", "local"),
                     f"field fabric.y.local = {_shown(fabrics[1].local)}: the same address "
                     "as fabric.x.local; each fabric is its own network, with its own "
                     "addresses")

    pmem = r.table(raw, ("pmem",), KEYS["pmem"])
    pmem_size = r.get(pmem, ("pmem",), "size", *_size_in(MIN_PMEM, MAX_PMEM))
    pmem_persist = r.get(pmem, ("pmem",), "persist",
                         lambda v: v if isinstance(v, bool) else None, "true or false", False)

    disks = []
    disks_raw = raw.get("disk", [])
    if not isinstance(disks_raw, list) or not all(isinstance(d, dict) for d in disks_raw):
        raise r.wrong(("disk",), disks_raw, "one [[disk]] table per disk")
    for index, disk in enumerate(disks_raw):
        at = ("disk", index)
        r.known(disk, at, KEYS["disk"])
        disk_name = r.get(disk, at, "name", *NAME)
        disk_path = r.get(disk, at, "path", r.path, path_rule)
        size = r.get(disk, at, "size", *_size_in(512, 1 << 50), None)
        if size is not None and size % 512:
            raise r.wrong((*at, "size"), disk["size"], "a whole number of 512-byte sectors")
        for other, seen in enumerate(disks):
            what = ("name" if seen.name == disk_name
                    else "path" if seen.path == disk_path else None)
            if what:
                raise r.fail((*at, what), f"field disk[{index + 1}].{what}: the same as "
                                          f"disk[{other + 1}]'s; each disk has its own")
        disks.append(DiskConfig(disk_name, disk_path, size))

    at = ("replication",)
    rep = r.table(raw, at, KEYS["replication"], required=False) or {}
    default_rep = ReplicationConfig()
    replication = ReplicationConfig(
        commit=r.get(rep, at, "commit", *_one_of(COMMIT_MODES), default_rep.commit),
        message_size=r.get(rep, at, "message_size", *_size_in(MIN_MESSAGE, MAX_MESSAGE),
                           default_rep.message_size),
        credits=r.get(rep, at, "credits", *_int_in(MIN_CREDITS, MAX_QUEUE_DEPTH),
                      default_rep.credits),
        resync_rate=r.get(rep, at, "resync_rate", *_size_in(64 << 10, 1 << 40),
                          default_rep.resync_rate),
        audit_interval=r.get(rep, at, "audit_interval", *_int_in(0, 7 * 24 * 3600 * 1000),
                             default_rep.audit_interval),
        audit_rate=r.get(rep, at, "audit_rate", *_size_in(64 << 10, 1 << 40),
                         default_rep.audit_rate),
        fabric_failback=r.get(rep, at, "fabric_failback", *_one_of(FAILBACK_CHOICES),
                              default_rep.fabric_failback))

    at = ("timeouts",)
    tim = r.table(raw, at, KEYS["timeouts"], required=False) or {}
    default_tim = TimeoutsConfig()
    timeouts = TimeoutsConfig(**{
        key: r.get(tim, at, key, *TIMEOUT_MS, getattr(default_tim, key))
        for key in KEYS["timeouts"]})
    if timeouts.heartbeat_timeout <= 2 * timeouts.heartbeat_interval:
        key = "heartbeat_timeout" if "heartbeat_timeout" in tim else "heartbeat_interval"
        raise r.fail((*at, key), f"field timeouts.{key} = {getattr(timeouts, key)}: "
                                 f"heartbeat_timeout ({timeouts.heartbeat_timeout} ms) should "
                                 f"be more than twice heartbeat_interval "
                                 f"({timeouts.heartbeat_interval} ms), so that one lost "
                                 "heartbeat does not end the pair")

    fence = None
    at = ("fence",)
    fen = r.table(raw, at, KEYS["fence"], required=False)
    if fen is not None:
        action = r.get(fen, at, "action", _text, "the fence agent's program, e.g. "
                                                 '"fence_ipmilan"')
        options = r.get(fen, at, "options", lambda v: v if isinstance(v, dict) else None,
                        'a table of strings, e.g. { ip = "10.1.1.1" }', {})
        for key, value in options.items():
            if not isinstance(value, str):
                raise r.wrong((*at, "options", key), value,
                              f'a string (fence agents read text), e.g. {key} = '
                              f'"{_shown(value)}"')
        fence = FenceConfig(action, tuple(options.items()),
                            r.get(fen, at, "timeout", *TIMEOUT_MS, 30000),
                            r.get(fen, at, "delay", *_int_in(0, 600_000), 1000),
                            r.get(fen, at, "outdate",
                                  lambda v: v if isinstance(v, bool) else None,
                                  "true or false", True))

    return NodeConfig(name=name, peer=peer, role=role, state_dir=state_dir,
                      fabrics=tuple(fabrics), pmem_size=pmem_size,
                      control_socket=control_socket, manager=manager, disks=tuple(disks),
                      replication=replication, timeouts=timeouts, fence=fence,
                      source=Path(source) if source is not None else None,
                      pmem_persist=pmem_persist)


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and validate a node's configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not a text file (UTF-8): give the node's TOML configuration",
                          str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the node configuration: {exc.strerror}",
                          str(path)) from None
    return parse_node_config(text, path)
