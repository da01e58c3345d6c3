"""The lab itself, on rxe and on siw: perftest on both fabrics, cable pull, power loss, pause."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from hsp_rdma.errors import LabError
from hsp_rdma.lab import Lab, perftest

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("fabric", ["x", "y"])
def test_write_bw_and_send_lat_on_each_fabric(healthy_lab: Lab, fabric: str) -> None:
    bw = perftest.run(healthy_lab, "ib_write_bw", fabric, ("-s", "65536", "-n", "200"))
    lat = perftest.run(healthy_lab, "ib_send_lat", fabric, ("-s", "2", "-n", "500"))
    assert bw.row["bytes"] == 65536 and bw.row["bw_avg_MBps"] > 0
    assert lat.row["bytes"] == 2 and 0 < lat.row["t_typical_us"] < 1e6
    print(f"\n{healthy_lab.info()['rdma']} fabric {fabric}: ib_write_bw 64 KiB "
          f"{bw.row['bw_avg_MBps']:.1f} MB/s, ib_send_lat 2 B typical "
          f"{lat.row['t_typical_us']:.0f} us (retries {bw.retries + lat.retries})")


def test_cable_pull_fabric_x_leaves_y_working(healthy_lab: Lab) -> None:
    lab = healthy_lab
    lab.fault("a", "link", "x", "down")
    assert lab.status()["nodes"]["a"]["links"]["x"] == "down"
    y = perftest.run(lab, "ib_write_bw", "y", ("-s", "65536", "-n", "100"))
    assert y.row["bw_avg_MBps"] > 0
    t0 = time.monotonic()
    with pytest.raises(LabError, match="fabric x failed"):
        perftest.run(lab, "ib_write_bw", "x", ("-s", "65536", "-n", "100"), timeout=15,
                     retries=0)
    assert time.monotonic() - t0 < 40, "traffic on a pulled fabric must fail in bounded time"
    lab.fault("a", "link", "x", "up")
    again = perftest.run(lab, "ib_write_bw", "x", ("-s", "65536", "-n", "100"))
    assert again.row["bw_avg_MBps"] > 0


def test_pause_freezes_and_resume_thaws(healthy_lab: Lab) -> None:
    lab = healthy_lab
    lab.fault("a", "pause")
    assert lab.status()["nodes"]["a"]["state"] == "paused"
    job = lab.spawn("a", ["true"], timeout=30)
    time.sleep(1.5)
    assert job.poll() is None, "a paused node must not run anything"
    lab.fault("a", "resume")
    assert lab.status()["nodes"]["a"]["state"] == "running"
    assert job.wait().rc == 0


def test_kill_is_power_loss_and_node_boots_again(healthy_lab: Lab) -> None:
    lab = healthy_lab
    hang = lab.spawn("b", ["sleep", "60"], timeout=90)
    lab.fault("b", "kill")
    st = lab.status()["nodes"]
    assert st["b"]["state"] == "killed" and st["a"]["state"] == "running"
    with pytest.raises(LabError, match="went down"):
        hang.wait()
    with pytest.raises(LabError, match="not running"):
        lab.exec("b", ["true"])
    lab.boot_node("b")
    assert lab.exec("b", ["cat", "/sys/class/infiniband/" + lab.info()["b"]["x"]["rdma_dev"]
                          + "/ports/1/state"]).stdout.strip().endswith("ACTIVE")


def test_exec_streams_status_and_kills_a_hung_command(healthy_lab: Lab) -> None:
    lab = healthy_lab
    res = lab.exec("a", ["sh", "-c", "echo out; echo err >&2; ulimit -l; exit 7"])
    assert (res.rc, res.stdout, res.stderr) == (7, "out\nunlimited\n", "err\n")
    t0 = time.monotonic()
    hung = lab.exec("a", ["sleep", "100"], timeout=2)
    assert hung.timed_out and hung.rc == 124 and time.monotonic() - t0 < 10
    missing = lab.exec("a", ["/no/such/program"])
    assert missing.rc == 127 and "cannot start" in missing.stderr


def test_concurrent_exec_on_one_node(healthy_lab: Lab) -> None:
    jobs = [healthy_lab.spawn("a", ["sh", "-c", f"sleep 1; echo {i}"]) for i in range(4)]
    t0 = time.monotonic()
    assert [j.wait().stdout for j in jobs] == [f"{i}\n" for i in range(4)]
    assert time.monotonic() - t0 < 8, "jobs on one node run side by side"


def test_second_up_is_refused_and_bad_names_are_named(healthy_lab: Lab) -> None:
    lab = healthy_lab
    with pytest.raises(LabError, match="already up"):
        Lab(lab.lab_id).up(rdma=lab.info()["rdma"])
    with pytest.raises(LabError, match="unknown node 'c'"):
        lab.exec("c", ["true"])
    with pytest.raises(LabError, match="unknown fabric 'z'"):
        lab.fault("a", "link", "z", "down")
    with pytest.raises(LabError, match="not a time"):
        lab.fault("a", "netem", "x", "delay fast")


def test_netem_shapes_and_clears_a_fabric(healthy_lab: Lab) -> None:
    lab = healthy_lab
    lab.fault("a", "netem", "y", "delay 5ms loss 1%")
    assert "delay 5ms loss 1%" in lab.exec("a", ["tc", "qdisc", "show", "dev", "eth1"]).stdout
    lab.fault("a", "netem", "y", "clear")
    assert "netem" not in lab.exec("a", ["tc", "qdisc", "show", "dev", "eth1"]).stdout


def test_cli_exec_streams_and_passes_exit_status(healthy_lab: Lab) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hsp_rdma.cli.lab", "--lab-id",
                               healthy_lab.lab_id, *args], capture_output=True, text=True,
                              timeout=60, check=False)

    res = cli("exec", "b", "--", "sh", "-c", "echo $0; echo oops >&2; exit 3", "--timeout")
    assert (res.returncode, res.stdout, res.stderr) == (3, "--timeout\n", "oops\n")
    res = cli("exec", "b", "--timeout", "1", "--", "sleep", "30")
    assert res.returncode == 124 and "timed out after 1 s" in res.stderr
    res = cli("status", "--json")
    assert json.loads(res.stdout)["nodes"]["b"]["state"] == "running"
