"""The lab's fence agent (run in the guests) against the host's fence device, on the host: the
fence-agents convention (stdin key=value, exit 0 done / 1 failed, status 0 on / 2 off), the
key=value channel with per-hop timings, and the agent's start-up kept lean (stdlib os, sys,
time only, run as COMMAND: a script, -I -S). The same agent fences in the lab drills."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hsp_rdma.lab import Lab
from hsp_rdma.lab.fence_agent import COMMAND, SH_COMMAND
from hsp_rdma.lab.fenced import STATE_FILE, carry_out, clear_marks, load_marks, serve_once


def _fake_lab(root: Path) -> Lab:
    """A lab whose state names nodes a and b, neither running (so both are 'off')."""
    lab = Lab("fence", root)
    for n in "ab":
        (lab.node_dir(n) / "share" / "fence").mkdir(parents=True)
    lab.state_path.write_text(json.dumps({
        "lab_id": "fence", "rdma": "rxe", "fabrics": 2, "kver": "6.1", "topology": "pair",
        "nodes": {n: {} for n in "ab"}, "links": {n: {"x": "up", "y": "up"} for n in "ab"}}))
    return lab


@pytest.fixture
def device(tmp_path):
    """The fence device serving the fake lab while the test runs; yields (lab, log)."""
    lab, log, stop = _fake_lab(tmp_path), io.StringIO(), threading.Event()

    def serve():
        while not stop.is_set():
            serve_once(lab, log)
            time.sleep(0.005)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield lab, log
    stop.set()
    t.join(5)


AGENTS = pytest.mark.parametrize("cmd", [COMMAND, SH_COMMAND], ids=["py", "sh"])


def agent(lab: Lab, *lines: str, cmd: str = COMMAND, timeout: float = 20,
          asker: str = "b") -> subprocess.CompletedProcess:
    """The agent as run in node ASKER (its request goes through ASKER's share)."""
    share = lab.node_dir(asker) / "share"
    return subprocess.run(shlex.split(cmd), input="\n".join([*lines, f"share={share}"]) + "\n",
                          capture_output=True, text=True, timeout=timeout, check=False)


@AGENTS
def test_status_and_off_of_a_node_that_is_off_name_each_hop(device, cmd) -> None:
    lab, log = device
    st = agent(lab, "action=status", " plug = a ", cmd=cmd)
    assert st.returncode == 2, st.stderr  # fence-agents: status 2 = off
    assert "status a: node a is off [" in st.stdout and "agent" in st.stdout
    assert "device answered" in st.stdout and "noticed it after" in st.stdout
    off = agent(lab, "action=off", "plug=a", cmd=cmd)
    assert off.returncode == 0 and "node a is off" in off.stdout, off.stderr
    seen = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(s["from"], s["action"], s["plug"]) for s in seen] == [("b", "status", "a"),
                                                                   ("b", "off", "a")]
    assert all("noticed_ms" in s and "took_ms" in s for s in seen)
    assert not list((lab.node_dir("b") / "share" / "fence").iterdir())  # nothing left behind


@AGENTS
def test_unknown_plug_fails_with_the_device_s_reason(device, cmd) -> None:
    lab, _ = device
    res = agent(lab, "action=off", "plug=zz", cmd=cmd)
    assert res.returncode == 1 and "unknown plug 'zz': the lab's nodes are a, b" in res.stdout


@pytest.mark.parametrize("lines, said", [
    (("action=off",), "no plug= given"),
    (("action=explode", "plug=a"), "unknown action='explode'"),
    (("action=off", "plug=a/../b"), "is not a node name"),
    (("action=off", "plug=a", "timeout=soon"), "timeout='soon' is not a number"),
])
@AGENTS
def test_bad_options_are_refused_with_what_is_wrong(tmp_path, lines, said, cmd) -> None:
    res = agent(_fake_lab(tmp_path), *lines, cmd=cmd)
    assert res.returncode == 1 and said in res.stderr and "Traceback" not in res.stderr


@AGENTS
def test_no_fence_device_fails_in_the_given_time(tmp_path, cmd) -> None:
    t0 = time.monotonic()
    res = agent(_fake_lab(tmp_path), "action=off", "plug=a", "timeout=0.3", cmd=cmd)
    assert res.returncode == 1 and "gave no answer in 0.3 s" in res.stderr
    assert time.monotonic() - t0 < 10


def test_metadata_and_a_lean_start(tmp_path) -> None:
    """Every module the agent imports costs ~30x in a TCG guest reading it over 9p: as
    COMMAND, no site, no project package, no json/pathlib/re."""
    res = subprocess.run([*shlex.split(COMMAND)[:-1], "-X", "importtime",
                          shlex.split(COMMAND)[-1]], input="action=metadata\n",
                         capture_output=True, text=True, timeout=20, check=False)
    assert res.returncode == 0 and 'name="fence_hsp_lab"' in res.stdout
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & {"site", "json", "pathlib", "re", "hsp_rdma", "hsp_rdma.lab"}, imported


def test_sh_agent_metadata_matches() -> None:
    said = [subprocess.run(shlex.split(c), input="action=metadata\n", capture_output=True,
                           text=True, timeout=20, check=True).stdout.strip()
            for c in (COMMAND, SH_COMMAND)]
    assert said[0] == said[1]


def test_a_request_still_being_written_waits_then_is_unreadable(tmp_path, monkeypatch) -> None:
    from hsp_rdma.lab import fenced
    lab, log = _fake_lab(tmp_path), io.StringIO()
    req = lab.node_dir("b") / "share" / "fence" / "r1.req"
    req.write_text("action=off\nplug=a\nreply=kv\n")  # no end=1 yet: the writer is at it
    assert serve_once(lab, log) == 0 and req.exists()
    monkeypatch.setattr(fenced, "INCOMPLETE_S", 0.0)
    assert serve_once(lab, log) == 1 and not req.exists()
    ans = req.with_suffix(".ans").read_text()
    assert "ok=0" in ans and "no end=1 line" in ans


@AGENTS
def test_a_request_left_unanswered_is_taken_back(tmp_path, cmd) -> None:
    lab = _fake_lab(tmp_path)
    assert agent(lab, "action=off", "plug=a", "timeout=0.2", cmd=cmd).returncode == 1
    assert not list((lab.node_dir("b") / "share" / "fence").iterdir())


@AGENTS
def test_an_outdated_node_may_not_fence_and_its_outdater_clears_the_mark(device, cmd) -> None:
    """DRBD's outdate-peer at the fence device: a outdates b; b (Outdated) can neither fence
    nor clear its own mark; a still fences; a clears the mark; status says Outdated."""
    lab, log = device
    res = agent(lab, "action=outdate", "plug=b", "nodename=a", cmd=cmd, asker="a")
    assert res.returncode == 0 and "outdate b: node b is Outdated (by a)" in res.stdout, res
    for action in ("off", "outdate", "reboot", "on"):
        res = agent(lab, f"action={action}", "plug=a", cmd=cmd, asker="b")
        assert res.returncode == 1, res
        assert "node b is Outdated (by a): it may not fence" in res.stdout
    res = agent(lab, "action=unoutdate", "plug=b", cmd=cmd, asker="b")
    assert res.returncode == 1 and "node b is Outdated (by a)" in res.stdout
    st = agent(lab, "action=status", "plug=b", cmd=cmd, asker="b")  # status: anyone may ask
    assert st.returncode == 2 and "node b is off, Outdated (by a)" in st.stdout
    marks = json.loads((lab.dir / STATE_FILE).read_text())  # kept in the lab dir: a
    assert marks["outdated"]["b"]["by"] == "a"                # restarted device keeps it
    res = agent(lab, "action=unoutdate", "plug=b", cmd=cmd, asker="a")
    assert res.returncode == 0 and "node b is no longer Outdated" in res.stdout
    assert load_marks(lab)["outdated"] == {}
    res = agent(lab, "action=unoutdate", "plug=b", cmd=cmd, asker="a")
    assert res.returncode == 0 and "node b was not Outdated" in res.stdout
    seen = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(s["from"], s["action"], s["ok"]) for s in seen][:2] == [("a", "outdate", True),
                                                                     ("b", "off", False)]


@AGENTS
def test_the_outdating_node_still_fences_and_a_powered_off_node_may_not(device, cmd) -> None:
    lab, _ = device
    booted = []
    lab.boot_node = booted.append  # the fake lab has no QEMU: "on" only records the boot
    assert agent(lab, "action=outdate", "plug=b", cmd=cmd, asker="a").returncode == 0
    res = agent(lab, "action=off", "plug=b", cmd=cmd, asker="a")
    assert res.returncode == 0 and "node b is off" in res.stdout
    assert agent(lab, "action=unoutdate", "plug=b", cmd=cmd, asker="a").returncode == 0
    res = agent(lab, "action=off", "plug=a", cmd=cmd, asker="b")  # b's request, queued
    assert res.returncode == 1                                   # before it went off
    assert "node b was powered off (by a) and has not been on since" in res.stdout
    assert agent(lab, "action=on", "plug=b", cmd=cmd, asker="a").returncode == 0
    assert booted == ["b"] and load_marks(lab)["off"] == {}
    assert agent(lab, "action=outdate", "plug=a", cmd=cmd, asker="b").returncode == 0


def test_crossing_requests_are_served_one_by_one_the_first_wins(tmp_path) -> None:
    """Both nodes ask to fence each other at once (one fabric down): the device serves them
    in turn, and the second asker is by then powered off, so refused."""
    lab, log = _fake_lab(tmp_path), io.StringIO()
    for asker, plug in (("a", "b"), ("b", "a")):
        (lab.node_dir(asker) / "share" / "fence" / "r.req").write_text(
            f"action=off\nplug={plug}\nreply=kv\nend=1\n")
    assert serve_once(lab, log) == 2
    first, second = ((lab.node_dir(n) / "share" / "fence" / "r.ans").read_text() for n in "ab")
    assert "ok=1" in first and "detail=node b is off" in first
    assert "ok=0" in second and "node b was powered off (by a)" in second


def test_a_node_booted_since_its_off_may_fence_again(tmp_path, monkeypatch) -> None:
    """An off mark holds until the node is on again, by the device's `on` or by the lab's own
    boot (a new start time for its QEMU)."""
    lab = _fake_lab(tmp_path)
    state = json.loads(lab.state_path.read_text())
    state["nodes"]["b"]["started"] = 1.0
    lab.state_path.write_text(json.dumps(state))
    assert carry_out(lab, "off", "b", "a")["ok"]
    assert not carry_out(lab, "status", "a", "b")["outdated"]
    assert "powered off (by a)" in carry_out(lab, "off", "a", "b")["detail"]
    state["nodes"]["b"]["started"] = 2.0  # booted again, outside the fence device
    lab.state_path.write_text(json.dumps(state))
    monkeypatch.setattr(Lab, "node_alive", lambda self, node: node == "b")
    res = carry_out(lab, "outdate", "a", "b")
    assert res["ok"] and res["detail"] == "node a is Outdated (by b)"
    assert load_marks(lab)["off"] == {}


def test_a_mark_that_cannot_be_kept_is_not_claimed(tmp_path) -> None:
    lab = _fake_lab(tmp_path)
    (lab.dir / STATE_FILE).with_suffix(".tmp").mkdir()  # the atomic write cannot happen
    res = carry_out(lab, "outdate", "b", "a")
    assert not res["ok"] and "the mark could not be kept" in res["detail"]


def test_unreadable_marks_refuse_rather_than_forget(tmp_path) -> None:
    lab = _fake_lab(tmp_path)
    (lab.dir / STATE_FILE).write_text("{half")
    res = carry_out(lab, "off", "a", "b")
    assert not res["ok"] and "fence marks" in res["detail"] and "unreadable" in res["detail"]


@pytest.mark.lab
def test_outdate_arbitration_from_the_guests(healthy_lab: Lab) -> None:
    """In the lab: each guest asks through its own share (the device knows who asks): a
    outdates b (sh agent); b may not fence a (sh agent) nor clear its own mark (py agent);
    a clears it. Nothing is powered off; the marks are cleared whatever happens."""
    lab = healthy_lab

    def ask(node: str, cmd: str, *lines: str):
        text = "\\n".join([*lines, "timeout=60"])
        return lab.exec(node, ["sh", "-c", f"printf '{text}\\n' | {cmd}"], timeout=90)

    try:
        res = ask("a", SH_COMMAND, "action=outdate", "plug=b", "nodename=a")
        assert res.rc == 0 and "node b is Outdated (by a)" in res.stdout, (res.stdout, res.stderr)
        res = ask("b", SH_COMMAND, "action=off", "plug=a")
        assert res.rc == 1 and "node b is Outdated (by a): it may not fence" in res.stdout
        res = ask("b", COMMAND, "action=unoutdate", "plug=b")
        assert res.rc == 1 and "node b is Outdated (by a)" in res.stdout
        res = ask("b", SH_COMMAND, "action=status", "plug=a")
        assert res.rc == 0 and "node a is on" in res.stdout  # status: anyone may ask
        res = ask("a", COMMAND, "action=unoutdate", "plug=b")
        assert res.rc == 0 and "node b is no longer Outdated" in res.stdout
        assert load_marks(lab)["outdated"] == {} and lab.node_alive("a")
    finally:
        clear_marks(lab)
