"""`hsp-bench interface-a`'s work: on one lab pair, in one run, perftest's ib_send_lat and our
Interface A (tools/ifa_pair --bench): commit latency per mode, transactions/s per size, and
the node's CPU time per second at fixed rates.

Latency words are perftest's (min, typical = median, average, p99, p99.9, max, after a
warm-up). ib_send_lat reports half a round trip; a commit in ``applied`` mode is one round
trip (the transaction out, the ack back) plus the apply, so the goal compares it with
2 x ib_send_lat's typical: applied median <= 1.5 x that. CPU: percent of one core, the node's
loop thread alone and its whole process (the active's includes the workload's calls), on
both nodes; a rate the lab cannot sustain is reported with the rate it reached. The first
CPU row is always the idle one (0 tx/s for the same seconds: the pair connected and quiet, each
node sending heart beats at its configured interval and nothing else): the heart-beat cost,
also given as CPU milliseconds per second (``heartbeat_cpu``).

With the software VIA provider (``--provider soft``, no lab: ``bench_soft``) the pair is two
processes of this host (standby 127.0.0.1, active 127.0.0.2, soft:a and soft:b: on one host the
provider carries its frames over a Unix socket), and the baseline of the same run is a
Unix-socket ping-pong of the same 64 bytes with an echo process, given in perftest's form
(half a round trip) so that the goal reads the same: applied median <= 1.5 x its round trip.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from hsp_rdma.errors import HspError, LabError
from hsp_rdma.lab import Lab, perftest
from hsp_rdma.tools import soft_bench
from hsp_rdma.tools.ifa_lab import start_ifa_pair, wait_both

LAT_BYTES = 64
GOAL_RATIO = 1.5
CPU_GOAL_PERCENT = 3.0


def heartbeat_cpu(idle: dict[str, Any]) -> dict[str, Any]:
    """The idle CPU row (0 tx/s) as the heart-beat cost per node: CPU ms per second and %
    of one core, the node's loop thread and its whole process, with the interval and the
    heart beats each node sent per second in that window."""
    if idle.get("target_tx_per_s") != 0:
        raise LabError(f"the heart-beat cost comes from the idle row (0 tx/s), not from "
                       f"{idle.get('target_tx_per_s')!r} tx/s")
    out: dict[str, Any] = {"heartbeat_interval_ms": idle.get("heartbeat_interval_ms"),
                           "seconds": idle.get("seconds")}
    for side in ("active", "standby"):
        loop, proc = idle[f"{side}_loop"], idle[f"{side}_process"]
        out[side] = {"loop_ms_per_s": round(loop * 10, 2), "loop_percent": loop,
                     "process_ms_per_s": round(proc * 10, 2), "process_percent": proc,
                     "heartbeats_per_s": idle.get(f"{side}_heartbeats_per_s")}
    return out


def cpu_rates(rates: tuple[int, ...]) -> tuple[int, ...]:
    """The rates measured, in order: the idle row (0) first, then RATES' others."""
    return (0, *(r for r in rates if r != 0))


def run_bench(lab: Lab, lat_iters: int = 1000, tput_s: float = 3.0, cpu_s: float = 5.0,
              rates: tuple[int, ...] = (1000, 10000), fabric: str = "x",
              step: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    step(f"ib_send_lat {LAT_BYTES} B x {lat_iters}")
    lat = perftest.run(lab, "ib_send_lat", fabric, ("-s", str(LAT_BYTES), "-n", str(lat_iters)))
    step("Interface A pair: latency, throughput, CPU")
    events: list[str] = []
    measured = cpu_rates(rates)
    a, b = start_ifa_pair(lab, ["--bench", "--lat-iters", str(lat_iters), "--tput-s",
                                str(tput_s), "--cpu-s", str(cpu_s), "--rates",
                                ",".join(str(r) for r in measured)],
                          timeout=600, tag="ifabench")
    b.on_event = lambda _n, ev: ev["event"] == "phase" and (events.append(ev["name"]),
                                                            step(f"Interface A: {ev['name']}"))
    t0 = time.monotonic()
    res = wait_both((b, a), timeout=600)
    got = b.of("bench")
    if not got:
        raise LabError(f"the Interface A bench did not finish: active exit {res['b'][0]}, "
                       f"standby exit {res['a'][0]}:\n{res['b'][1][-1500:]}\n{res['a'][1][-800:]}")
    return result(got[0], "verbs", {k: lat.row[k] for k in BASE_KEYS},
                  measured, lab.status().get("rdma"), lat.notes, (
                      f"one lab pair, fabric {fabric}: ib_send_lat -s {LAT_BYTES} -n "
                      f"{lat_iters} (half round trip), then " + _pair_method(lat_iters, tput_s,
                                                                             cpu_s)),
                  round(time.monotonic() - t0, 1))


BASE_KEYS = ("t_min_us", "t_typical_us", "t_avg_us", "p99_us", "p99_9_us", "t_max_us")
# The same run's baseline, per provider: where the JSON puts it.
BASELINE_KEY = {"verbs": "baseline_ib_send_lat_us", "soft": "baseline_unix_socket_us"}


def _pair_method(lat_iters: int, tput_s: float, cpu_s: float) -> str:
    return ("a node pair (standby a, active b): per mode "
            f"{lat_iters} commits of one {LAT_BYTES} B P.mem write after 50 warm-up; "
            f"async transactions for {tput_s} s per size, then a sync (included); "
            f"{cpu_s} s idle (0 tx/s: heart beats only, the heart-beat cost) and "
            f"{cpu_s} s paced at each rate, CPU from os.times and the loop thread's "
            "CPU clock on both nodes, over the active's wall time of the window "
            "(the standby's over its own)")


def result(r: dict[str, Any], provider: str, base: dict[str, float], measured: tuple[int, ...],
           where: str | None, notes: list[str], method: str, bench_s: float) -> dict[str, Any]:
    """The bench's JSON from the active's "bench" event R and the same run's baseline BASE
    (perftest's words, half a round trip), under PROVIDER's BASELINE_KEY."""
    typical = base["t_typical_us"]
    applied_p50 = r["latency"]["applied"]["p50"]
    goal_us = GOAL_RATIO * 2 * typical
    top = str(max(measured))
    cpu_top = r["cpu"][top]
    return {
        "lab": where,
        "provider": provider,
        "commit_us": r["latency"],
        BASELINE_KEY[provider]: base,
        "ratio_applied_p50_vs_rtt": round(applied_p50 / (2 * typical), 2),
        "tx_per_s": {k: v["tx_per_s"] for k, v in r["throughput"].items()},
        "throughput": r["throughput"],
        "cpu_percent": r["cpu"],
        "heartbeat_cpu": heartbeat_cpu(r["cpu"]["0"]),
        "goals": {
            "applied_p50_us": applied_p50, "goal_us": round(goal_us, 1),
            "latency_met": applied_p50 <= goal_us,
            "cpu_rate": cpu_top["target_tx_per_s"],
            "cpu_achieved_tx_per_s": cpu_top["achieved_tx_per_s"],
            "cpu_active_loop_percent": cpu_top["active_loop"],
            "cpu_met": max(cpu_top["active_loop"], cpu_top["standby_loop"]) <= CPU_GOAL_PERCENT,
        },
        "bench_s": bench_s,
        "notes": notes,
        "method": method,
    }


def bench_soft(args, step: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """The same bench over the software VIA provider: two processes of this host (see the
    module's doc), beside a Unix-socket ping-pong of the same run."""
    env = soft_bench.child_env()
    step(f"Unix-socket ping-pong {LAT_BYTES} B x {args.iters}")
    unix = soft_bench.unix_rtt(LAT_BYTES, args.iters, env)
    measured = cpu_rates(tuple(args.rates))
    bench = ["--bench", "--lat-iters", str(args.iters), "--tput-s", str(args.tput_s),
             "--cpu-s", str(args.cpu_s), "--rates", ",".join(str(r) for r in measured)]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hsp-ifa-soft-") as tmp:
        argvs = {}
        for node, peer, role, ip, peer_ip, extra in (
                ("a", "b", "standby", soft_bench.STANDBY_IP, soft_bench.ACTIVE_IP, []),
                ("b", "a", "active", soft_bench.ACTIVE_IP, soft_bench.STANDBY_IP, bench)):
            argvs[node] = [sys.executable, "-m", "hsp_rdma.tools.ifa_pair", "--name", node,
                           "--peer-name", peer, "--role", role, "--device", f"soft:{node}",
                           "--local", ip, "--peer", peer_ip, "--state-dir", f"{tmp}/{node}",
                           "--connect-timeout", "20000", *extra]
        step("Interface A pair over soft VIs: latency, throughput, CPU")

        def on_event(node: str, ev: dict) -> None:
            if node == "b" and ev["event"] == "phase":
                step(f"Interface A over soft VIs: {ev['name']}")

        # (the active's run: 3 latency modes, 3 sizes, each rate; plus connecting)
        budget = 60 + 3 * args.iters * 0.01 + 3 * args.tput_s + len(measured) * args.cpu_s * 2
        events, rc, err = soft_bench.run_procs(argvs, env, on_event, budget,
                                               "the Interface A node")
    got = [e for e in events if e["event"] == "bench"]
    if not got:
        raise HspError(f"the Interface A bench over soft VIs did not finish: active exit "
                       f"{rc.get('b')}, standby exit {rc.get('a')}:\n{err.get('b', '')}\n"
                       f"{err.get('a', '')}")
    return result(got[0], "soft",
                  soft_bench.lat_stats([x / 2 for x in unix]), measured,
                  "soft provider, this host", [], (
                      f"two processes of this host, soft:a on {soft_bench.STANDBY_IP} and "
                      f"soft:b on {soft_bench.ACTIVE_IP} (one host: the provider's frames go "
                      f"over a Unix socket): a {LAT_BYTES} B ping-pong over an AF_UNIX stream "
                      f"socket with an echo process, {args.iters} round trips after "
                      f"{soft_bench.WARMUP} warm-up, given as half round trips, then "
                      + _pair_method(args.iters, args.tput_s, args.cpu_s)),
                  round(time.monotonic() - t0, 1))


def bench_lab(args, step: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    lab = Lab(args.lab_id)
    booted = False
    try:
        booted = lab.ensure_up(args.lab, 2, step)
        return run_bench(lab, args.iters, args.tput_s, args.cpu_s, tuple(args.rates),
                         step=step)
    finally:
        if booted:
            lab.down()
