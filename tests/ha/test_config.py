"""The node configuration loader: the documented example loads, and every wrong or missing
field is a ConfigError naming the file, the line and the field, with what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsp_rdma.core.profiles import MAX_QUEUE_DEPTH
from hsp_rdma.errors import ConfigError
from hsp_rdma.ha import config
from hsp_rdma.ha.config import load_node_config, parse_node_config

BASE = """\
[node]
name = "a"
peer = "b"
role = "active"
state_dir = "state"

[fabric.x]
rdma_device = "rxe0"
local = "10.0.0.1"
peer = "10.0.0.2"

[fabric.y]
rdma_device = "rxe1"
local = "10.0.1.1"
peer = "10.0.1.2"
port = 7500

[pmem]
size = "16 MiB"

[[disk]]
name = "data"
path = "/dev/ram0"

[[disk]]
name = "log"
path = "log.img"
size = "1 MiB"

[replication]
commit = "received"
message_size = "128 KiB"
credits = 16

[timeouts]
heartbeat_interval = 50
heartbeat_timeout = 500

[fence]
action = "fence_ipmilan"
options = { ip = "10.1.1.1", username = "admin" }
"""
FILE = "/etc/hsp/a.toml"


def line_of(text: str, prefix: str, nth: int = 1) -> int:
    found = [i for i, line in enumerate(text.splitlines(), 1) if line.startswith(prefix)]
    return found[nth - 1]


def edited(old: str, new: str, nth: int = 1, text: str = BASE) -> str:
    """TEXT with the NTH line starting with OLD replaced by NEW ('' removes it)."""
    lines = text.splitlines()
    lines[line_of(text, old, nth) - 1] = new
    return "\n".join(lines) + "\n"


def refused(text: str, line: int | None, field: str, *words: str) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        parse_node_config(text, FILE)
    err = exc.value
    message = str(err)
    assert message.startswith(f"{FILE}:{line}: " if line else f"{FILE}: "), message
    assert err.path == FILE and err.line == line and err.field == field, message
    assert field in message, message
    for word in words:
        assert word in message, message
    return err


def test_the_base_loads_with_relative_paths_from_the_files_directory() -> None:
    cfg = parse_node_config(BASE, FILE)
    assert (cfg.name, cfg.peer, cfg.role, cfg.manager) == ("a", "b", "active", "self")
    assert cfg.state_dir == Path("/etc/hsp/state")
    assert cfg.socket_path == Path("/etc/hsp/state/control.sock")
    assert [f.name for f in cfg.fabrics] == ["x", "y"]
    assert cfg.fabrics[0] == config.FabricConfig("x", "rxe0", "10.0.0.1", "10.0.0.2", 7471)
    assert cfg.fabrics[1].port == 7500
    assert cfg.pmem_size == 16 << 20
    assert cfg.disks == (config.DiskConfig("data", Path("/dev/ram0")),
                         config.DiskConfig("log", Path("/etc/hsp/log.img"), 1 << 20))
    assert cfg.replication == config.ReplicationConfig("received", 128 << 10, 16)
    assert cfg.timeouts == config.TimeoutsConfig(50, 500, 5000, 10000)
    assert cfg.fence == config.FenceConfig("fence_ipmilan",
                                           (("ip", "10.1.1.1"), ("username", "admin")))
    assert cfg.source == Path(FILE)


def test_the_documented_example_loads() -> None:
    example = config.__doc__.split("::\n", 1)[1].split("\nRelative paths")[0]
    cfg = parse_node_config("\n".join(line[4:] for line in example.splitlines()), FILE)
    assert cfg.socket_path == Path("/run/hsp/a.sock")
    assert cfg.disks[0].size == 64 << 20 and cfg.fence.timeout == 30000
    assert cfg.fence.delay == 1000 and cfg.fence.outdate is True
    assert cfg.replication.resync_rate == cfg.replication.audit_rate == 64 << 20
    assert cfg.replication.audit_interval == 0


def test_resync_audit_and_fence_fields_are_read_and_checked() -> None:
    text = edited("credits = 16", 'credits = 16\nresync_rate = "8 MiB"\naudit_interval = 60000'
                  '\naudit_rate = "1 MiB"')
    text = edited('action = "fence_ipmilan"', 'action = "fence_ipmilan"\ndelay = 2500\n'
                  'outdate = false', text=text)
    cfg = parse_node_config(text, FILE)
    assert cfg.replication.resync_rate == 8 << 20 and cfg.replication.audit_rate == 1 << 20
    assert cfg.replication.audit_interval == 60000
    assert cfg.fence.delay == 2500 and cfg.fence.outdate is False
    bad = edited("credits = 16", "credits = 16\nresync_rate = 10")
    refused(bad, line_of(bad, "resync_rate"), "replication.resync_rate", "64KiB")
    bad = edited('action = "fence_ipmilan"', 'action = "fence_ipmilan"\noutdate = "yes"')
    refused(bad, line_of(bad, "outdate"), "fence.outdate", "true or false")


def test_minimal_config_takes_the_defaults() -> None:
    text = ('[node]\nname = "n-1"\npeer = "n_2"\nrole = "standby"\nstate_dir = "/s"\n'
            '[fabric.x]\nrdma_device = "soft:lab"\nlocal = "1.2.3.4"\npeer = "1.2.3.5"\n'
            '[pmem]\nsize = 4096\n')
    cfg = parse_node_config(text)
    assert cfg.replication == config.ReplicationConfig()
    assert cfg.timeouts == config.TimeoutsConfig()
    assert cfg.fence is None and cfg.disks == () and cfg.source is None
    assert len(cfg.fabrics) == 1 and cfg.fabrics[0].rdma_device == "soft:lab"


def test_load_reads_the_file_and_names_it(tmp_path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(BASE)
    assert load_node_config(path).state_dir == tmp_path / "state"
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope.toml'}: cannot read"):
        load_node_config(tmp_path / "nope.toml")
    path.write_bytes(b"\xff\xfe[node]")
    with pytest.raises(ConfigError, match="not a text file"):
        load_node_config(path)


def test_not_toml_names_the_line() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_node_config(edited("credits", "credits = = 3"), FILE)
    assert exc.value.line == line_of(BASE, "credits") and "not valid TOML" in str(exc.value)


T = BASE  # shorter rows below
CASES = [
    # (id, text, line, field, words)
    ("unknown key, did you mean",
     edited("heartbeat_timeout", "heartbeat_timout = 500"), line_of(T, "heartbeat_timeout"),
     "timeouts.heartbeat_timout", ("did you mean 'heartbeat_timeout'?", "heartbeat_interval")),
    ("unknown table", T + "[replicaton]\ncommit = \"async\"\n", len(T.splitlines()) + 1,
     "replicaton", ("did you mean 'replication'?",)),
    ("unknown fabric", edited("[fabric.y]", "[fabric.z]"), line_of(T, "[fabric.y]"),
     "fabric.z", ("the fields of [fabric] are: x, y",)),
    ("missing fabric x", T.replace("[fabric.x]", "[fabric.y]").replace(
        '[fabric.y]\nrdma_device = "rxe1"\nlocal = "10.0.1.1"\npeer = "10.0.1.2"\nport = 7500\n',
        ""), line_of(T, "[fabric.x]"), "fabric.x", ("fabric x is required",)),
    ("missing field", edited("role", ""), line_of(T, "[node]"), "node.role",
     ("missing field node.role", '"active", "standby"')),
    ("missing table", edited("[pmem]", "", text=edited("size", "")), None, "pmem",
     ("missing table [pmem]",)),
    ("bad name", edited("name", 'name = "a b"'), line_of(T, "name"), "node.name",
     ('"a b"', "letters, digits")),
    ("name too long", edited("name", f'name = "{"a" * 33}"'), 2, "node.name", ("1 to 32",)),
    ("peer is self", edited("peer", 'peer = "a"'), 3, "node.peer", ("another name",)),
    ("bad role", edited("role", 'role = "primary"'), 4, "node.role", ('"active", "standby"',)),
    ("bad manager", edited("role", 'role = "active"\nmanager = "crm"'), 5, "node.manager",
     ('"self", "pacemaker"',)),
    ("state_dir not a string", edited("state_dir", "state_dir = 5"), 5, "node.state_dir",
     ("a path",)),
    ("socket path too long", edited("state_dir", f'state_dir = "/{"d" * 100}"'), 5,
     "node.state_dir", ("at most 107", "node.control_socket")),
    ("bad ipv4", edited("local", 'local = "10.0.0.256"'), line_of(T, "local"),
     "fabric.x.local", ('"10.0.0.256"', "IPv4")),
    ("ipv6 refused", edited("peer", 'peer = "fe80::1"', 2), line_of(T, "peer", 2),
     "fabric.x.peer", ("IPv4",)),
    ("same address both ends", edited("peer", 'peer = "10.0.0.1"', 2),
     line_of(T, "peer", 2), "fabric.x.peer", ("same address as fabric.x.local",)),
    ("same local on both fabrics", edited("local", 'local = "10.0.0.1"', 2),
     line_of(T, "local", 2), "fabric.y.local", ("its own network",)),
    ("bad device", edited("rdma_device", 'rdma_device = "soft:"'), line_of(T, "rdma_device"),
     "fabric.x.rdma_device", ('"soft:NAME"',)),
    ("port 0", edited("port", "port = 0"), line_of(T, "port"), "fabric.y.port",
     ("from 1 to 65535",)),
    ("port too high", edited("port", "port = 70000"), line_of(T, "port"), "fabric.y.port",
     ("from 1 to 65535",)),
    ("port as string", edited("port", 'port = "7471"'), line_of(T, "port"), "fabric.y.port",
     ('"7471"', "an integer")),
    ("bad size", edited("size", 'size = "16 MB"'), line_of(T, "size"), "pmem.size",
     ('"16 MB"', "64 KiB")),
    ("pmem too small", edited("size", "size = 100"), line_of(T, "size"), "pmem.size",
     ("from 4KiB",)),
    ("disk without path", edited("path", "", 1), line_of(T, "[[disk]]", 1), "disk[1].path",
     ("missing field disk[1].path",)),
    ("disk size not in sectors", edited("size", "size = 1000", 2), line_of(T, "size", 2),
     "disk[2].size", ("512-byte sectors",)),
    ("disk name twice", edited("name", 'name = "data"', 3), line_of(T, "name", 3),
     "disk[2].name", ("the same as disk[1]",)),
    ("disk typo", edited("size", 'sise = "1 MiB"', 2), line_of(T, "size", 2), "disk[2].sise",
     ("did you mean 'size'?",)),
    ("disk as one table", T.replace('[[disk]]\nname = "log"\npath = "log.img"\nsize = "1 MiB"\n',
                                    "").replace("[[disk]]", "[disk]"),
     line_of(T, "[[disk]]"), "disk", ("one [[disk]] table per disk",)),
    ("bad commit mode", edited("commit", 'commit = "sync"'), line_of(T, "commit"),
     "replication.commit", ('"async", "received", "applied"',)),
    ("credits 1", edited("credits", "credits = 1"), line_of(T, "credits"),
     "replication.credits", (f"from 2 to {MAX_QUEUE_DEPTH}",)),
    ("credits over the queue depth", edited("credits", f"credits = {MAX_QUEUE_DEPTH + 1}"),
     line_of(T, "credits"), "replication.credits", (f"to {MAX_QUEUE_DEPTH}",)),
    ("credits bool", edited("credits", "credits = true"), line_of(T, "credits"),
     "replication.credits", ("= true",)),
    ("message too small", edited("message_size", 'message_size = "2 KiB"'),
     line_of(T, "message_size"), "replication.message_size", ("from 4KiB to 1MiB",)),
    ("message too large", edited("message_size", 'message_size = "2 MiB"'),
     line_of(T, "message_size"), "replication.message_size", ("to 1MiB",)),
    ("heartbeat too tight", edited("heartbeat_timeout", "heartbeat_timeout = 100"),
     line_of(T, "heartbeat_timeout"), "timeouts.heartbeat_timeout", ("more than twice",)),
    ("heartbeat interval raised past the default timeout",
     edited("heartbeat_timeout", "", text=edited("heartbeat_interval",
                                                 "heartbeat_interval = 600")),
     line_of(T, "heartbeat_interval"), "timeouts.heartbeat_interval", ("more than twice",)),
    ("timeout zero", edited("heartbeat_interval", "heartbeat_interval = 0"),
     line_of(T, "heartbeat_interval"), "timeouts.heartbeat_interval", ("from 1 to",)),
    ("fence option not a string",
     edited("options", 'options = { ip = "10.1.1.1", port = 623 }'), line_of(T, "options"),
     "fence.options.port", ('port = "623"',)),
    ("fence without action", edited("action", ""), line_of(T, "[fence]"), "fence.action",
     ("missing field fence.action",)),
    ("fence options as a table", edited("options", "[fence.options]\nlanplus = true"),
     line_of(T, "options") + 1, "fence.options.lanplus", ('lanplus = "true"',)),
]


@pytest.mark.parametrize(("text", "line", "field", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_each_mistake_names_file_line_and_field(text: str, line: int | None, field: str,
                                                words: tuple[str, ...]) -> None:
    refused(text, line, field, *words)


def test_dotted_keys_are_found_too() -> None:
    text = BASE.replace("[replication]\n", "").replace("commit = ", "replication.commit = ")
    # the dotted key sits under the second [[disk]] now: refused, on its own line
    refused(text, line_of(text, "replication.commit"), "disk[2].replication",
            "the fields of [disk[2]] are: name, path, size")
    block = '[replication]\ncommit = "received"\nmessage_size = "128 KiB"\ncredits = 16\n'
    top = 'replication.credits = 1\n' + BASE.replace(block, "")
    refused(top, 1, "replication.credits", "from 2 to")


def test_sizes_accept_bytes_and_units() -> None:
    for written, size in (("4096", 4096), ('"64KiB"', 64 << 10), ('"1 GiB"', 1 << 30),
                          ('"2m"', 2 << 20)):
        assert parse_node_config(edited("size", f"size = {written}")).pmem_size == size


VALUES = st.one_of(
    st.integers(-2**70, 2**70).map(str), st.booleans().map(lambda b: str(b).lower()),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=20).map(lambda t: json.dumps(t)),
    st.sampled_from(['"16 MiB"', '"0 KiB"', '"10.0.0.300"', '"soft:x"', "[]", "[1, 2]",
                     "{}", '{ a = 1 }', '"a"', '"b"', '"x"', "1979-05-27", "inf", "nan"]))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_value_anywhere_is_a_config_or_a_config_error(data) -> None:
    lines = BASE.splitlines()
    keyed = [i for i, line in enumerate(lines) if " = " in line]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.sampled_from(keyed))
        key = lines[i].split(" = ")[0]
        lines[i] = f"{key} = {data.draw(VALUES)}"
    try:
        parse_node_config("\n".join(lines), FILE)
    except ConfigError as exc:
        assert str(exc).startswith(FILE) and "Traceback" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    try:
        parse_node_config(text, FILE)
    except ConfigError:
        pass
