"""Our side of `hsp-bench disk --vs drbd` (``OURS``, found by ``drbd_bench.find_ours``): per
commit mode, a node pair in the lab guests (active a, standby b, fabric x) whose disk is the
workload's RAM disk, running fio's two jobs through ``node.disk`` (tools/hsp_disk_guest.py).

Figures as drbd_bench's fio rows: 4 KiB t_typical / 99% = nearest-rank p50 / p99 of the timed
writes (each one write, sent, then a flush acknowledged in the mode: see the guest script),
after a warm-up; 1 MiB x DEPTH BW = bytes / 2^20 / seconds, the closing flush included. After
each run the standby's disk CRC32C, write count and bytes must equal the active's, or the run
fails: a bench that replicates wrongly gives no figure.

PROVIDER "soft" runs the same pair on the soft VIA provider (``VipOpenNic("soft:a")`` /
``"soft:b"``, the same fabric x IPv4s): VIPL over TCP between the two guests, DRBD's own
transport there; nothing else differs (same guest script, node, disk, figures, replica check).

Resync does not exist yet (the failover issue, 12): ``OURS.resync`` is None, which the bench
shows as "no resync yet" and ``resync_MBps.hsp`` null, never a figure.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hsp_rdma.errors import LabError
from hsp_rdma.lab import Lab
from hsp_rdma.tools.drbd_bench import MB, DiskWorkload, OurSide
from hsp_rdma.tools.guest import GuestRun
from hsp_rdma.tools.lab_config import write_node_configs
from hsp_rdma.units import percentile

DISK = "bench"              # the [[disk]] name in both nodes' configs
WARMUP_4K = 50              # 4 KiB writes before the timed ones (not timed)
ACTIVE, STANDBY = "a", "b"  # node a active, as DRBD's primary
CONFIG_DIR = "hsp-disk-bench"  # under the lab dir, one per mode: new files (9p cache=loose)
COMMIT_TIMEOUT_MS = 60_000  # a lab write is never this slow; past it the node says so
CONNECT_TIMEOUT_MS = 60_000
PROVIDERS = ("verbs", "soft")  # the VIA provider our node pair runs on


def check_provider(provider: str) -> None:
    if provider not in PROVIDERS:
        raise LabError(f"our disk replication runs on the {' or '.join(PROVIDERS)} provider, "
                       f"not {provider!r}")


def provider_info(info: dict[str, Any], provider: str) -> dict[str, Any]:
    """INFO (``Lab.info()``) with each node's rdma device as PROVIDER opens it: the lab's
    device for verbs, ``soft:NODE`` for the soft provider (same IPv4s)."""
    check_provider(provider)
    if provider == "verbs":
        return info
    out = dict(info)
    for node, fabrics in info.items():
        if isinstance(fabrics, dict) and "x" in fabrics:
            out[node] = {fab: (dict(v, rdma_dev=f"soft:{node}") if isinstance(v, dict) else v)
                         for fab, v in fabrics.items()}
    return out


def figures(w4k: dict[str, Any], w1m: dict[str, Any]) -> dict[str, Any]:
    """drbd_bench's FIELDS (and what they came from) from the active's two job events."""
    samples = w4k["samples_us"]
    if not samples:
        raise LabError("our side: the active timed no 4 KiB writes")
    if w1m["seconds"] <= 0 or w1m["bytes"] <= 0:
        raise LabError(f"our side: the 1 MiB job wrote {w1m['bytes']} bytes in "
                       f"{w1m['seconds']} s")
    return {"write4k_p50_us": round(percentile(samples, 50), 1),
            "write4k_p99_us": round(percentile(samples, 99), 1),
            "write1m_MBps": round(w1m["bytes"] / MB / w1m["seconds"], 2),
            "write4k_ios": len(samples), "write4k_min_us": min(samples),
            "write4k_max_us": max(samples), "warmup": w4k["warmup"],
            "write1m_bytes": w1m["bytes"], "write1m_seconds": w1m["seconds"],
            "depth_1m": w1m["depth"]}


def check_replica(mode: str, active: dict[str, Any], standby: dict[str, Any]) -> dict[str, Any]:
    """The standby's disk after the run is the active's (digest, writes, bytes, size), or a
    LabError that shows both."""
    keys = ("digest", "writes", "bytes", "size")
    differ = [k for k in keys if active.get(k) != standby.get(k)]
    if differ:
        shown = "; ".join(f"{k}: active {active.get(k)!r}, standby {standby.get(k)!r}"
                          for k in differ)
        raise LabError(f"our disk replication ({mode}) replicated wrongly: after a sync the "
                       f"standby's disk differs from the active's ({shown})")
    return {"digest": f"{active['digest']:08x}", "writes": active["writes"],
            "bytes": active["bytes"]}


def _problem(run: GuestRun, res: Any) -> str:
    errors = [e["error"] for e in run.of("error")]
    if errors:
        return "; ".join(errors)
    if res is None:
        return "no result"
    return f"exit {res.rc}{' (timed out)' if res.timed_out else ''}: " \
           f"{(res.stderr or res.stdout).strip()[-600:] or '(no output)'}"


def write(lab: Lab, mode: str, w: DiskWorkload, provider: str = "verbs") -> dict[str, Any]:
    """The two jobs in commit MODE on W.our_device (present and blank on both nodes), the
    node pair on PROVIDER (verbs: the lab's rdma device; soft: the soft VIA provider)."""
    check_provider(provider)
    what = mode if provider == "verbs" else f"{mode}, soft provider"
    if w.fabric != "x":
        raise LabError(f"our disk replication runs on fabric x only (the node opens fabric x; "
                       f"fabric y comes with issue 13), not {w.fabric}: use --fabric x")
    configs = write_node_configs(
        provider_info(lab.info(), provider), Path(lab.dir) / CONFIG_DIR / provider / mode,
        active=ACTIVE,
        disks=[{"name": DISK, "path": w.our_device}], replication={"commit": mode},
        timeouts={"commit": COMMIT_TIMEOUT_MS, "connect": CONNECT_TIMEOUT_MS})
    # 50 ms a 4 KiB write, 1 MB/s, 4 MB/s per digest: far beyond anything the lab has shown
    timeout = (120 + (WARMUP_4K + w.ops_4k) * 0.05 + w.bytes_1m / 1e6
               + 2 * w.disk_bytes / 4e6)
    base = [sys.executable, "-m", "hsp_rdma.tools.hsp_disk_guest", "--disk", DISK,
            "--mode", mode, "--ops", str(w.ops_4k), "--warmup", str(WARMUP_4K),
            "--bytes", str(w.bytes_1m), "--depth", str(w.depth_1m),
            "--timeout", str(timeout)]
    runs = {}
    for node in (STANDBY, ACTIVE):
        run = runs[node] = GuestRun(node)
        run.job = lab.spawn(node, [*base, "--config", str(configs[node])],
                            timeout=timeout, on_stdout=run.feed)
    act, sb = runs[ACTIVE], runs[STANDBY]
    ares = act.job.wait()
    if not ares.ok:
        sb.job.kill()
    sres = sb.job.wait()
    w4k, w1m, a_end, s_end = act.of("write4k"), act.of("write1m"), act.of("end"), sb.of("end")
    if not (ares.ok and w4k and w1m and a_end):
        raise LabError(f"our disk replication ({what}) on node {ACTIVE}: {_problem(act, ares)}"
                       f"; standby {STANDBY}: {_problem(sb, sres)}")
    if not (sres.ok and s_end):
        raise LabError(f"our disk replication ({what}): the standby on node {STANDBY} did not "
                       f"report its disk: {_problem(sb, sres)}")
    out = figures(w4k[0], w1m[0])
    out["replica"] = check_replica(what, a_end[0], s_end[0])
    out["connect_s"] = act.of("started")[0]["connect_s"]
    out["provider"] = provider
    return out


OURS = OurSide(write=write, resync=None)

__all__ = ["OURS", "PROVIDERS", "check_replica", "figures", "provider_info", "write"]
