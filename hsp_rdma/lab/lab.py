"""Boot, drive and end a soft-RDMA lab (nodes a and b, or a, b, c, ... up to MAX_NODES; fabrics
x and y).

Each node is one QEMU TCG guest under `timeout`, joined to its peer by `-netdev dgram` wires on
127.0.0.1 UDP only. A lab of two nodes wires them point to point; a lab of three or more puts
each fabric on one shared segment: every node's dgram netdev talks to a host-side hub process
per fabric (hsp_rdma.lab.hub, a learning switch on 127.0.0.1, under the lab's timeout, ended by
its pid), so no multicast and no address but 127.0.0.1 is ever used. The host talks to a node's agent through the node's writable 9p share
(jobs in, output and status out) and to QEMU through its QMP socket (cable pull, pause, resume).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsp_rdma.errors import HspError, LabError, LabTimeout, LabUnavailable, UsageError
from hsp_rdma.lab.netem import parse_spec
from hsp_rdma.lab.prepare import Artefacts, artefacts, cache_root
from hsp_rdma.lab.qmp import qmp

NODES = ("a", "b")  # the default lab's nodes (a two-node pair)
MAX_NODES = 8  # TCG guests on a 2-core host: boot and idle CPU grow with each one
ALL_NODES = tuple("abcdefgh"[:MAX_NODES])  # names of a lab of N nodes: ALL_NODES[:N]
# What one guest may cost the host, worst case: its --mem of guest RAM, plus QEMU itself and its
# TCG code cache. Measured RSS of a booted 1024 MiB rxe guest after perftest runs: ~410 MiB.
QEMU_OVERHEAD_MIB = 320
FABRICS = ("x", "y")
RDMA_KINDS = ("rxe", "siw")
LAB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
DEFAULT_LAB_ID = "default"
# fault kind -> (what its arguments are, for messages; how many it takes)
FAULTS = {
    "link": ("a fabric (x|y) and down|up", 2),
    "netem": ("a fabric (x|y) and a netem SPEC (e.g. 'delay 5ms loss 1%') or clear", 2),
    "kill": ("no arguments", 0),
    "pause": ("no arguments", 0),
    "resume": ("no arguments", 0),
}
PORT_BASE, PORT_SLOTS = 40000, 2000  # lab wires use UDP ports 40000-47999 on 127.0.0.1
# Labs of 3+ nodes (hub per fabric) use their own range, 48000-59999, so they never take a port
# of a two-node lab: per lab id a block of HUB_BLOCK ports, per fabric the hub's port then one
# port per node (a .. the MAX_NODES-th).
HUB_PORT_BASE, HUB_PORT_SLOTS, HUB_BLOCK = 48000, 600, 20
AGENT = Path(__file__).with_name("guest") / "agent.py"
# A node's persistent storage: this folder of its share (the guest's /hsp/persist) is kept when
# the node is booted again (a killed node's state directory, as a real disk would keep it)
PERSIST_DIR = "persist"
POLL_S = 0.05
JOB_GRACE_S = 15.0  # beyond a job's own timeout, how long the host waits for the agent
Output = Callable[[bytes], None]
_job_ids = itertools.count()
SHARE_9P_OPTS = "security_model=none,multidevs=remap"
HOSTROOT_9P = f"local,path=/,mount_tag=hostroot,readonly=on,{SHARE_9P_OPTS}"


def check_lab_id(lab_id: str) -> str:
    """LAB_ID itself, or a UsageError saying what a lab id may contain."""
    if not LAB_ID_RE.match(lab_id):
        raise UsageError(
            f"lab id '{lab_id}' is not valid: use 1-32 letters, digits, '-' or '_'"
        )
    return lab_id


def check_fault_args(kind: str, args: Sequence[str],
                     error: type[HspError] = UsageError) -> None:
    """Raise ERROR when ARGS do not fit fault KIND, before any lab is asked: link takes x|y
    and down|up, netem x|y and SPEC|clear, kill, pause and resume nothing. The CLI's
    default, UsageError, exits 64; Lab.fault raises LabError, the lab's own error."""
    if kind not in FAULTS:
        raise error(f"unknown fault '{kind}': use {', '.join(FAULTS)}")
    what, count = FAULTS[kind]
    if len(args) != count:
        got = f"got {len(args)}: {' '.join(args)}" if args else "got none"
        raise error(f"fault {kind} takes {what}; {got}")
    if count and args[0] not in FABRICS:
        raise error(f"fault {kind}: unknown fabric '{args[0]}': use {'|'.join(FABRICS)}")
    if kind == "link" and args[1] not in ("down", "up"):
        raise error(f"fault link: the link state must be down or up, not '{args[1]}'")
    if kind == "netem" and args[1] != "clear":
        try:
            parse_spec(args[1])
        except LabError as exc:
            raise error(str(exc)) from None  # "netem: ..." names what is wrong


@dataclass(frozen=True)
class ExecResult:
    """What a command run in a node did."""

    node: str
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out


def node_names(count: int) -> tuple[str, ...]:
    """The names of a lab of COUNT nodes: a, b, c, ...; a LabError outside 2..MAX_NODES."""
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= MAX_NODES:
        raise LabError(f"--nodes must be a whole number from 2 to {MAX_NODES}, not {count!r} "
                       f"(each node is a TCG guest on this host's CPUs and memory)")
    return ALL_NODES[:count]


def node_cost_mib(mem: int) -> int:
    """What one guest of MEM MiB may take from the host, worst case (guest RAM + QEMU/TCG)."""
    return mem + QEMU_OVERHEAD_MIB


def mem_available_mib() -> int | None:
    """The host's MemAvailable in MiB (None when /proc/meminfo does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(count: int, mem: int, available: int | None) -> None:
    """A LabError when COUNT guests of MEM MiB (worst case) do not fit in AVAILABLE MiB."""
    need = count * node_cost_mib(mem)
    if available is not None and need > available:
        fit = max(0, available // node_cost_mib(mem))
        raise LabError(
            f"{count} nodes of {mem} MiB need up to {need} MiB ({node_cost_mib(mem)} MiB each: "
            f"{mem} MiB guest RAM + ~{QEMU_OVERHEAD_MIB} MiB QEMU/TCG) but the host has "
            f"{available} MiB available: use --nodes {fit} or fewer, a smaller --mem, or end "
            "other labs"
        )


def hub_ports(lab_id: str) -> dict[str, dict[str, Any]]:
    """Ports of a hub lab (3+ nodes): fabric -> {"hub": port, "nodes": {node: port}}."""
    base = HUB_PORT_BASE + (zlib.crc32(lab_id.encode()) % HUB_PORT_SLOTS) * HUB_BLOCK
    out = {}
    for i, fab in enumerate(FABRICS):
        first = base + i * (MAX_NODES + 1)
        out[fab] = {"hub": first,
                    "nodes": {n: first + 1 + k for k, n in enumerate(ALL_NODES)}}
    return out


def fabric_plan(node: str, rdma: str, fabrics: int) -> list[dict[str, Any]]:
    """Addressing of one node: fabric x is eth0 on 10.77.1.0/24, y is eth1 on 10.77.2.0/24;
    node a is .1, b .2, c .3, ..."""
    host = ALL_NODES.index(node) + 1
    return [
        {
            "name": fab,
            "netdev": f"eth{i}",
            "ipv4": f"10.77.{i + 1}.{host}",
            "rdma_dev": f"{rdma}{i}",
            "mac": f"52:54:00:77:{i + 1:02x}:{host:02x}",
        }
        for i, fab in enumerate(FABRICS[:fabrics])
    ]


def _proc_alive(pid: int | None, marker: str) -> bool:
    """True when PID runs (not a zombie) and its command line names MARKER (no pid reuse)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    if state == "Z":
        try:  # our own child (a lab booted from this process): collect it
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return marker.encode() in cmdline


def _udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.rename(path)


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no console output)"
    return "\n".join("    " + ln for ln in text[-lines:]) or "(no console output)"


class Job:
    """A command running in a node; output pumped on poll(), ended by kill() or its timeout."""

    def __init__(self, lab: Lab, node: str, jdir: Path, argv: list[str], timeout: float,
                 on_stdout: Output | None = None, on_stderr: Output | None = None):
        self.lab, self.node, self.dir, self.argv, self.timeout = lab, node, jdir, argv, timeout
        self.started = time.monotonic()
        self._sinks = {"stdout": on_stdout, "stderr": on_stderr}
        self._bufs = {"stdout": bytearray(), "stderr": bytearray()}
        self._result: ExecResult | None = None

    def _pump(self) -> None:
        for name, buf in self._bufs.items():
            try:
                with open(self.dir / name, "rb") as f:
                    f.seek(len(buf))
                    chunk = f.read()
            except FileNotFoundError:
                continue
            if chunk:
                buf += chunk
                sink = self._sinks[name]
                if sink:
                    sink(chunk)

    def poll(self) -> ExecResult | None:
        """The result when the command has ended, else None (output is pumped either way)."""
        if self._result is not None:
            return self._result
        status_path = self.dir / "status.json"
        done = status_path.exists()
        self._pump()
        if not done:
            return None
        status = json.loads(status_path.read_text())
        if status.get("error") and status.get("rc") is None:
            raise LabError(f"node {self.node}: {status['error']}")
        stderr = self._bufs["stderr"].decode(errors="replace")
        if status.get("error"):
            stderr += f"\nhsp-lab: {status['error']}\n"
        self._result = ExecResult(
            node=self.node,
            argv=tuple(self.argv),
            rc=124 if status["timed_out"] else int(status["rc"]),
            stdout=self._bufs["stdout"].decode(errors="replace"),
            stderr=stderr,
            timed_out=bool(status["timed_out"]),
            duration_s=time.monotonic() - self.started,
        )
        self._abandon()
        return self._result

    def wait(self, timeout: float | None = None) -> ExecResult:
        """Block until the command ends; LabTimeout if the node stops answering."""
        limit = self.timeout + JOB_GRACE_S if timeout is None else timeout
        deadline = time.monotonic() + limit
        checked = time.monotonic()
        while True:
            res = self.poll()
            if res is not None:
                return res
            now = time.monotonic()
            if now - checked > 1.0:
                checked = now
                if not self.lab.node_alive(self.node):
                    self._abandon()
                    raise LabError(
                        f"node {self.node} went down while running '{' '.join(self.argv)}'"
                    )
            if now > deadline:
                self.kill()
                raise LabTimeout(
                    f"node {self.node}: '{' '.join(self.argv)}' gave no result in {limit:.0f} s "
                    f"(the guest may be hung or paused); see '{self.lab.command('status')}'"
                )
            time.sleep(POLL_S)

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) received so far: what a command that hung had still said."""
        self._pump()
        return tuple(self._bufs[k].decode(errors="replace") for k in ("stdout", "stderr"))

    def kill(self) -> None:
        """Ask the agent to SIGKILL the command's whole session."""
        if self._result is None and self.dir.exists():
            self._kill_path.touch()

    @property
    def _kill_path(self) -> Path:
        return self.dir.with_name(self.dir.name + ".kill")

    def _abandon(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self._kill_path.unlink(missing_ok=True)


class Lab:
    """One lab: its directory, its QEMU processes, its nodes' agents."""

    def __init__(self, lab_id: str = DEFAULT_LAB_ID, root: Path | None = None):
        self.lab_id = check_lab_id(lab_id)
        self.root = root or cache_root()
        self.dir = self.root / "labs" / lab_id
        self.state_path = self.dir / "state.json"
        base = PORT_BASE + (zlib.crc32(lab_id.encode()) % PORT_SLOTS) * 4
        self.ports = {fab: (base + 2 * i, base + 2 * i + 1) for i, fab in enumerate(FABRICS)}
        self.hub_ports = hub_ports(lab_id)  # used by labs of 3+ nodes only

    def command(self, sub: str) -> str:
        """The hsp-lab command line that does SUB to this lab, to paste as it is."""
        if self.lab_id == DEFAULT_LAB_ID:
            return f"hsp-lab {sub}"
        return f"hsp-lab --lab-id {self.lab_id} {sub}"

    # ---- state -------------------------------------------------------------------------
    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None

    def _save(self, state: dict[str, Any]) -> None:
        _write_json(self.state_path, state)

    def _require_up(self) -> dict[str, Any]:
        state = self.state()
        if state is None:
            raise LabError(f"lab '{self.lab_id}' is not up: run '{self.command('up')}' first")
        return state

    @property
    def nodes(self) -> tuple[str, ...]:
        """The nodes of this lab as booted (a, b, c, ...); NODES (a, b) when it is not up."""
        state = self.state()
        return tuple(state["nodes"]) if state else NODES

    def _check_node(self, node: str) -> None:
        nodes = self.nodes
        if node not in nodes:
            hint = (f" (a lab of more nodes: '{self.command('up --nodes N')}')"
                    if node in ALL_NODES else "")
            raise LabError(f"unknown node '{node}': the lab's nodes are {', '.join(nodes)}"
                           + hint)

    def node_dir(self, node: str) -> Path:
        return self.dir / node

    def node_alive(self, node: str) -> bool:
        state = self.state()
        if not state:
            return False
        return _proc_alive(state["nodes"].get(node, {}).get("qemu_pid"), str(self.dir))

    def running(self) -> bool:
        return any(self.node_alive(n) for n in self.nodes)

    # ---- boot --------------------------------------------------------------------------
    def ensure_up(self, rdma: str, fabrics: int = 2,
                  progress: Callable[[str], None] | None = None, nodes: int = 2) -> bool:
        """The lab running with RDMA: boots it when it is down and returns True (the caller
        then owns it and ends it), False when it already runs with that kind; a lab up with
        another kind (or fewer than NODES nodes) is a LabError naming the way out."""
        st = self.status()
        if st["up"]:
            if st.get("rdma") != rdma:
                raise LabError(f"lab '{self.lab_id}' is up with {st.get('rdma')}, not {rdma}: "
                               f"'{self.command('down')}' or pick another --lab-id")
            if len(st["nodes"]) < nodes:
                raise LabError(f"lab '{self.lab_id}' is up with {len(st['nodes'])} nodes, "
                               f"not {nodes}: '{self.command('down')}' or pick another "
                               "--lab-id")
            return False
        if progress:
            progress(f"booting the lab ({rdma})")
        self.up(rdma=rdma, fabrics=fabrics, nodes=nodes)
        return True

    def up(self, rdma: str = "rxe", fabrics: int = 2, smp: int = 1, mem: int = 1024,
           boot_timeout: float = 180.0, ttl: float = 7200.0,
           progress: Callable[[str], None] | None = None, nodes: int = 2) -> dict[str, Any]:
        """Boot nodes a and b (a, b, c, ... with NODES > 2, each fabric then a shared segment
        through a host-side hub); returns info() once every rdma port is ACTIVE."""
        names = node_names(nodes)
        if rdma not in RDMA_KINDS:
            raise LabError(f"unknown rdma kind '{rdma}': choose one of {', '.join(RDMA_KINDS)}")
        if fabrics not in (1, 2):
            raise LabError(f"--fabrics must be 1 or 2, not {fabrics}")
        if not 1 <= smp <= 4:
            raise LabError(f"--smp should be between 1 and 4, not {smp}")
        if not 256 <= mem <= 8192:
            raise LabError(f"--mem should be between 256 and 8192 MiB, not {mem}")
        if self.state() is not None:
            if self.running():
                raise LabError(
                    f"lab '{self.lab_id}' is already up: run '{self.command('down')}' "
                    "first, or use another --lab-id"
                )
            self._cleanup()  # left over from a host reboot or a kill: nothing runs
        for binary in ("qemu-system-x86_64", "timeout"):
            if shutil.which(binary) is None:
                raise LabUnavailable(f"'{binary}' is not installed: run scripts/bootstrap")
        hub = nodes > 2
        if hub:
            check_memory(nodes, mem, mem_available_mib())
        art = artefacts(self.root)
        for fab in FABRICS[:fabrics]:
            ports = ((self.hub_ports[fab]["hub"],
                      *(self.hub_ports[fab]["nodes"][n] for n in names)) if hub
                     else self.ports[fab])
            for port in ports:
                if not _udp_port_free(port):
                    raise LabError(
                        f"UDP port 127.0.0.1:{port} (fabric {fab}) is taken: another program "
                        "or lab uses it; pick another --lab-id"
                    )
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {
            "lab_id": self.lab_id, "rdma": rdma, "fabrics": fabrics, "smp": smp, "mem": mem,
            "ttl": ttl, "kver": art.kver, "created": time.time(),
            "nodes": {n: {} for n in names},
            "links": {n: {f: "up" for f in FABRICS[:fabrics]} for n in names},
        }
        if hub:
            state["topology"] = "hub"
        self._save(state)
        try:
            self._start_fenced(state)
            if hub:
                self._start_hubs(state, names)
            for node in names:
                self._start_node(node, art, state)
            return self._wait_ready(names, boot_timeout, progress)
        except BaseException:
            self.down()
            raise

    def boot_node(self, node: str, boot_timeout: float = 180.0) -> dict[str, Any]:
        """Power a killed node on again (same config, links up); returns info()."""
        self._check_node(node)
        state = self._require_up()
        if self.node_alive(node):
            raise LabError(f"node {node} is already running")
        state["links"][node] = {f: "up" for f in FABRICS[: state["fabrics"]]}
        self._start_node(node, artefacts(self.root), state)
        return self._wait_ready((node,), boot_timeout, None)

    def _start_fenced(self, state: dict[str, Any]) -> None:
        """The lab's fence device (hsp_rdma.lab.fenced), under timeout like every QEMU."""
        argv = ["timeout", "--kill-after=10", f"{int(state['ttl'])}s", sys.executable, "-m",
                "hsp_rdma.lab.fenced", str(self.dir)]
        with open(self.dir / "fenced.out", "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, cwd=str(Path(__file__).parents[2]))
        state["fenced"] = {"timeout_pid": proc.pid, "started": time.time()}
        self._save(state)

    def _start_hubs(self, state: dict[str, Any], names: Sequence[str]) -> None:
        """One hub per fabric (hsp_rdma.lab.hub on 127.0.0.1), under timeout like every QEMU."""
        state["hubs"] = {}
        for fab in FABRICS[: state["fabrics"]]:
            ports = self.hub_ports[fab]
            node_ports = ",".join(f"{n}={ports['nodes'][n]}" for n in names)
            argv = ["timeout", "--kill-after=10", f"{int(state['ttl'])}s", sys.executable,
                    "-m", "hsp_rdma.lab.hub", str(self.dir), fab, str(ports["hub"]), node_ports]
            with open(self.dir / f"hub-{fab}.out", "wb") as log:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True,
                                        cwd=str(Path(__file__).parents[2]))
            state["hubs"][fab] = {"timeout_pid": proc.pid, "port": ports["hub"],
                                  "started": time.time()}
            self._save(state)
        deadline = time.monotonic() + 15
        for fab in state["hubs"]:  # the hub says it is bound before any QEMU sends to it
            while not (self.dir / f"hub-{fab}.json").exists():
                if not _proc_alive(state["hubs"][fab]["timeout_pid"], str(self.dir)):
                    raise LabError(f"the hub of fabric {fab} exited at once:\n"
                                   + _tail(self.dir / f"hub-{fab}.out"))
                if time.monotonic() > deadline:
                    raise LabTimeout(f"the hub of fabric {fab} did not start in 15 s")
                time.sleep(POLL_S)

    def hub_stats(self) -> dict[str, Any]:
        """fabric -> the hub's counters (frames in, unicast, flooded, dropped, MACs learnt),
        for a lab of 3+ nodes; {} for a two-node lab."""
        out = {}
        for fab in (self.state() or {}).get("hubs", {}):
            try:
                out[fab] = json.loads((self.dir / f"hub-{fab}.json").read_text())
            except (OSError, ValueError):
                out[fab] = {}
        return out

    def _start_node(self, node: str, art: Artefacts, state: dict[str, Any]) -> None:
        ndir = self.node_dir(node)
        kept = None
        if ndir.exists():
            # the node's persistent storage (its "disk": PERSIST_DIR of its share) outlives a
            # power cycle; everything else of the node is made anew
            persist = ndir / "share" / PERSIST_DIR
            if persist.is_dir():
                kept = self.dir / f".{node}-{PERSIST_DIR}-{time.time_ns()}"
                persist.rename(kept)
            shutil.rmtree(ndir)
        share = ndir / "share"
        (share / "jobs").mkdir(parents=True)
        if kept is not None:
            kept.rename(share / PERSIST_DIR)
        shutil.copy2(AGENT, share / "agent.py")
        plan = fabric_plan(node, state["rdma"], state["fabrics"])
        _write_json(share / "config.json", {"node": node, "rdma": state["rdma"], "fabrics": plan})
        qmp_sock = ndir / "qmp.sock"
        if len(str(qmp_sock)) > 100:
            raise LabError(f"{qmp_sock} is too long for a unix socket: use a shorter HSP_LAB_DIR")
        argv = ["timeout", "--kill-after=10", f"{int(state['ttl'])}s", *self._qemu_argv(
            node, art, state, plan, ndir)]
        with open(ndir / "qemu.log", "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        state["nodes"][node] = {
            "timeout_pid": proc.pid, "qemu_pid": None, "started": time.time(),
            "qmp": str(qmp_sock), "killed": False,
        }
        self._save(state)
        pidfile = ndir / "qemu.pid"
        deadline = time.monotonic() + 15
        while not pidfile.exists() or not pidfile.read_text().strip():
            if proc.poll() is not None:
                raise LabError(
                    f"QEMU for node {node} exited at once (exit {proc.returncode}):\n"
                    + _tail(ndir / "qemu.log")
                )
            if time.monotonic() > deadline:
                raise LabTimeout(f"QEMU for node {node} wrote no pid file in 15 s")
            time.sleep(POLL_S)
        state["nodes"][node]["qemu_pid"] = int(pidfile.read_text().strip())
        self._save(state)

    def _qemu_argv(self, node: str, art: Artefacts, state: dict[str, Any],
                   plan: list[dict[str, Any]], ndir: Path) -> list[str]:
        me = ALL_NODES.index(node)
        argv = [
            "qemu-system-x86_64", "-name", f"hsp-lab-{self.lab_id}-{node}",
            "-accel", "tcg", "-cpu", "max", "-smp", str(state["smp"]), "-m", str(state["mem"]),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(art.vmlinux), "-initrd", str(art.initramfs),
            "-append", f"console=ttyS0 quiet loglevel=4 panic=-1 hsp_modules={art.modules}",
            "-serial", f"file:{ndir / 'console.log'}",
            "-virtfs", HOSTROOT_9P,
            "-virtfs", f"local,path={ndir / 'share'},mount_tag=labshare,{SHARE_9P_OPTS}",
            "-qmp", f"unix:{ndir / 'qmp.sock'},server=on,wait=off",
            "-pidfile", str(ndir / "qemu.pid"),
        ]
        for fab in plan:
            if state.get("topology") == "hub":  # every node to its fabric's hub
                ports = self.hub_ports[fab["name"]]
                mine, peer = ports["nodes"][node], ports["hub"]
            else:
                mine, peer = self.ports[fab["name"]]
                if me == 1:
                    mine, peer = peer, mine
            argv += [
                "-netdev", (f"dgram,id=n{fab['name']},local.type=inet,local.host=127.0.0.1,"
                            f"local.port={mine},remote.type=inet,remote.host=127.0.0.1,"
                            f"remote.port={peer}"),
                "-device", f"virtio-net-pci,netdev=n{fab['name']},mac={fab['mac']}",
            ]
        return argv

    def _wait_ready(self, nodes: tuple[str, ...], timeout: float,
                    progress: Callable[[str], None] | None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        pending = list(nodes)
        while pending:
            for node in list(pending):
                share = self.node_dir(node) / "share"
                if (share / "ready.json").exists():
                    pending.remove(node)
                    if progress:
                        info = json.loads((share / "ready.json").read_text())
                        progress(f"node {node} ready ({info['uptime_s']:.1f} s after its boot)")
                    continue
                if (share / "failed.json").exists():
                    err = json.loads((share / "failed.json").read_text())["error"]
                    raise LabError(f"node {node} booted but could not set up RDMA: {err}")
                if not self.node_alive(node):
                    raise LabError(
                        f"node {node} stopped while booting; its console said:\n"
                        + _tail(self.node_dir(node) / "console.log")
                        + "\n" + _tail(self.node_dir(node) / "qemu.log", 4)
                    )
            if pending and time.monotonic() > deadline:
                raise LabTimeout(
                    f"node(s) {', '.join(pending)} did not finish booting in {timeout:.0f} s; "
                    "console of the first:\n" + _tail(self.node_dir(pending[0]) / "console.log")
                )
            time.sleep(0.1)
        return self.info()

    # ---- queries -----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """node -> fabric -> {netdev, ipv4, rdma_dev, gid_index, port_state} of booted nodes."""
        state = self._require_up()
        out: dict[str, Any] = {}
        for node in state["nodes"]:
            ready = self.node_dir(node) / "share" / "ready.json"
            if ready.exists():
                data = json.loads(ready.read_text())
                out[node] = {
                    f["name"]: {k: f[k] for k in ("netdev", "ipv4", "rdma_dev", "gid_index",
                                                   "port_state")}
                    for f in data["fabrics"]
                }
        out["rdma"] = state["rdma"]
        return out

    def status(self) -> dict[str, Any]:
        """What runs, since when, and the state of each node's links."""
        state = self.state()
        if state is None:
            return {"lab_id": self.lab_id, "up": False, "nodes": {}}
        nodes = {}
        for node in state["nodes"]:
            n = state["nodes"].get(node, {})
            alive = self.node_alive(node)
            run = "dead" if not alive else "running"
            if alive:
                try:
                    run = qmp(Path(n["qmp"]), "query-status", timeout=5)["status"]
                except LabError:
                    run = "unresponsive"
            elif n.get("killed"):
                run = "killed"
            nodes[node] = {
                "state": run, "qemu_pid": n.get("qemu_pid"),
                "uptime_s": round(time.time() - n["started"], 1) if alive else None,
                "links": state["links"][node],
                "ready": (self.node_dir(node) / "share" / "ready.json").exists(),
            }
        out = {"lab_id": self.lab_id, "up": self.running(), "rdma": state["rdma"],
               "fabrics": state["fabrics"], "kver": state["kver"], "dir": str(self.dir),
               "nodes": nodes}
        if state.get("hubs"):  # a lab of 3+ nodes: each fabric's hub
            out["hubs"] = {
                fab: {"port": h["port"], "pid": h["timeout_pid"],
                      "alive": _proc_alive(h["timeout_pid"], str(self.dir))}
                for fab, h in state["hubs"].items()
            }
        return out

    # ---- commands ----------------------------------------------------------------------
    def spawn(self, node: str, argv: list[str], timeout: float = 60.0, cwd: str | None = None,
              env: dict[str, str] | None = None, on_stdout: Output | None = None,
              on_stderr: Output | None = None) -> Job:
        """Start ARGV as root in NODE (host paths visible unchanged); returns at once."""
        self._check_node(node)
        self._require_up()
        if not argv:
            raise LabError("no command given to run in the node")
        if not self.node_alive(node):
            raise LabError(f"node {node} is not running: see '{self.command('status')}'")
        if not (self.node_dir(node) / "share" / "ready.json").exists():
            raise LabError(f"node {node} is not ready (RDMA bring-up failed or still booting)")
        if not 0 < timeout <= 86400:
            raise LabError(f"timeout should be between 0 and 86400 s, not {timeout}")
        jobs = self.node_dir(node) / "share" / "jobs"
        jid = f"{os.getpid()}-{next(_job_ids)}-{time.monotonic_ns()}"
        tmp = jobs / (jid + ".tmp")
        tmp.mkdir()
        cmd = {"argv": list(argv), "cwd": cwd or os.getcwd(), "timeout": timeout,
               "env": env if env is not None else dict(os.environ)}
        _write_json(tmp / "cmd.json", cmd)
        tmp.rename(jobs / jid)
        return Job(self, node, jobs / jid, list(argv), timeout, on_stdout, on_stderr)

    def exec(self, node: str, argv: list[str], timeout: float = 60.0, check: bool = False,
             **kw: Any) -> ExecResult:
        """Run ARGV in NODE to its end; with check=True a non-zero exit raises LabError."""
        res = self.spawn(node, argv, timeout=timeout, **kw).wait()
        if check and not res.ok:
            why = "timed out" if res.timed_out else f"exit {res.rc}"
            raise LabError(
                f"node {node}: '{' '.join(argv)}' {why}: {res.stderr.strip()[-800:]}"
            )
        return res

    def python(self, node: str, *args: str, timeout: float = 60.0, **kw: Any) -> ExecResult:
        """Run this interpreter (the project's venv) in NODE with ARGS."""
        return self.exec(node, [sys.executable, *args], timeout=timeout, **kw)

    # ---- faults ------------------------------------------------------------------------
    def fault(self, node: str, kind: str, *args: str) -> None:
        """link x|y down|up, netem x|y SPEC|clear, kill, pause, resume."""
        self._check_node(node)
        check_fault_args(kind, args, LabError)
        state = self._require_up()
        fabrics = FABRICS[: state["fabrics"]]
        if kind in ("link", "netem"):
            fab, what = args
            if fab not in fabrics:
                raise LabError(
                    f"unknown fabric '{fab}': this lab has {', '.join(fabrics)}"
                )
        if not self.node_alive(node):
            raise LabError(f"node {node} is not running: see '{self.command('status')}'")
        qmp_path = Path(state["nodes"][node]["qmp"])
        if kind == "link":
            qmp(qmp_path, "set_link", name=f"n{fab}", up=(what == "up"))
            state["links"][node][fab] = what
            self._save(state)
        elif kind == "netem":
            netdev = f"eth{FABRICS.index(fab)}"
            self.python(node, "-m", "hsp_rdma.lab.netem", netdev, what, timeout=30, check=True)
        elif kind == "kill":
            pid = state["nodes"][node]["qemu_pid"]
            os.kill(pid, signal.SIGKILL)
            state["nodes"][node]["killed"] = True
            self._save(state)
            deadline = time.monotonic() + 5
            while self.node_alive(node) and time.monotonic() < deadline:
                time.sleep(POLL_S)
        elif kind == "pause":
            qmp(qmp_path, "stop")
        else:  # resume; check_fault_args refused every other kind
            qmp(qmp_path, "cont")

    # ---- end ---------------------------------------------------------------------------
    def down(self) -> list[str]:
        """End every process this lab started (by pid) and remove its directory."""
        state = self.state()
        ended: list[str] = []
        if state is not None:
            for node, n in state["nodes"].items():
                qpid, tpid = n.get("qemu_pid"), n.get("timeout_pid")
                if _proc_alive(qpid, str(self.dir)):
                    try:
                        qmp(Path(n["qmp"]), "quit", timeout=3)
                    except LabError:
                        pass
                    deadline = time.monotonic() + 5
                    while _proc_alive(qpid, str(self.dir)) and time.monotonic() < deadline:
                        time.sleep(POLL_S)
                    ended.append(f"node {node} (qemu pid {qpid})")
                for pid in (qpid, tpid):
                    if _proc_alive(pid, str(self.dir)):
                        os.kill(pid, signal.SIGKILL)
                for pid in (qpid, tpid):
                    deadline = time.monotonic() + 5
                    while _proc_alive(pid, str(self.dir)) and time.monotonic() < deadline:
                        time.sleep(POLL_S)
            helpers = [("fence device", state.get("fenced", {}).get("timeout_pid"))]
            helpers += [(f"hub of fabric {fab}", h.get("timeout_pid"))
                        for fab, h in state.get("hubs", {}).items()]
            for what, fpid in helpers:
                if _proc_alive(fpid, str(self.dir)):
                    os.killpg(fpid, signal.SIGTERM)  # timeout(1) and the process under it
                    deadline = time.monotonic() + 5
                    while _proc_alive(fpid, str(self.dir)) and time.monotonic() < deadline:
                        time.sleep(POLL_S)
                    if _proc_alive(fpid, str(self.dir)):
                        os.killpg(fpid, signal.SIGKILL)
                    ended.append(f"{what} (pid {fpid})")
        self._cleanup()
        return ended

    def _cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


__all__ = ["ALL_NODES", "FABRICS", "MAX_NODES", "NODES", "RDMA_KINDS", "ExecResult", "Job", "Lab",
           "fabric_plan", "node_names"]
