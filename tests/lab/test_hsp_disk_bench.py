"""Our side of `hsp-bench disk` in the lab (rxe, the session's lab): a node pair on a RAM disk
per commit mode fills the `hsp` row with sane figures and a standby disk equal to the
active's; a standby disk that differs from the active's fails the run loudly. Over the soft VIA
provider (issue 14: VIPL over TCP between the two guests), on the rxe and the siw lab: the
applied run fills the soft row, the standby's disk equal to the active's, the nodes' configs
naming soft:a / soft:b on fabric x's IPv4s."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsp_rdma.errors import LabError
from hsp_rdma.ha.config import COMMIT_MODES
from hsp_rdma.lab import NODES, Lab
from hsp_rdma.tools import drbd_bench as db
from hsp_rdma.tools import hsp_disk_bench as hb

pytestmark = pytest.mark.lab
MB = 1 << 20


@pytest.mark.parametrize("lab", ["rxe"], indirect=True)
def test_our_rows_are_filled_sane_and_a_wrong_replica_fails(lab: Lab) -> None:
    w = db.DiskWorkload(ops_4k=60, bytes_1m=4 * MB, resync_bytes=MB, disk_bytes=16 * MB)
    for node in NODES:  # the RAM disks drbd_bench loads: ours is the second
        lab.exec(node, ["modprobe", "brd", "rd_nr=2", f"rd_size={w.disk_bytes // 1024}",
                        "max_part=0"], timeout=60, check=True)
    try:
        rows = {mode: db.check_ours(mode, hb.write(lab, mode, w)) for mode in COMMIT_MODES}
        for mode, f in rows.items():
            assert f["write4k_ios"] == 60, mode
            assert 0 < f["write4k_min_us"] <= f["write4k_p50_us"] <= f["write4k_p99_us"], mode
            assert f["write1m_MBps"] > 0 and f["write1m_bytes"] == 4 * MB, mode
            # every write of the run, warm-up included, is on the standby's disk
            assert f["replica"]["writes"] == hb.WARMUP_4K + 60 + 4, mode
            assert f["replica"]["bytes"] == (hb.WARMUP_4K + 60) * 4096 + 4 * MB, mode
        # applied waits for the standby's write and flush, async for neither
        assert rows["applied"]["write4k_p50_us"] > rows["async"]["write4k_p50_us"]
        # one block behind the active's back on the standby: the next run must refuse
        lab.exec("b", ["dd", "if=/dev/urandom", "of=/dev/ram1", "bs=4096", "count=1",
                       f"seek={w.disk_bytes // 4096 - 1}", "oflag=direct"],
                 timeout=60, check=True)
        with pytest.raises(LabError, match=r"\(async\) replicated wrongly.*digest"):
            hb.write(lab, "async", w)
    finally:
        for node in NODES:
            lab.exec(node, ["rmmod", "brd"], timeout=60)


@pytest.mark.parametrize("lab", ["rxe", "siw"], indirect=True)
def test_our_soft_provider_rows_across_the_two_nodes(lab: Lab) -> None:
    w = db.DiskWorkload(ops_4k=60, bytes_1m=4 * MB, resync_bytes=MB, disk_bytes=16 * MB)
    for node in NODES:
        lab.exec(node, ["modprobe", "brd", "rd_nr=2", f"rd_size={w.disk_bytes // 1024}",
                        "max_part=0"], timeout=60, check=True)
    try:
        f = db.check_ours("applied, soft provider", hb.write(lab, "applied", w, provider="soft"))
    finally:
        for node in NODES:
            lab.exec(node, ["rmmod", "brd"], timeout=60)
    assert f["provider"] == "soft" and f["write4k_ios"] == 60
    assert 0 < f["write4k_min_us"] <= f["write4k_p50_us"] <= f["write4k_p99_us"]
    assert f["write1m_MBps"] > 0 and f["write1m_bytes"] == 4 * MB
    assert f["replica"]["writes"] == hb.WARMUP_4K + 60 + 4
    assert f["replica"]["bytes"] == (hb.WARMUP_4K + 60) * 4096 + 4 * MB
    info = lab.info()
    cfg_dir = Path(lab.dir) / hb.CONFIG_DIR / "soft" / "applied" / "node-config"
    for node in NODES:  # the pair ran on the soft provider, across the lab's fabric x
        text = (cfg_dir / f"{node}.toml").read_text()
        assert f'rdma_device = "soft:{node}"' in text, text
        assert f'local = "{info[node]["x"]["ipv4"]}"' in text, text
