"""`hsp status` and `hsp audit` against a real ControlServer serving a canned status dict:
the tables show what the node said (unknown counters too, user text literal, alarms red),
--json is the node's dict, --watch follows, and every failure is one line with its exit
code."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from hsp_rdma.cli import status as hsp
from hsp_rdma.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from hsp_rdma.ha.control import ControlServer

ODD = "[/x] [red]rxe0[/red] :smile:"  # what a device or an alarm might say
STATUS = {
    "node": "a", "peer": "b", "role": "active", "epoch": 7, "config_file": "/etc/hsp/a.toml",
    "uptime_s": 61.25,
    "fabrics": [{"name": "x", "rdma_device": ODD, "state": "up", "active": True},
                {"name": "y", "rdma_device": "rxe1", "state": "down", "active": False}],
    "channels": {
        "pmem": {"state": "connected", "sent_msgs": 1200, "sent_bytes": 4915200,
                 "recv_msgs": 1199, "recv_bytes": 28776, "credits": 31,
                 "refused": {"bad_crc": 3, "replayed": 1}, "retransmits": 42},
        "health": {"state": "connected", "sent_msgs": 610, "sent_bytes": 19520,
                   "recv_msgs": 609, "recv_bytes": 19488, "credits": 32, "refused": {},
                   "receives_posted": 29},
        "shadow": {"state": "connecting", "sent_msgs": 0, "sent_bytes": 0, "recv_msgs": 0,
                   "recv_bytes": 0, "credits": 0},
    },
    "pmem": {"size": 16777216, "in_flight": 2, "last_committed": 1187, "last_applied": 1185},
    "disks": {"data": {"path": "/dev/ram0", "size": 67108864, "writes": 88, "bytes": 360448,
                       "in_flight": 0, "last_applied": 88, "flushes": 5}},
    "config": {"applied": 4, "inconsistent": True},
    "alarms": ["fabric y down since 19:02:11", ODD],
    "build": "0.1.0",
    "gso": {"last_outcome": "completed", "blackout_ms": 930.5},
}


@pytest.fixture
def node(tmp_path: Path):
    """A ControlServer answering 'status' with STATUS (which a test may change)."""
    state = {"status": copy.deepcopy(STATUS)}
    path = tmp_path / "a.sock"
    with ControlServer(path, {"status": lambda req: state["status"]}).start():
        yield path, state


def hsp_main(capsys, *argv: str) -> tuple[int, str, str]:
    rc = hsp.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_tables_show_what_the_node_said(node, capsys) -> None:
    sock, _ = node
    rc, out, err = hsp_main(capsys, "status", "--socket", str(sock))
    assert rc == EXIT_OK, err
    assert "receives" not in out, "receives_posted is in --json only (the table stays narrow)"
    for word in ("hsp status: node a (active), epoch 7", "peer", "uptime [s]", "61.2",
                 "/etc/hsp/a.toml", str(sock), ODD, "rxe1", "down",
                 "sent [msgs]", "sent [bytes]", "recv [bytes]", "credits", "4915200",
                 "refused", "refused frames by cause", "bad_crc", "replayed",
                 "size [bytes]", "16777216", "last committed", "1187", "/dev/ram0", "360448",
                 "INCONSISTENT with the peer", "ALARM fabric y down since 19:02:11",
                 "build", "0.1.0"):
        assert word in out, word
    lines = out.splitlines()
    assert [n for n in ("health", "pmem", "shadow")
            if any(line.split("│")[1:2] == [f" {n:<7} "] or f"│ {n} " in line
                   for line in lines)] == ["health", "pmem", "shadow"]
    assert lines.index(next(x for x in lines if "│ health" in x)) < lines.index(
        next(x for x in lines if "│ pmem" in x)), "the known channels come first, in order"


def test_unknown_counters_and_sections_get_their_own_columns(node, capsys) -> None:
    sock, _ = node
    out = hsp_main(capsys, "status", "--socket", str(sock))[1]
    assert "retransmits" in out and "42" in out  # an unknown channel counter: a column
    assert "flushes" in out  # an unknown disk field: a column
    assert "gso" in out and "last_outcome" in out and "930.5" in out  # an unknown section
    shadow = next(line for line in out.splitlines() if "│ shadow" in line)
    assert "connecting" in shadow and shadow.split("│")[-3].strip() == "-"  # no refused map
    pmem = next(line for line in out.splitlines() if "│ pmem" in line and "connected" in line)
    assert pmem.split("│")[-3].strip() == "4"  # 3 bad_crc + 1 replayed


def test_alarms_are_red_and_states_coloured() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=True, color_system="standard",
                      markup=False, emoji=False, highlight=False)  # make_console's, in colour
    hsp.show(STATUS, console)
    text = buf.getvalue()
    red, green = "\x1b[31m", "\x1b[32m"
    assert f"{red}fabric y down since 19:02:11" in text
    assert f"{red}{ODD}" in text  # user text stays literal, in colour
    assert f"{green}connected" in text and f"{red}down" in text


def test_config_as_the_file_path_is_shown_too(node, capsys) -> None:
    sock, state = node
    state["status"] = {**STATUS, "config": "/srv/b.toml"}
    del state["status"]["config_file"]
    out = hsp_main(capsys, "status", "--socket", str(sock))[1]
    assert "/srv/b.toml" in out and "configuration: applied" not in out


def test_a_sparse_or_odd_status_still_renders(node, capsys) -> None:
    sock, state = node
    state["status"] = {"node": "a", "role": "standby", "channels": [1, 2], "fabrics": "x",
                       "alarms": "one alarm", "pmem": None}
    rc, out, err = hsp_main(capsys, "status", "--socket", str(sock))
    assert rc == EXIT_OK and "Traceback" not in err
    assert "node a (standby), epoch ?" in out and "ALARM one alarm" in out


def test_json_is_the_nodes_status(node, capsys) -> None:
    sock, _ = node
    rc, out, _ = hsp_main(capsys, "status", "--socket", str(sock), "--json")
    assert rc == EXIT_OK
    assert json.loads(out) == STATUS


def test_config_file_leads_to_the_socket(node, capsys, tmp_path) -> None:
    sock, _ = node
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[node]\nname = "a"\npeer = "b"\nrole = "active"\nstate_dir = "st"\n'
                   f'control_socket = "{sock.name}"\n[fabric.x]\nrdma_device = "rxe0"\n'
                   'local = "10.0.0.1"\npeer = "10.0.0.2"\n[pmem]\nsize = "1 MiB"\n')
    rc, out, _ = hsp_main(capsys, "status", "--config", str(cfg), "--json")
    assert rc == EXIT_OK and json.loads(out)["epoch"] == 7
    os.environ[hsp.CONFIG_ENV] = str(cfg)
    try:
        assert hsp_main(capsys, "status", "--json")[0] == EXIT_OK
    finally:
        del os.environ[hsp.CONFIG_ENV]


def test_a_bad_config_names_its_line(capsys, tmp_path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text('[node]\nname = "a"\npeer = "b"\nrole = "primary"\n')
    rc, _, err = hsp_main(capsys, "status", "--config", str(cfg))
    assert rc == EXIT_FAILED
    assert f"hsp: {cfg}:4: field node.role = \"primary\"" in err


def test_no_config_says_how_to_name_the_node(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(hsp.CONFIG_ENV, str(tmp_path / "none.toml"))
    rc, _, err = hsp_main(capsys, "status")
    assert rc == EXIT_FAILED
    assert "--config FILE" in err and "--socket PATH" in err


def test_no_node_listening_is_one_clear_line(capsys, tmp_path) -> None:
    sock = tmp_path / "gone.sock"
    rc, out, err = hsp_main(capsys, "status", "--socket", str(sock))
    assert rc == EXIT_FAILED and out == ""
    assert err.strip() == (f"hsp: no node is listening on {sock}: is it running? (its "
                           "config's [node].control_socket)")


def test_a_node_that_does_not_answer_in_time_exits_124(tmp_path, capsys) -> None:
    sock = tmp_path / "slow.sock"
    with ControlServer(sock, {"status": lambda req: time.sleep(1) or {}}).start():
        rc, _, err = hsp_main(capsys, "status", "--socket", str(sock), "--timeout", "0.2")
    assert rc == 124 and "did not answer 'status' within 0.2 s" in err


def test_audit_unknown_to_the_node_is_a_clear_error(node, capsys) -> None:
    sock, _ = node
    rc, out, err = hsp_main(capsys, "audit", "--now", "--socket", str(sock))
    assert rc == EXIT_FAILED and out == ""
    assert err.strip() == (f"hsp: the node on {sock} refused 'audit': unknown command "
                           "'audit': this node knows status")


def test_audit_answer_is_shown(tmp_path, capsys) -> None:
    sock = tmp_path / "b.sock"
    answer = {"pmem": "identical", "disks": {"data": "identical"}, "chunks_differing": 0}
    with ControlServer(sock, {"audit": lambda req: answer}).start():
        rc, out, _ = hsp_main(capsys, "audit", "--now", "--socket", str(sock))
        assert rc == EXIT_OK
        assert "chunks_differing" in out and "data=identical" in out
        rc, out, _ = hsp_main(capsys, "audit", "--now", "--socket", str(sock), "--json")
    assert json.loads(out) == answer


def test_audit_needs_now(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        hsp.main(["audit", "--socket", "/x"])
    assert exc.value.code == EXIT_USAGE
    assert "--now" in capsys.readouterr().err


def test_watch_follows_the_counters(node, capsys, monkeypatch) -> None:
    sock, state = node
    real_sleep = time.sleep

    def tick(seconds: float) -> None:  # the node's counters move between two looks
        state["status"]["channels"]["pmem"]["sent_msgs"] += 1000
        real_sleep(min(seconds, 0.01))

    monkeypatch.setattr(hsp.time, "sleep", tick)
    rc, out, _ = hsp_main(capsys, "status", "--socket", str(sock), "--watch", "0.5",
                          "--count", "3", "--json")
    assert rc == EXIT_OK
    seen = [json.loads(line)["channels"]["pmem"]["sent_msgs"] for line in out.splitlines()]
    assert seen == [1200, 2200, 3200]
    rc, out, _ = hsp_main(capsys, "status", "--socket", str(sock), "--watch", "0.5",
                          "--count", "2")
    assert rc == EXIT_OK and out.count("every 0.5 s") == 2 and "5200" in out


def test_watch_keeps_going_while_the_node_is_away(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(hsp.time, "sleep", lambda s: None)
    rc, out, _ = hsp_main(capsys, "status", "--socket", str(tmp_path / "x.sock"), "--watch",
                          "1", "--count", "2", "--json")
    assert rc == EXIT_FAILED
    assert [("no node is listening" in json.loads(line)["error"])
            for line in out.splitlines()] == [True, True]


@pytest.mark.parametrize(("argv", "says"), [
    (["status", "--count", "2", "--socket", "/x"], "--count needs --watch"),
    (["status", "--watch", "0", "--socket", "/x"], "--watch should be between 0.1 and 3600"),
    (["status", "--config", "a", "--socket", "b"], "not allowed with argument"),
])
def test_usage_errors_exit_64(capsys, argv, says) -> None:
    with pytest.raises(SystemExit) as exc:
        hsp.main(argv)
    assert exc.value.code == EXIT_USAGE and says in capsys.readouterr().err


def test_the_hsp_command_as_installed(node) -> None:
    """The console script `hsp` (setup.py), run as a user runs it."""
    sock, _ = node
    exe = Path(sys.executable).with_name("hsp")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "hsp_rdma.cli.status"]
    res = subprocess.run([*argv, "status", "--socket", str(sock)], capture_output=True,
                         text=True, timeout=60, check=False, env=dict(os.environ,
                                                                      COLUMNS="200"))
    assert res.returncode == 0, res.stderr
    assert "hsp status: node a (active), epoch 7" in res.stdout and ODD in res.stdout


def test_a_fabrics_reconnect_thread_shows_what_it_does_and_for_how_long(node,
                                                                        capsys) -> None:
    sock, state = node
    state["status"]["fabrics"][1]["reconnect"] = {
        "pending": ["health", "pmem"], "doing": "connecting health to 10.77.2.2",
        "for_ms": 8123.4}
    out = hsp_main(capsys, "status", "--socket", str(sock))[1]
    assert "reconnect thread" in out
    # the cell wraps: its column's pieces, row after row, read as one text
    cells = [line.split("│")[-2].strip() for line in out.splitlines()
             if line.count("│") == 7 and "reconnect" not in line]
    assert "connecting health to 10.77.2.2 (8123.4 ms); to connect: health, pmem" in \
        " ".join(c for c in cells if c and c != "-"), out
