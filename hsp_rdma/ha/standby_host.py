"""n+1 (issue 13; DESIGN.md "Dual fabric X/Y and n+1"): one standby host protects n actives.

``StandbyHost(configs)`` runs one ``Node`` + ``FailoverEngine`` per protected active, in one
process. Each config is the standby's side of one pair (``[node] role = "standby"``, ``peer`` =
the active it protects) with its own P.mem, disks, state_dir (epochs, dirty bitmaps), control
socket; the sessions may share the host's NICs (a channel's discriminator names both nodes of
its pair, so each session's channels are told apart). A session is named by the active it
protects (its ``peer``).

Memory. What one protected active costs the standby host is computed from its config
(``session_memory``) and checked at construction against the process's RLIMIT_MEMLOCK:

- pinned (registered memory, charged to RLIMIT_MEMLOCK per registration): P.mem, registered
  once per fabric port (the same pages, charged again on each fabric), and, per fabric, five
  channels (health, oam, pmem, disk, config) each with a receive buffer of
  ``message_size * credits`` and a send buffer of ``message_size * (credits + 4)`` (each
  rounded up to whole pages, as the kernel pins pages);
- resident, not charged again: the P.mem mmap is one anonymous mapping; its pages are pinned by
  the registrations above, so it is resident once (``resident`` counts it once);
- not pinned: the disks (the page cache or the device), the P.mem store of ``[pmem] persist``
  (a file), the core's sessions (Python heap: frames kept until acknowledged), the verbs
  provider's queues (rxe and siw allocate QP/CQ rings in the kernel and map them; they are not
  charged to RLIMIT_MEMLOCK), the soft provider (registers nothing: over soft the figures are
  what verbs would pin).
- a session that carries a GSO engine (``ha/switchover.py``; ``StandbyHost(..., gso=...)``)
  pins, per fabric, its own registrations too: the state image (header, P.mem, the
  application blob: ``HEADER_SPACE + pmem_size + gso_blob``, whole pages), two marker pages
  and ``CTL_SIZE * 2 * CTL_SLOTS`` (8 KiB) of control buffers. The image is a mapping of its
  own (a header in front of P.mem), so it is resident as well.

A set of sessions whose pinned bytes, with what the process has pinned already (``VmPin``),
would exceed the limit is refused, naming the session that goes over and the numbers. A
process with CAP_IPC_LOCK (root, usually) is not limited by RLIMIT_MEMLOCK; nor is
"unlimited".

Takeover exclusivity. Every session's engine gets a ``takeover_guard``: while one session
serves, or is taking over (its peer suspected: fencing, in doubt, promoting), another session
whose peer is lost does not take over; its engine raises the alarm
"n+1 standby already active for <peer>; cannot take over for <other>" and stays a standby. The
guard runs in the suspecting session's loop thread; a host lock and a claim (held from the
guard's go-ahead until that session's failover machine has left the standby states) keep two
sessions that suspect at the same moment from both going ahead.

GSO to the n+1 standby. A session may carry a GSO engine (``attach_gso``: its own
discriminator, its state image the size of that session's P.mem, its epochs under the
session's state_dir), so its active can switch over gracefully to this host: the session
becomes the active of that pair, the old active its standby. The same guard covers it: the
session's GSO machine is a ``GuardedGsoMachine``, which asks the host when a Start-GSO of a
new epoch reaches it resting as a standby. Refused (another session serves, is taking over by
failover or by GSO, or holds the claim), the machine takes its own table's refusal row
(``START_GSO_BAD`` in NORMAL_STANDBY: the epoch is adopted, so a duplicate is ignored, and
Abort(BUSY) goes back; nothing on this host stops). The active gets that Abort in PRE_GSO,
before its freeze: its application never stopped, it keeps serving (core/gso.py's PRE_GSO
row). The refusal is the failover refusal's alarm ("n+1 standby already active for <a>;
cannot take over for <b>", with "(GSO refused)") on that session's failover engine, noted
``takeover_refused``. A session in a GSO as its target (its GSO machine out of the resting
states) or serving after one counts as taking over / active for the failover guard too, and
a go-ahead is a claim as for a failover: of two Start-GSOs (or a Start-GSO and a suspicion)
at the same moment, one goes ahead. Never two actives on this host: every way a session
becomes active (promotion, GSO) passes the one guard under the one lock.
"""

from __future__ import annotations

import mmap
import resource
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Self

from hsp_rdma.core import failover as fo
from hsp_rdma.core import gso
from hsp_rdma.errors import HspError
from hsp_rdma.ha.config import NodeConfig, load_node_config
from hsp_rdma.ha.failover_engine import FailoverEngine
from hsp_rdma.ha.image import HEADER_SPACE
from hsp_rdma.ha.node import CHANNELS, Node
from hsp_rdma.ha.switchover import CTL_SIZE, CTL_SLOTS
from hsp_rdma.units import format_size

SEND_EXTRA = 4  # send slots per channel beyond the credits (ha/node.py's _FabricPort)
CAP_IPC_LOCK = 14  # linux/capability.h
# the session's failover machine is taking over (its peer suspected) in these states
TAKING_OVER = frozenset({fo.FoState.PEER_LOST, fo.FoState.FENCING, fo.FoState.IN_DOUBT,
                         fo.FoState.PROMOTING})
CLAIM_S = 2.0  # a go-ahead whose session's machine has not moved yet holds this long at most
# a session's GSO engine (ha/switchover.py): two marker pages (the target's, the source's)
# and its control slots, CTL_SLOTS receive + CTL_SLOTS send of CTL_SIZE bytes, per fabric
GSO_MARKER_PAGES = 2
GSO_CTL_BYTES = CTL_SIZE * (CTL_SLOTS + CTL_SLOTS)  # 8 KiB
GSO_BLOB = 4096  # the application blob in a session's GSO image, unless told
GSO_RESTING = frozenset({gso.GsoState.NORMAL_ACTIVE, gso.GsoState.NORMAL_STANDBY})


class StandbyHostError(HspError):
    """A set of sessions this host cannot run (the message says which and what to do)."""


def _pages(n: int) -> int:
    return -(-n // mmap.PAGESIZE) * mmap.PAGESIZE


def gso_memory(cfg: NodeConfig, blob: int = GSO_BLOB) -> dict:
    """What a GSO engine for CFG's session registers per fabric, in bytes (whole pages): its
    state image (header, P.mem, the application blob of BLOB bytes), two marker pages, its
    control buffers; ``per_fabric`` their sum."""
    image = _pages(HEADER_SPACE + cfg.pmem_size + blob)
    markers = GSO_MARKER_PAGES * mmap.PAGESIZE
    ctl = _pages(GSO_CTL_BYTES)
    return {"image": image, "markers": markers, "control": ctl, "blob": blob,
            "per_fabric": image + markers + ctl}


def session_memory(cfg: NodeConfig, gso_blob: int | None = None) -> dict:
    """What protecting the active of CFG costs this host, in bytes (see the module's
    docstring): ``pinned`` (charged to RLIMIT_MEMLOCK), ``resident`` (pinned pages counted
    once), ``not_pinned`` (what else the session holds), per fabric and in total. GSO_BLOB
    (not None): the session carries a GSO engine with an application blob of that many
    bytes; its registrations are counted (``gso``)."""
    rep = cfg.replication
    fabrics = len(cfg.fabrics)
    pmem = _pages(cfg.pmem_size)
    recv = _pages(rep.message_size * rep.credits)
    send = _pages(rep.message_size * (rep.credits + SEND_EXTRA))
    channels = len(CHANNELS) * (recv + send)
    g = gso_memory(cfg, gso_blob) if gso_blob is not None else None
    gso_pf = g["per_fabric"] if g else 0
    per_fabric = pmem + channels + gso_pf
    return {
        "session": cfg.peer, "node": cfg.name, "fabrics": fabrics,
        "pmem_size": cfg.pmem_size, "message_size": rep.message_size, "credits": rep.credits,
        "per_fabric": {"pmem": pmem, "channel_recv": recv, "channel_send": send,
                       "channels": len(CHANNELS), "channel_buffers": channels,
                       **({"gso": gso_pf} if g else {}), "pinned": per_fabric},
        "gso": g,
        "pinned": {"pmem": pmem * fabrics, "channel_buffers": channels * fabrics,
                   **({"gso": gso_pf * fabrics} if g else {}), "total": per_fabric * fabrics},
        # the GSO engine's buffers are registered again on each fabric: resident once
        "resident": pmem + channels * fabrics + gso_pf,
        "not_pinned": {"disks": sum(d.size or 0 for d in cfg.disks),
                       "disks_of_unknown_size": sum(d.size is None for d in cfg.disks),
                       "pmem_store": cfg.pmem_size if cfg.pmem_persist else 0},
    }


@dataclass(slots=True)
class GuardedGsoMachine(gso.GsoMachine):
    """A session's GSO machine on an n+1 standby host: a Start-GSO of a new epoch that reaches
    it resting as a standby is first put to ``guard(epoch)`` (the host: None, go ahead; a
    text, refused), through the machine's public ``refuse_start``: a refused one is the
    table's ``START_GSO_BAD`` with reason BUSY, so the machine takes its own refusal row
    (epoch adopted, Abort(BUSY) sent, nothing stops); the table is core/gso.py's, unchanged.
    The guard is asked once per epoch (the classifier and the Abort's reason both ask)."""

    guard: Callable[[int], str | None] | None = None
    refused_epoch: int = 0

    @classmethod
    def guarding(cls, machine: gso.GsoMachine,
                 guard: Callable[[int], str | None]) -> GuardedGsoMachine:
        """MACHINE's state (epochs, timeouts, region) in a guarded machine."""
        m = cls(**{f.name: getattr(machine, f.name) for f in fields(gso.GsoMachine)})
        m.guard, m.refuse_start = guard, cls._ask_guard
        return m

    def _ask_guard(self, msg: gso.StartGso) -> gso.AbortReason | None:
        """``refuse_start``: only a new epoch reaching the machine resting as a standby."""
        if self.state is not gso.GsoState.NORMAL_STANDBY:
            return None
        if msg.epoch == self.refused_epoch:
            return gso.AbortReason.BUSY
        if self.guard is not None and msg.epoch > self.seen and self.guard(msg.epoch):
            self.refused_epoch = msg.epoch
            return gso.AbortReason.BUSY
        return None


def _has_ipc_lock() -> bool:
    """Whether this process holds CAP_IPC_LOCK (then RLIMIT_MEMLOCK does not bind it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def pinned_now() -> int:
    """Bytes this process has pinned now (``VmPin``: registered memory); 0 if unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmPin:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


SYS_IB = Path("/sys/class/infiniband")


def charges_despite_cap(device: str) -> bool:
    """Whether registering memory on DEVICE is held to RLIMIT_MEMLOCK even with
    CAP_IPC_LOCK: siw (its siw_umem_get compares pinned_vm with the limit and never asks for
    the capability; rxe and hardware go through ib_umem_get, which exempts CAP_IPC_LOCK). A
    siw device is the software iWARP one: node type RNIC, not backed by a bus device."""
    if device.startswith("soft:"):
        return False
    if device.startswith("siw"):
        return True
    try:
        rnic = "RNIC" in (SYS_IB / device / "node_type").read_text()
        virtual = "/devices/virtual/" in str((SYS_IB / device).resolve())
    except OSError:
        return False
    return rnic and virtual


def memlock_limit(devices: Iterable[str] = ()) -> tuple[int | None, str]:
    """The bytes this process may pin on DEVICES (None: no limit) and where that comes from:
    RLIMIT_MEMLOCK's soft limit, unless unlimited, or the process has CAP_IPC_LOCK and no
    device is siw (see ``charges_despite_cap``)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return None, "RLIMIT_MEMLOCK unlimited"
    siw = sorted({d for d in devices if charges_despite_cap(d)})
    if _has_ipc_lock():
        if not siw:
            return None, f"CAP_IPC_LOCK (RLIMIT_MEMLOCK {soft} bytes does not apply)"
        return soft, (f"RLIMIT_MEMLOCK (held even with CAP_IPC_LOCK: siw device "
                      f"{', '.join(siw)})")
    return soft, "RLIMIT_MEMLOCK"


def _mib(n: int) -> str:
    return f"{n} bytes ({n / (1 << 20):.2f} MiB)"


def _port_of(device: str):
    """The provider's discriminator -> port map for DEVICE (None: not known here)."""
    if device.startswith("soft:"):
        from hsp_rdma.via.providers import soft
        return soft.port_of
    try:
        from hsp_rdma.via.providers import verbs
    except ImportError:  # the compiled extension is missing: the node's start says so
        return None
    return verbs.port_of


def check_sessions(cfgs: list[NodeConfig]) -> None:
    """Refuse (StandbyHostError) a set of sessions one host cannot run side by side: a config
    that is not the standby's side, two sessions for one active, a shared state_dir, control
    socket or disk, two channels of different sessions on the same listening port."""
    if not cfgs:
        raise StandbyHostError("no session: give the standby's configuration of each pair it "
                               "protects (one TOML per protected active)")

    def where(c: NodeConfig) -> str:
        return f"{c.source}" if c.source else f"the session for {c.peer}"

    seen: dict[str, dict] = {"peer": {}, "state_dir": {}, "control socket": {}, "disk": {}}
    for c in cfgs:
        if c.role != "standby":
            raise StandbyHostError(
                f"{where(c)}: [node] role = \"{c.role}\": an n+1 standby host runs the "
                "standby's side of each pair; set role = \"standby\" (the active is the "
                f"other node, {c.peer})")
        for what, key in (("peer", c.peer), ("state_dir", str(c.state_dir)),
                          ("control socket", str(c.socket_path)),
                          *(("disk", str(d.path)) for d in c.disks)):
            other = seen[what].get(key)
            if other is not None:
                raise StandbyHostError(
                    f"the sessions for {other.peer} and {c.peer} have the same {what} "
                    f"({key}): each protected active needs its own"
                    + (" (one config per active)" if what == "peer" else ""))
            seen[what][key] = c
    # the sessions' listeners on one address: a discriminator maps to a port, and two
    # channels of different sessions that map to the same port could not both listen there
    ports: dict[tuple[str, str, int], tuple[str, str]] = {}
    for c, fab, chan, key in _channel_ports(cfgs):
        if key in ports and ports[key][0] != c.peer:
            p, other = ports[key]
            raise StandbyHostError(
                f"the sessions for {p} and {c.peer}: channel {other} of one and {chan} of "
                f"the other map to the same port {key[2]} on {fab.local} ({fab.rdma_device}, "
                f"fabric {fab.name}); rename one of the nodes, or give that session another "
                "local address")
        ports[key] = (c.peer, chan)


def _channel_ports(cfgs: Iterable[NodeConfig]):
    """(config, fabric, channel name, (device, local address, port)) of every channel
    listener of CFGS' sessions, on the devices whose discriminator -> port map is known."""
    for c in cfgs:
        for fab in c.fabrics:
            port_of = _port_of(fab.rdma_device)
            if port_of is None:
                continue
            for ch in CHANNELS:
                disc = Node._disc(SimpleNamespace(config=c), ch)
                yield c, fab, ch.name.lower(), (fab.rdma_device, fab.local, port_of(disc))


def check_memory(costs: dict[str, dict], limit: int | None, source: str,
                 pinned_before: int = 0) -> None:
    """Refuse (StandbyHostError) sessions (COSTS: session -> ``session_memory``) whose pinned
    bytes, added in order to PINNED_BEFORE, go over LIMIT: the session that goes over is
    named, with the numbers and what to do."""
    if limit is None:
        return
    total = pinned_before
    need = pinned_before + sum(c["pinned"]["total"] for c in costs.values())
    for peer, cost in costs.items():
        total += cost["pinned"]["total"]
        if total > limit:
            parts = ", ".join(f"{p}: {c['pinned']['total']}" for p, c in costs.items())
            raise StandbyHostError(
                f"the session for {peer} would bring this process's pinned memory to "
                f"{_mib(total)}, over its {source} of {_mib(limit)}; one protected active pins "
                "P.mem once per fabric and 5 channels' buffers per fabric, and with a GSO engine "
                "its image, 2 marker pages and 8 KiB of control buffers per fabric (bytes "
                "per session: "
                f"{parts}; already pinned: {pinned_before}). Raise the limit (ulimit -l, "
                "LimitMEMLOCK= in the systemd unit, memlock in /etc/security/limits.conf) to "
                f"at least {need} bytes, or protect fewer actives, or use a smaller [pmem] "
                "size, [replication] message_size or credits")


class StandbyHost:
    """One standby host's sessions, one per protected active. ``start()`` starts every
    session (each waits for its active), ``status()`` shows them all, ``close()`` ends them."""

    def __init__(self, configs: Iterable[NodeConfig | str | Path],
                 control_socket: str | Path | None = None,
                 gso: bool | Iterable[str] = False, gso_blob: int = GSO_BLOB):
        """GSO: the sessions (protected actives' names; True: all) that will carry a GSO
        engine (``attach_gso``), each with an application blob of GSO_BLOB bytes: their
        registrations are counted in the memory check."""
        cfgs = [c if isinstance(c, NodeConfig) else load_node_config(c) for c in configs]
        check_sessions(cfgs)
        self.configs = {c.peer: c for c in cfgs}
        wanted = set(self.configs) if gso is True else set(gso or ())
        unknown = sorted(wanted - set(self.configs))
        if unknown:
            raise StandbyHostError(f"GSO asked for {', '.join(unknown)}, which this host does "
                                   f"not protect (its sessions: {', '.join(self.configs)})")
        self.gso_sessions = wanted
        self.gso_blob = gso_blob
        self.gso_engines: dict = {}  # session -> its switchover.Engine (attach_gso)
        self.costs = {c.peer: session_memory(c, gso_blob if c.peer in wanted else None)
                      for c in cfgs}
        self.limit, self.limit_source = memlock_limit(
            f.rdma_device for c in cfgs for f in c.fabrics)
        self.pinned_before = pinned_now()
        check_memory(self.costs, self.limit, self.limit_source, self.pinned_before)
        self._lock = threading.Lock()
        self._claim: tuple[str, float] | None = None  # a go-ahead not yet seen in its machine
        self.refusals: list[dict] = []
        self.failed: dict[str, str] = {}  # session -> why its start failed
        self.started: set[str] = set()
        self.nodes: dict[str, Node] = {}
        self._closed = False
        self.engines: dict[str, FailoverEngine] = {}
        self.control_socket = Path(control_socket) if control_socket else None
        self._control = None
        try:
            for peer, cfg in self.configs.items():
                node = Node(cfg)
                self.nodes[peer] = node
                engine = FailoverEngine(node)
                engine.takeover_guard = (lambda p=peer: self._guard(p))
                self.engines[peer] = engine
        except BaseException:
            self.close()
            raise

    def attach_gso(self, peer: str, engine) -> None:
        """Session PEER carries ENGINE (a ``switchover.Engine`` opened as the standby, not
        serving yet): its machine becomes a ``GuardedGsoMachine`` asking this host before a
        Start-GSO. Call before the engine's thread runs."""
        if peer not in self.gso_sessions:
            raise StandbyHostError(
                f"a GSO engine for {peer}: this host was built without GSO for that session "
                "(its memory was not counted): give StandbyHost(..., gso=...) the session")
        if peer in self.gso_engines:
            raise StandbyHostError(f"session {peer} has a GSO engine already")
        self._check_gso_port(peer, engine)
        engine.machine = GuardedGsoMachine.guarding(
            engine.machine, lambda epoch, p=peer: self._gso_guard(p, epoch))
        self.gso_engines[peer] = engine

    def _check_gso_port(self, peer: str, engine) -> None:
        """The GSO listener of PEER must not map to the port of another session's listener
        (a channel, another GSO engine) on the same address."""
        taken: dict[tuple[str, str, int], str] = {
            key: f"channel {chan} of the session for {c.peer}"
            for c, _fab, chan, key in _channel_ports(self.configs.values())}
        for p, other in self.gso_engines.items():
            for fab in self.configs[p].fabrics:
                port_of = _port_of(fab.rdma_device)
                if port_of is not None:
                    taken[(fab.rdma_device, fab.local, port_of(other.discriminator))] = (
                        f"the GSO listener of the session for {p}")
        for fab in self.configs[peer].fabrics:
            port_of = _port_of(fab.rdma_device)
            if port_of is None:
                continue
            key = (fab.rdma_device, fab.local, port_of(engine.discriminator))
            if key in taken:
                raise StandbyHostError(
                    f"the GSO listener of the session for {peer} (discriminator "
                    f"{engine.discriminator!r}) maps to port {key[2]} on {fab.local}, as "
                    f"{taken[key]} does: give it another discriminator")

    # ---- takeover exclusivity -----------------------------------------------------------------
    def _gso_state(self, peer: str):
        g = self.gso_engines.get(peer)
        return g.machine.state if g is not None else None

    def _busy(self, peer: str, now: float) -> str | None:
        """Whether session PEER serves or is taking over (by failover or by a GSO to this
        host): how to say it, else None."""
        engine = self.engines[peer]
        state = engine.machine.state
        gstate = self._gso_state(peer)
        if engine.serving or gstate is gso.GsoState.NORMAL_ACTIVE:
            return f"n+1 standby already active for {peer}"
        if state in TAKING_OVER:
            return f"n+1 standby already taking over for {peer} (failover state {state.value})"
        if gstate is not None and gstate not in GSO_RESTING:
            return f"n+1 standby already taking over for {peer} (GSO state {gstate.value})"
        if self._claim is not None and self._claim[0] == peer:
            if now - self._claim[1] < CLAIM_S:
                return f"n+1 standby already taking over for {peer}"
            self._claim = None
        return None

    def _guard(self, peer: str, kind: str = "failover") -> str | None:
        """Session PEER is about to take over (KIND: its engine suspects its active, or a
        "gso" reaches it): go ahead (None, a claim) or why not."""
        now = time.monotonic()
        with self._lock:
            for other in self.engines:
                if other == peer:
                    continue
                busy = self._busy(other, now)
                if busy:
                    why = f"{busy}; cannot take over for {peer}"
                    if kind == "gso":
                        why += f" (GSO refused: {peer} keeps serving)"
                    self.refusals.append({"session": peer, "active_for": other, "why": why,
                                          "kind": kind, "t": round(now, 3)})
                    del self.refusals[:-32]
                    return why
            self._claim = (peer, now)
            return None

    def _gso_guard(self, peer: str, epoch: int) -> str | None:
        """A Start-GSO of EPOCH from PEER's active reached its session (in its GSO engine's
        thread): the guard's answer; a refusal is noted and alarmed on that session's
        failover engine as a refused failover is."""
        why = self._guard(peer, "gso")
        if why:
            engine = self.engines[peer]
            with self.nodes[peer]._lock:
                now = engine.clock()
                engine._note("takeover_refused", now, why=why, gso_epoch=epoch)
                engine._raise_alarm(f"a GSO from {peer} is refused (Abort BUSY): {why}", now)
        return why

    def _settle_claim(self) -> None:
        """Drop a claim whose session's machine has moved on (the state protects it now)."""
        with self._lock:
            if self._claim is None:
                return
            peer, at = self._claim
            state = self.engines[peer].machine.state
            gstate = self._gso_state(peer)
            if (self.engines[peer].serving or state in TAKING_OVER
                    or (gstate is not None and gstate is not gso.GsoState.NORMAL_STANDBY)
                    or time.monotonic() - at >= CLAIM_S):
                self._claim = None

    @property
    def active_session(self) -> str | None:
        """The session (protected active's name) this host serves for, if any."""
        for peer, engine in self.engines.items():
            if engine.serving or self._gso_state(peer) is gso.GsoState.NORMAL_ACTIVE:
                return peer
        return None

    # ---- life ---------------------------------------------------------------------------------
    def start(self, timeout_s: float | None = None) -> StandbyHost:
        """Start every session, each in its own thread (each waits for its active to connect,
        up to its [timeouts] connect). A session that cannot start is closed and kept in
        ``failed`` with the reason (status shows it); the others run. Raises StandbyHostError
        when none started."""
        errors: dict[str, str] = {}

        def run(peer: str) -> None:
            try:
                self.nodes[peer].start()
            except Exception as exc:  # noqa: BLE001 - reported per session
                errors[peer] = f"{type(exc).__name__}: {exc}"

        threads = {p: threading.Thread(target=run, args=(p,), name=f"hsp-n1-start-{p}",
                                       daemon=True) for p in self.nodes}
        for t in threads.values():
            t.start()
        wait = timeout_s if timeout_s is not None else max(
            c.timeouts.connect for c in self.configs.values()) / 1000 + 10
        end = time.monotonic() + wait
        for p, t in threads.items():
            t.join(max(0.0, end - time.monotonic()))
            if t.is_alive():
                errors.setdefault(p, f"not started in {wait:g} s")
        for p in self.nodes:
            if p in errors:
                self.failed[p] = errors[p]
            else:
                self.started.add(p)
        if not self.started:
            raise StandbyHostError("no session started: " + "; ".join(
                f"{p}: {why}" for p, why in errors.items()))
        if self.control_socket is not None:
            from hsp_rdma.ha.control import ControlServer
            self.control_socket.parent.mkdir(parents=True, exist_ok=True)
            self._control = ControlServer(self.control_socket, {
                "status": lambda _req: self.status(),
                "memory": lambda _req: self.memory()}).start()
        return self

    def close(self) -> None:
        """Close every session once (Node.close is not idempotent: a second close would close
        descriptor numbers that another object may have been given since)."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._closed:
            return
        self._closed = True
        for node in self.nodes.values():
            try:
                node.close()
            except Exception:  # noqa: BLE001, S110 - closing the rest matters more
                pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.close()

    # ---- status ---------------------------------------------------------------------------------
    def memory(self) -> dict:
        """Per session and in total: what is pinned (charged to RLIMIT_MEMLOCK), resident and
        not pinned; the limit, where it comes from, what the process has pinned now."""
        total_pinned = sum(c["pinned"]["total"] for c in self.costs.values())
        return {
            "sessions": self.costs,
            "total": {"pinned": total_pinned,
                      "resident": sum(c["resident"] for c in self.costs.values()),
                      "pmem": sum(c["pmem_size"] for c in self.costs.values())},
            "memlock_limit": self.limit, "limit_source": self.limit_source,
            "pinned_before": self.pinned_before, "pinned_now": pinned_now(),
            "headroom": (None if self.limit is None
                         else self.limit - self.pinned_before - total_pinned),
            "notes": [("pinned: P.mem once per fabric (each registration is charged) + 5 "
                      "channels x (message_size x credits + message_size x (credits + 4)) "
                      "per fabric, whole pages"),
                      "resident: the P.mem mmap once + the channel buffers",
                      ("not pinned: disks (page cache/device), the [pmem] persist store, the "
                      "sessions' heaps, provider queues (kernel memory, not charged); the "
                      "soft provider pins nothing"),
                      ("a session with a GSO engine: + its image (header, P.mem, blob), 2 "
                       "marker pages and 8 KiB control buffers per fabric, resident once")],
        }

    def status(self) -> dict:
        """Every session's node status (``hsp status``'s) and the host's: memory, the active
        session, the refused takeovers."""
        self._settle_claim()
        sessions: dict[str, dict] = {}
        for peer, node in self.nodes.items():
            if peer in self.failed:
                sessions[peer] = {"node": node.config.name, "peer": peer,
                                  "state": "failed", "error": self.failed[peer]}
            else:
                sessions[peer] = node.status()
        active = self.active_session
        taking = next((p for p, e in self.engines.items()
                       if e.machine.state in TAKING_OVER
                       or self._gso_state(p) not in (None, *GSO_RESTING)), None)
        return {"host": {"nodes": sorted({c.name for c in self.configs.values()}),
                         "sessions": list(self.configs), "active_session": active,
                         "taking_over": taking, "refused_takeovers": list(self.refusals),
                         "failed": dict(self.failed),
                         "gso": {p: {"state": g.machine.state.value,
                                     "epoch": g.machine.epoch}
                                 for p, g in self.gso_engines.items()},
                         "memory": {**self.memory(), "sessions": {
                             p: {"pinned": c["pinned"]["total"], "resident": c["resident"]}
                             for p, c in self.costs.items()}}},
                "sessions": sessions}


def describe_memory(cfg: NodeConfig, gso_blob: int | None = None) -> str:
    """One line of what protecting CFG's active costs (for a report or a CLI); GSO_BLOB: with
    a GSO engine of that blob size."""
    m = session_memory(cfg, gso_blob)
    pf = m["per_fabric"]
    g = m["gso"]
    gso_part = (f" + GSO image {format_size(g['image'])} + markers {format_size(g['markers'])}"
                f" + control {format_size(g['control'])}") if g else ""
    return (f"session {m['session']}: pinned {_mib(m['pinned']['total'])} = {m['fabrics']} "
            f"fabric(s) x (P.mem {format_size(pf['pmem'])} + 5 channels x "
            f"({format_size(pf['channel_recv'])} recv + {format_size(pf['channel_send'])} "
            f"send){gso_part}); resident {_mib(m['resident'])}")
