"""The disk bench's host-side pieces: fio's JSON read as fio means it, DRBD's configuration
for both nodes, sizes that cannot fit refused with what to change, our side's figures checked,
and the goals only judged once our side has figures."""

from __future__ import annotations

import json
import sys
import types

import pytest

from hsp_rdma.errors import LabError
from hsp_rdma.tools import drbd_bench as db


def fio_json(ios: int = 2000, p50: int = 3_096_576, p99: int = 7_897_088,
             bw: int = 18 << 20, error: int = 0) -> str:
    write = {"total_ios": ios, "bw_bytes": bw,
             "clat_ns": {"percentile": {"50.000000": p50, "99.000000": p99}}}
    return "fio-3.33 note\n" + json.dumps({"jobs": [{"jobname": "w", "error": error,
                                                     "write": write}]})


def test_fio_percentiles_in_usec_and_bandwidth_in_2_20_bytes() -> None:
    r = db.parse_fio(fio_json(), "write4k")
    assert r == {"ios": 2000, "p50_us": pytest.approx(3096.576), "p99_us": pytest.approx(7897.088),
                 "MBps": pytest.approx(18.0)}


@pytest.mark.parametrize(("text", "says"), [
    ("fio: failed to open /dev/drbd0", "not fio's JSON"),
    (fio_json(error=5), "job error 5"),
    (fio_json(ios=0), "no writes completed"),
])
def test_fio_failures_are_named(text: str, says: str) -> None:
    with pytest.raises(LabError, match=says):
        db.parse_fio(text, "write4k")


def test_drbd_config_names_both_nodes_on_the_fabric_and_the_resync_settings() -> None:
    info = {"a": {"x": {"ipv4": "10.77.1.1"}}, "b": {"x": {"ipv4": "10.77.1.2"}}}
    text = db.drbd_config("A", "/dev/ram0", info, "x")
    assert "protocol A;" in text and "c-plan-ahead 0; resync-rate 500M;" in text
    for node, ip in (("a", "10.77.1.1"), ("b", "10.77.1.2")):
        assert (f"on {node} {{ device /dev/drbd0; disk /dev/ram0; address {ip}:7789; "
                "meta-disk internal; }") in text
    assert text.count("{") == text.count("}")


def test_fio_jobs_are_the_issue_s() -> None:
    w = db.DiskWorkload(ops_4k=100, bytes_1m=32 << 20)
    four = db.fio_argv("/dev/drbd0", "write4k", w)
    assert {"--bs=4k", "--iodepth=1", "--direct=1", "--sync=1", f"--size={100 * 4096}"} <= set(four)
    one = db.fio_argv("/dev/drbd0", "write1m", w)
    assert {"--bs=1M", "--iodepth=8", "--direct=1", "--ioengine=libaio",
            f"--size={32 << 20}"} <= set(one)


@pytest.mark.parametrize(("w", "says"), [
    (db.DiskWorkload(resync_bytes=256 << 20), "the resync size"),
    (db.DiskWorkload(bytes_1m=(1 << 20) + 1), "the 1 MiB write volume"),
    (db.DiskWorkload(ops_4k=70_000, disk_bytes=64 << 20, bytes_1m=8 << 20,
                     resync_bytes=8 << 20), "do not fit"),
    (db.DiskWorkload(disk_bytes=(64 << 20) + 512), "not a whole number of MiB"),
])
def test_sizes_that_do_not_fit_are_named(w: db.DiskWorkload, says: str) -> None:
    assert says in (w.problem() or "")


def test_default_workload_fits() -> None:
    assert db.DiskWorkload().problem() is None


@pytest.mark.parametrize("got", [None, {}, {"write4k_p50_us": 1.0, "write4k_p99_us": 2.0},
                                 {"write4k_p50_us": 1.0, "write4k_p99_us": 2.0,
                                  "write1m_MBps": 0}])
def test_our_side_must_give_every_field(got) -> None:
    with pytest.raises(LabError, match="our side"):
        db.check_ours("applied", got)


def result(hsp: dict | None, hsp_resync: float | None = None) -> dict:
    f = {"write4k_p50_us": 1000.0, "write4k_p99_us": 2000.0, "write1m_MBps": 20.0}
    return {"drbd": {"C": f, "A": f}, "hsp": hsp,
            "resync_MBps": {"drbd": 30.0, "hsp": hsp_resync}}


def test_goals_wait_for_our_side_then_judge_it() -> None:
    assert db.goals(result(None)) is None and not db.goals_met({"goals": None})
    mine = {m: {"write4k_p50_us": 800.0, "write4k_p99_us": 900.0, "write1m_MBps": 10.0}
            for m in ("async", "received", "applied")}
    g = db.goals(result(mine, hsp_resync=29.0))
    assert g["applied_4k_p50_vs_drbd_C"] == {"ratio": 0.8, "goal": 0.8, "met": True}
    assert g["resync_vs_drbd"]["met"] is False
    assert not db.goals_met({"goals": g})


def test_our_side_is_found_by_its_module(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "hsp_rdma.tools.hsp_disk_bench"
    monkeypatch.setitem(sys.modules, name, None)  # as when the module does not exist
    assert db.find_ours() is None
    ours = db.OurSide(write=lambda lab, mode, w: {})
    monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(OURS=ours))
    assert db.find_ours() is ours
