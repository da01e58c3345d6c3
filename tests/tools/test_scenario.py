"""Drill scenarios on the host: the six shipped drills parse; every mistake in a scenario file is
an error naming the file, the line and the field, with a did-you-mean for a misspelt name;
a drill's result is judged by its checks, and lost = 0 and no two actives always."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hsp_rdma.errors import ConfigError
from hsp_rdma.tools.drills.runner import (
    REPORT_FIELDS,
    DrillResult,
    HostsTarget,
    LabTarget,
    judge,
    make_runner,
    report,
    why_unavailable,
)
from hsp_rdma.tools.drills.scenario import (
    Checks,
    find_scenario,
    load_scenario,
    parse_scenario,
    shipped,
)

ISSUE_DRILLS = {"kill-active", "pause-active", "pull-fabric-10s", "corrupt-and-audit",
                "kill-active-during-resync", "kill-standby-during-gso"}

GOOD = """\
description = "a drill"

[workload]
rate = 100
transaction_size = "4KiB"
targets = ["pmem", "disk"]
commit = "applied"

[[steps]]
do = "wait"
for = "2s"

[[steps]]
do = "kill"
node = "active"

[checks]
failover = true
"""


def test_the_issues_drills_are_shipped_and_parse() -> None:
    drills = {p.stem: load_scenario(p) for p in shipped()}
    assert ISSUE_DRILLS <= set(drills)
    for name, s in drills.items():
        assert s.name == name and s.description and s.steps
        assert s.checks.lost == 0 and s.checks.two_actives is False
    assert drills["pull-fabric-10s"].fabrics == ("x",)
    assert [st.do for st in drills["kill-active"].steps] == ["wait", "kill", "wait", "wait"]
    assert drills["corrupt-and-audit"].checks.audit_repairs == 2


def test_a_good_scenario() -> None:
    s = parse_scenario(GOOD, "/d/mine.toml")
    assert s.name == "mine" and s.workload.transaction_size == 4096
    assert s.workload.accounts == 1000 and s.fabrics == ("x", "y")
    wait, kill = s.steps
    assert (wait.wait_s, wait.line) == (2.0, 9) and (kill.node, kill.line) == (
        "active", 13)
    assert s.checks == Checks(failover=True)
    assert [st.describe() for st in s.steps] == ["wait 2s", "kill active"]


def bad(text: str, line: int | None, *words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_scenario(text, "s.toml")
    msg = str(exc.value)
    where = f"s.toml:{line}: " if line else "s.toml: "
    assert msg.startswith(where), msg
    for word in words:
        assert word in msg, msg


def test_an_unknown_step_points_at_its_line_with_a_did_you_mean() -> None:
    bad(GOOD.replace('do = "kill"', 'do = "kil"'), 14,
        "step 2: unknown step 'kil'; did you mean 'kill'?", "steps: wait, kill, pause")
    bad(GOOD.replace('do = "kill"', 'do = "explode"'), 14, "unknown step 'explode' (steps:")


def test_a_mistyped_field_points_at_its_line() -> None:
    bad(GOOD.replace('node = "active"', 'nod = "active"'), 15,
        "step 2 (kill): unknown field 'nod'; did you mean 'node'? (kill takes: node)")
    bad(GOOD.replace("rate = 100", "rat = 100"), 4,
        "workload: unknown field 'rat'; did you mean 'rate'?")
    bad(GOOD.replace("[checks]", "[check]"), 17, "unknown field 'check'; did you mean 'checks'?")
    bad(GOOD.replace("failover = true", "failovr = true"), 18, "did you mean 'failover'?")


@pytest.mark.parametrize(("old", "new", "line", "says"), [
    ("rate = 100", 'rate = "fast"', 4,
     "workload: rate = 'fast' should be a whole number between 1 and 100000"),
    ('"4KiB"', "64", 5, "should be a size between 96 and 1048576 bytes"),
    ('["pmem", "disk"]', '["pmem", "pmem"]', 6, 'a list of "pmem", "disk" or both, each once'),
    ('commit = "applied"', 'commit = "C"', 7, 'one of "async", "received", "applied"'),
    ('for = "2s"', 'for = "2 seconds"', 11, 'a duration like "500ms", "10s" or "2min"'),
    ('for = "2s"', "for = 2", 11, "for = 2 should be a duration"),
    ('node = "active"', 'node = "c"', 15, 'node = \'c\' should be one of "active", "standby"'),
    ("failover = true", 'failover = "yes"', 18, "should be true (a standby must promote)"),
    ("failover = true", "two_actives = true", 18, "two_actives = true should be false (a drill never allows two actives)"),
    ("failover = true", "max_blackout_ms = 0", 18, "milliseconds above 0"),
])
def test_a_wrong_value_names_field_line_and_what_is_allowed(old, new, line, says) -> None:
    assert old in GOOD
    bad(GOOD.replace(old, new, 1), line, says)


def test_missing_fields() -> None:
    bad(GOOD.replace('node = "active"\n', ""), 13, "step 2 (kill): missing field(s) node")
    bad(GOOD.replace('commit = "applied"\n', ""), 3, "workload: missing field(s) commit")
    bad(GOOD.replace('do = "kill"\n', ""), 13, "step 2: missing field 'do'")
    bad(GOOD.split("[workload]")[0], None, "missing field(s): workload, steps")
    bad(GOOD.replace('description = "a drill"', 'description = " "'), 1, "description should")


def test_steps_that_cannot_follow_each_other() -> None:
    step = '\n[[steps]]\ndo = "{}"\nnode = "{}"\n'
    bad(GOOD.replace("\n[checks]", step.format("resume", "standby") + "\n[checks]"), 17,
        "step 3 (resume): the standby was not paused; pause it first")
    bad(GOOD.replace("\n[checks]", step.format("pause", "active") + "\n[checks]"), 17,
        "step 3 (pause): the active was killed at an earlier step")
    bad(GOOD.replace("\n[checks]", step.format("restart", "standby") + "\n[checks]"), 17,
        "the standby was not killed; kill it first")
    plug = '\n[[steps]]\ndo = "plug"\nnode = "standby"\nfabric = "y"\n'
    bad(GOOD.replace("\n[checks]", plug + "\n[checks]"), 17,
        "fabric y on the standby was not pulled; pull it first")
    only_x = GOOD.replace('description = "a drill"', 'description = "a"\nfabrics = ["x"]')
    bad(only_x.replace("\n[checks]", plug.replace("plug", "pull") + "\n[checks]"), 21,
        "fabric y is not one of the drill's fabrics (x)")
    both = '\n[[steps]]\ndo = "wait"\nfor = "1s"\nuntil = "promoted"\n'
    bad(GOOD.replace("\n[checks]", both + "\n[checks]"), 17,
        "give either for = DURATION or until = EVENT (events: suspected,")
    bad(GOOD.replace('for = "2s"', 'for = "2s"\ntimeout = "3s"'), 12,
        "timeout goes with until, not with for")


def test_corrupt_netem_and_audit_checks() -> None:
    corrupt = '\n[[steps]]\ndo = "corrupt"\nwhat = "page"\nindex = 3\nnode = "active"\n'
    bad(GOOD.replace("\n[checks]", corrupt + "\n[checks]"), 21,
        "only the standby is corrupted")
    netem = '\n[[steps]]\ndo = "netem"\nnode = "standby"\nfabric = "x"\nspec = "delay fast"\n'
    bad(GOOD.replace("\n[checks]", netem + "\n[checks]"), 21, "should be a netem spec in tc")
    ok = parse_scenario(GOOD.replace("\n[checks]", netem.replace("delay fast", "loss 100%")
                                     + corrupt.replace('node = "active"\n', "")
                                     + '\n[[steps]]\ndo = "audit"\n' + "\n[checks]"))
    assert [s.describe() for s in ok.steps[2:]] == [
        "netem fabric x on standby 'loss 100%'", "corrupt page 3 on standby", "audit"]
    bad(GOOD.replace("failover = true", "audit_repairs = 1"), 18,
        "audit_repairs needs an audit step")


def test_bad_toml_and_inline_steps() -> None:
    bad(GOOD.replace("rate = 100", "rate = = 100"), 4, "not valid TOML")
    inline = ('steps = [{do = "wait", for = "1s"},\n  {do = "wiat", for = "1s"}]\n'
              + GOOD.split("[[steps]]")[0])
    bad(inline, 1, "unknown step 'wiat'; did you mean 'wait'?")


def test_markup_like_text_comes_back_verbatim() -> None:
    bad(GOOD.replace('do = "kill"', 'do = "[/x]"'), 14, "unknown step '[/x]'")


def test_finding_scenarios(tmp_path) -> None:
    assert find_scenario("kill-active").name == "kill-active.toml"
    assert find_scenario("kill-active.toml") == find_scenario("kill-active")
    mine = tmp_path / "mine.toml"
    mine.write_text(GOOD)
    assert find_scenario(str(mine)) == mine
    with pytest.raises(ConfigError, match=re.escape("did you mean 'kill-active'?")):
        find_scenario("kill-activ")
    with pytest.raises(ConfigError, match="cannot read scenario"):
        load_scenario(tmp_path)
    (tmp_path / "latin1.toml").write_bytes(b"description = \"\xe9\"")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_scenario(tmp_path / "latin1.toml")


def result(**kw) -> DrillResult:
    base = {"name": "d", "acknowledged": 1000, "lost": 0, "two_actives": False,
            "blackout_ms": 800.0, "detect_ms": 1100.0, "resync_bytes": 0, "audit_repairs": 0,
            "failover": True, "resync": False}
    return DrillResult(**{**base, **kw})


def test_judge_holds_a_result_to_the_checks() -> None:
    s = parse_scenario(GOOD.replace("failover = true", "failover = true\nmax_blackout_ms = 900"
                                    "\nmax_detect_ms = 1000"), "d.toml")
    assert judge(s, result(detect_ms=900.0)) == []
    assert judge(s, result()) == ["detection 1100 ms > 1000 ms"]
    assert judge(s, result(lost=2, two_actives=True, blackout_ms=None, detect_ms=10.0,
                           failover=False)) == [
        "2 acknowledged transfer(s) lost (allowed: 0)", "two actives",
        "no blackout time was measured (bound 900 ms)",
        "failover did not happen, expected one"]
    assert judge(s, result(acknowledged=0, detect_ms=1.0, problems=("ledger damaged",))) == [
        "ledger damaged",
        "no transfer was acknowledged: the workload never ran, so nothing was shown"]


def test_the_report_has_the_issues_fields() -> None:
    s = parse_scenario(GOOD, "d.toml")
    row = report(result(), judge(s, result()))
    assert list(row) == [*REPORT_FIELDS, "failures"]
    assert row["passed"] is True and row["failures"] == [] and row["lost"] == 0


def test_no_runner_pretends_a_pass() -> None:
    # two hosts: their configurations are checked when the runner is made, before any drill
    with pytest.raises(ConfigError, match="a.toml: cannot read the node configuration"):
        make_runner(HostsTarget((Path("a.toml"), Path("b.toml"))))
    lab = LabTarget("siw", "x")
    make_runner(lab)  # built lazily: nothing boots before a drill runs
    for path in shipped():  # every shipped drill runs in the lab
        assert why_unavailable(lab, load_scenario(path)) is None, path.stem
