"""hsp-failover-test as a user meets it: --list shows the shipped drills, a bad scenario exits 64
with file:line, running drills says plainly that the node engine is missing (69) and never
pretends a pass, and the report (table and --json) carries the issue's fields; exit 0 only
when every drill passed."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hsp_rdma.cli import failover_test as cli
from hsp_rdma.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, make_console
from hsp_rdma.tools.drills.runner import REPORT_FIELDS, DrillResult
from hsp_rdma.tools.drills.scenario import load_scenario, shipped

SIX = ("kill-active", "pause-active", "pull-fabric-10s", "corrupt-and-audit",
       "kill-active-during-resync", "kill-standby-during-gso")


@pytest.fixture
def tool(tmp_path: Path):
    env = dict(os.environ, HSP_LAB_DIR=str(tmp_path / "labs"), COLUMNS="200")

    def go(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hsp_rdma.cli.failover_test", *args],
                              capture_output=True, text=True, timeout=60, env=env, check=False)

    return go


def no_traceback(res: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in res.stderr + res.stdout


def test_list_shows_every_shipped_drill_with_its_description(tool) -> None:
    res = tool("--list")
    assert res.returncode == EXIT_OK, res.stderr
    for name in SIX:
        assert name in res.stdout
    assert "Pause the active past the timeout" in res.stdout
    drills = json.loads(tool("--list", "--json").stdout)["drills"]
    assert {d["name"] for d in drills} >= set(SIX)
    assert all(d["description"] and d["steps"] for d in drills)


def test_a_drill_the_target_cannot_run_is_not_run_and_says_why(tool, tmp_path) -> None:
    # netem needs tc on a real interface: over soft it is refused before anything starts
    drill = tmp_path / "netem-x.toml"
    drill.write_text("""
description = "netem over soft"
[workload]
rate = 10
transaction_size = 256
targets = ["pmem"]
commit = "applied"
[[steps]]
do = "netem"
node = "active"
fabric = "x"
spec = "delay 10ms"
""")
    res = tool(str(drill), "--provider", "soft")
    assert res.returncode == 69, res.stderr
    assert "not run" in res.stderr and "netem needs tc" in res.stderr
    no_traceback(res)


def test_a_bad_scenario_exits_64_naming_file_and_line(tool, tmp_path) -> None:
    text = load_scenario(shipped()[0]).path
    good = Path(text).read_text()
    one = tmp_path / "one.toml"
    one.write_text(good.replace('do = "wait"', 'do = "wiat"', 1))
    two = tmp_path / "two.toml"
    two.write_text(good.replace("rate =", "rat ="))
    res = tool(str(one), str(two), "kill-active")
    assert res.returncode == EXIT_USAGE
    line = good.splitlines().index('do = "wait"') + 1
    assert f"{one}:{line}: step 1: unknown step 'wiat'; did you mean 'wait'?" in res.stderr
    assert f"{two}:" in res.stderr and "did you mean 'rate'?" in res.stderr
    assert res.stdout == ""
    no_traceback(res)


@pytest.mark.parametrize(("argv", "says"), [
    (["kill-activ"],
     ("no scenario file 'kill-activ' and no shipped drill of that name; did you mean "
     "'kill-active'?")),
    (["[/x]"], "no scenario file '[/x]'"),
    (["--lab", "rxe", "--config", __file__, __file__], "not allowed with argument"),
    (["--config", "/no/such.toml", "/no/b.toml"], "'/no/such.toml' is not an existing file"),
    (["--lab", "mlx5"], "invalid choice: 'mlx5'"),
    (["--lab-id", "[/x]"], "lab id '[/x]' is not valid"),
])
def test_usage_errors_exit_64(tool, argv, says) -> None:
    res = tool(*argv)
    assert res.returncode == EXIT_USAGE, res.stderr
    assert says in res.stderr
    no_traceback(res)


def test_lab_id_is_refused_with_config(tool, tmp_path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("")
    b.write_text("")
    res = tool("--config", str(a), str(b), "--lab-id", "x")
    assert res.returncode == EXIT_USAGE and "--lab-id is for --lab, not --config" in res.stderr
    res = tool("--config", str(a), str(b))
    # (empty files: refused before anything runs, naming the file; tests/tools/test_drills_hosts.py
    # runs drills on two "hosts")
    assert res.returncode == EXIT_USAGE and f"{a}: missing table [node]" in res.stderr


class Canned:
    """A stand-in runner for the report's shape; its numbers are made up, not measured."""

    def __init__(self, lost: dict[str, int]) -> None:
        self.lost = lost

    def run(self, scenario) -> DrillResult:
        c = scenario.checks
        return DrillResult(scenario.name, 500, self.lost.get(scenario.name, 0), False, 1.0,
                           1.0, 4096 if c.resync else 0, c.audit_repairs or 0,
                           bool(c.failover), bool(c.resync))


def report(lost: dict[str, int], as_json: bool, monkeypatch) -> tuple[int, str]:
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", make_console(file=out, width=200))
    monkeypatch.setattr(sys, "stdout", out)
    scenarios = [load_scenario(p) for p in shipped()]
    return cli.run_drills(scenarios, Canned(lost), as_json), out.getvalue()


def test_json_report_has_one_object_per_drill_with_the_issues_fields(monkeypatch) -> None:
    code, text = report({}, True, monkeypatch)
    assert code == EXIT_OK
    rows = json.loads(text)["scenarios"]
    assert {r["name"] for r in rows} >= set(SIX)
    for r in rows:
        assert list(r) == [*REPORT_FIELDS, "failures"]
        assert r["passed"] is True and r["lost"] == 0 and r["two_actives"] is False


def test_one_failed_drill_makes_the_exit_1_and_says_why(monkeypatch) -> None:
    code, text = report({"pause-active": 3}, False, monkeypatch)
    assert code == EXIT_FAILED
    for header in ("drill", "passed", "acknowledged", "lost", "two actives",
                   "blackout [msec]", "detect [msec]", "resync [bytes]", "audit repairs"):
        assert header in text
    assert "pause-active: 3 acknowledged transfer(s) lost (allowed: 0)" in text


def test_every_option_has_help_and_its_default_once() -> None:
    p = cli.build_parser()
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        shown = p._get_formatter()._expand_help(action)
        assert action.help and shown.count("(default") <= 1, action.dest
    text = p.format_help()
    assert "(default: rxe)" in text and "(default: drills)" in text and "69" in text
