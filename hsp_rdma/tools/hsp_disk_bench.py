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

Resync (``OURS.resync``, issue 12: link loss without node loss), measured for real: a node
pair with the failover engine on both nodes (fence action: the lab's fence device through its
sh agent, ``lab.fence_agent.SH_COMMAND``, as the drill runner configures it; heart beats every
100 ms, suspected after 1 s) whose disk is the same RAM disk and whose ``[replication]
resync_rate`` is RESYNC_RATE (1 GiB/s, far above what the lab moves: the rate limit is not
what is measured; the default, 64 MiB/s, would cap it). The host pulls the active's fabric
(``Lab.fault(a, "link", x, "down")``: QEMU's link down); the active is suspected by the
standby and the standby by the active, which outdates it at the fence device and serves alone;
it then writes the workload's resync bytes of its disk (1 MiB writes from offset 0, DRBD's
amount) and RESYNC_PMEM bytes of P.mem (64 KiB transactions), acknowledged alone and marked in
the dirty bitmaps. The host plugs the fabric; the channels come back, and the SyncSource (a)
sends the dirty blocks as ordinary applied transactions (``ha.resync.TX_MAX`` each, at most
``ha.resync.IN_FLIGHT`` unapplied, both in the JSON; stepped at each heart-beat tick and on
each acknowledgement) and notes ``resync_done`` when the last was applied and each disk
flushed on the target. resync MB/sec = the bytes out of sync at ``resync_started`` (the
peer heard again) / 2^20 / the time from it to ``resync_done``: the engine's own notes, one
clock; a resync stopped by another suspicion of the peer and resumed counts whole, the stops
included (``interruptions``); sync phase only = from the target's request to done. The replica must then equal
the active (disk CRC32C, writes, bytes; P.mem CRC32C), or the run fails.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hsp_rdma.errors import LabError
from hsp_rdma.ha import resync as ha_resync
from hsp_rdma.lab import Lab, fence_agent, fenced
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
RESYNC_RATE = 1 << 30       # [replication] resync_rate of the resync run: not the limit
RESYNC_PMEM_SIZE = 8 << 20  # the resync run's P.mem
RESYNC_TIMEOUTS = {"heartbeat_interval": 100, "heartbeat_timeout": 1000,
                   "connect": CONNECT_TIMEOUT_MS, "commit": 10000}  # the drills' (lab_runner)


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


def _differences(keys: tuple[str, ...], active: dict[str, Any],
                 standby: dict[str, Any]) -> str:
    """The KEYS where the two sides differ, shown side by side ('' when none)."""
    return "; ".join(f"{k}: active {active.get(k)!r}, standby {standby.get(k)!r}"
                     for k in keys if active.get(k) != standby.get(k))


def check_replica(mode: str, active: dict[str, Any], standby: dict[str, Any]) -> dict[str, Any]:
    """The standby's disk after the run is the active's (digest, writes, bytes, size), or a
    LabError that shows both."""
    shown = _differences(("digest", "writes", "bytes", "size"), active, standby)
    if shown:
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


def resync_figures(notes: list[dict[str, Any]], expect_bytes: int) -> dict[str, Any]:
    """The SyncSource's resync from its engine's NOTES (``resync_started``, ``resync_stopped``,
    ``resync_request``, ``resync_done``; ``t`` on its clock) of one run: the bytes out of sync
    at its first start, over the time from that start to the final ``resync_done``, so a resync
    stopped by another suspicion of the peer and resumed from its bitmap counts whole, stops
    included (``interruptions``; the last run's own bytes and rate beside). The sync phase
    starts at the target's request. A LabError when no resync finished or it covered less than
    EXPECT_BYTES (what was written alone)."""
    done = [n for n in notes if n.get("what") == "resync_done"
            and n.get("side") == "SyncSource"]
    if not done:
        raise LabError("our resync: the active noted no resync_done as SyncSource (notes: "
                       + ", ".join(n.get("what", "?") for n in notes) + ")")
    d = done[-1]
    last_bytes, last_s = int(d.get("bytes", 0)), float(d.get("seconds", 0.0))
    starts = [n for n in notes if n.get("what") == "resync_started"
              and n.get("side") == "SyncSource" and n["t"] <= d["t"]]
    if starts:
        t0 = starts[0]["t"]
        seconds = d["t"] - t0
        nbytes = int(starts[0].get("out_of_sync", last_bytes))
    else:
        t0, seconds, nbytes = d["t"] - last_s, last_s, last_bytes
    if seconds <= 0 or last_s <= 0:
        raise LabError(f"our resync: resync_done says {last_s} s ({seconds:.3f} s from its "
                       "first start)")
    if nbytes < expect_bytes:
        raise LabError(f"our resync covered {nbytes} bytes, less than the {expect_bytes} "
                       "written while the fabric was pulled")
    stops = [n for n in notes if n.get("what") == "resync_stopped" and t0 <= n["t"] <= d["t"]]
    # The target's request may come before the source's start (it heard the source first):
    # then the sync phase begins at the start; else at the first request after it. A target
    # asks again after each interruption: counted, not a new start.
    before = [n for n in notes if n.get("what") == "resync_request" and n["t"] <= t0]
    after = [n for n in notes if n.get("what") == "resync_request" and t0 < n["t"] <= d["t"]]
    out = {"bytes": nbytes, "blocks": d.get("blocks"), "seconds": round(seconds, 3),
           "MBps": round(nbytes / MB / seconds, 2), "handshake_s": None,
           "sync_only_MBps": None, "interruptions": len(stops),
           "requests_during": len(after) - (0 if before else 1) if before or after else 0,
           "last_run_bytes": last_bytes, "last_run_seconds": round(last_s, 3),
           "last_run_MBps": round(last_bytes / MB / last_s, 2)}
    if before or after:
        begin = t0 if before else after[0]["t"]
        out["handshake_s"] = round(begin - t0, 3)
        sync_s = d["t"] - begin
        if sync_s > 0:
            out["sync_only_MBps"] = round(nbytes / MB / sync_s, 2)
    return out


def check_resynced(active: dict[str, Any], standby: dict[str, Any]) -> dict[str, Any]:
    """After the resync the standby's disk and P.mem equal the active's (CRC32C, size), or a
    LabError showing both. Write counts differ by design: the active wrote alone in 1 MiB
    writes, the standby applied the resync's 64 KiB transactions."""
    shown = _differences(("digest", "size", "pmem_digest"), active, standby)
    if shown:
        raise LabError(f"our resync replicated wrongly: after it the standby differs from "
                       f"the active ({shown})")
    return {"digest": f"{active['digest']:08x}", "pmem_digest": f"{active['pmem_digest']:08x}",
            "active_writes": active.get("writes"), "standby_writes": standby.get("writes")}


def _await(run: GuestRun, event: str, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not run.of(event):
        res = run.job.poll()
        if res is not None or run.of("error") or time.monotonic() > deadline:
            if res is None:
                run.job.kill()
            res = run.job.wait(timeout=30)
            if run.of(event) and not run.of("error"):  # its last lines came in at the exit
                break
            raise LabError(f"our resync: {what} on node {run.name}: {_problem(run, res)}")
        time.sleep(0.02)
    return run.of(event)[0]


def resync(lab: Lab, w: DiskWorkload) -> dict[str, Any]:
    """Our resync of W.resync_bytes of disk (and W.resync_pmem_bytes of P.mem) after the
    active's fabric was pulled and plugged again (see the module's docstring)."""
    if w.fabric != "x":
        raise LabError(f"our resync runs on fabric x only, not {w.fabric}")
    fenced.clear_marks(lab)  # no Outdated mark of an earlier run
    tag = f"resync-{time.time_ns()}"  # a state directory of its own: no persisted epoch
    configs = write_node_configs(
        lab.info(), Path(lab.dir) / CONFIG_DIR / tag, active=ACTIVE,
        pmem_size=RESYNC_PMEM_SIZE, disks=[{"name": DISK, "path": w.our_device}],
        replication={"commit": "applied", "resync_rate": RESYNC_RATE},
        timeouts=RESYNC_TIMEOUTS, fence={"action": fence_agent.SH_COMMAND, "timeout": 60000})
    total = w.resync_bytes + w.resync_pmem_bytes
    timeout = 180 + 2 * total / 1e6 + 2 * w.disk_bytes / 4e6  # 0.5 MB/s: far below the lab
    base = [sys.executable, "-m", "hsp_rdma.tools.hsp_disk_guest", "--disk", DISK,
            "--mode", "applied", "--resync", str(w.resync_bytes),
            "--resync-pmem", str(w.resync_pmem_bytes), "--timeout", str(timeout)]
    runs: dict[str, GuestRun] = {}
    pulled = False
    try:
        for node in (STANDBY, ACTIVE):
            run = runs[node] = GuestRun(node)
            run.job = lab.spawn(node, [*base, "--config", str(configs[node])],
                                timeout=timeout + 60, on_stdout=run.feed)
        act, sb = runs[ACTIVE], runs[STANDBY]
        _await(act, "ready", timeout, "the pair did not start")
        _await(sb, "ready", timeout, "the pair did not start")
        lab.fault(ACTIVE, "link", w.fabric, "down")
        pulled, t_pull = True, time.monotonic()
        written = _await(act, "written", timeout, "writing while the fabric was pulled")
        t_written = time.monotonic()
        lab.fault(ACTIVE, "link", w.fabric, "up")
        pulled, t_plug = False, time.monotonic()
        got = _await(act, "resync", timeout, "the resync after the fabric was plugged")
        t_done = time.monotonic()
        a_end = _await(act, "end", 120, "the digests after the resync")
        s_end = _await(sb, "end", 120, "the standby's digests after the resync")
        target_notes = sb.of("resync_notes")[0]["notes"] if sb.of("resync_notes") else []
        for run in (act, sb):
            run.job.wait(timeout=60)
    finally:
        if pulled:
            lab.fault(ACTIVE, "link", w.fabric, "up")
        for run in runs.values():
            if run.job is not None and run.job.poll() is None:
                run.job.kill()
        fenced.clear_marks(lab)
    out = resync_figures(got["notes"], total)
    out["replica"] = check_resynced(a_end, s_end)
    out.update({"disk_bytes": written["disk_bytes"], "pmem_bytes": written["pmem_bytes"],
                "written_alone_s": written["seconds"], "resync_rate": got["resync_rate"],
                "heartbeat_interval_ms": got["heartbeat_interval_ms"],
                "tx_bytes": ha_resync.TX_MAX, "in_flight_max": ha_resync.IN_FLIGHT,
                "pulled_s": round(t_plug - t_pull, 3),
                "pull_to_written_s": round(t_written - t_pull, 3),
                "plug_to_done_s": round(t_done - t_plug, 3),
                "notes": got["notes"], "target_notes": target_notes})
    return out


OURS = OurSide(write=write, resync=resync)

__all__ = ["OURS", "PROVIDERS", "check_replica", "check_resynced", "figures", "provider_info", "resync",
           "resync_figures", "write"]
