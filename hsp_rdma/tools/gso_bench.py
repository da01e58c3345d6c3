"""The GSO bench: stop-and-copy bandwidth and switch-over blackout beside ib_write_bw, same run,
same pair, in the lab or on two real hosts (`hsp-bench gso` is its CLI).

Method: ib_write_bw with the GSO's chunk size and queue depth gives the baseline (perftest
busy-polls); an event-driven RDMA Write reference written with pyverbs (an implementation
independent of our bindings, asleep on its completion channel) writes the same bytes in chunks
of the same size at the same depth over a region of the image's size, write i at offset
i x chunk, so both touch fresh pages (lab only; the reference as it was before, rewriting one
chunk-sized buffer, runs too and is reported beside it). The reference runs before the
switch-overs and again after each mode's runs, so every mode's copy is bracketed by two of its
runs; the copy's ratio is to their mean, and both are reported (a lab guest's speed drifts
within one boot). Then the demo application switches over back and
forth --runs times with a state image of --size, per --mode: push (the active RDMA-writes the
image, then the marker) or pull (the active seals it, the standby RDMA-reads it; ib_write_bw's
twin ib_read_bw at the pull's read size (the profile's read_chunk_size; --chunk sets both) and
the same depth is the pull's perftest baseline), both in the same
run when asked. Stop-and-copy MB/s = image bytes / (first data write posted .. the image
landed) on the active (push), or (first read posted .. last completed) on the standby (pull).
A push's image has landed when the header's write, posted behind the data, completed (RC:
the peer acknowledged it), or on iWARP, where a write completes once TCP took it, when an
8-byte RDMA Read posted behind the header completed; there the reference ends with the same
read, timed with its writes. Blackout = the active's freeze .. the active's
receipt of "done", which the standby sends only after its application resumed, so it is an
upper bound of the real blackout, on one clock; the phases say where the time went (active:
freeze, copy, marker, await_done; pull: seal, await_done; standby: pull, verify, resume).
Goals: copy >= 0.95 x the event-driven reference, and blackout <= copy + verify + 20 ms,
judged per run (that run's blackout less its own copy and verify: the overhead) by the
median overhead; blackout_goal_ms, the medians' sum, is given for reading only.
--fabrics 2 runs the push with both nodes on fabrics x and y, its copy striped across them (a
second VI on y; the header and marker on x after a fence read on y); --fabrics both runs one
fabric, then two, in the same lab boot: the baselines and references ran on x alone, so the
two-fabric copy's ratios are to one fabric's figures.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from hsp_rdma.core.profiles import Profile, load_profiles, pick_profile, profile_dirs
from hsp_rdma.errors import HspError
from hsp_rdma.ha.switchover import lands_by_read
from hsp_rdma.lab import Lab, perftest
from hsp_rdma.tools.cext_bench import run_writer_pair
from hsp_rdma.tools.cext_peer import DEFAULT_PORT
from hsp_rdma.tools.gso_pair import finish_pair, start_pair
from hsp_rdma.units import percentile

BLACKOUT_SLACK_MS = 20.0  # the goal: copy + verify + this
# ib_write_bw runs per two-host bench; the median is the baseline
BASELINE_ROUNDS = 3
BASELINE_RETRIES = 10  # attempts beyond BASELINE_ROUNDS before the two-host bench gives up
SETTLE_S = 2.0  # between two ib_write_bw attempts of the two-host baseline
PERFTEST_ROUND_S = 30.0  # one such run's connection and exchange; its bytes add 1 s per MB
NODE_GRACE_S = 60.0  # 'hsp-bench serve' ends its gso_node this long after it should have
SERVER_FAILS = 5  # ib_write_bw servers failing in a row that end 'hsp-bench serve'
REFERENCE_PORT = DEFAULT_PORT + 100  # the pyverbs reference's server (cext_peer serve) ...
COPY_GOAL = 0.95  # the goal: copy >= this x the event-driven reference


def _quiet(_msg: str) -> None:
    pass


def profile_for(device: str, user_dir: str | None) -> Profile:
    """The hw profile of DEVICE, searched from USER_DIR (--profiles) down to the packaged ones."""
    return pick_profile(device, load_profiles(user_dir=user_dir),
                        searched=profile_dirs(user_dir))


def fabric_counts(args) -> tuple[int, ...]:
    """The fabric counts ARGS.fabrics asks for (1 when it names none), in the order they run."""
    fabrics = str(getattr(args, "fabrics", "1"))
    return (1, 2) if fabrics == "both" else (int(fabrics),)


def modes_of(args) -> tuple[str, ...]:
    """The data paths ARGS.mode asks for (push when it names none), in the order they run."""
    mode = getattr(args, "mode", "push")
    return ("push", "pull") if mode == "both" else (mode,)


def bench_gso_lab(args, step: Callable[[str], None] = _quiet,
                  on_gso: Callable[[int], None] = lambda _n: None) -> list[dict[str, Any]]:
    """ARGS: lab, lab_id, size, runs, chunk, depth, fabric, keep, mode (hsp-bench gso's
    options). One result per mode, all from one lab boot with the same baselines. STEP names
    each phase; ON_GSO(n) reports the n-th completed switch-over (counted over the modes)."""
    modes = modes_of(args)
    lab = Lab(args.lab_id)
    step(f"lab '{args.lab_id}' ({args.lab})")
    booted = lab.ensure_up(args.lab, progress=step)
    try:
        info = lab.info()
        device = info["b"][args.fabric]["rdma_dev"]
        profile = profile_for(device, args.profiles)
        chunk = args.chunk or profile.chunk_size
        read_chunk = args.chunk or profile.read_chunk  # a pull's reads (--chunk: both)
        depth = args.depth or profile.queue_depth
        iters = max(args.size // chunk, 50)
        # where the push's copy ends with a read behind its writes, the reference does too
        landed = lands_by_read(profile)
        step(f"baseline: ib_write_bw -s {chunk} -t {depth} -n {iters}")
        base = perftest.run(lab, "ib_write_bw", args.fabric,
                            ("-s", str(chunk), "-t", str(depth), "-n", str(iters)), timeout=600)
        # The same region as the GSO's image: each write lands on fresh pages, as the copy's do.
        region = max(args.size // chunk, 1) * chunk
        def reference(when: str) -> dict[str, Any]:
            step(f"reference ({when}): pyverbs event-driven RDMA Write {chunk} x {iters}, "
                 f"depth {depth}, over {region} bytes")
            return run_writer_pair(lab, args.fabric, "write", chunk, depth, iters, "event",
                                   # a port of its own per run: iWARP holds a used one a while
                                   REFERENCE_PORT + next(ports) % 500,
                                   timeout=60 + chunk * iters / 1e6,
                                   writer="pyverbs", region=region, landed_read=landed)

        ports = itertools.count(int(time.time()))
        ref = reference("before the switch-overs")
        step("reference, as before: the same writes into one chunk-sized buffer")
        ref1 = run_writer_pair(lab, args.fabric, "write", chunk, depth, iters, "event",
                               REFERENCE_PORT + 500 + int(time.time()) % 500,
                               timeout=60 + chunk * iters / 1e6, writer="pyverbs",
                               landed_read=landed)
        read_bw = None
        if "pull" in modes:
            r_iters = max(args.size // read_chunk, 50)
            step(f"baseline for pull: ib_read_bw -s {read_chunk} -t {depth} -n {r_iters}")
            read_bw = perftest.run(lab, "ib_read_bw", args.fabric,
                                   ("-s", str(read_chunk), "-t", str(depth), "-n",
                                    str(r_iters)), timeout=600).row["bw_avg_MBps"]
        seen: list[dict] = []

        def on_event(node: str, ev: dict) -> None:
            if ev["event"] == "gso" and ev["role"] == "active":
                seen.append(ev)
                on_gso(len(seen))

        results = []
        for mode in modes:
            for nf in fabric_counts(args):
                step(f"{args.runs} GSO(s), {mode}" + (", striped over x and y" if nf == 2
                                                      else ""))
                flag = ("--mode", mode, "--read-chunk", str(read_chunk))
                a, b = start_pair(lab, args.size, args.runs, fabric=args.fabric, chunk=chunk,
                                  depth=depth, timeout=120 + args.runs * (5 + args.size / 2e6),
                                  on_event=on_event, profiles=args.profiles, extra_a=flag,
                                  extra_b=flag, stripe_on="y" if nf == 2 else None)
                res = finish_pair(a, b)
                after = reference(f"after the {mode} runs")
                results.append(summarize(
                    args, a.events + b.events, base.row["bw_avg_MBps"], base.retries, device,
                    profile, chunk, depth, ref_bw=(ref["MBps"] + after["MBps"]) / 2,
                    mode=mode, read_bw=read_bw,
                    ref_region=region, ref_one_chunk_bw=ref1["MBps"], fabrics=nf,
                    ref_landed_ms=(None if ref.get("landed_read_ms") is None else
                                   (ref["landed_read_ms"] + after["landed_read_ms"]) / 2),
                    ref_runs=(ref["MBps"], after["MBps"]),
                    read_chunk=read_chunk,
                    extra=f"rc {res.rc} {res.stderr.get('a', '')[-300:]}"
                          f" {res.stderr.get('b', '')[-300:]}") | {"lab": args.lab})
                ref = after  # the next mode's runs are bracketed by this one and the next
        return results
    finally:
        if booted and not args.keep:
            lab.down()


def _stats(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 2), "max": round(max(values), 2)}


def _overhead(gsos: list[dict], copies: list[dict], events: list[dict]) -> dict[str, float]:
    """p50/max of each run's blackout minus that run's copy and the standby's verify: the
    blackout goal's verdict (median <= BLACKOUT_SLACK_MS)."""
    verify = {e["epoch"]: e["verify_s"] for e in events
              if e["event"] == "gso" and e["role"] == "standby"}
    over = [(e["blackout_s"] - c["copy_s"] - verify.get(e["epoch"], 0.0)) * 1000
            for e, c in zip(gsos, copies)]
    return {"p50": round(statistics.median(over), 1), "max": round(max(over), 1)} if over else {}


def _p50_max(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 2), "max": round(max(values), 2)} \
        if values else {}


def summarize(args, events: list[dict], base_bw: float, base_retries: int, device: str,
              profile: Profile, chunk: int, depth: int, ref_bw: float | None = None,
              extra: str = "", expect: int | None = None, mode: str = "push",
              read_bw: float | None = None, ref_region: int | None = None,
              ref_one_chunk_bw: float | None = None, fabrics: int = 1,
              read_chunk: int | None = None,
              ref_landed_ms: float | None = None,
              ref_runs: tuple[float, float] | None = None) -> dict[str, Any]:
    """The bench's result from gso_node events (lab and real hosts alike). EXPECT is how
    many GSOs these events saw from the active side (on two hosts: this host's half).
    REF_BW: the event-driven pyverbs reference, when it ran (lab). MODE: the data path the
    runs used; a pull's copy is measured on the standby (READ_BW: ib_read_bw, when it ran).
    REF_LANDED_MS: the reference's landed read (iWARP), when it ended with one. REF_RUNS: the
    reference's runs before and after these switch-overs (REF_BW is their mean)."""
    expect = args.runs if expect is None else expect
    gsos = [e for e in events if e["event"] == "gso" and e["role"] == "active"]
    failed = [e for e in events if e["event"] == "gso" and e["outcome"] != "completed"]
    errors = [e["error"] for e in events if e["event"] == "error"]
    if errors or failed or len(gsos) != expect:
        raise HspError("GSO runs failed: " + "; ".join(
            errors + [f"epoch {e['epoch']}: {e['outcome']} ({e['reason']})" for e in failed]
            + [f"{len(gsos)} of {expect} completed", extra]))
    # The copy's side: the active writes (push), the standby reads (pull).
    copier = {e["epoch"]: e for e in events if e["event"] == "gso"
              and e["role"] == ("active" if mode == "push" else "standby")}
    copies = [copier[e["epoch"]] for e in gsos if e["epoch"] in copier]
    if len(copies) != len(gsos):
        raise HspError(f"GSO runs failed: {len(copies)} of {len(gsos)} {mode} copies reported "
                       f"by the {'standby' if mode == 'pull' else 'active'} ({extra})")
    copy_bw = statistics.median(e["copy_MBps"] for e in copies)
    blk = [e["blackout_s"] * 1000 for e in gsos]
    verify = [e["verify_s"] * 1000 for e in events
              if e["event"] == "gso" and e["role"] == "standby"]
    digest = [e.get("digest_s", 0.0) * 1000 for e in gsos]
    # pull: the standby digests each chunk as its read lands (inside the pull, not verify)
    b_digest = [e.get("digest_s", 0.0) * 1000 for e in events if e["event"] == "gso"
                and e["role"] == "standby" and e.get("outcome") == "completed"
                and e.get("digest_s")]
    phase_runs: dict[str, list[float]] = {}
    for e in events:
        if e["event"] == "gso" and e["outcome"] == "completed":
            for name, ms in e.get("phases_ms", {}).items():
                phase_runs.setdefault(name, []).append(ms)
    copy_ms = [e["copy_s"] * 1000 for e in copies]
    verify_p50 = statistics.median(verify) if verify else 0.0
    goal = round(statistics.median(copy_ms) + verify_p50 + BLACKOUT_SLACK_MS, 1)
    p50 = round(statistics.median(blk), 1)
    poll = profile.marker_poll
    used = sorted({c.get("fabrics") or "?" for c in copies})
    if fabrics == 2 and used != ["x+y"]:
        # a striped run whose copies did not all stripe measures something else: say so
        connected = [e for e in events if e["event"] == "connected" and e.get("stripe_note")]
        raise HspError(f"--fabrics 2: the copies went over {', '.join(used)}, not x+y"
                       + (f" ({connected[0]['stripe_note']})" if connected else ""))
    writes = sum(c.get("writes", 0) for c in copies)
    overhead = _overhead(gsos, copies, events)
    landed_ms = [c["landed_read_ms"] for c in copies if c.get("landed_read_ms") is not None]
    return {
        "mode": mode,
        "fabrics": fabrics,
        "fabrics_used": used,
        "stripe_share": (round(sum(c.get("stripe_writes", 0) for c in copies) / writes, 3)
                         if fabrics == 2 and writes else None),
        "state_bytes": args.size, "image_bytes": gsos[0]["image_bytes"],
        "stop_and_copy_MBps": round(copy_bw, 2),
        "baseline_ib_write_bw_MBps": base_bw,
        "ratio": round(copy_bw / base_bw, 3) if base_bw else None,
        "baseline_ib_read_bw_MBps": read_bw if mode == "pull" else None,
        "ratio_vs_ib_read_bw": (round(copy_bw / read_bw, 3)
                                if mode == "pull" and read_bw else None),
        "reference_event_MBps": round(ref_bw, 2) if ref_bw else None,
        # the runs it is the mean of: before these switch-overs, after them
        "reference_event_runs_MBps": [round(v, 2) for v in ref_runs] if ref_runs else None,
        "reference_region_bytes": ref_region,
        # the reference as it was: every write into the same chunk-sized buffer
        "reference_one_chunk_event_MBps": round(ref_one_chunk_bw, 2) if ref_one_chunk_bw
        else None,
        "ratio_vs_one_chunk_event": round(copy_bw / ref_one_chunk_bw, 3) if ref_one_chunk_bw
        else None,
        "ratio_vs_event": round(copy_bw / ref_bw, 3) if ref_bw else None,
        # push: how the copy's end was known: "ack" (the header's completion, RC) or "read"
        # (iWARP: a read behind the header); the read's time after the header completed
        "landed_by": sorted({c.get("landed_by") or "?" for c in copies}) if mode == "push"
        else None,
        "landed_read_ms": _p50_max(landed_ms) if landed_ms else None,
        "reference_landed_read_ms": round(ref_landed_ms, 2) if ref_landed_ms else None,
        "copy_goal": COPY_GOAL,
        "copy_goal_met": (copy_bw >= COPY_GOAL * ref_bw) if ref_bw else None,
        "blackout_ms": {"min": round(min(blk), 1), "p50": p50,
                        "p99": round(percentile(blk, 99), 1), "max": round(max(blk), 1)},
        "blackout_samples": len(blk),
        # the verdict pairs each run's blackout with its own copy and verify (overhead_ms):
        # the medians' sum (blackout_goal_ms) mixes runs, which a noisy host moves by more
        # than the 20 ms allowed
        "blackout_goal_ms": goal,
        "blackout_goal_met": bool(overhead) and overhead["p50"] <= BLACKOUT_SLACK_MS,
        "blackout_slack_ms": BLACKOUT_SLACK_MS,
        "verify_ms_p50": round(verify_p50, 1) if verify else None,
        # the active's digest: on the copy's critical path (push: between posting writes;
        # pull: in the seal, before Sealed)
        "digest_ms": _stats(digest),
        "standby_digest_ms": _stats(b_digest) if b_digest else None,
        "phases_ms": {name: _stats(v) for name, v in phase_runs.items()},
        "marker_wait": poll.mode.value + (f" {poll.sleep_us} us" if poll.sleep_us else ""),
        "runs": args.runs, "device": device, "profile": profile.name, "chunk": chunk,
        # a pull's RDMA Read size (the profile's read_chunk_size; --chunk sets both)
        "read_chunk": (read_chunk or chunk) if mode == "pull" else None,
        "queue_depth": depth, "baseline_retries": base_retries,
        "per_run": [{"epoch": e["epoch"], "copy_MBps": round(c["copy_MBps"], 2),
                     "blackout_ms": round(e["blackout_s"] * 1000, 1),
                     "copy_ms": round(c["copy_s"] * 1000, 1)}
                    for e, c in zip(gsos, copies)],
        # the blackout beyond its own run's copy and verify, per run: the goal's verdict
        "overhead_ms": overhead,
        # pull: how long the standby, its pull complete, waited for the active's Digest
        "standby_digest_wait_ms": _p50_max([e.get("digest_wait_s", 0.0) * 1000 for e in copies]),
        "method": " ".join(__doc__.split("Method: ", 1)[1].split()),
    }


def goals_met(r: dict[str, Any]) -> bool:
    """Every goal the bench printed: the blackout's, and the copy's where a reference ran."""
    return bool(r["blackout_goal_met"]) and r["copy_goal_met"] is not False


def _node_argv(args, chunk: int, depth: int, serving: bool) -> list[str]:
    argv = [sys.executable, "-m", "hsp_rdma.ha.gso_node", "--name", "local",
            "--device", args.device, "--local-ip", args.local_ip, "--pmem", str(args.size),
            "--runs", str(args.runs), "--chunk", str(chunk), "--depth", str(depth)]
    if args.profiles:
        argv += ["--profiles", args.profiles]
    if serving:
        argv += ["--serving", "--peer-ip", args.peer]
    return argv


def _perftest_argv(args, chunk: int, depth: int) -> list[str]:
    return ["ib_write_bw", "-d", args.device, "-R", "-F", "-s", str(chunk), "-t", str(depth),
            "-n", str(_perftest_iters(args, chunk))]


def _perftest_iters(args, chunk: int) -> int:
    return max(args.size // chunk, 50)


def _round_timeout(args, chunk: int) -> float:
    """The longest one ib_write_bw run of the two-host baseline may take: PERFTEST_ROUND_S
    for the connection and parameter exchange, then 1 s per MB. The lab's soft devices
    under TCG on a loaded host ran the two-host test's 50 writes of 64 KiB at 0.6-4 MB/s,
    in 1-6 s. Past this limit the run is stuck (LAB.md pitfall 1), not slow."""
    return PERFTEST_ROUND_S + _perftest_iters(args, chunk) * chunk / 1e6


def _run_node(argv: list[str], timeout: float) -> list[dict]:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HspError(f"gso_node gave no result in {timeout:.0f} s") from exc
    return _node_events(res.returncode, res.stdout, res.stderr)


def _node_events(rc: int, stdout: str, stderr: str) -> list[dict]:
    events = [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{")]
    if rc != 0 and not any(e["event"] == "error" for e in events):
        said = stderr.strip()
        if "Traceback (most recent call last)" in said:  # its last line says what it was
            said = said.splitlines()[-1]
        raise HspError(f"gso_node exited {rc}: {said[-500:]}")
    return events


def _real_params(args) -> tuple[Profile, int, int]:
    profile = profile_for(args.device, args.profiles)
    return profile, args.chunk or profile.chunk_size, args.depth or profile.queue_depth


# What ib_write_bw says when the device is not there (a wrong --device, no RDMA module)
_NO_DEVICE = ("Did not detect devices", "Unable to find the Infiniband/RoCE device")


def _baseline_rounds(args, chunk: int, depth: int,
                     step: Callable[[str], None] = _quiet) -> tuple[float, int]:
    """BASELINE_ROUNDS ib_write_bw runs against the peer's servers (serve_peer keeps one
    listening until this side's GSO runs connect); the median of the rounds that measured, and the
    retries. Every attempt after the first starts SETTLE_S after the last one ended, so the
    peer's next server listens (a client that comes too early is rejected, and can leave
    that server stuck: LAB.md pitfall 1); an attempt that outlasts _round_timeout is
    ended and tried again, as is one the peer rejected or that reported a zero average
    (seen under TCG). Every retry is counted in the second value."""
    rows, retries, said = [], 0, ""
    limit = _round_timeout(args, chunk) + SETTLE_S
    attempts = 0
    while len(rows) < BASELINE_ROUNDS:
        if attempts >= BASELINE_ROUNDS + BASELINE_RETRIES:
            raise HspError(f"ib_write_bw to {args.peer}: {len(rows)} of {BASELINE_ROUNDS} "
                           f"runs measured in {attempts} attempts; is 'hsp-bench serve' "
                           f"running there with the same --size and --chunk? Last: {said}")
        if attempts:
            time.sleep(SETTLE_S)
        attempts += 1
        step(f"baseline: ib_write_bw run {len(rows) + 1}/{BASELINE_ROUNDS} to {args.peer}"
             + (f" (retries: {retries})" if retries else ""))
        try:
            res = subprocess.run([*_perftest_argv(args, chunk, depth), args.peer],
                                 capture_output=True, text=True, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            retries += 1
            said = f"a run gave no result in {limit:.0f} s (ended, tried again)"
            continue
        if res.returncode != 0:
            said = f"exit {res.returncode}: {res.stderr.strip()[-300:]}"
            if any(s in res.stderr for s in _NO_DEVICE):  # no retry will find it
                raise HspError(f"ib_write_bw on {args.device}: {said}; check --device "
                               "(ibv_devices lists this host's RDMA devices)")
            retries += 1
            continue
        row = perftest.parse_table("ib_write_bw", res.stdout)
        if row.get("bw_avg_MBps", 0.0) > 0:
            rows.append(row["bw_avg_MBps"])
        else:
            retries += 1
            said = f"a zero average: {res.stdout.strip()[-300:]}"
    return statistics.median(rows), retries


def bench_gso_peer(args, step: Callable[[str], None] = _quiet) -> dict[str, Any]:
    """Active side on two real hosts: ib_write_bw to the peer, then the GSO runs."""
    profile, chunk, depth = _real_params(args)
    base_bw, retries = _baseline_rounds(args, chunk, depth, step)
    step(f"{args.runs} GSO(s) with {args.peer}")
    events = _run_node(_node_argv(args, chunk, depth, True),
                       timeout=120 + args.runs * (5 + args.size / 2e6))
    # Runs alternate direction: this host is the active of runs 1, 3, 5 ...
    return summarize(args, events, base_bw, retries, args.device, profile, chunk,
                     depth, expect=(args.runs + 1) // 2) | {"peer": args.peer}


def _end(proc: subprocess.Popen) -> int:
    """Kill PROC (nothing to kill once it ended) and reap it; its exit status."""
    proc.kill()
    return proc.wait()


def _said_connected(out) -> bool:
    """Has the gso_node writing to OUT (a file) said it connected? Read without moving the
    offset it writes at."""
    fd = out.fileno()
    return b'{"event": "connected"' in os.pread(fd, os.fstat(fd).st_size, 0)


def serve_peer(args, step: Callable[[str], None] = _quiet) -> dict[str, Any]:
    """Standby side on two real hosts: a gso_node listener for the peer's GSOs and, beside
    it until the peer's GSO runs connect, one ib_write_bw server after another for the
    peer's baseline (as many as the peer runs, its retries included: there is no count to
    agree on; none runs during the GSOs). A
    server that outlasts _round_timeout is ended and another started: one left stuck by a
    client that came too early (LAB.md pitfall 1) must not keep the peer from measuring.
    What it served, the errors it saw and the ib_write_bw runs that completed."""
    _profile, chunk, depth = _real_params(args)
    limit = args.wait + args.runs * (5 + args.size / 2e6) + NODE_GRACE_S
    late = f"gso_node gave no result in {limit:.0f} s"
    deadline = time.monotonic() + limit
    runs = fails = 0
    srv: subprocess.Popen | None = None
    srv_end = 0.0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.TemporaryFile("w+") as srv_err:
        node = subprocess.Popen([*_node_argv(args, chunk, depth, False), "--connect-timeout",
                                 str(args.wait)], stdout=out, stderr=err, text=True)
        try:
            while node.poll() is None:
                if time.monotonic() > deadline:
                    raise HspError(late)
                if _said_connected(out):  # the baseline is over: no server beside the GSOs
                    if srv is not None:
                        runs += _end(srv) == 0  # (it may have ended its run just before)
                        srv = None
                    step(f"{args.runs} GSO(s) with the peer; {runs} baseline run(s) served")
                    try:
                        node.wait(timeout=max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        raise HspError(late) from None
                    break
                if srv is None:
                    step(f"gso_node listening at {args.local_ip}, ib_write_bw server on "
                         f"{args.device}: {runs} baseline run(s) served")
                    srv_err.seek(0)
                    srv_err.truncate()
                    srv = subprocess.Popen(_perftest_argv(args, chunk, depth),
                                           stdout=subprocess.DEVNULL, stderr=srv_err)
                    srv_end = time.monotonic() + _round_timeout(args, chunk)
                rc = srv.poll()
                if rc is None and time.monotonic() > srv_end:  # stuck, or idle: a fresh one
                    _end(srv)
                    srv = None
                elif rc is not None:
                    srv = None
                    runs += rc == 0
                    fails = 0 if rc == 0 else fails + 1
                    if fails >= SERVER_FAILS:
                        srv_err.seek(0)
                        raise HspError(f"ib_write_bw server on {args.device} failed "
                                       f"{fails} times in a row: "
                                       f"{srv_err.read().strip()[-300:]}")
                time.sleep(0.1)
        finally:
            for proc in (srv, node):
                if proc is not None:
                    _end(proc)
        out.seek(0)
        err.seek(0)
        events = _node_events(node.returncode, out.read(), err.read())
    return {"served": len([e for e in events if e["event"] == "gso"]),
            "errors": [e["error"] for e in events if e["event"] == "error"],
            "baseline_runs": runs}
