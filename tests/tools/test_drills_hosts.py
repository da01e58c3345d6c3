"""hsp-failover-test --config A.toml B.toml (tools/drills/hosts_runner.py) on THIS host: two
drill nodes on 127.0.0.1 over the soft provider, each "host" reached through a local prefix
(node a: exec = [] (sh -c here), node b: exec = ["sh", "-c"], a wrapper that takes one command
line as ssh does); pull/plug are the soft provider's link files, given as the drill-hosts
file's pull/plug commands. Never ssh anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsp_rdma.errors import ConfigError
from hsp_rdma.tools.drills.hosts_runner import HostsRunner, load_pair, parse_drill_hosts
from hsp_rdma.tools.drills.scenario import find_scenario, load_scenario
from hsp_rdma.tools.drills.soft_runner import INFO, PMEM_SIZE, TIMEOUTS
from hsp_rdma.tools.lab_config import write_node_configs
from hsp_rdma.via.providers import soft

DISK_SIZE = 16 << 20

SHORT_PULL = """\
description = "Pull the only fabric for 3 s under load, then plug it: resync, no failover"
fabrics = ["x"]

[workload]
rate = 200
transaction_size = 256
targets = ["pmem", "disk"]
commit = "applied"

[[steps]]
do = "wait"
for = "2s"

[[steps]]
do = "pull"
node = "active"
fabric = "x"

[[steps]]
do = "wait"
for = "3s"

[[steps]]
do = "plug"
node = "active"
fabric = "x"

[[steps]]
do = "wait"
until = "resync-done"
timeout = "60s"

[[steps]]
do = "wait"
for = "1s"

[checks]
lost = 0
two_actives = false
failover = false
resync = true
"""


def make_pair(tmp: Path, active: str = "a", exec_b: str = '["sh", "-c"]',
              extra_a: str = "", persist: bool = True) -> tuple[Path, Path, Path]:
    """(A.toml, B.toml, drill-hosts) of a soft pair on this host, as soft_runner writes it
    (P.mem persisted); A is node a's config."""
    workdir = tmp / "hosts"
    links = tmp / "links"
    workdir.mkdir()
    links.mkdir()
    fence = f"{sys.executable} -m hsp_rdma.tools.drills.host_fence"
    paths = write_node_configs(
        INFO, tmp, pmem_size=PMEM_SIZE, pmem_persist=persist, timeouts=TIMEOUTS, active=active,
        disks=[{"name": "journal", "path": str(tmp / "journal-NODE.img"), "size": DISK_SIZE}],
        fence={"action": fence, "options": {"dir": str(workdir)}, "timeout": 10000})
    for node, path in paths.items():
        path.write_text(path.read_text().replace("NODE", node))
        (tmp / f"journal-{node}.img").write_bytes(bytes(DISK_SIZE))
    env = (f'{{ HSP_VIA_SOFT_PORT_BASE = "{soft.random_port_base()}", '
           f'{soft.LINKS_DIR_ENV} = "{links}" }}')
    tables = []
    for node, prefix, extra in (("a", "[]", extra_a), ("b", exec_b, "")):
        tables.append(f"""[node.{node}]
exec = {prefix}
python = "{sys.executable}"
workdir = "{workdir}"
env = {env}
pull = ["touch", "{links}/{{node}}.down"]
plug = ["rm", "-f", "{links}/{{node}}.down"]
{extra}""")
    hosts = tmp / "drill-hosts.toml"
    hosts.write_text('ack_addr = "127.0.0.1:0"\n\n' + "\n".join(tables))
    return paths["a"], paths["b"], hosts


def tool(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hsp_rdma.cli.failover_test", *argv],
                          check=False, capture_output=True, text=True, timeout=timeout)


def no_traceback(res: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr


def test_kill_active_and_a_pull_pass_on_two_local_hosts(tmp_path) -> None:
    a, b, hosts = make_pair(tmp_path)
    scen = tmp_path / "pull-fabric-3s.toml"
    scen.write_text(SHORT_PULL)
    t0 = time.monotonic()
    res = tool("--config", str(a), str(b), "--drill-hosts", str(hosts), "--json",
               "kill-active", str(scen), timeout=150)
    took = time.monotonic() - t0
    no_traceback(res)
    assert res.returncode == 0, (res.stdout, res.stderr)
    rows = {r["name"]: r for r in json.loads(res.stdout)["scenarios"]}
    assert set(rows) == {"kill-active", "pull-fabric-3s"}
    for r in rows.values():
        assert r["passed"] and r["lost"] == 0 and not r["two_actives"], r
        assert r["acknowledged"] > 100, r
    assert rows["kill-active"]["detect_ms"] is not None
    assert rows["pull-fabric-3s"]["resync_bytes"] > 0
    print(f"two drills on two local 'hosts': {took:.1f} s", rows)


def test_a_mistyped_drill_hosts_field_names_file_line_and_field(tmp_path) -> None:
    a, b, hosts = make_pair(tmp_path, extra_a='wrokdir = "/tmp"')
    res = tool("--config", str(a), str(b), "--drill-hosts", str(hosts), "kill-active")
    no_traceback(res)
    assert res.returncode == 64, res.stderr
    line = next(i for i, t in enumerate(hosts.read_text().splitlines(), 1)
                if t.startswith("wrokdir"))
    assert f"{hosts}:{line}:" in res.stderr and "node.a.wrokdir" in res.stderr
    assert "did you mean 'workdir'" in res.stderr
    with pytest.raises(ConfigError, match=r":2: .*field node.x.exec") as exc:
        parse_drill_hosts('[node.x]\nexec = "ssh hostA"\n', "h.toml")
    assert exc.value.field == "node.x.exec"
    with pytest.raises(ConfigError, match="placeholders"):
        parse_drill_hosts('[node.x]\npull = ["ip", "{nic}"]\n', "h.toml")


def test_a_pair_in_the_wrong_roles_is_refused_before_anything(tmp_path) -> None:
    a, b, hosts = make_pair(tmp_path)
    # the standby's configuration first: refused, nothing started on either "host"
    res = tool("--config", str(b), str(a), "--drill-hosts", str(hosts), "kill-active")
    no_traceback(res)
    assert res.returncode == 64, res.stderr
    assert "node b is configured standby" in res.stderr and "refused" in res.stderr
    assert not any((tmp_path / "hosts").iterdir())
    # both configured active ("b" written as the active): the same
    other = tmp_path / "other"
    other.mkdir()
    a2, b2, hosts2 = make_pair(other, active="b")
    res = tool("--config", str(a2), str(b2), "--drill-hosts", str(hosts2), "kill-active")
    assert res.returncode == 64 and "node a is configured standby" in res.stderr, res.stderr
    assert not any((other / "hosts").iterdir())


def test_an_unreachable_host_is_a_clear_error_exit_1_no_hang(tmp_path) -> None:
    a, b, hosts = make_pair(tmp_path, exec_b='["false"]')
    t0 = time.monotonic()
    res = tool("--config", str(a), str(b), "--drill-hosts", str(hosts), "kill-active",
               timeout=60)
    no_traceback(res)
    assert res.returncode == 1, res.stderr
    assert "node b's host (false)" in res.stderr and "failed" in res.stderr
    assert time.monotonic() - t0 < 30
    # a prefix that is no program at all
    pair = load_pair((a, b), hosts)
    bad = pair.hosts["b"].__class__(exec=("/nonexistent/ssh", "hostB"))
    runner = HostsRunner(pair.__class__(pair.configs, pair.texts, {**pair.hosts, "b": bad},
                                        pair.ack_addr))
    with pytest.raises(Exception, match="cannot run '/nonexistent/ssh'") as exc:
        runner.run(load_scenario(find_scenario("kill-active")))
    assert getattr(exc.value, "exit_code", None) == 1


NETEM = """\
description = "netem on the active's fabric"

[workload]
rate = 100
transaction_size = 256
targets = ["pmem"]
commit = "applied"

[[steps]]
do = "netem"
node = "active"
fabric = "x"
spec = "delay 5ms"

[checks]
lost = 0
"""


def test_what_two_hosts_cannot_do_is_refused_before_a_step(tmp_path) -> None:
    a, b, hosts = make_pair(tmp_path)
    scen = tmp_path / "netem-x.toml"
    scen.write_text(NETEM)
    res = tool("--config", str(a), str(b), "--drill-hosts", str(hosts), str(scen))
    no_traceback(res)
    assert res.returncode == 69 and "netem-x not run: step netem" in res.stderr, res.stderr
    assert not any((tmp_path / "hosts").iterdir())  # nothing was done on either "host"
    help_text = tool("--help").stdout
    assert "--drill-hosts" in help_text and "active's" in help_text


def test_a_node_already_running_in_the_wrong_role_is_refused(tmp_path) -> None:
    # node a's service answers on its control socket, as the standby (the pair swapped roles
    # since its configuration was written): asked before anything starts, refused, exit 1
    from hsp_rdma.ha.config import load_node_config
    from hsp_rdma.ha.control import ControlServer

    a, b, hosts = make_pair(tmp_path)
    sock = load_node_config(a).socket_path
    server = ControlServer(sock, {"status": lambda _req: {"node": "a", "role": "standby",
                                                          "epoch": 3}}).start()
    try:
        res = tool("--config", str(a), str(b), "--drill-hosts", str(hosts), "kill-active",
                   timeout=60)
    finally:
        server.close()
    no_traceback(res)
    assert res.returncode == 1, res.stderr
    assert "node a already runs" in res.stderr and "role standby, epoch 3" in res.stderr
    assert "wrong roles" in res.stderr and "nothing was done" in res.stderr
    assert not (tmp_path / "hosts" / "a.pid").exists()  # no drill node was started


def test_a_restart_of_the_active_needs_pmem_persisted(tmp_path) -> None:
    from hsp_rdma.tools.drills.hosts_runner import unsupported

    a, b, hosts = make_pair(tmp_path, persist=False)
    why = unsupported(load_pair((a, b), hosts),
                      load_scenario(find_scenario("kill-active-during-resync")))
    assert why and "restart of the active" in why and "[pmem] persist = true" in why
    assert unsupported(load_pair((a, b), hosts),
                       load_scenario(find_scenario("kill-active"))) is None
    other = tmp_path / "persisted"
    other.mkdir()
    a, b, hosts = make_pair(other)
    assert unsupported(load_pair((a, b), hosts),
                       load_scenario(find_scenario("kill-active-during-resync"))) is None


def test_the_drill_moves_state_dir_and_socket_into_its_directory(tmp_path) -> None:
    from hsp_rdma.ha.config import load_node_config, parse_node_config
    from hsp_rdma.tools.drills.hosts_runner import drill_config_text

    a, _b, _hosts = make_pair(tmp_path)
    cfg = load_node_config(a)
    moved = parse_node_config(drill_config_text(a.read_text(), cfg, "/var/tmp/d/a"))
    assert moved.state_dir == Path("/var/tmp/d/a/state")
    assert moved.socket_path == Path("/var/tmp/d/a/control.sock")
    assert moved.fabrics == cfg.fabrics and moved.disks == cfg.disks
    text = a.read_text()
    inline = ('node = { name = "a", peer = "b", role = "active", state_dir = "/s" }\n'
              + text[text.index("[fabric"):])
    cfg2 = parse_node_config(inline, a)
    with pytest.raises(ConfigError, match="lines of their own"):
        drill_config_text(inline, cfg2, "/var/tmp/d/a")


def test_a_drill_table_in_the_node_toml(tmp_path) -> None:
    from hsp_rdma.ha.config import KEYS
    from hsp_rdma.tools.drills.hosts_runner import parse_node_drill

    a, b, _hosts = make_pair(tmp_path)
    a.write_text(a.read_text() + '\n[drill]\nexec = []\nworkdir = "/var/tmp/x"\n'
                 'ack_addr = "127.0.0.1:0"\n')
    host, ack = parse_node_drill(a.read_text(), a)
    assert host.workdir == "/var/tmp/x" and host.local and ack == "127.0.0.1:0"
    with pytest.raises(ConfigError, match=r"a.toml:\d+: .*'drill.exe'.*did you mean 'exec'"):
        parse_node_drill(a.read_text().replace("exec = []", "exe = []"), a)
    if "drill" in KEYS[""]:  # the node loader takes it: the table is used
        assert load_pair((a, b), None).hosts["a"].workdir == "/var/tmp/x"
    else:  # it refuses it: said before the node loader's "unknown field"
        line = a.read_text().splitlines().index("[drill]") + 1
        with pytest.raises(ConfigError, match=rf"a.toml:{line}: table \[drill\].*--drill-hosts"):
            load_pair((a, b), None)
