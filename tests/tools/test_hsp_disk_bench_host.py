"""Our side of `hsp-bench disk`, host pieces: the figures read from the active's job events as
drbd_bench reads fio's (nearest-rank percentiles, MB = 2^20), a standby whose disk differs in
anything refused loudly, the side found by drbd_bench (with its resync), no resync figure when
none was measured (the table says so, the JSON holds null); the resync's figures from the
SyncSource's engine notes (MB/sec over its seconds and over the sync phase, a short or missing
resync refused) and its table row beside DRBD's and ib_write_bw's; and the guest script end to
end as two node processes over the soft provider (127.0.0.1 / 127.0.0.2, one image file
each).""" 

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from hsp_rdma.cli import bench_disk
from hsp_rdma.cli.common import make_console
from hsp_rdma.errors import LabError
from hsp_rdma.lab import Lab
from hsp_rdma.tools import drbd_bench as db
from hsp_rdma.tools import hsp_disk_bench as hb
from hsp_rdma.tools.guest import GuestRun
from hsp_rdma.tools.hsp_disk_guest import BLOCK, MB, _payload
from hsp_rdma.tools.lab_config import write_node_configs
from hsp_rdma.via.providers import soft

W4K = {"event": "write4k", "mode": "applied", "warmup": 50,
       "samples_us": [float(v) for v in range(100, 0, -1)], "seconds": 1.0}
W1M = {"event": "write1m", "mode": "applied", "bytes": 64 * MB, "writes": 64, "depth": 8,
       "seconds": 4.0}


def test_figures_are_nearest_rank_percentiles_and_2_20_megabytes() -> None:
    f = hb.figures(W4K, W1M)
    # 100 samples 1..100 us: nearest rank p50 = the 50th, p99 = the 99th
    assert (f["write4k_p50_us"], f["write4k_p99_us"]) == (50.0, 99.0)
    assert f["write1m_MBps"] == 16.0 and f["write4k_ios"] == 100
    assert (f["write4k_min_us"], f["write4k_max_us"], f["warmup"]) == (1.0, 100.0, 50)
    assert db.check_ours("applied", f) == f  # what drbd_bench demands of our side


@pytest.mark.parametrize(("w4k", "w1m", "says"), [
    (dict(W4K, samples_us=[]), W1M, "no 4 KiB writes"),
    (W4K, dict(W1M, seconds=0.0), "1 MiB job"),
    (W4K, dict(W1M, bytes=0), "1 MiB job"),
])
def test_a_run_without_figures_is_an_error(w4k: dict, w1m: dict, says: str) -> None:
    with pytest.raises(LabError, match=says):
        hb.figures(w4k, w1m)


END = {"digest": 0x1234ABCD, "writes": 158, "bytes": 150 * BLOCK + 8 * MB, "size": 16 * MB}


def test_an_equal_replica_is_reported() -> None:
    assert hb.check_replica("applied", END, dict(END)) == {
        "digest": "1234abcd", "writes": 158, "bytes": END["bytes"]}


@pytest.mark.parametrize("key", ["digest", "writes", "bytes", "size"])
def test_a_replica_that_differs_in_anything_fails_naming_it(key: str) -> None:
    standby = dict(END, **{key: END[key] + 1})
    with pytest.raises(LabError, match=rf"received.*replicated wrongly.*{key}: active "
                                       rf"{END[key]}, standby {END[key] + 1}"):
        hb.check_replica("received", END, standby)
    with pytest.raises(LabError, match=key):
        hb.check_replica("received", END, {k: v for k, v in END.items() if k != key})


def test_every_write_of_a_run_carries_its_own_bytes() -> None:
    rnd = bytes(range(256)) * ((MB + 4096) // 256)
    small = {_payload(rnd, k, BLOCK) for k in range(600)}
    assert len(small) == 600 and all(len(p) == BLOCK for p in small)
    big = [_payload(rnd, k, MB) for k in (0, 1)]
    assert [len(p) for p in big] == [MB, MB] and big[0] != big[1]


def test_fabric_y_is_refused_with_what_to_use() -> None:
    with pytest.raises(LabError, match="fabric x only.*--fabric x"):
        hb.write(Lab("hspdisk-never-up"), "applied", db.DiskWorkload(fabric="y"))


def test_the_bench_finds_our_side_and_its_resync() -> None:
    ours = db.find_ours()
    assert ours is hb.OURS and ours.write is hb.write and ours.resync is hb.resync


def test_without_a_resync_figure_the_table_says_so_and_the_json_holds_null() -> None:
    f = hb.figures(W4K, W1M)
    drbd = {"write4k_p50_us": 900.0, "write4k_p99_us": 1700.0, "write1m_MBps": 20.0}
    r = {"rdma": "rxe", "fabric": "x", "workload": db.DiskWorkload().__dict__,
         "raw": drbd, "drbd": {"C": drbd, "A": drbd},
         "hsp": {m: f for m in ("async", "received", "applied")},
         "resync_MBps": {"drbd": 30.0, "hsp": None},
         "resync": {"drbd": {"bytes": 64 * MB, "seconds": 2.0, "MBps": 32.0,
                             "handshake_s": 0.5, "sync_only_MBps": 42.0, "protocol": "A"},
                    "hsp": None},
         "tcp_MBps": 40.0, "tcp": {"stream_MBps": 40.0, "rtt_4k_p50_us": 1000.0,
                                   "rtt_4k_p99_us": 2000.0, "round_trips": 200},
         "notes": [], "method": "m"}
    r["goals"] = db.goals(r)
    assert set(r["goals"]) == {"applied_4k_p50_vs_drbd_C"}  # no resync goal judged
    out = io.StringIO()
    bench_disk.show(r, make_console(file=out, width=250))
    resync_row = [ln for ln in out.getvalue().splitlines()
                  if "hsp_rdma" in ln and "no resync measured" in ln]
    assert len(resync_row) == 1


# ---- the guest script end to end on this host: two node processes over the soft provider ----

SOFT_INFO = {"a": {"x": {"rdma_dev": "soft:a", "ipv4": "127.0.0.1"}},
             "b": {"x": {"rdma_dev": "soft:b", "ipv4": "127.0.0.2"}}}
DISK_BYTES = 4 * MB


def run_guest_pair(tmp_path, mode: str, standby_image: bytes | None = None) -> dict:
    """hsp_disk_guest's active (a) and standby (b), each its own image file; their events."""
    paths = write_node_configs(SOFT_INFO, tmp_path,
                               disks=[{"name": hb.DISK, "path": str(tmp_path / "NODE.img")}],
                               timeouts={"connect": 20000, "commit": 20000})
    for node, path in paths.items():
        path.write_text(path.read_text().replace("NODE", node))
        (tmp_path / f"{node}.img").write_bytes(bytes(DISK_BYTES))
    if standby_image is not None:
        (tmp_path / "b.img").write_bytes(standby_image)
    env = dict(os.environ, HSP_VIA_SOFT_PORT_BASE=str(soft.random_port_base()))
    procs = {node: subprocess.Popen(
        [sys.executable, "-m", "hsp_rdma.tools.hsp_disk_guest", "--config", str(paths[node]),
         "--disk", hb.DISK, "--mode", mode, "--ops", "40", "--warmup", "5",
         "--bytes", str(2 * MB), "--depth", "8", "--timeout", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for node in ("b", "a")}
    runs = {}
    for node, p in procs.items():
        try:
            out, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        runs[node] = GuestRun(node)
        runs[node].feed(out)
        assert p.returncode == 0, (node, out[-800:], err[-800:])
    return {n: {kind: r.of(kind) for kind in ("write4k", "write1m", "end")}
            for n, r in runs.items()}


@pytest.mark.parametrize("mode", ["async", "applied"])
def test_the_guest_pair_over_soft_gives_figures_and_an_equal_replica(tmp_path, mode) -> None:
    ev = run_guest_pair(tmp_path, mode)
    a, b = ev["a"], ev["b"]
    f = hb.figures(a["write4k"][0], a["write1m"][0])
    assert f["write4k_ios"] == 40 and 0 < f["write4k_p50_us"] <= f["write4k_p99_us"]
    assert f["write1m_bytes"] == 2 * MB and f["write1m_MBps"] > 0
    rep = hb.check_replica(mode, a["end"][0], b["end"][0])
    assert rep["writes"] == 5 + 40 + 2 and rep["bytes"] == 45 * BLOCK + 2 * MB
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()


def test_a_standby_disk_that_differs_outside_the_writes_fails_the_check(tmp_path) -> None:
    image = bytearray(DISK_BYTES)
    image[-1] = 1  # a byte the run never writes
    ev = run_guest_pair(tmp_path, "applied", standby_image=bytes(image))
    with pytest.raises(LabError, match="replicated wrongly.*digest"):
        hb.check_replica("applied", ev["a"]["end"][0], ev["b"]["end"][0])


# ---- our resync: the figures from the SyncSource's notes, and the table --------------------

NOTES = [{"t": 100.0, "what": "FabricSilent", "n": 3},
         {"t": 104.5, "what": "resync_started", "side": "SyncSource", "out_of_sync": 65 * MB,
          "n": 9},
         {"t": 104.9, "what": "resync_request", "full": False, "n": 10},
         {"t": 112.5, "what": "resync_done", "side": "SyncSource", "bytes": 65 * MB,
          "blocks": 16640, "seconds": 8.0, "n": 11}]


def test_resync_figures_from_the_sync_source_notes() -> None:
    f = hb.resync_figures(NOTES, 65 * MB)
    assert f["bytes"] == 65 * MB and f["blocks"] == 16640 and f["seconds"] == 8.0
    assert f["MBps"] == 8.12  # 65 MiB / 8 s
    assert f["handshake_s"] == 0.4 and f["sync_only_MBps"] == round(65 / 7.6, 2)
    assert f["interruptions"] == 0 and f["last_run_MBps"] == 8.12


def test_a_request_before_the_start_means_no_handshake() -> None:
    early = [NOTES[0], dict(NOTES[2], t=104.0), NOTES[1], NOTES[3]]
    f = hb.resync_figures(early, 65 * MB)
    assert f["handshake_s"] == 0.0 and f["sync_only_MBps"] == f["MBps"] == 8.12


def test_requests_again_during_the_resync_are_counted_not_a_new_start() -> None:
    again = [*NOTES[:3], dict(NOTES[2], t=110.0), dict(NOTES[2], t=111.0), NOTES[3]]
    f = hb.resync_figures(again, 65 * MB)
    assert f["handshake_s"] == 0.4 and f["requests_during"] == 2
    assert hb.resync_figures(NOTES, 65 * MB)["requests_during"] == 0


def test_an_interrupted_resync_counts_whole_from_its_first_start() -> None:
    # seen on siw: the source suspected the target mid-resync, stopped, and resumed
    cut = [*NOTES[:3],
           {"t": 107.0, "what": "resync_stopped", "side": "SyncSource", "out_of_sync": 40 * MB},
           {"t": 108.5, "what": "resync_started", "side": "SyncSource", "out_of_sync": 40 * MB},
           {"t": 108.6, "what": "resync_request", "full": False},
           dict(NOTES[3], t=116.5, bytes=40 * MB, seconds=8.0)]
    f = hb.resync_figures(cut, 65 * MB)
    assert f["bytes"] == 65 * MB and f["seconds"] == 12.0 and f["MBps"] == round(65 / 12, 2)
    assert f["interruptions"] == 1 and f["requests_during"] == 1
    assert f["last_run_bytes"] == 40 * MB and f["last_run_MBps"] == 5.0


def test_resync_figures_without_a_request_take_the_done_seconds_only() -> None:
    f = hb.resync_figures([NOTES[1], NOTES[3]], 65 * MB)
    assert f["MBps"] == 8.12 and f["handshake_s"] is None and f["sync_only_MBps"] is None


@pytest.mark.parametrize(("notes", "expect", "says"), [
    (NOTES[:3], 65 * MB, "no resync_done as SyncSource"),
    ([dict(NOTES[3], side="SyncTarget")], 1, "no resync_done as SyncSource"),
    (NOTES, 66 * MB, "covered 68157440 bytes, less than the 69206016 written"),
    ([dict(NOTES[3], seconds=0.0)], 1, "resync_done says 0.0 s"),
])
def test_resync_figures_refuse_what_is_not_a_measured_resync(notes, expect, says) -> None:
    with pytest.raises(LabError, match=says):
        hb.resync_figures(notes, expect)


def test_the_pmem_resync_size_is_checked() -> None:
    assert db.DiskWorkload().problem() is None
    assert "multiple of 64 KiB" in db.DiskWorkload(resync_pmem_bytes=1000).problem()
    assert "at most 4 MiB" in db.DiskWorkload(resync_pmem_bytes=8 * MB).problem()


def test_the_resync_table_shows_ours_beside_drbd_and_ib_write_bw() -> None:
    f = hb.figures(W4K, W1M)
    drbd = {"write4k_p50_us": 900.0, "write4k_p99_us": 1700.0, "write1m_MBps": 20.0}
    ours = dict(hb.resync_figures(NOTES, 65 * MB), disk_bytes=64 * MB, pmem_bytes=MB,
                written_alone_s=3.2, resync_rate=1 << 30, heartbeat_interval_ms=100,
                pulled_s=6.1, pull_to_written_s=6.0, plug_to_done_s=11.3)
    wbw = {"MBps": 16.25, "bytes": 65536, "depth": 64, "iterations": 1040, "notes": []}
    r = {"rdma": "rxe", "fabric": "x", "workload": db.DiskWorkload().__dict__,
         "raw": drbd, "drbd": {"C": drbd, "A": drbd},
         "hsp": {m: f for m in ("async", "received", "applied")},
         "resync_MBps": {"drbd": 4.06, "hsp": ours["MBps"], "ib_write_bw": 16.25},
         "resync": {"drbd": {"bytes": 64 * MB, "seconds": 15.76, "MBps": 4.06,
                             "handshake_s": 0.5, "sync_only_MBps": 4.2, "protocol": "A"},
                    "hsp": ours, "ib_write_bw": wbw},
         "tcp_MBps": 40.0, "tcp": {"stream_MBps": 40.0, "rtt_4k_p50_us": 1000.0,
                                   "rtt_4k_p99_us": 2000.0, "round_trips": 200},
         "notes": [], "method": "m"}
    r["goals"] = db.goals(r)
    assert r["goals"]["resync_vs_drbd"] == {"ratio": 2.0, "goal": 1.0, "met": True}
    out = io.StringIO()
    bench_disk.show(r, make_console(file=out, width=250))
    text = out.getvalue()
    ours_row = next(ln for ln in text.splitlines() if "SyncSource (a)" in ln)
    for cell in ("400", "8000", "8.12", "8.55", "2.00", "0.50", ">= 1.0 x DRBD"):
        assert cell in ours_row, cell
    wbw_row = next(ln for ln in text.splitlines() if "ib_write_bw" in ln and "64KiB" in ln)
    assert "16.25" in wbw_row and "4.00" in wbw_row  # 16.25 / 4.06
    assert "resync_rate 1GiB/s (set high: not the limit)" in text
    assert "plug .. resync_done seen by the host 11.3 s" in text



def test_after_the_resync_digests_must_match_and_write_counts_may_differ() -> None:
    a = {"digest": 0xABCD, "size": 4 * MB, "writes": 16, "bytes": 16 * MB, "pmem_digest": 7}
    b = dict(a, writes=256)
    assert hb.check_resynced(a, b) == {"digest": "0000abcd", "pmem_digest": "00000007",
                                       "active_writes": 16, "standby_writes": 256}
    for key in ("digest", "pmem_digest", "size"):
        with pytest.raises(LabError, match=f"{key}: active"):
            hb.check_resynced(a, dict(b, **{key: 1}))
