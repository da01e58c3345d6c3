"""n+1 (issue 13) over the soft VIA provider on this host: one standby host (``StandbyHost``,
node s on NIC soft:s) protects three actives (a1, a2, a3), each pair its own session on s (its
P.mem, state_dir, epochs, control socket). What a user sees: each active's commits replicated to
its own session (digests equal per session); active 1 killed -> its session takes over (fenced,
serves, commits there) while the two others stay standby and keep replicating; active 2 killed
then -> its session does not take over (the alarm names the session that is active); a set of
sessions over RLIMIT_MEMLOCK refused at construction, naming the session and the bytes."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pair_helpers import start_nodes

from hsp_rdma.cli import nplus1 as nplus1_cli
from hsp_rdma.ha import standby_host as sh
from hsp_rdma.ha.config import load_node_config, parse_node_config
from hsp_rdma.ha.control import control_request
from hsp_rdma.ha.failover_engine import FailoverEngine
from hsp_rdma.ha.node import Node
from hsp_rdma.ha.standby_host import StandbyHost, StandbyHostError, session_memory
from hsp_rdma.via.providers import soft

ACTIVES = {"a1": "127.0.3.1", "a2": "127.0.3.2", "a3": "127.0.3.3"}
STANDBY_IP = "127.0.3.10"


def fence_script(tmp_path: Path) -> Path:
    """A fence agent that records its stdin (key=value lines) and says done."""
    path = tmp_path / "fence_record"
    path.write_text(f"#!/bin/sh\ncat >> {tmp_path}/fence.log\necho '---' >> "
                    f"{tmp_path}/fence.log\necho 'Success: Powered OFF'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def pair_text(tmp_path: Path, me: str, peer: str, role: str, fence: Path | None,
              pmem: str = "256 KiB", fabrics: int = 1, connect: int = 20000) -> str:
    ips = {**ACTIVES, "s": STANDBY_IP}
    y_ips = {n: ip.replace("127.0.3.", "127.0.4.") for n, ip in ips.items()}
    pair = peer if me == "s" else me
    state = tmp_path / "state" / f"{me}-{pair}"
    text = (f'[node]\nname = "{me}"\npeer = "{peer}"\nrole = "{role}"\n'
            f'state_dir = "{state}"\ncontrol_socket = "{tmp_path}/{me}-{pair}.sock"\n\n'
            f'[fabric.x]\nrdma_device = "soft:{me}"\nlocal = "{ips[me]}"\n'
            f'peer = "{ips[peer]}"\n\n'
            + (f'[fabric.y]\nrdma_device = "soft:{me}-y"\nlocal = "{y_ips[me]}"\n'
               f'peer = "{y_ips[peer]}"\n\n' if fabrics == 2 else "")
            + f'[pmem]\nsize = "{pmem}"\n\n'
            '[replication]\nmessage_size = "16 KiB"\ncredits = 8\n\n'
            f'[timeouts]\nconnect = {connect}\nheartbeat_interval = 50\n'
            'heartbeat_timeout = 400\n'
            'commit = 3000\n')
    if fence is not None:
        text += f'\n[fence]\naction = "{fence}"\ntimeout = 5000\ndelay = 0\n'
    return text


def write(tmp_path: Path, me: str, peer: str, role: str, fence: Path | None,
          **kw) -> Path:
    pair = peer if me == "s" else me
    path = tmp_path / "config" / f"{me}-{pair}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pair_text(tmp_path, me, peer, role, fence, **kw))
    return path


KILLED: list[Node] = []  # actives the test closed (the fixture closes the others)


def kill(node: Node) -> None:
    """The active dies: its node closed (connections drop, no goodbye)."""
    KILLED.append(node)
    node.close()


def wait_until(cond, timeout: float = 10.0, what: str = "") -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what or cond}")
        time.sleep(0.02)
    return time.monotonic() - t0


def commit_some(node: Node, base: int, n: int = 10) -> None:
    for i in range(n):
        with node.pmem.transaction(commit="applied") as tx:
            tx.write((base + i) * 64 % (256 * 1024 - 64), f"{node.config.name}:{base + i}"
                     .encode())


def same_digest(active: Node, standby: Node) -> bool:
    return active.digest()["pmem"] == standby.digest()["pmem"]


@pytest.fixture
def nplus1(tmp_path: Path, monkeypatch, request):
    """Three actives and the standby host (on fabric x, or x and y: the param), started;
    closed at the end."""
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    fabrics = getattr(request, "param", 1)
    fence = fence_script(tmp_path)
    host = StandbyHost([write(tmp_path, "s", a, "standby", fence, fabrics=fabrics)
                        for a in ACTIVES], control_socket=tmp_path / "host.sock")
    actives = {a: Node(load_node_config(write(tmp_path, a, "s", "active", None,
                                              fabrics=fabrics)))
               for a in ACTIVES}
    for n in actives.values():
        FailoverEngine(n)
    errors: list = []
    try:
        # host.start() starts every session; each waits for its active: all side by side
        errors = start_nodes([host, *actives.values()])
        yield host, actives
    finally:
        for n in actives.values():
            if n not in KILLED:  # never twice: Node.close is not idempotent (fd numbers)
                n.close()
        KILLED.clear()
        host.close()
        assert not errors, errors


@pytest.mark.parametrize("nplus1", [1, 2], indirect=True, ids=["x", "x+y"])
def test_three_actives_one_standby_host_failover_of_one_refuses_a_second(nplus1, tmp_path,
                                                                         capsys):
    host, actives = nplus1
    fabrics = len(host.configs["a1"].fabrics)
    assert not host.failed and host.started == set(ACTIVES)
    s = host.nodes
    for a, node in actives.items():  # each active's commits go to its own session
        commit_some(node, 0)
        wait_until(lambda a=a, node=node: same_digest(node, s[a]), what=f"session {a} in step")
    digests = {a: s[a].digest()["pmem"] for a in ACTIVES}
    assert len(set(digests.values())) == 3, digests  # three different states, one per session
    st = host.status()
    assert st["host"]["active_session"] is None and set(st["sessions"]) == set(ACTIVES)
    for a in ACTIVES:
        ss = st["sessions"][a]
        assert ss["node"] == "s" and ss["peer"] == a and ss["role"] == "standby"
        assert ss["failover"]["state"] == "STANDBY"
    json.dumps(st)  # hsp status-like: JSON as it is

    # every session hears its active on every fabric (several nodes share each NIC)
    wait_until(lambda: all(len(s[a].status()["fabrics"]) == fabrics and all(
        f["state"] == "up" and f["heard_ms_ago"] is not None for f in s[a].status()["fabrics"])
        for a in ACTIVES), what="every session's fabrics up and heard")
    # active 1 dies: its session on the standby host takes over; the others stay standby
    wait_until(lambda: all(s[a].status()["heartbeats"]["received"] >= 3 for a in ACTIVES))
    kill(actives["a1"])
    took = wait_until(lambda: host.engines["a1"].serving, timeout=10, what="a1's session serves")
    assert host.active_session == "a1"
    with s["a1"].pmem.transaction(commit="applied") as tx:
        tx.write(8192, b"served by s for a1")
    assert s["a1"].pmem.read(8192, 18) == b"served by s for a1"
    assert "plug=a1" in (tmp_path / "fence.log").read_text()
    for a in ("a2", "a3"):
        assert not host.engines[a].serving
        commit_some(actives[a], 100)
        wait_until(lambda a=a: same_digest(actives[a], s[a]), what=f"{a} still replicated")
    st = host.status()["host"]
    assert st["active_session"] == "a1" and st["refused_takeovers"] == []

    # active 2 dies while s serves a1: session a2 does not take over, and says why
    kill(actives["a2"])
    want = "n+1 standby already active for a1; cannot take over for a2"
    wait_until(lambda: host.engines["a2"].alarm and want in host.engines["a2"].alarm,
               timeout=10, what="a2's session refuses")
    time.sleep(0.5)  # past the fence delay and timeout: still no takeover
    st = host.status()
    assert st["host"]["active_session"] == "a1"
    assert [r["session"] for r in st["host"]["refused_takeovers"]] == ["a2"]
    s2 = st["sessions"]["a2"]
    assert s2["role"] == "standby" and not s2["failover"]["serving"]
    assert s2["failover"]["state"] == "STANDBY" and s2["failover"]["fence_runs"] == []
    assert any(want in al for al in s2["alarms"]), s2["alarms"]
    assert "plug=a2" not in (tmp_path / "fence.log").read_text()
    assert host.engines["a1"].serving
    with s["a1"].pmem.transaction(commit="applied") as tx:  # s still serves a1
        tx.write(0, b"still a1")
    commit_some(actives["a3"], 200)  # and a3 still replicates
    wait_until(lambda: same_digest(actives["a3"], s["a3"]), what="a3 still replicated")
    assert 0.3 < took < 5, took
    # the host's control socket: hsp-nplus1 status, JSON and tables
    capsys.readouterr()
    assert nplus1_cli.main(["status", "--socket", str(tmp_path / "host.sock"), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["host"]["active_session"] == "a1" and set(st["sessions"]) == set(ACTIVES)
    assert st["sessions"]["a1"]["role"] == "active"
    assert nplus1_cli.main(["status", "--socket", str(tmp_path / "host.sock")]) == 0
    out = capsys.readouterr().out
    assert "active for: a1" in out and "REFUSED" in out and want in out.replace("\n", ""), out
    # a node's socket is not a host's: said so
    assert nplus1_cli.main(["status", "--socket", str(tmp_path / "s-a3.sock")]) == 1
    assert "not an n+1 standby host's socket" in capsys.readouterr().err


def configs(tmp_path: Path, pmem: str = "16 MiB") -> list:
    return [parse_node_config(pair_text(tmp_path, "s", a, "standby", None, pmem=pmem),
                              tmp_path / f"s-{a}.toml") for a in ACTIVES]


def test_sessions_over_the_memlock_limit_are_refused_naming_the_session_and_bytes(
        tmp_path, monkeypatch):
    cfgs = configs(tmp_path)
    one = session_memory(cfgs[0])["pinned"]["total"]
    # 16 MiB P.mem + 5 channels x (16 KiB x 8 recv + 16 KiB x 12 send), one fabric
    assert one == 16 * 2**20 + 5 * (16384 * 8 + 16384 * 12)
    limit = 2 * one + one // 2  # room for two sessions, not three
    monkeypatch.setattr(sh.resource, "getrlimit",
                        lambda what: (limit, limit) if what == resource.RLIMIT_MEMLOCK
                        else resource.getrlimit(what))
    monkeypatch.setattr(sh, "_has_ipc_lock", lambda: False)
    monkeypatch.setattr(sh, "pinned_now", lambda: 0)
    with pytest.raises(StandbyHostError) as err:
        StandbyHost(cfgs)
    text = str(err.value)
    assert "session for a3" in text and str(3 * one) in text and str(limit) in text, text
    assert "RLIMIT_MEMLOCK" in text and "ulimit -l" in text
    host = StandbyHost(cfgs[:2])  # two fit: built (not started), memory shown
    try:
        mem = host.memory()
        assert mem["total"]["pinned"] == 2 * one and mem["headroom"] == limit - 2 * one
        assert mem["sessions"]["a1"]["per_fabric"]["pmem"] == 16 * 2**20
        json.dumps(host.status())
    finally:
        host.close()
    # no limit: unlimited, or CAP_IPC_LOCK
    monkeypatch.setattr(sh.resource, "getrlimit", lambda what: (resource.RLIM_INFINITY,) * 2)
    assert sh.memlock_limit()[0] is None
    monkeypatch.setattr(sh.resource, "getrlimit", lambda what: (limit, limit))
    monkeypatch.setattr(sh, "_has_ipc_lock", lambda: True)
    assert sh.memlock_limit(["soft:s", "rxe0"])[0] is None
    # siw holds everyone to the limit (siw_umem_get asks no capability): still refused
    held = "RLIMIT_MEMLOCK (held even with CAP_IPC_LOCK: siw device siw0)"
    assert sh.memlock_limit(["siw0"]) == (limit, held)


def test_two_fabrics_pin_pmem_twice_and_resident_once(tmp_path):
    text = pair_text(tmp_path, "s", "a1", "standby", None, pmem="16 MiB").replace(
        "[pmem]", '[fabric.y]\nrdma_device = "soft:s-y"\nlocal = "127.0.4.10"\n'
                  'peer = "127.0.4.1"\n\n[pmem]')
    m = session_memory(parse_node_config(text))
    chans = 5 * (16384 * 8 + 16384 * 12)
    assert m["fabrics"] == 2
    assert m["pinned"] == {"pmem": 2 * 16 * 2**20, "channel_buffers": 2 * chans,
                           "total": 2 * (16 * 2**20 + chans)}
    assert m["resident"] == 16 * 2**20 + 2 * chans


def test_bad_session_sets_are_refused_with_the_reason(tmp_path):
    cfgs = configs(tmp_path, pmem="64 KiB")
    with pytest.raises(StandbyHostError, match="no session"):
        StandbyHost([])
    active = parse_node_config(pair_text(tmp_path, "a1", "s", "active", None))
    with pytest.raises(StandbyHostError, match='role = "active".*set role = "standby"'):
        StandbyHost([active])
    with pytest.raises(StandbyHostError, match="same peer"):
        StandbyHost([cfgs[0], cfgs[0]])
    other = parse_node_config(pair_text(tmp_path, "s", "a2", "standby", None).replace(
        "s-a2.sock", "s-a1.sock"))
    with pytest.raises(StandbyHostError, match="same control socket"):
        StandbyHost([cfgs[0], other])


def test_the_guard_lets_one_session_take_over_at_a_time(tmp_path, monkeypatch):
    """Two sessions' guards asked at once (before either machine moved): one goes ahead, the
    other is refused by the claim; the claim ends when it expires without a takeover."""
    host = StandbyHost(configs(tmp_path, pmem="64 KiB"))
    try:
        assert host._guard("a1") is None
        refused = host._guard("a2")
        assert refused == "n+1 standby already taking over for a1; cannot take over for a2"
        monkeypatch.setattr(sh, "CLAIM_S", 0.0)
        host._settle_claim()
        assert host._guard("a2") is None  # a1's go-ahead led nowhere: a2 may
        host._claim = None
        # a session fencing, in doubt or promoting is taking over; one serving is active
        from hsp_rdma.core.failover import FoState
        m1 = host.engines["a1"].machine
        for state in (FoState.FENCING, FoState.IN_DOUBT, FoState.PROMOTING):
            m1.state = state
            assert host._guard("a3") == (f"n+1 standby already taking over for a1 (failover "
                                         f"state {state.value}); cannot take over for a3")
        m1.state = FoState.ACTIVE_ALONE
        assert host._guard("a3") == "n+1 standby already active for a1; cannot take over for a3"
        assert host.status()["host"]["active_session"] == "a1"
        m1.state = FoState.STANDBY
        assert host._guard("a3") is None
        assert [r["session"] for r in host.status()["host"]["refused_takeovers"]] == \
            ["a2"] + ["a3"] * 4
    finally:
        host.close()


def test_the_memory_command_shows_each_session_and_refuses_over_the_limit(
        tmp_path, monkeypatch, capsys):
    paths = [write(tmp_path, "s", a, "standby", None, pmem="16 MiB") for a in ACTIVES]
    one = 16 * 2**20 + 5 * (16384 * 8 + 16384 * 12)
    monkeypatch.setattr(sh, "memlock_limit", lambda _devs=(): (None, "RLIMIT_MEMLOCK unlimited"))
    monkeypatch.setattr(nplus1_cli, "memlock_limit", sh.memlock_limit)
    assert nplus1_cli.main(["memory", "--json", *map(str, paths)]) == 0
    mem = json.loads(capsys.readouterr().out)
    assert mem["total"]["pinned"] == 3 * one and mem["memlock_limit"] is None
    assert mem["sessions"]["a2"]["pinned"]["total"] == one
    assert nplus1_cli.main(["memory", *map(str, paths)]) == 0
    assert "memory per protected active" in capsys.readouterr().out
    # --gso: each session's GSO engine too (image = header + P.mem + blob, 2 marker pages,
    # control buffers), per fabric, in the pinned total and the table
    assert nplus1_cli.main(["memory", "--gso", "--json", *map(str, paths)]) == 0
    g = json.loads(capsys.readouterr().out)["sessions"]["a2"]
    assert g["gso"] == sh.gso_memory(load_node_config(paths[1]), sh.GSO_BLOB)
    assert g["pinned"]["total"] == one + g["gso"]["per_fabric"] * g["fabrics"]
    assert g["gso"]["image"] >= 16 * 2**20 + sh.GSO_BLOB
    assert nplus1_cli.main(["memory", "--gso", "64KiB", *map(str, paths)]) == 0
    assert "GSO" in capsys.readouterr().out  # its column (the header wraps)
    limit = 2 * one
    said = f"RLIMIT_MEMLOCK {limit} bytes"
    monkeypatch.setattr(nplus1_cli, "memlock_limit", lambda _devs=(): (limit, said))
    monkeypatch.setattr(nplus1_cli, "pinned_now", lambda: 0)
    assert nplus1_cli.main(["memory", *map(str, paths)]) == 1
    err = capsys.readouterr().err.replace("\n", "")
    assert "session for a3" in err and str(3 * one) in err, err
    assert not (tmp_path / "state").exists()  # nothing started, nothing written


def test_hsp_nplus1_run_serves_each_session_and_names_one_whose_active_is_absent(
        tmp_path, monkeypatch):
    """The CLI as a process: sessions for a1 and a2 (their actives here) and a3 (no active:
    its start times out after its 1.5 s connect); the host's socket shows all three, each
    session's own socket answers as a node's; SIGTERM ends it cleanly."""
    base = soft.random_port_base()
    monkeypatch.setattr(soft, "PORT_BASE", base)
    paths = [write(tmp_path, "s", a, "standby", None, connect=1500 if a == "a3" else 20000)
             for a in ACTIVES]
    sock = tmp_path / "host.sock"
    proc = subprocess.Popen([sys.executable, "-m", "hsp_rdma.cli.nplus1", "run", *map(str, paths),
                             "--socket", str(sock)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HSP_VIA_SOFT_PORT_BASE": str(base)})
    actives = [Node(load_node_config(write(tmp_path, a, "s", "active", None)))
               for a in ("a1", "a2")]
    try:
        assert not start_nodes(actives)
        wait_until(lambda: sock.exists(), timeout=30, what="the host's socket")
        st = control_request(sock, "status")
        assert st["ok"] and st["host"]["failed"].keys() == {"a3"}
        assert "no connection within the connect timeout" in st["host"]["failed"]["a3"]
        assert st["sessions"]["a3"]["state"] == "failed"
        for n in actives:
            with n.pmem.transaction(commit="applied") as tx:
                tx.write(0, f"from {n.config.name}".encode())
            peer = n.config.name
            d = control_request(tmp_path / f"s-{peer}.sock", "digest")
            assert d["pmem"] == n.digest()["pmem"], peer
            assert st["sessions"][peer]["failover"]["state"] == "STANDBY"
        mem = control_request(sock, "memory")
        assert set(mem["sessions"]) == set(ACTIVES) and mem["total"]["pinned"] > 0
    finally:
        for n in actives:
            n.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "session a1: standby of a1" in out and "session a3: not started" in out, out


def test_hsp_nplus1_help_says_what_each_option_does_with_its_default_once() -> None:
    import argparse
    todo, seen = [nplus1_cli.build_parser()], set()
    while todo:
        p = todo.pop(0)
        seen.add(p.prog)
        assert "%%" not in p.format_help()
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo.extend(a.choices.values())
            elif not isinstance(a, argparse._HelpAction):
                assert a.help and a.help.strip(), f"{p.prog}: {a.dest} has no help"
                if a.default not in (None, False):
                    shown = p._get_formatter()._expand_help(a)
                    assert shown.count("(default") == 1, f"{p.prog} {a.dest}: {shown!r}"
    assert seen == {"hsp-nplus1", "hsp-nplus1 memory", "hsp-nplus1 run", "hsp-nplus1 status"}
    with pytest.raises(SystemExit) as exc:
        nplus1_cli.main(["status"])  # --socket is required: a usage error, 64
    assert exc.value.code == 64
