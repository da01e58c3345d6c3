"""Hardware profiles: per-NIC facts and tuning, one TOML file per device kind.

``parse_profile`` validates strictly (unknown field, wrong type, value out of range: a
ConfigError naming the file, line, field and allowed values); ``pick_profile`` chooses by
device name. Only ``load_profile``/``load_profiles`` read files.

Where profiles come from, first one wins by ``name`` (so a user adjusts a shipped profile by
copying it to an earlier directory): a user directory (CLIs: ``--profiles DIR``), the
directories in ``$HSP_PROFILES`` (':'-separated), ``/etc/hsp/hw-profiles``, then the ones
shipped in the package. ``profile_dirs`` gives that list; ``load_profiles()`` reads it.
"""

from __future__ import annotations

import enum
import fnmatch
import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsp_rdma.errors import ConfigError

# The shipped profiles: hsp_rdma/hw-profiles in the installed package; in a checkout a symlink
# to the top-level hw-profiles/.
PACKAGED_PROFILE_DIR = Path(__file__).resolve().parents[1] / "hw-profiles"
SYSTEM_PROFILE_DIR = Path("/etc/hsp/hw-profiles")  # skipped when absent
PROFILES_ENV = "HSP_PROFILES"
HOW_TO_ADD = (f"add a TOML profile to a directory given with --profiles DIR, to one "
              f"listed in {PROFILES_ENV} (':'-separated), or to {SYSTEM_PROFILE_DIR}")

IB_MTUS = (256, 512, 1024, 2048, 4096)
# RDMA Writes in flight during a GSO copy: a VI's send queue (256 descriptors) less the
# control frames that share it (16), the header and the landed read behind the last writes;
# the engine checks the same bound.
MAX_QUEUE_DEPTH = 238
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_SLEEP = re.compile(r"sleep_us:(\d+)\Z")
MAX_SLEEP_US = 100_000


class Transport(enum.Enum):
    """The RDMA transport of the device's port."""

    ROCE_V2 = "roce_v2"
    IWARP = "iwarp"
    IB = "ib"
    # The software VIA provider (``soft:NAME``): VIPL over TCP, no RDMA device at all.
    SOFT_TCP = "soft_tcp"


class GidRule(enum.Enum):
    """How to choose the GID index when the profile does not give a number."""

    ROCE_V2_IPV4 = "roce_v2_ipv4"  # the RoCE v2 GID of the port's IPv4 address
    ZERO = "zero"  # index 0 (iWARP, InfiniBand)
    BY_LINK_LAYER = "by_link_layer"  # InfiniBand port: ZERO; Ethernet port: ROCE_V2_IPV4


class PollMode(enum.Enum):
    """How B looks at the marker word between reads."""

    BUSY = "busy"  # spin: fine when the NIC, not the CPU, moves the data
    YIELD = "yield"  # sched_yield between looks: soft devices on one vCPU
    SLEEP = "sleep"  # sleep ``sleep_us`` between looks
    # asleep on the receive completion channel: after the marker, A sends a zero-length
    # message (the doorbell) on the same queue pair; B looks at the word when it rings
    DOORBELL = "doorbell"


@dataclass(frozen=True, slots=True)
class MarkerPoll:
    """``marker_poll`` parsed: a mode and, for SLEEP, the pause in microseconds."""

    mode: PollMode
    sleep_us: int = 0


@dataclass(frozen=True, slots=True)
class Profile:
    """One device kind. ``mtu`` is the path MTU to ask for (the port's active MTU caps it)."""

    name: str
    match: tuple[str, ...]
    transport: Transport
    mtu: int
    gid_index_rule: GidRule | int
    max_inline: int
    chunk_size: int
    queue_depth: int
    rdma_read: bool
    marker_poll: MarkerPoll
    # How a datapath thread waits for completions: "busy" polls the CQ, "event" sleeps on its
    # completion channel (soft devices whose work runs in kernel threads on the same CPUs).
    completion_wait: str = "busy"
    # The GSO image digest: "crc32" (zlib), "crc32c" (the compiled CRC-32C) or "blake2b".
    digest: str = "crc32"
    # The copy's digest taken in a worker thread beside it (the compiled digests run
    # without the GIL), not inline between the posts: a push's on the active, a pull's on
    # the standby (following the reads as they land). Worth it where a second CPU is free
    # while the copy runs (the soft provider on one host); not in a 1-vCPU lab guest, where
    # the device's own kernel work needs that CPU.
    digest_thread: bool = False
    # With two fabrics, a push's copy striped across both (a second VI on the other fabric;
    # both nodes must say so): the default is what `hsp-bench gso --fabrics both` measured
    # faster on the device.
    stripe: bool = False
    # When a link comes up, a zero-length RDMA Write into each of the peer's GSO regions (image
    # and marker); in a pull, the first read (4 KiB) alone. The soft provider grants a same-host
    # peer direct access to a shared region on its first write or read there; primed, the first
    # switch-over's writes and a pull's reads are direct copies too, not frames the other side
    # copies. Off for verbs devices: there it gains nothing.
    prime_grants: bool = False
    # A pull's RDMA Read size (0: chunk_size). Reads and writes need not be best at the same
    # size: on rxe 1 MiB writes copy faster than 64 KiB ones, 1 MiB reads slower.
    read_chunk_size: int = 0
    notes: str = ""
    path: str | None = None

    @property
    def read_chunk(self) -> int:
        """A pull's RDMA Read size: read_chunk_size, or chunk_size when it names none."""
        return self.read_chunk_size or self.chunk_size

    def matches(self, device_name: str) -> bool:
        """Whether ``device_name`` (e.g. "rxe0") matches one of this profile's globs."""
        return any(fnmatch.fnmatchcase(device_name, glob) for glob in self.match)

    def gid_index(self, gids: Sequence[tuple[str, str]], link_layer: str = "Ethernet") -> int:
        """The GID index to use, given the port's GID table as (gid, type) pairs by index.

        Types are sysfs's words ("RoCE v2", "IB/RoCE v1"); an IPv4 GID is IPv4-mapped
        (``0000:0000:0000:0000:0000:ffff:…``). ``link_layer`` is the port's ("InfiniBand" or
        "IB", "Ethernet"; any case); only the ``by_link_layer`` rule reads it.
        """
        if isinstance(self.gid_index_rule, int):
            return self.gid_index_rule
        if self.gid_index_rule is GidRule.ZERO:
            return 0
        if self.gid_index_rule is GidRule.BY_LINK_LAYER:
            layer = link_layer.strip().lower()
            if layer in ("infiniband", "ib"):
                return 0
            if layer != "ethernet":
                raise ConfigError(
                    f"profile {self.name}: link layer {link_layer!r} is neither InfiniBand nor "
                    "Ethernet; set gid_index_rule to a number for this port", self.path)
        for index, (gid, kind) in enumerate(gids):
            if kind.strip() == "RoCE v2" and gid.lower().startswith("0000:0000:0000:0000:0000:ffff:"):
                return index
        raise ConfigError(
            f"profile {self.name}: no RoCE v2 GID of an IPv4 address on this port; "
            "give the netdev an IPv4 address or set gid_index_rule to a number",
            self.path,
        )


# field -> (checker, description of the allowed values); checkers return the parsed value
# or None when the value is not allowed.
def _int_in(low: int, high: int):
    def check(value: Any) -> int | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return value if ok else None

    return check, f"an integer between {low} and {high}"


def _one_of(enum_type: type[enum.Enum]):
    def check(value: Any):
        try:
            return enum_type(value) if isinstance(value, str) else None
        except ValueError:
            return None

    return check, "one of " + ", ".join(f'"{m.value}"' for m in enum_type)


def _check_name(value: Any) -> str | None:
    return value if isinstance(value, str) and _NAME.match(value) else None


def _check_match(value: Any) -> tuple[str, ...] | None:
    globs = [value] if isinstance(value, str) else value
    if not isinstance(globs, list) or not globs:
        return None
    if not all(isinstance(g, str) and g.strip() for g in globs):
        return None
    return tuple(globs)


def _check_mtu(value: Any) -> int | None:
    return value if type(value) is int and value in IB_MTUS else None


def _check_gid(value: Any) -> GidRule | int | None:
    if type(value) is int:
        return value if 0 <= value <= 255 else None
    return _one_of(GidRule)[0](value)


def _check_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _check_poll(value: Any) -> MarkerPoll | None:
    if not isinstance(value, str):
        return None
    if value in ("busy", "yield", "doorbell"):
        return MarkerPoll(PollMode(value))
    sleep = _SLEEP.match(value)
    if sleep and 1 <= int(sleep.group(1)) <= MAX_SLEEP_US:
        return MarkerPoll(PollMode.SLEEP, int(sleep.group(1)))
    return None


def _check_notes(value: Any) -> str | None:
    return value if isinstance(value, str) else None


DIGESTS = ("crc32", "crc32c", "blake2b")  # the GSO image digests (gso.DigestAlgo by name)

FIELDS: dict[str, tuple[Any, str]] = {
    "name": (_check_name, "a lower-case name of letters, digits, '_' and '-'"),
    "match": (_check_match, 'a device-name glob or a non-empty list of globs, e.g. "rxe*"'),
    "transport": _one_of(Transport),
    "mtu": (_check_mtu, "one of " + ", ".join(map(str, IB_MTUS))),
    "gid_index_rule": (_check_gid, ", ".join(f'"{r.value}"' for r in GidRule)
                       + " or an integer between 0 and 255"),
    "max_inline": _int_in(0, 4096),
    "chunk_size": _int_in(4096, 1 << 30),
    "queue_depth": _int_in(1, MAX_QUEUE_DEPTH),
    "rdma_read": (_check_bool, "true or false"),
    "marker_poll": (_check_poll, (f'"busy", "yield", "doorbell" or "sleep_us:N", N from 1 '
                                  f'to {MAX_SLEEP_US}')),
    "completion_wait": (lambda v: v if v in ("busy", "event") else None, '"busy" or "event"'),
    "digest": (lambda v: v if v in DIGESTS else None, ", ".join(f'"{d}"' for d in DIGESTS)),
    "digest_thread": (_check_bool, "true or false"),
    "stripe": (_check_bool, "true or false"),
    "prime_grants": (_check_bool, "true or false"),
    "read_chunk_size": _int_in(4096, 1 << 30),
    "notes": (_check_notes, "a string"),
}
OPTIONAL = frozenset({"notes", "completion_wait", "digest", "digest_thread", "stripe",
                      "prime_grants", "read_chunk_size"})


def line_of(text: str, key: str) -> int | None:
    """The 1-based line of TEXT where KEY is assigned (``key =`` at a line's start), or None."""
    found = re.search(rf"^[ \t]*{re.escape(key)}[ \t]*=", text, re.MULTILINE)
    return text.count("\n", 0, found.start()) + 1 if found else None


def load_toml(text: str, source: str | None = None) -> dict[str, Any]:
    """TOML ``text`` as a dict, or a ConfigError naming ``source`` and the line that is not
    TOML. Every TOML file of the project (profiles, node configs, scenarios) is read here."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        raise ConfigError(f"not valid TOML: {exc}", source,
                          int(line.group(1)) if line else None) from None


def parse_profile(text: str, path: str | None = None) -> Profile:
    """The profile in TOML ``text``; ``path`` only names the source in errors."""
    raw = load_toml(text, path)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in FIELDS:
            raise ConfigError(
                f"unknown field {key!r}; the fields are: {', '.join(FIELDS)}",
                path, line_of(text, key))
        check, allowed = FIELDS[key]
        parsed = check(value)
        if parsed is None:
            raise ConfigError(f"field {key} = {value!r}: should be {allowed}",
                              path, line_of(text, key))
        values[key] = parsed
    missing = [key for key in FIELDS if key not in values and key not in OPTIONAL]
    if missing:
        raise ConfigError(f"missing field(s): {', '.join(missing)}", path)
    return Profile(**values, path=path)


def load_profile(path: str | Path) -> Profile:
    """Read and validate one profile file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read profile: {exc.strerror}", str(path)) from None
    return parse_profile(text, str(path))


def profile_dirs(user_dir: str | Path | None = None) -> list[Path]:
    """The directories profiles are read from, first one wins (see the module's docstring).

    ``user_dir`` and every ``$HSP_PROFILES`` entry must exist (a ConfigError names the one
    that does not); ``/etc/hsp/hw-profiles`` is skipped when absent.
    """
    dirs: list[Path] = []
    if user_dir is not None:
        dirs.append(_existing_dir(Path(user_dir), "the profile directory given (--profiles)"))
    for entry in os.environ.get(PROFILES_ENV, "").split(":"):
        if entry:
            dirs.append(_existing_dir(Path(entry), f"a directory in {PROFILES_ENV}"))
    if SYSTEM_PROFILE_DIR.is_dir():
        dirs.append(SYSTEM_PROFILE_DIR)
    dirs.append(PACKAGED_PROFILE_DIR)
    return dirs


def _existing_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ConfigError(f"{what} is not an existing directory: create it, or correct the "
                          "path", str(path))
    return path


def _load_dir(directory: Path) -> list[Profile]:
    profiles = [load_profile(f) for f in sorted(directory.glob("*.toml"))]
    check_unique(profiles)
    return profiles


def load_profiles(directory: str | Path | None = None, *,
                  user_dir: str | Path | None = None) -> list[Profile]:
    """The hardware profiles: of ``directory`` alone, or else searched along ``profile_dirs``.

    One directory: every ``*.toml`` in it, by file name; names must be unique. Searched
    (``directory`` None): each directory's profiles, names unique within it; a name already
    loaded from an earlier directory hides the later profile of that name.
    """
    if directory is not None:
        if user_dir is not None:
            raise ValueError("give either directory (read it alone) or user_dir (searched)")
        directory = Path(directory)
        profiles = _load_dir(directory)
        if not profiles:
            raise ConfigError("no hardware profiles (*.toml) found", str(directory))
        return profiles
    dirs = profile_dirs(user_dir)
    chosen: dict[str, Profile] = {}
    for each in dirs:
        for profile in _load_dir(each):
            chosen.setdefault(profile.name, profile)
    if not chosen:
        raise ConfigError(f"no hardware profiles (*.toml) found in {_listed(dirs)}; the "
                          f"package ships some in {PACKAGED_PROFILE_DIR}: reinstall hsp_rdma, "
                          f"or {HOW_TO_ADD}")
    return list(chosen.values())


def _listed(dirs: Iterable[Path | str]) -> str:
    return ", ".join(str(d) for d in dirs)


def check_unique(profiles: Iterable[Profile]) -> None:
    """Raise ConfigError when two profiles share a name."""
    seen: dict[str, Profile] = {}
    for profile in profiles:
        if profile.name in seen:
            raise ConfigError(f"profile name {profile.name!r} also used by "
                              f"{seen[profile.name].path}", profile.path)
        seen[profile.name] = profile


def pick_profile(device_name: str, profiles: Iterable[Profile], *,
                 searched: Iterable[str | Path] | None = None) -> Profile:
    """The one profile whose ``match`` globs match ``device_name``.

    ``searched`` (``profile_dirs``' answer) names the search path when none matches; without
    it the message names the directories the given profiles came from.
    """
    profiles = list(profiles)
    found = [p for p in profiles if p.matches(device_name)]
    if len(found) == 1:
        return found[0]
    if not found:
        known = "; ".join(f"{p.name}: {', '.join(p.match)}" for p in profiles) or "none loaded"
        if searched is None:
            searched = dict.fromkeys(str(Path(p.path).parent) for p in profiles if p.path)
        where = _listed(searched) or "no directory"
        raise ConfigError(f"no hardware profile matches device {device_name!r} (profiles: "
                          f"{known}; searched, first wins: {where}); for this NIC kind, "
                          f"{HOW_TO_ADD}")
    names = ", ".join(p.name for p in found)
    raise ConfigError(f"device {device_name!r} matches several profiles ({names}); "
                      "make their match globs disjoint")
