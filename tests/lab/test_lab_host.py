"""Lab behaviour that needs no booted pair: bad input, failed boots, netem spec parsing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hsp_rdma.errors import LabError, LabTimeout, UsageError
from hsp_rdma.lab import Lab, fabric_plan
from hsp_rdma.lab.netem import parse_spec
from hsp_rdma.lab.perftest import parse_table


def hsp_lab(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hsp_rdma.cli.lab", *args],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_exec_before_up_says_what_to_do() -> None:
    res = hsp_lab("--lab-id", "never-up", "exec", "a", "--", "true")
    assert res.returncode == 1
    assert "lab 'never-up' is not up: run 'hsp-lab --lab-id never-up up' first" in res.stderr
    assert "Traceback" not in res.stderr


def test_usage_errors_exit_64() -> None:
    assert hsp_lab("exec", "c", "--", "true").returncode == 64
    assert hsp_lab("up", "--rdma", "mlx5").returncode == 64
    res = hsp_lab("up", "--smp", "9")
    assert res.returncode == 64 and "--smp should be between 1 and 4" in res.stderr
    res = hsp_lab("exec", "a")
    assert res.returncode == 64 and "exec needs a command" in res.stderr
    res = hsp_lab("fault", "a", "kill", "extra")
    assert res.returncode == 64 and "fault kill takes no arguments" in res.stderr


def test_bad_lab_id_is_refused() -> None:
    # a usage error (exit 64 from the CLIs), not a lab failure: nothing was tried
    with pytest.raises(UsageError, match="lab id '../x' is not valid"):
        Lab("../x")
    res = hsp_lab("--lab-id", "../x", "status")
    assert res.returncode == 64 and "lab id '../x' is not valid" in res.stderr


def test_fault_arguments_are_checked_before_the_lab_is_asked(tmp_path) -> None:
    lab = Lab("never-up", root=tmp_path)  # not up: only the arguments can be wrong
    with pytest.raises(LabError, match="fault kill takes no arguments; got 1: extra"):
        lab.fault("a", "kill", "extra")
    with pytest.raises(LabError, match="fault link takes a fabric"):
        lab.fault("a", "link", "x")
    with pytest.raises(LabError, match="not up: run 'hsp-lab --lab-id never-up up' first"):
        lab.fault("a", "link", "x", "down")


def test_labs_do_not_share_ports() -> None:
    assert set(Lab("one").ports.values()).isdisjoint(Lab("two").ports.values())


def test_missing_qemu_is_unavailable(tmp_path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))
    res = subprocess.run(
        [sys.executable, "-c", "from hsp_rdma.lab import Lab; Lab('noqemu').up()"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert "LabUnavailable" in res.stderr and "qemu-system-x86_64" in res.stderr
    assert not Lab("noqemu").dir.exists()


@pytest.mark.lab
def test_guest_that_does_not_boot_in_time_leaves_nothing(lab_artefacts) -> None:
    lab = Lab("noboot")
    with pytest.raises(LabTimeout, match="did not finish booting"):
        lab.up(boot_timeout=0.3)
    assert not lab.dir.exists()
    assert not lab.running()
    out = subprocess.run(["pgrep", "-f", "hsp-lab-noboot"], capture_output=True, text=True,
                         check=False)
    assert out.stdout == "", "no QEMU process may outlive a failed up"


def test_fabric_plan_addresses() -> None:
    a = fabric_plan("a", "rxe", 2)
    b = fabric_plan("b", "siw", 1)
    assert [f["ipv4"] for f in a] == ["10.77.1.1", "10.77.2.1"]
    assert [(f["netdev"], f["rdma_dev"]) for f in a] == [("eth0", "rxe0"), ("eth1", "rxe1")]
    assert [(f["ipv4"], f["rdma_dev"]) for f in b] == [("10.77.1.2", "siw0")]
    assert len({f["mac"] for f in a + fabric_plan("b", "rxe", 2)}) == 4


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("delay 5ms loss 1%", {"delay": 5000, "loss": 1.0}),
        ("delay 10ms 2ms", {"delay": 10000, "jitter": 2000}),
        ("loss 0.5% limit 100", {"loss": 0.5, "limit": 100}),
        ("delay 1s reorder 25%", {"delay": 1_000_000, "prob_reorder": 25.0}),
    ],
)
def test_netem_spec(spec: str, want: dict) -> None:
    assert parse_spec(spec) == want


@pytest.mark.parametrize(
    ("spec", "why"),
    [("", "empty"), ("delay", "needs a value"), ("delay fast", "not a time"),
     ("loss 120%", "percentage"), ("rate 1mbit", "unknown parameter"),
     ("reorder 5%", "needs a delay")],
)
def test_netem_spec_errors(spec: str, why: str) -> None:
    with pytest.raises(LabError, match=why):
        parse_spec(spec)


def test_perftest_table_parsing() -> None:
    out = """
 #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]
 65536      200              12.53              8.74   		   0.000140
-----
"""
    assert parse_table("ib_write_bw", out)["bw_avg_MBps"] == 8.74
    with pytest.raises(LabError, match="no result table"):
        parse_table("ib_send_lat", "Couldn't connect")
