"""`hsp-bench disk`'s tables: perftest's words with units, DRBD and the plain RAM disk rows,
and our side shown as not built (no figure) until it is, then with its ratios and goals;
--provider verbs|soft|both: its mistakes refused before any lab, the soft rows labelled and
judged by issue 14's goals (applied 4 KiB below DRBD C's, applied BW at least C's)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from hsp_rdma.cli import bench, bench_disk
from hsp_rdma.cli.common import EXIT_USAGE, make_console
from hsp_rdma.errors import LabError
from hsp_rdma.lab import Lab
from hsp_rdma.tools import drbd_bench, hsp_disk_bench

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


# ---- --provider verbs|soft|both (issue 14: ours over the soft VIA provider, TCP as DRBD) ----

MODES = ("async", "received", "applied")


def ours(p50: float, bw: float) -> dict:
    return {m: {"write4k_p50_us": p50, "write4k_p99_us": 2 * p50, "write1m_MBps": bw}
            for m in MODES}


def test_provider_defaults_to_both_and_takes_each() -> None:
    parse = bench.build_parser().parse_args
    assert parse(["disk"]).provider == "both"
    for p in ("verbs", "soft", "both"):
        assert parse(["disk", "--provider", p]).provider == p
    assert bench_disk.PROVIDER_CHOICES["both"] == ("verbs", "soft")


@pytest.mark.parametrize(("argv", "says"), [
    (["--provider", "tcp"], ["--provider", "invalid choice: 'tcp'", "'verbs', 'soft', 'both'"]),
    (["--provider"], ["--provider", "expected one argument"]),
    (["--provider", "soft", "--fabric", "y"], ["fabric x only", "not y", "use --fabric x"]),
    (["--provider", "verbs", "--fabric", "y"], ["fabric x only", "use --fabric x"]),
])
def test_provider_mistakes_are_usage_errors_before_any_lab(argv: list[str], says: list[str]
                                                           ) -> None:
    res = subprocess.run([sys.executable, "-m", "hsp_rdma.cli.bench", "--lab-id",
                          "softE-never-up", "disk", *argv], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == EXIT_USAGE, res.stderr
    for word in says:
        assert word in res.stderr, (word, res.stderr)
    assert "Traceback" not in res.stderr and "booting" not in res.stderr


def test_help_names_the_providers_and_why_both() -> None:
    res = subprocess.run([sys.executable, "-m", "hsp_rdma.cli.bench", "disk", "--help"],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    text = " ".join(res.stdout.split())
    assert res.returncode == 0
    for word in ("--provider {verbs,soft,both}", "VIPL over TCP", "(default: one lab boot",
                 "soft, issue 14", "< 1.0 x DRBD C's"):
        assert word in text, word


def test_a_bad_provider_is_refused_by_the_tools_before_any_lab() -> None:
    with pytest.raises(LabError, match="verbs or soft provider, not 'tcp'"):
        hsp_disk_bench.write(Lab("softE-never-up"), "applied", drbd_bench.DiskWorkload(),
                             provider="tcp")
    with pytest.raises(LabError, match="not 'tcp'"):
        drbd_bench.bench_disk_lab(Lab("softE-never-up"), providers=("verbs", "tcp"))
    with pytest.raises(LabError, match="not nothing"):
        drbd_bench.bench_disk_lab(Lab("softE-never-up"), providers=())


def test_soft_provider_info_names_soft_devices_on_the_same_addresses() -> None:
    info = {"a": {"x": {"rdma_dev": "rxe0", "ipv4": "10.10.0.1"}},
            "b": {"x": {"rdma_dev": "rxe0", "ipv4": "10.10.0.2"}}, "rdma": "rxe"}
    soft = hsp_disk_bench.provider_info(info, "soft")
    assert soft["a"]["x"] == {"rdma_dev": "soft:a", "ipv4": "10.10.0.1"}
    assert soft["b"]["x"] == {"rdma_dev": "soft:b", "ipv4": "10.10.0.2"}
    assert soft["rdma"] == "rxe" and info["a"]["x"]["rdma_dev"] == "rxe0"  # not changed
    assert hsp_disk_bench.provider_info(info, "verbs") is info


@pytest.mark.parametrize(("p50", "bw", "met4k", "metbw"), [
    (3000.0, 14.0, True, True),     # below C's 3457 usec, above its 13.82 MB/s
    (3457.0, 13.82, False, True),   # equal latency does not beat C; equal BW matches it
    (4000.0, 10.0, False, False),
])
def test_soft_goals_beat_c_on_latency_and_match_it_on_bandwidth(p50, bw, met4k, metbw) -> None:
    r = dict(R, hsp=None, hsp_soft=ours(p50, bw), providers=["soft"], notes=[])
    g = drbd_bench.goals(r)
    assert set(g) == {"soft_applied_4k_p50_vs_drbd_C", "soft_applied_1m_MBps_vs_drbd_C"}
    assert g["soft_applied_4k_p50_vs_drbd_C"]["met"] is met4k
    assert g["soft_applied_1m_MBps_vs_drbd_C"]["met"] is metbw
    assert drbd_bench.goals_met(dict(r, goals=g)) is (met4k and metbw)


def test_both_providers_judge_each_its_own_goals_and_label_their_rows() -> None:
    r = dict(R, hsp=ours(2000.0, 27.64), hsp_soft=ours(3000.0, 14.0),
             providers=["verbs", "soft"], notes=[])
    r["goals"] = drbd_bench.goals(r)
    assert set(r["goals"]) == {"applied_4k_p50_vs_drbd_C", "soft_applied_4k_p50_vs_drbd_C",
                               "soft_applied_1m_MBps_vs_drbd_C"}
    text = printed(r)
    verbs = [ln for ln in text.splitlines() if "hsp_rdma verbs/rxe" in ln]
    soft = [ln for ln in text.splitlines() if "hsp_rdma soft/TCP" in ln]
    assert len(verbs) == 3 and len(soft) == 3
    (applied,) = [ln for ln in soft if "applied (~C)" in ln]
    assert "4KiB < 1.0 x C" in applied and "BW >= 1.0 x C" in applied
    assert "0.87" in applied and "1.01" in applied  # 3000/3457, 14.0/13.82
    assert "no resync measured" in text and "not built yet" not in text


def test_soft_only_shows_no_verbs_rows() -> None:
    r = dict(R, hsp=None, hsp_soft=ours(3000.0, 14.0), providers=["soft"], notes=[])
    r["goals"] = drbd_bench.goals(r)
    text = printed(r)
    assert "hsp_rdma soft/TCP" in text and "verbs" not in text
    assert "not built yet" not in text
