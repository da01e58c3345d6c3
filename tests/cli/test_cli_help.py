"""--help of every command: each option says what it does and shows its default, once."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from hsp_rdma.cli import bench, demo, lab, status


def parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of every tool: the tools and each of their subcommands."""
    todo = [lab.build_parser(), bench.build_parser(), demo.build_parser(),
            status.build_parser()]
    while todo:
        p = todo.pop(0)
        yield p.prog, p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())


ALL = list(parsers())
OPTIONS = [(prog, p, a) for prog, p in ALL for a in p._actions
           if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def test_every_command_is_walked() -> None:
    progs = {prog for prog, _ in ALL}
    assert {"hsp-lab", "hsp-lab fault", "hsp-lab up", "hsp-bench", "hsp-bench gso",
            "hsp-bench cext", "hsp-bench disk", "hsp-bench interface-a", "hsp-bench serve",
            "hsp-bench fabric", "scripts/demo", "hsp status", "hsp audit"} <= progs
    assert len(progs) == 1 + 6 + 1 + 6 + 1 + 1 + 2


@pytest.mark.parametrize(("prog", "parser", "action"), OPTIONS,
                         ids=[f"{prog} {a.dest}" for prog, _, a in OPTIONS])
def test_every_option_has_help_and_shows_its_default_once(prog, parser, action) -> None:
    assert action.help and action.help.strip(), f"{prog}: {action.dest} has no help"
    shown = parser._get_formatter()._expand_help(action)
    default = action.default
    if isinstance(default, str) and default == argparse.SUPPRESS:
        default = getattr(parser, "late_defaults", {}).get(action.dest)
    if default not in (None, False):
        assert shown.count("(default") == 1, f"{prog} {action.dest}: {shown!r}"
        if isinstance(default, str):
            assert default in shown


def test_help_prints_and_percent_signs_come_out_single() -> None:
    for prog, p in ALL:
        text = p.format_help()
        assert "%%" not in text and "%(" not in text, prog
    fault = dict(ALL)["hsp-lab fault"].format_help()
    assert "loss 1%'" in fault.replace("\n", " ")


def test_the_demo_calls_itself_by_the_path_users_run() -> None:
    assert demo.build_parser().prog == "scripts/demo"
    assert "usage: scripts/demo" in demo.build_parser().format_usage()
