"""`hsp-bench disk`'s tables: perftest's words with units, DRBD and the plain RAM disk rows,
and our side shown as not built (no figure) until it is, then with its ratios and goals."""

from __future__ import annotations

import io

from hsp_rdma.cli import bench_disk
from hsp_rdma.cli.common import make_console
from hsp_rdma.tools import drbd_bench

F = {"write4k_p50_us": 3457.0, "write4k_p99_us": 8716.3, "write1m_MBps": 13.82,
     "write4k_ios": 300}
R = {
    "rdma": "rxe", "fabric": "x", "workload": drbd_bench.DiskWorkload().__dict__,
    "raw": {"write4k_p50_us": 11.3, "write4k_p99_us": 36.6, "write1m_MBps": 347.83},
    "drbd": {"C": F, "A": dict(F, write4k_p50_us=122.4)}, "hsp": None,
    "resync_MBps": {"drbd": 25.9, "hsp": None},
    "resync": {"drbd": {"bytes": 67108864, "seconds": 2.4755, "MBps": 25.9,
                        "handshake_s": 0.7225, "sync_only_MBps": 36.4, "protocol": "A"},
               "hsp": None},
    "tcp_MBps": 48.8, "tcp": {"stream_MBps": 48.8, "rtt_4k_p50_us": 1612.5,
                              "rtt_4k_p99_us": 4410.0, "round_trips": 200},
    "notes": ["our disk replication [x] is not built yet"], "goals": None,
    "method": "MB = 2^20 bytes [fio]",
}


def printed(r: dict, width: int = 250) -> str:
    out = io.StringIO()
    bench_disk.show(r, make_console(file=out, width=width))
    return out.getvalue()


def test_drbd_and_raw_rows_and_our_side_not_built() -> None:
    text = printed(R)
    for word in ("4KiB t_typical [usec]", "4KiB 99% [usec]", "1MiB x 8 BW [MB/sec]",
                 "reconnect .. UpToDate [msec]", "resync [MB/sec]", "plain brd",
                 "protocol C", "protocol A", "3457.0", "122.4", "0.035", "25.90", "2476",
                 "not built yet", "48.80 MB/sec", "t_typical 1612.5 usec", "[x]", "method: MB = 2^20 bytes [fio]"):
        assert word in text, word
    hsp_lines = [ln for ln in text.splitlines() if "hsp_rdma" in ln]
    assert len(hsp_lines) == 2 and all("not built yet" in ln for ln in hsp_lines)


def test_our_side_rows_carry_ratios_and_goals() -> None:
    mine = {m: {"write4k_p50_us": 2000.0, "write4k_p99_us": 3000.0, "write1m_MBps": 27.64}
            for m in ("async", "received", "applied")}
    r = dict(R, hsp=mine, resync_MBps={"drbd": 25.9, "hsp": 51.8},
             resync=dict(R["resync"], hsp={"bytes": 67108864, "seconds": 1.2, "MBps": 51.8}),
             notes=[])
    r["goals"] = drbd_bench.goals(r)
    text = printed(r)
    assert "applied (~C)" in text and "async (~A)" in text and "received (~B)" in text
    assert "0.58" in text and "2.00" in text  # 2000/3457 and 27.64/13.82, 51.8/25.9
    assert "<= 0.8 x DRBD C" in text and ">= 1.0 x DRBD" in text
    assert "not built yet" not in text


def test_cells_fit_a_120_column_log_unwrapped() -> None:
    text = printed(R, width=120)
    for cell in ("plain brd", "protocol C", "not built yet", "3457.0", "8716.3", "13.82"):
        assert any(cell in ln for ln in text.splitlines()), cell
    hsp_lines = [ln for ln in text.splitlines() if "hsp_rdma" in ln]
    assert len(hsp_lines) == 2 and all("not built yet" in ln for ln in hsp_lines)
