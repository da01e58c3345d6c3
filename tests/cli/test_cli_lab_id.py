"""One spelling of --lab-id: before or after the subcommand, in hsp-lab and hsp-bench alike;
and the commands the lab's messages name work when pasted."""

from __future__ import annotations

import re
import shlex

import pytest

from hsp_rdma.cli import bench, lab
from hsp_rdma.errors import LabError
from hsp_rdma.lab import Lab

LAB_COMMANDS = [["setup"], ["up"], ["exec", "a", "true"], ["fault", "a", "kill"], ["status"],
                ["down"]]


@pytest.mark.parametrize("cmd", LAB_COMMANDS, ids=lambda c: c[0])
def test_hsp_lab_takes_lab_id_before_or_after_the_subcommand(cmd: list[str]) -> None:
    parse = lab.build_parser().parse_args
    assert parse(cmd).lab_id == "default"
    assert parse(["--lab-id", "one", *cmd]).lab_id == "one"
    assert parse([cmd[0], "--lab-id", "two", *cmd[1:]]).lab_id == "two"
    # given in both places, the one nearer the options of the subcommand wins
    assert parse(["--lab-id", "one", cmd[0], "--lab-id", "two", *cmd[1:]]).lab_id == "two"


@pytest.mark.parametrize(("cmd", "default"), [("gso", "bench"), ("cext", "cextbench"),
                                              ("disk", "diskbench")])
def test_hsp_bench_takes_lab_id_before_or_after_the_subcommand(cmd: str, default: str) -> None:
    parse = bench.build_parser().parse_args
    assert parse([cmd]).lab_id == default
    assert parse(["--lab-id", "one", cmd]).lab_id == "one"
    assert parse([cmd, "--lab-id", "two"]).lab_id == "two"
    assert parse(["--lab-id", "one", cmd, "--lab-id", "two"]).lab_id == "two"


def test_lab_id_after_the_subcommand_reaches_the_lab(run) -> None:
    res = run("hsp-lab", "status", "--lab-id", "after")
    assert res.returncode == 0 and "lab 'after' is down" in res.stdout
    res = run("hsp-lab", "--lab-id", "before", "down")
    assert res.returncode == 0 and "lab 'before' down" in res.stdout


def pasted(message: str) -> list[str]:
    """The hsp-lab command quoted in MESSAGE, as argv for the CLI (without 'hsp-lab')."""
    (cmd,) = re.findall(r"'(hsp-lab [^']*)'", message)
    return shlex.split(cmd)[1:]


def test_not_up_names_an_up_that_boots_that_lab(run) -> None:
    res = run("hsp-lab", "--lab-id", "never-up", "exec", "a", "--", "true")
    assert res.returncode == 1
    assert "lab 'never-up' is not up: run 'hsp-lab --lab-id never-up up' first" in res.stderr
    args = lab.build_parser().parse_args(pasted(res.stderr))
    assert (args.cmd, args.lab_id) == ("up", "never-up")
    res = run("hsp-lab", "exec", "a", "--", "true")  # the default lab needs no --lab-id
    assert "run 'hsp-lab up' first" in res.stderr


def test_up_with_another_kind_names_a_down_that_works(run, monkeypatch, tmp_path) -> None:
    busy = Lab("busy", root=tmp_path)
    monkeypatch.setattr(Lab, "status", lambda self: {"up": True, "rdma": "siw"})
    with pytest.raises(LabError, match="is up with siw, not rxe") as exc:
        busy.ensure_up("rxe")
    argv = pasted(str(exc.value))
    assert argv == ["--lab-id", "busy", "down"]
    res = run("hsp-lab", *argv)  # the lab is not really up: down ends nothing, and says so
    assert res.returncode == 0 and "lab 'busy' down (nothing was running)" in res.stdout


def test_a_second_up_names_a_down_that_works(monkeypatch, tmp_path) -> None:
    up = Lab("twice", root=tmp_path)
    up.dir.mkdir(parents=True)
    up.state_path.write_text("{}")
    monkeypatch.setattr(Lab, "running", lambda self: True)
    with pytest.raises(LabError, match="already up") as exc:
        up.up()
    args = lab.build_parser().parse_args(pasted(str(exc.value)))
    assert (args.cmd, args.lab_id) == ("down", "twice")
