"""Interface A in the lab, on rxe and siw: the node engine (ha/node.py) replicates random
P.mem and disk transactions in all three commit modes, and a standby whose active is killed
in the middle of a multi-fragment transaction holds every acknowledged one and none in part."""

from __future__ import annotations

import json
import sys
import time

import pytest

from hsp_rdma.core.frames import crc32c
from hsp_rdma.lab import Lab
from hsp_rdma.tools.guest import GuestRun
from hsp_rdma.tools.ifa_lab import start_ifa_pair, wait_both
from hsp_rdma.tools.ifa_pair import pmem_image

pytestmark = pytest.mark.lab
MiB = 1 << 20


def wait_for(runs: list[GuestRun], pred, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, [r.events[-3:] for r in runs]
        for r in runs:
            r.job.poll()
        time.sleep(0.05)


def status_in_guest(lab: Lab, node: str, socket: str) -> dict:
    """What `hsp status --json` reads: the node's control socket, asked from inside its guest."""
    code = ("import json,sys; from hsp_rdma.ha.control import control_request; "
            f"print(json.dumps(control_request({socket!r}, 'status', timeout_s=20)))")
    res = lab.exec(node, [sys.executable, "-c", code], timeout=60, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_random_transactions_leave_equal_images_after_every_flush(healthy_lab: Lab) -> None:
    hold = f"/tmp/ifa-hold-{time.time_ns()}"
    a, b = start_ifa_pair(healthy_lab, ["--txs", "45", "--seed", "11", "--sync-every", "9",
                                        "--hold-at", "10,30", "--hold-file", hold,
                                        "--config-fail"],
                          common=["--pmem", str(4 * MiB), "--disk-size", str(4 * MiB)])
    # during the workload (held at 10 and 30 transactions), both nodes' control sockets show
    # the counters moving
    seen = []
    for k in (10, 30):
        wait_for([a, b], lambda k=k: a.of("started") and any(e["k"] == k for e in b.of("holding")))
        seen.append({run.name: status_in_guest(healthy_lab, run.name,
                                               run.of("started")[0]["control_socket"])
                     for run in (a, b)})
        healthy_lab.exec("b", ["touch", f"{hold}.{k}"], timeout=30, check=True)
    first, second = seen
    assert first["a"]["ok"] and first["a"]["role"] == "standby" and first["a"]["peer"] == "b"
    assert first["b"]["role"] == "active"
    for node, key in (("a", "recv_msgs"), ("b", "sent_msgs")):
        moved = [ch for ch in ("pmem", "disk", "health")
                 if second[node]["channels"][ch][key] > first[node]["channels"][ch][key]]
        assert "health" in moved and moved != ["health"], (node, first[node], second[node])
    res = wait_both((b, a), timeout=400)
    assert res["b"][0] == 0 and res["a"][0] == 0, res
    acked = b.of("acked")
    assert len(acked) == 45
    assert {e["mode"] for e in acked} == {"async", "received", "applied"}
    assert {e["target"] for e in acked} == {"pmem", "disk"}
    assert max(e["bytes"] for e in acked) > 256 * 1024 and min(e["bytes"] for e in acked) < 4096
    compares = b.of("compare")
    assert len(compares) == 5
    for c in compares:
        assert c["active"]["pmem"] == c["standby"]["pmem"], c
        assert c["active"]["disks"] == c["standby"]["disks"], c
    # the counters moved on both sides, nothing was refused
    (end_b,), (end_a,) = b.of("end"), a.of("end")
    ch_b, ch_a = end_b["status"]["channels"], end_a["status"]["channels"]
    assert ch_b["pmem"]["sent_msgs"] > 0 and ch_a["pmem"]["recv_msgs"] == ch_b["pmem"]["sent_msgs"]
    assert ch_a["disk"]["recv_bytes"] == ch_b["disk"]["sent_bytes"] > 0
    assert ch_a["health"]["recv_msgs"] > 0 and ch_b["health"]["recv_msgs"] > 0
    for end in (end_a, end_b):
        for name, ch in end["status"]["channels"].items():
            assert ch["refused"] == {}, (name, ch)
    # configuration: 4 changes applied in order on the standby; the 5th it cannot apply, so
    # it says so on oam and marks itself inconsistent (it never diverges silently)
    assert end_a["config"] == [{"set": "k", "value": k} for k in (9, 18, 27, 36)]
    assert end_a["status"]["config"]["inconsistent"] is True
    assert not end_b["status"]["config"]["inconsistent"]
    (report,) = end_b["oam_events"]
    assert report["alarm"] == "apply_failed" and report["channel"] == "config"


def test_active_killed_mid_transaction_leaves_a_whole_prefix(healthy_lab: Lab) -> None:
    seed, pmem, max_size, k = 23, 4 * MiB, MiB, 12
    a, b = start_ifa_pair(
        healthy_lab, ["--txs", "100", "--seed", str(seed), "--sync-every", "0", "--pmem-only",
                      "--kill-mid-tx", str(k), "--max-size", str(max_size)],
        common=["--pmem", str(pmem), "--credits", "8"])
    res = wait_both((b, a), timeout=400)
    assert b.of("killing"), (b.events, res["b"])
    assert res["b"][0] != 0  # SIGKILL
    assert res["a"][0] == 0, res["a"]
    (final,) = a.of("final")
    last = final["digest"]["pmem_last_applied"]
    acked = [e["k"] for e in b.of("acked") if e["mode"] in ("received", "applied")]
    assert last >= max(acked), "an acknowledged transaction is missing on the standby"
    assert last <= k, "the transaction cut by the kill was applied"
    # P.mem is exactly transactions 1..last, each whole: no part of k+1 anywhere
    assert final["digest"]["pmem"] == crc32c(pmem_image(seed, last, pmem, max_size))
    pm = final["status"]["channels"]["pmem"]
    assert pm["recv_msgs"] == last
    if last == k:  # everything before came in: so did fragments of k + 1, held, not applied
        assert pm["assembling_bytes"] > 0, pm
