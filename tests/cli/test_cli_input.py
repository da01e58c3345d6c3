"""What users type reaches them back verbatim, and each mistake exits with README's code:
markup-like text ("[/x]", "[red]") in any option, usage errors found after parsing (64)."""

from __future__ import annotations

import pytest

from hsp_rdma.cli import bench, lab
from hsp_rdma.cli.common import EXIT_USAGE


def refused(res, *words: str) -> None:
    """Exit 64, every word in the message as typed, no traceback."""
    assert res.returncode == EXIT_USAGE, res.stderr
    for word in words:
        assert word in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("size", ["[/x]", "[red]4x"])
def test_gso_size_is_quoted_back_verbatim(run, size: str) -> None:
    refused(run("hsp-bench", "gso", "--size", size), f"--size: '{size}' is not a size")


def test_serve_names_the_unknown_device_before_any_network(run, tmp_path) -> None:
    empty = tmp_path / "profiles"
    empty.mkdir()
    # 10.0.0.1 is never contacted: the device's hw profile is looked up first, and fails
    res = run("hsp-bench", "serve", "--device", "[/x]", "--local-ip", "10.0.0.1",
              "--profiles", str(empty))
    assert res.returncode == 1
    assert "no hardware profile matches device '[/x]'" in res.stderr
    assert "Traceback" not in res.stderr and "serving" not in res.stdout


@pytest.mark.parametrize(("tool", "argv"), [
    ("hsp-lab", ["--lab-id", "[/x]", "status"]),
    ("hsp-lab", ["status", "--lab-id", "[/x]"]),
    ("hsp-bench", ["cext", "--lab-id", "[/x]", "--json"]),
    ("hsp-bench", ["--lab-id", "[/x]", "gso"]),
    ("scripts/demo", ["--lab-id", "[/x]"]),
])
def test_bad_lab_id_is_a_usage_error_naming_it(run, tool: str, argv: list[str]) -> None:
    refused(run(tool, *argv), "lab id '[/x]' is not valid")


def test_runs_must_be_whole(run) -> None:
    refused(run("hsp-bench", "gso", "--runs", "1.5"), "--runs '1.5' is not a whole number")


def test_cext_iterations_below_depth_is_refused_at_parse_time() -> None:
    with pytest.raises(SystemExit) as exc:
        bench.build_parser().parse_args(["cext", "--iters", "4", "--depth", "8"])
    assert exc.value.code == EXIT_USAGE
    assert bench.build_parser().parse_args(["cext", "--iters", "8", "--depth", "8"]).iters == 8


@pytest.mark.parametrize(("argv", "says"), [
    (["fault", "a", "link"], "fault link takes a fabric (x|y) and down|up; got none"),
    (["fault", "a", "link", "x"], "fault link takes a fabric (x|y) and down|up; got 1: x"),
    (["fault", "a", "link", "z", "down"], "unknown fabric 'z'"),
    (["fault", "a", "link", "x", "sideways"], "must be down or up, not 'sideways'"),
    (["fault", "a", "netem", "x"], "fault netem takes a fabric (x|y) and a netem SPEC"),
    (["fault", "a", "netem", "x", "delay fast"], "delay 'fast' is not a time"),
    (["fault", "a", "kill", "extra"], "fault kill takes no arguments; got 1: extra"),
    (["fault", "a", "pause", "x"], "fault pause takes no arguments"),
    (["fault", "a", "resume", "x", "up"], "fault resume takes no arguments; got 2: x up"),
])
def test_fault_arguments_are_checked_per_kind(run, argv: list[str], says: str) -> None:
    # the lab is not up: a usage error must be found before the lab is asked
    refused(run("hsp-lab", *argv), says)


def test_fault_arguments_that_fit_reach_the_lab() -> None:
    for argv in (["a", "link", "y", "up"], ["b", "netem", "x", "delay 5ms loss 1%"],
                 ["a", "netem", "y", "clear"], ["b", "kill"], ["a", "pause"]):
        assert lab.build_parser().parse_args(["fault", *argv]).fault == argv[1]


def test_exec_without_a_command_is_a_usage_error(run) -> None:
    refused(run("hsp-lab", "exec", "a"), "exec needs a command")
    refused(run("hsp-lab", "exec", "a", "--"), "exec needs a command")


def test_serve_refuses_a_lab_id(run) -> None:
    refused(run("hsp-bench", "--lab-id", "x", "serve", "--device", "mlx5_0", "--local-ip",
                "10.0.0.1"), "--lab-id is for gso and cext")


def test_gso_peer_needs_device_and_address(run) -> None:
    refused(run("hsp-bench", "gso", "--peer", "10.0.0.1"), "--peer needs --device and --local-ip")


def test_gso_depth_beyond_what_a_vi_carries_is_a_usage_error(run) -> None:
    """Refused at parse time, before a lab boots or a baseline runs (a VI's send queue holds
    256 descriptors, shared with the control frames)."""
    refused(run("hsp-bench", "gso", "--depth", "1024"), "--depth should be between 1 and 238")


def test_pull_on_two_hosts_is_refused_at_parse_time() -> None:
    with pytest.raises(SystemExit) as exc:
        bench.build_parser().parse_args(["gso", "--peer", "10.0.0.1", "--device", "mlx5_0",
                                         "--local-ip", "10.0.0.2", "--mode", "pull"])
    assert exc.value.code == EXIT_USAGE
    assert bench.build_parser().parse_args(["gso", "--mode", "both"]).mode == "both"
