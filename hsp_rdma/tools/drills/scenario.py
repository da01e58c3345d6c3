"""Drill scenarios: one TOML file each, parsed strictly; a mistake is a ConfigError naming the
file, the line and the field, with a did-you-mean for a misspelt name.

A scenario (the shipped ones are in hsp_rdma/scenarios)::

    description = "kill the active under load; the standby fences and promotes"

    [workload]                  # the ledger (tools/drills/ledger.py), run on the active
    rate = 200                  # transfers per second
    transaction_size = 256      # bytes each transfer writes to each target (or "4KiB")
    targets = ["pmem", "disk"]  # the ledger in P.mem, its journal on the disk; one or both
    commit = "applied"          # async | received | applied
    accounts = 1000             # optional, default 1000

    [[steps]]                   # in order; the workload runs from before the first to the end
    do = "wait"
    for = "5s"                  # or: until = "promoted" (an event), timeout = "30s"

    [[steps]]
    do = "kill"
    node = "active"             # the role the node had when the drill began

    [checks]                    # lost = 0 and two_actives = false are always checked
    max_blackout_ms = 5000
    failover = true

Checks (all optional): lost, two_actives, max_blackout_ms, max_detect_ms, failover, resync,
audit_repairs (needs an audit step), and for two fabrics: fabric_switch (true: the carrier
must move to the other fabric at least once; false: it must never move), max_fabric_switches
(the carrier moved at most this many times, counted on the node that moved most),
max_traffic_stop_ms (needs a pull: around every pull, traffic, i.e. the driver's acks,
stopped at most this long and came back; see ``runner.traffic_stops``).

``fabrics = ["x"]`` (top level, optional) sets the pair up with only those fabrics (default:
both, x and y).

n+1 (issue 13): a table ``[nplus1]`` with ``actives = N`` (2 to MAX_ACTIVES) makes the drill
one of N actives (nodes a, b, c, ...) and one n+1 standby host (the next letter: d for 3),
each active the active of its own pair with the standby host (``tools/drills/nplus1.py``),
each under the ledger workload. A step's ``node`` is then an active by name ("a", "b", ...)
or "standby" (the host); ``wait until promoted`` waits for one of the host's sessions to
promote, ``until refused`` for the host to refuse a takeover (its alarm "n+1 standby already
active for <peer>; cannot take over for <other>"); the check ``takeover_refused`` (true: at
least one takeover must be refused; false: none may) is for n+1 drills only.
Events a wait may wait ``until``: suspected, fenced, promoted (the standby's), resync-started,
resync-done, gso-copy-started, gso-done, audit-done, fabric-switched (a node moved its carrier
to the other fabric: drill_node's ``{"event": "fabric", "phase": "switched"}``), each counted
only after the last action step.
Steps (``do``) and their fields: wait (for | until [timeout]), kill / pause / resume / restart
(node; restart boots a killed node, which rejoins),
pull / plug (node, fabric), netem (node, fabric, spec: tc's words or "clear"), gso (starts a
Graceful Switch Over, does not wait for it; in an n+1 drill node = the active that switches
over to the standby host), corrupt (what: block | page, index; always on
the standby), heal (clears every netem and plugs every pulled fabric), audit (runs one and
waits for it).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsp_rdma.core.profiles import line_of, load_toml
from hsp_rdma.errors import ConfigError, LabError
from hsp_rdma.ha.config import COMMIT_MODES, FABRICS
from hsp_rdma.lab.netem import parse_spec
from hsp_rdma.tools.drills.ledger import JOURNAL_MAX, MAX_ACCOUNTS, TRANSACTION_FIXED
from hsp_rdma.units import parse_size

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "scenarios"
NODES = ("active", "standby")  # by the role each had when the drill began
# n+1: the actives' names (the standby host is the next letter: ``nplus1.names``); at most
# 7 actives, as a lab has at most 8 nodes (hsp_rdma.lab.MAX_NODES)
MAX_ACTIVES = 7
ACTIVE_NAMES = tuple("abcdefg"[:MAX_ACTIVES])
TARGETS = ("pmem", "disk")
EVENTS = ("suspected", "fenced", "promoted", "resync-started", "resync-done",
          "gso-copy-started", "gso-done", "audit-done", "fabric-switched", "refused")
NPLUS1_EVENTS = ("refused",)  # events of n+1 drills only
CORRUPTIBLE = ("block", "page")
MAX_WAIT_S = 3600.0
MAX_RATE = 100_000
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|min)\Z")
_SCALE_S = {"ms": 1e-3, "s": 1.0, "min": 60.0}


@dataclass(frozen=True, slots=True)
class Workload:
    rate: int  # transfers per second
    transaction_size: int  # bytes per transfer, to each target
    targets: tuple[str, ...]
    commit: str
    accounts: int = 1000


@dataclass(frozen=True, slots=True)
class Step:
    """One step; only the fields its action takes are set. ``line``: where it is written."""

    do: str
    line: int | None = None
    node: str | None = None
    fabric: str | None = None
    wait_s: float | None = None  # wait: for
    until: str | None = None  # wait: an event
    timeout_s: float | None = None  # wait until: give up after
    spec: str | None = None  # netem
    what: str | None = None  # corrupt: block | page
    index: int | None = None  # corrupt: which block or page

    def describe(self) -> str:
        parts = [self.do]
        if self.wait_s is not None:
            parts.append(f"{self.wait_s:g}s")
        if self.until is not None:
            parts.append(f"until {self.until}" + (f" ({self.timeout_s:g}s)"
                                                   if self.timeout_s is not None else ""))
        if self.what is not None:
            parts.append(f"{self.what} {self.index}")
        if self.fabric is not None:
            parts.append(f"fabric {self.fabric}")
        if self.node is not None:
            parts.append(f"on {self.node}" if self.fabric or self.what else self.node)
        if self.spec is not None:
            parts.append(repr(self.spec))
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Checks:
    """What a drill must show; None: not checked."""

    lost: int = 0  # at most this many acknowledged transfers missing on the survivor
    two_actives: bool = False
    max_blackout_ms: float | None = None
    max_detect_ms: float | None = None
    failover: bool | None = None  # whether a standby must (true) or must not (false) promote
    resync: bool | None = None  # whether a resync must (true) or must not (false) happen
    audit_repairs: int | None = None  # exactly this many chunks repaired by the audits
    fabric_switch: bool | None = None  # whether the carrier must (true) or must not move
    max_fabric_switches: int | None = None  # the carrier moved at most this many times
    max_traffic_stop_ms: float | None = None  # around each pull: traffic stopped at most this
    takeover_refused: bool | None = None  # n+1: a takeover must (true) / must not be refused


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    workload: Workload
    steps: tuple[Step, ...]
    checks: Checks
    fabrics: tuple[str, ...] = FABRICS  # the fabrics the pair is set up with for the drill
    path: str | None = None
    nplus1: int | None = None  # n+1: how many actives the standby host protects (None: a pair)


# -- field checkers: each returns the parsed value, or None when the value is not allowed ----

Checker = tuple[Callable[[Any], Any], str]


def _int_in(lo: int, hi: int) -> Checker:
    def check(v: Any) -> int | None:
        return v if type(v) is int and lo <= v <= hi else None

    return check, f"a whole number between {lo} and {hi}"


def _one_of(values: tuple[str, ...]) -> Checker:
    return (lambda v: v if isinstance(v, str) and v in values else None,
            "one of " + ", ".join(f'"{v}"' for v in values))


def _duration(v: Any) -> float | None:
    m = _DURATION.match(v) if isinstance(v, str) else None
    if not m:
        return None
    seconds = float(m.group(1)) * _SCALE_S[m.group(2)]
    return seconds if 0 < seconds <= MAX_WAIT_S else None


def _size(v: Any) -> int | None:
    if type(v) is int:
        n = v
    elif isinstance(v, str):
        try:
            n = parse_size(v)
        except ValueError:
            return None
    else:
        return None
    return n if TRANSACTION_FIXED <= n <= JOURNAL_MAX else None


def _targets_of(v: Any, choices: tuple[str, ...]) -> tuple[str, ...] | None:
    ok = (isinstance(v, list) and v and len(set(v)) == len(v)
          and all(isinstance(t, str) and t in choices for t in v))
    return tuple(v) if ok else None


def _targets(v: Any) -> tuple[str, ...] | None:
    return _targets_of(v, TARGETS)


def _netem(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    if v.strip() == "clear":
        return "clear"
    try:
        parse_spec(v)
    except LabError:
        return None
    return v


def _bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _false(v: Any) -> bool | None:
    return v if v is False else None


def _ms(v: Any) -> float | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= MAX_WAIT_S * 1000
    return float(v) if ok else None


DURATION = (_duration, f'a duration like "500ms", "10s" or "2min" (at most {MAX_WAIT_S:g}s)')
WORKLOAD_FIELDS: dict[str, Checker] = {
    "rate": _int_in(1, MAX_RATE),
    "transaction_size": (_size, (f"a size between {TRANSACTION_FIXED} and {JOURNAL_MAX} bytes, "
                         f'e.g. 256 or "4KiB" (the ledger writes a {TRANSACTION_FIXED} B '
                         "header and two records)")),
    "targets": (_targets, 'a list of "pmem", "disk" or both, each once'),
    "commit": _one_of(COMMIT_MODES),
    "accounts": _int_in(2, MAX_ACCOUNTS),
}
WORKLOAD_OPTIONAL = frozenset({"accounts"})
STEP_FIELDS: dict[str, Checker] = {
    "node": _one_of(NODES),
    "fabric": _one_of(FABRICS),
    "for": DURATION,
    "until": _one_of(EVENTS),
    "timeout": DURATION,
    "spec": (_netem, ('a netem spec in tc\'s words ("delay 5ms loss 1%", "loss 100%") or '
             '"clear"')),
    "what": _one_of(CORRUPTIBLE),
    "index": _int_in(0, 1 << 40),
}
# action -> (fields it needs, fields it may have)
ACTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "wait": ((), ("for", "until", "timeout")),
    "kill": (("node",), ()),
    "pause": (("node",), ()),
    "resume": (("node",), ()),
    "restart": (("node",), ()),
    "pull": (("node", "fabric"), ()),
    "plug": (("node", "fabric"), ()),
    "netem": (("node", "fabric", "spec"), ()),
    "gso": ((), ("node",)),  # node: n+1 drills only (the active that switches over)
    "corrupt": (("what", "index"), ("node",)),
    "heal": ((), ()),
    "audit": ((), ()),
}
CHECK_FIELDS: dict[str, Checker] = {
    "lost": _int_in(0, 1 << 62),
    "two_actives": (_false, "false (a drill never allows two actives)"),
    "max_blackout_ms": (_ms, "a number of milliseconds above 0"),
    "max_detect_ms": (_ms, "a number of milliseconds above 0"),
    "failover": (_bool, "true (a standby must promote) or false (none may)"),
    "resync": (_bool, "true (a resync must happen) or false (none may)"),
    "audit_repairs": _int_in(0, 1 << 40),
    "fabric_switch": (_bool, ("true (the carrier must move to the other fabric) or false "
                              "(it must stay)")),
    "max_fabric_switches": _int_in(0, 1 << 20),
    "max_traffic_stop_ms": (_ms, "a number of milliseconds above 0"),
    "takeover_refused": (_bool, ("true (the n+1 standby host must refuse a takeover) or "
                                 "false (it may refuse none)")),
}
NPLUS1_FIELDS: dict[str, Checker] = {"actives": _int_in(2, MAX_ACTIVES)}
TOP_FIELDS = ("description", "fabrics", "nplus1", "workload", "steps", "checks")
_STEP_TO_ATTR = {"for": "wait_s", "timeout": "timeout_s"}


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Source:
    """The scenario's text and its tables' spans, to put a line on every error."""

    _HEADER = re.compile(r"^[ \t]*\[\[?[ \t]*([A-Za-z0-9_.-]+)[ \t]*\]\]?", re.MULTILINE)

    def __init__(self, text: str, path: str | None) -> None:
        self.text = text
        self.path = path
        # (where it starts, table name) of every [table] and [[table]] header, in order
        self.headers = [(m.start(), m.group(1)) for m in self._HEADER.finditer(text)]

    def span(self, table: str | None, index: int = 0) -> tuple[int, int]:
        """Character span of the top level (None), of [table], or of the index-th [[table]]."""
        starts = [h[0] for h in self.headers] + [len(self.text)]
        if table is None:
            return 0, starts[0]
        found = [i for i, (_, name) in enumerate(self.headers) if name == table]
        if index >= len(found):
            return 0, 0
        i = found[index]
        return starts[i], starts[i + 1]

    def line(self, key: str | None, table: str | None = None, index: int = 0) -> int | None:
        """The line of ``key`` inside that table (of its header when key is None); found
        with the profiles' own rule (hsp_rdma.core.profiles)."""
        start, end = self.span(table, index)
        base = self.text.count("\n", 0, start)
        if table is not None and end <= start:  # no [[table]] header: an inline array
            return self.line(table)
        if key is None:
            return base + 1
        found = line_of(self.text[start:end], key)
        if found is not None:
            return base + found
        if table is None:  # a table header, not a key: [checks], [[steps]]
            headers = [pos for pos, name in self.headers if name == key]
            return self.text.count("\n", 0, headers[0]) + 1 if headers else None
        return base + 1

    def error(self, message: str, key: str | None, table: str | None = None,
              index: int = 0) -> ConfigError:
        return ConfigError(message, self.path, self.line(key, table, index))


def _toml(value: Any) -> str:
    """A value as it is written in the file (true, not Python's True)."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _fields(src: _Source, raw: dict[str, Any], fields: dict[str, Checker],
            table: str, index: int, what: str, allowed: tuple[str, ...] | None = None,
            owner: str | None = None) -> dict[str, Any]:
    allowed = tuple(fields) if allowed is None else allowed
    owner = owner or what
    out = {}
    for key, value in raw.items():
        if key not in allowed:
            hint = _did_you_mean(key, allowed)
            listed = ", ".join(allowed) if allowed else "no fields"
            raise src.error(f"{what}: unknown field {key!r}{hint} ({owner} takes: {listed})",
                            key, table, index)
        check, allowed_values = fields[key]
        parsed = check(value)
        if parsed is None:
            raise src.error(f"{what}: {key} = {_toml(value)} should be {allowed_values}", key,
                            table, index)
        out[key] = parsed
    return out


def _table(src: _Source, raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw[key]
    if not isinstance(value, dict):
        raise src.error(f"{key} should be a table ([{key}])", key)
    return value


def _parse_step(src: _Source, raw: Any, index: int,
                step_fields: dict[str, Checker] = STEP_FIELDS) -> Step:
    what = f"step {index + 1}"
    line = src.line(None, "steps", index)
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} should be a table ([[steps]] with do = ...)", src.path,
                          src.line("steps"))
    action = raw.get("do")
    if action is None:
        raise ConfigError(f"{what}: missing field 'do' (one of {', '.join(ACTIONS)})",
                          src.path, line)
    if action not in ACTIONS:
        hint = _did_you_mean(str(action), ACTIONS)
        raise src.error(f"{what}: unknown step {action!r}{hint} (steps: "
                        f"{', '.join(ACTIONS)})", "do", "steps", index)
    needed, optional = ACTIONS[action]
    what = f"step {index + 1} ({action})"
    values = _fields(src, {k: v for k, v in raw.items() if k != "do"}, step_fields, "steps",
                     index, what, needed + optional, action)
    missing = [k for k in needed if k not in values]
    if missing:
        raise ConfigError(f"{what}: missing field(s) {', '.join(missing)}", src.path, line)
    if action == "wait":
        if ("for" in values) == ("until" in values):
            raise ConfigError(f"{what}: give either for = DURATION or until = EVENT (events: "
                              f"{', '.join(EVENTS)})", src.path, line)
        if "timeout" in values and "until" not in values:
            raise src.error(f"{what}: timeout goes with until, not with for", "timeout",
                            "steps", index)
    if values.get("until") in NPLUS1_EVENTS and step_fields is STEP_FIELDS:
        raise src.error(f"{what}: until = \"{values['until']}\" is an n+1 drill's event (the "
                        "standby host refused a takeover): add [nplus1] actives = N",
                        "until", "steps", index)
    if action == "gso" and "node" in values and step_fields is STEP_FIELDS:
        raise src.error(f"{what}: a pair's GSO starts on the node serving, without node; node "
                        "names the active of an n+1 drill that switches over to the standby "
                        "host ([nplus1] actives = N)", "node", "steps", index)
    if action == "gso" and step_fields is not STEP_FIELDS and values.get("node") in (
            None, "standby"):
        raise src.error(f"{what}: an n+1 drill's gso needs node = an active by name (the one "
                        "that switches over to the standby host)", "node", "steps", index)
    if action == "corrupt" and values.get("node", "standby") != "standby":
        raise src.error(f"{what}: only the standby is corrupted (the audit repairs it from "
                        "the active, which is authoritative)", "node", "steps", index)
    if action == "corrupt":
        values["node"] = "standby"
    return Step(action, line, **{_STEP_TO_ATTR.get(k, k): v for k, v in values.items()})


def _check_sequence(src: _Source, steps: list[Step]) -> None:
    """Steps that cannot follow each other: resuming a node never paused, plugging a fabric
    never pulled, anything but a wait on a killed node."""
    paused: set[str] = set()
    pulled: set[tuple[str, str]] = set()
    killed: set[str] = set()
    for i, step in enumerate(steps):
        where = f"step {i + 1} ({step.do})"
        if step.node in killed and step.do not in ("corrupt", "restart"):
            raise ConfigError(f"{where}: the {step.node} was killed at an earlier step",
                              src.path, step.line)
        if step.do == "pause":
            if step.node in paused:
                raise ConfigError(f"{where}: the {step.node} is paused already", src.path,
                                  step.line)
            paused.add(step.node)  # type: ignore[arg-type]
        elif step.do == "resume":
            if step.node not in paused:
                raise ConfigError(f"{where}: the {step.node} was not paused; pause it first",
                                  src.path, step.line)
            paused.discard(step.node)  # type: ignore[arg-type]
        elif step.do == "kill":
            killed.add(step.node)  # type: ignore[arg-type]
            paused.discard(step.node)  # type: ignore[arg-type]
        elif step.do == "restart":
            if step.node not in killed:
                raise ConfigError(f"{where}: the {step.node} was not killed; kill it first",
                                  src.path, step.line)
            killed.discard(step.node)  # type: ignore[arg-type]
        elif step.do == "pull":
            pulled.add((step.node, step.fabric))  # type: ignore[arg-type]
        elif step.do == "plug":
            if (step.node, step.fabric) not in pulled:
                raise ConfigError(f"{where}: fabric {step.fabric} on the {step.node} was not "
                                  "pulled; pull it first", src.path, step.line)
            pulled.discard((step.node, step.fabric))  # type: ignore[arg-type]
        elif step.do == "heal":
            pulled.clear()


def parse_scenario(text: str, path: str | None = None, name: str | None = None) -> Scenario:
    """The scenario in TOML ``text``; ``path`` names it in errors, ``name`` defaults to the
    file's stem."""
    src = _Source(text, path)
    raw = load_toml(text, path)
    for key in raw:
        if key not in TOP_FIELDS:
            raise src.error(f"unknown field {key!r}{_did_you_mean(key, TOP_FIELDS)} (a "
                            f"scenario has: {', '.join(TOP_FIELDS)})", key)
    missing = [k for k in ("description", "workload", "steps") if k not in raw]
    if missing:
        raise ConfigError(f"missing field(s): {', '.join(missing)}", path)
    description = raw["description"]
    if not isinstance(description, str) or not description.strip():
        raise src.error("description should be a sentence saying what the drill shows",
                        "description")

    w = _fields(src, _table(src, raw, "workload"), WORKLOAD_FIELDS, "workload", 0, "workload")
    missing = [k for k in WORKLOAD_FIELDS if k not in w and k not in WORKLOAD_OPTIONAL]
    if missing:
        raise ConfigError(f"workload: missing field(s) {', '.join(missing)}", path,
                          src.line(None, "workload"))
    workload = Workload(**w)

    raw_steps = raw["steps"]
    if not isinstance(raw_steps, list) or not raw_steps:
        raise src.error("steps should be one or more [[steps]] tables", "steps")
    fabrics = FABRICS
    if "fabrics" in raw:
        fabrics = _targets_of(raw["fabrics"], FABRICS)
        if fabrics is None:
            raise src.error(f"fabrics = {_toml(raw['fabrics'])} should be a list of "
                            + " or ".join(f'"{f}"' for f in FABRICS) + ", each once", "fabrics")
    nplus1 = None
    step_fields = STEP_FIELDS
    if "nplus1" in raw:
        n = _fields(src, _table(src, raw, "nplus1"), NPLUS1_FIELDS, "nplus1", 0, "nplus1")
        if "actives" not in n:
            raise ConfigError("nplus1: missing field actives (how many actives the n+1 "
                              f"standby host protects, 2 to {MAX_ACTIVES})", path,
                              src.line(None, "nplus1"))
        nplus1 = n["actives"]
        names = (*ACTIVE_NAMES[:nplus1], "standby")
        step_fields = {**STEP_FIELDS, "node": (
            _one_of(names)[0], "one of " + ", ".join(f'"{v}"' for v in names)
            + " (an n+1 drill's actives by name, or its standby host)")}
    steps = [_parse_step(src, s, i, step_fields) for i, s in enumerate(raw_steps)]
    for i, step in enumerate(steps):
        if step.fabric is not None and step.fabric not in fabrics:
            raise src.error(f"step {i + 1} ({step.do}): fabric {step.fabric} is not one of the "
                            f"drill's fabrics ({', '.join(fabrics)})", "fabric", "steps", i)
    _check_sequence(src, steps)

    checks = Checks()
    if "checks" in raw:
        c = _fields(src, _table(src, raw, "checks"), CHECK_FIELDS, "checks", 0, "checks")
        checks = Checks(**c)
        if checks.audit_repairs is not None and not any(s.do == "audit" for s in steps):
            raise src.error("checks: audit_repairs needs an audit step", "audit_repairs",
                            "checks")
        if checks.max_traffic_stop_ms is not None and not any(s.do == "pull" for s in steps):
            raise src.error("checks: max_traffic_stop_ms needs a pull step (it bounds the "
                            "stop around each pull)", "max_traffic_stop_ms", "checks")
        if checks.takeover_refused is not None and nplus1 is None:
            raise src.error("checks: takeover_refused is an n+1 drill's check (the standby "
                            "host refuses a second takeover): add [nplus1] actives = N",
                            "takeover_refused", "checks")
        fabric_checks = [k for k in ("fabric_switch", "max_fabric_switches")
                         if getattr(checks, k) is not None]
        if fabric_checks and len(fabrics) < 2:
            raise src.error(f"checks: {fabric_checks[0]} needs two fabrics (the drill has "
                            f"fabrics = [\"{fabrics[0]}\"]: the carrier has nowhere to move)",
                            fabric_checks[0], "checks")
    stem = Path(path).stem if path else "scenario"
    return Scenario(name or stem, description.strip(), workload, tuple(steps), checks,
                    fabrics, path, nplus1)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read scenario: {why}", str(path)) from None
    return parse_scenario(text, str(path))


def shipped() -> list[Path]:
    """The drills shipped with the package, by name."""
    return sorted(SHIPPED_DIR.glob("*.toml"), key=lambda p: p.stem)


def find_scenario(arg: str) -> Path:
    """A scenario argument as a path, or else the name of a shipped drill."""
    path = Path(arg)
    if path.is_file():
        return path
    by_name = {p.stem: p for p in shipped()}
    name = arg.removesuffix(".toml")
    if name in by_name and "/" not in arg:
        return by_name[name]
    names = ", ".join(by_name) or f"none (reinstall hsp_rdma: {SHIPPED_DIR} is empty)"
    raise ConfigError(f"no scenario file {arg!r} and no shipped drill of that name"
                      f"{_did_you_mean(name, by_name)} (shipped drills: {names})")
