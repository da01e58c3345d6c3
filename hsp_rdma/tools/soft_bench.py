"""The GSO bench over the software VIA provider (`hsp-bench gso --provider soft`): two gso_node
processes on this host, beside a plain memcpy and a Unix-socket ping-pong, same run.

Method: node a (the standby, listening on 127.0.0.1) and node b (the active, 127.0.0.2) run `python -m hsp_rdma.ha.gso_node --device soft:a|soft:b` as separate processes and switch
over back and forth --runs times with a state image of --size (hw profile "soft"); their JSON
events are summarized by gso_bench.summarize (stop-and-copy MB/s = image bytes / first data
write posted .. last completed on the copying side, blackout = the active's freeze .. its
receipt of "done"). Beside it, in the same run: a single-core memcpy (libc memmove through
ctypes) of the image's size between two pre-faulted buffers, median of several copies (goal:
copy >= 0.8 x memcpy); and the send/receive round trip of a 64-byte message over two soft VIs
(this process and an echo process, 127.0.0.1 -> 127.0.0.2: post the receive, post the send,
until both completed) beside the same message bounced over an AF_UNIX stream socket between
this process and an echo process (goal: soft round trip <= 1 x the Unix socket's). Beside
those, the floor under each: the same round trip with both ends in this one thread, driven in
turn (two soft VIs of this process; a socketpair), so no thread sleeps or wakes: the CPU work
of the VIPL calls and the provider per round trip, against the socket calls'. Also, to
tell the provider's copy from the engine's work around it (the active digests the image inside
the copy phase): the soft provider's RDMA Write alone, this process writing an image-sized
via.shared_buffer of another process in chunk-sized writes (post all, wait all; median of
several passes after a first that obtains the grant), beside the same memcpy.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import random  # noqa: F401 - (tests pick port bases with soft_bench.random)
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hsp_rdma import via
from hsp_rdma.errors import HspError
from hsp_rdma.tools.gso_bench import modes_of, profile_for, summarize
from hsp_rdma.tools.guest import GuestRun
from hsp_rdma.units import percentile
from hsp_rdma.via.providers import soft as soft_provider

ACTIVE_IP, STANDBY_IP = "127.0.0.2", "127.0.0.1"
ECHO_IP, PING_IP = "127.0.0.2", "127.0.0.1"
COPY_GOAL = 0.8  # stop-and-copy >= this x memcpy
RTT_GOAL = 1.0  # soft round trip <= this x the Unix socket's
LAT_BYTES = 64
LAT_ITERS = 2000
WARMUP = 200
MEMCPY_REPS = 7
ECHO_DISC = b"hsp-soft-bench"
ONE_THREAD_DISC = b"hsp-soft-bench-one-thread"
WRITE_DISC = b"hsp-soft-bench-write"
WRITE_REPS = 7


def _quiet(_msg: str) -> None:
    pass


def child_env() -> dict[str, str]:
    """The children's environment: a soft port base of this run's own unless one is set
    (ports base..base+9999 stay below the ephemeral range), so parallel runs do not meet."""
    env = dict(os.environ)
    env.setdefault("HSP_VIA_SOFT_PORT_BASE", str(soft_provider.random_port_base()))
    return env


# ---- the GSO pair --------------------------------------------------------------------------
def _node_argv(name: str, args, chunk: int, depth: int, mode: str) -> list[str]:
    argv = [sys.executable, "-m", "hsp_rdma.ha.gso_node", "--name", name,
            "--device", f"soft:{name}", "--pmem", str(args.size), "--runs", str(args.runs),
            "--chunk", str(chunk), "--depth", str(depth), "--mode", mode]
    if args.profiles:
        argv += ["--profiles", args.profiles]
    if name == "a":
        return argv + ["--local-ip", STANDBY_IP]
    return argv + ["--local-ip", ACTIVE_IP, "--serving", "--peer-ip", STANDBY_IP]


def run_pair(args, mode: str, chunk: int, depth: int, env: dict[str, str],
             on_event: Callable[[str, dict], None] | None = None,
             timeout: float = 120.0) -> tuple[list[dict], dict[str, int], dict[str, str]]:
    """gso_node a (standby) and b (active) as two processes; their events, exit codes and
    the tails of their stderr."""
    return run_procs({n: _node_argv(n, args, chunk, depth, mode) for n in ("a", "b")}, env,
                     on_event, timeout, "gso_node")


def run_procs(argvs: dict[str, list[str]], env: dict[str, str],
              on_event: Callable[[str, dict], None] | None = None, timeout: float = 120.0,
              what: str = "the pair") -> tuple[list[dict], dict[str, int], dict[str, str]]:
    """Run each of ARGVS (node name -> argv) as a process of this host, their standard outputs
    read all at once (JSON events, as from lab guests); return when all ended: the events
    (in the order of ARGVS), the exit codes and the tails of their stderr. A process still
    running after TIMEOUT s is killed, and that is an HspError naming it."""
    runs = {n: GuestRun(n, on_event=on_event) for n in argvs}
    lock = threading.Lock()  # (on_event is called from one reader at a time)

    def feed(n: str, line: bytes) -> None:
        with lock:
            runs[n].feed(line)

    with contextlib.ExitStack() as stack:  # (stderr to files: a pipe could fill and stop it)
        errs = {n: stack.enter_context(tempfile.TemporaryFile()) for n in argvs}
        procs = {n: subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=errs[n])
                 for n, argv in argvs.items()}

        def read(n: str, p: subprocess.Popen) -> None:
            for line in iter(p.stdout.readline, b""):
                feed(n, line)

        readers = [threading.Thread(target=read, args=(n, p), name=f"soft-bench-out-{n}",
                                    daemon=True) for n, p in procs.items()]
        for t in readers:
            t.start()
        deadline = time.monotonic() + timeout
        rc, err = {}, {}
        try:
            for n, p in procs.items():
                try:
                    rc[n] = p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise HspError(f"{what} {n} gave no result in {timeout:.0f} s "
                                   "(killed)") from None
            for t in readers:
                t.join(5)
            for n, f in errs.items():
                f.seek(0)
                err[n] = f.read().decode(errors="replace")[-500:]
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for t in readers:
                t.join(5)
            for p in procs.values():
                p.stdout.close()
    return [e for r in runs.values() for e in r.events], rc, err


# ---- baselines -------------------------------------------------------------------------------
def memcpy_MBps(size: int, reps: int = MEMCPY_REPS) -> float:
    """One core's memcpy of SIZE bytes between two pre-faulted buffers, median of REPS."""
    src, dst = bytearray(b"\x5a" * size), bytearray(size)
    s = (ctypes.c_char * size).from_buffer(src)
    d = (ctypes.c_char * size).from_buffer(dst)
    ctypes.memmove(d, s, size)  # fault every page in first
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        ctypes.memmove(d, s, size)
        times.append(time.perf_counter() - t0)
    del s, d
    return size / statistics.median(times) / 1e6


def lat_stats(rtts_us: list[float]) -> dict[str, float]:
    """Latencies (us) in perftest's words: min, typical (median), average, p99, p99.9, max."""
    return {"t_min_us": round(min(rtts_us), 2), "t_typical_us": round(statistics.median(rtts_us), 2),
            "t_avg_us": round(statistics.fmean(rtts_us), 2),
            "p99_us": round(percentile(rtts_us, 99), 2),
            "p99_9_us": round(percentile(rtts_us, 99.9), 2), "t_max_us": round(max(rtts_us), 2)}


def _echo(kind: str, *extra: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hsp_rdma.tools.soft_bench", kind, *extra],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _end(p: subprocess.Popen, what: str) -> None:
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    err = p.stderr.read().decode(errors="replace").strip()
    p.stdout.close()
    p.stderr.close()
    if p.returncode:
        raise HspError(f"the {what} echo process exited {p.returncode}: {err[-400:]}")


def unix_rtt(size: int, iters: int, env: dict[str, str]) -> list[float]:
    """Round trips (us) of SIZE bytes over an AF_UNIX stream socket to an echo process."""
    with tempfile.TemporaryDirectory(prefix="hsp-unix-echo-") as tmp:
        path = str(Path(tmp) / "echo.sock")
        p = _echo("echo-unix", path, str(size), env=env)
        try:
            if p.stdout.readline().strip() != b"ready":
                raise HspError("the Unix-socket echo process did not start: "
                               + p.stderr.read().decode(errors="replace")[-400:])
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            msg, buf = b"p" * size, bytearray(size)
            view = memoryview(buf)
            out = []
            for i in range(iters + WARMUP):
                t0 = time.perf_counter()
                s.sendall(msg)
                got = 0
                while got < size:
                    got += s.recv_into(view[got:])
                if i >= WARMUP:
                    out.append((time.perf_counter() - t0) * 1e6)
            s.close()
        finally:
            _end(p, "Unix-socket")
    return out


def _soft_end(label: str, size: int):
    nic = via.VipOpenNic(f"soft:{label}")
    ptag = via.VipCreatePtag(nic)
    buf = bytearray(2 * size)
    mh = via.VipRegisterMem(nic, buf, via.MemAttributes(ptag=ptag))
    vi = via.VipCreateVi(nic, via.ViAttributes(ptag=ptag))
    send = via.VipDescriptor(segments=[via.DataSegment(via.address_of(buf), mh, size)])
    recv = via.VipDescriptor(segments=[via.DataSegment(via.address_of(buf, size), mh, size)])
    return nic, vi, buf, send, recv


def soft_rtt(size: int, iters: int, env: dict[str, str]) -> list[float]:
    """Round trips (us) of SIZE bytes over two connected soft VIs to an echo process:
    post the receive, post the send, until both completed."""
    # (the echo process must map the discriminator to the port this process connects to)
    env = env | {"HSP_VIA_SOFT_PORT_BASE": str(soft_provider.PORT_BASE)}
    p = _echo("echo-soft", ECHO_IP, str(size), str(iters + WARMUP), env=env)
    nic, vi, _buf, send, recv = _soft_end("ping", size)
    out = []
    try:
        deadline = time.monotonic() + 15
        while True:  # the echo process may not listen yet
            try:
                via.VipConnectRequest(vi, via.NetAddress(PING_IP, b""),
                                      via.NetAddress(ECHO_IP, ECHO_DISC), 2000)
                break
            except (via.VipNoMatch, via.VipNotReachable):
                if time.monotonic() > deadline or p.poll() is not None:
                    raise
                time.sleep(0.05)
        for i in range(iters + WARMUP):
            via.VipPostRecv(vi, recv)
            t0 = time.perf_counter()
            via.VipPostSend(vi, send)
            via.VipRecvWait(vi, 10_000)
            via.VipSendWait(vi, 10_000)
            if i >= WARMUP:
                out.append((time.perf_counter() - t0) * 1e6)
        via.VipDisconnect(vi)
    except via.VipError as exc:
        raise HspError(f"the soft round trip failed: {exc}") from exc
    finally:
        via.VipCloseNic(nic)
        _end(p, "soft VI")
    return out


def unix_rtt_one_thread(size: int, iters: int) -> list[float]:
    """Round trips (us) of SIZE bytes over an AF_UNIX socketpair, both ends in this thread
    (send, receive, send back, receive): the socket calls' own cost, no wake-up."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    msg, buf = b"p" * size, bytearray(size)
    view = memoryview(buf)
    out = []
    try:
        for i in range(iters + WARMUP):
            t0 = time.perf_counter()
            a.sendall(msg)
            got = 0
            while got < size:
                got += b.recv_into(view[got:])
            b.sendall(view)
            got = 0
            while got < size:
                got += a.recv_into(view[got:])
            if i >= WARMUP:
                out.append((time.perf_counter() - t0) * 1e6)
    finally:
        a.close()
        b.close()
    return out


def soft_rtt_one_thread(size: int, iters: int) -> list[float]:
    """Round trips (us) of SIZE bytes between two soft VIs of this process, both ends driven
    by this thread in turn, as soft_rtt and the echo process do it (each receive is read and
    applied by the thread waiting for it): the CPU work of the VIPL calls and the provider per
    round trip with no thread sleeping or waking, the floor under soft_rtt on this host."""
    nic_a, vi_a, _ba, send_a, recv_a = _soft_end("one-a", size)
    nic_b, vi_b, _bb, send_b, recv_b = _soft_end("one-b", size)
    accepted: list[BaseException | None] = []

    def accept() -> None:
        try:
            req = via.VipConnectWait(nic_b, via.NetAddress(ECHO_IP, ONE_THREAD_DISC), 15_000)
            via.VipPostRecv(vi_b, recv_b)
            via.VipConnectAccept(req, vi_b)
            accepted.append(None)
        except BaseException as exc:  # noqa: BLE001 - raised in the bench's thread
            accepted.append(exc)

    t = threading.Thread(target=accept, name="soft-bench-accept", daemon=True)
    t.start()
    out = []
    try:
        deadline = time.monotonic() + 15
        while True:  # the accepting thread may not listen yet
            try:
                via.VipConnectRequest(vi_a, via.NetAddress(PING_IP, b""),
                                      via.NetAddress(ECHO_IP, ONE_THREAD_DISC), 2000)
                break
            except (via.VipNoMatch, via.VipNotReachable):
                if time.monotonic() > deadline or accepted:
                    raise
                time.sleep(0.05)
        t.join(15)
        if not accepted or accepted[0] is not None:
            raise HspError(f"the one-thread round trip did not connect: {accepted}")
        for i in range(iters + WARMUP):
            t0 = time.perf_counter()
            via.VipPostRecv(vi_a, recv_a)
            via.VipPostSend(vi_a, send_a)
            if i:  # b's previous answer: acknowledged by the send just posted
                via.VipSendWait(vi_b, 10_000)
            via.VipRecvWait(vi_b, 10_000)
            via.VipPostRecv(vi_b, recv_b)
            via.VipPostSend(vi_b, send_b)
            via.VipRecvWait(vi_a, 10_000)
            via.VipSendWait(vi_a, 10_000)
            if i >= WARMUP:
                out.append((time.perf_counter() - t0) * 1e6)
        via.VipSendWait(vi_b, 10_000)
        via.VipDisconnect(vi_a)
    except via.VipError as exc:
        raise HspError(f"the one-thread soft round trip failed: {exc}") from exc
    finally:
        via.VipCloseNic(nic_a)
        via.VipCloseNic(nic_b)
        t.join(1)
    return out


def soft_write_MBps(size: int, chunk: int, env: dict[str, str],
                    reps: int = WRITE_REPS) -> tuple[float, float, dict[str, int]]:
    """RDMA Writes of SIZE bytes in CHUNK-sized descriptors from this process into a
    via.shared_buffer registered by a target process: median MB/s of REPS passes (after one
    that obtains the grant), the best pass's, and this NIC's counters."""
    env = env | {"HSP_VIA_SOFT_PORT_BASE": str(soft_provider.PORT_BASE)}
    p = _echo("write-target", ECHO_IP, str(size), env=env)
    nic = via.VipOpenNic("soft:writer")
    try:
        ptag = via.VipCreatePtag(nic)
        src = via.shared_buffer(size)
        src[:] = b"\x5a" * size
        hs = via.VipRegisterMem(nic, src, via.MemAttributes(ptag=ptag))
        info = bytearray(16)
        hi = via.VipRegisterMem(nic, info, via.MemAttributes(ptag=ptag))
        vi = via.VipCreateVi(nic, via.ViAttributes(ptag=ptag, enable_rdma_write=True))
        via.VipPostRecv(vi, via.VipDescriptor(segments=[
            via.DataSegment(via.address_of(info), hi, 16)]))
        deadline = time.monotonic() + 15
        while True:  # the target may not listen yet
            try:
                via.VipConnectRequest(vi, via.NetAddress(PING_IP, b""),
                                      via.NetAddress(ECHO_IP, WRITE_DISC), 2000)
                break
            except (via.VipNoMatch, via.VipNotReachable):
                if time.monotonic() > deadline or p.poll() is not None:
                    raise
                time.sleep(0.05)
        via.VipRecvWait(vi, 10_000)
        raddr, rhandle = int.from_bytes(info[:8], "little"), int.from_bytes(info[8:], "little")
        descs = [via.VipDescriptor(
            control=via.VIP_CONTROL_OP_RDMAWRITE,
            segments=[via.DataSegment(via.address_of(src, off), hs, min(chunk, size - off))],
            address=via.AddressSegment(raddr + off, rhandle)) for off in range(0, size, chunk)]
        times = []
        for rep in range(reps + 1):
            t0 = time.perf_counter()
            for d in descs:
                via.VipPostSend(vi, d)
            for _d in descs:
                d = via.VipSendWait(vi, 10_000)
                if d.status & via.VIP_STATUS_ERROR_MASK:
                    raise HspError(f"an RDMA Write of the write bench failed: {d.reason}")
            times.append(time.perf_counter() - t0)
            if rep == 0:  # (the grant: the first pass went as frames; wait for its ACKs)
                t1 = time.monotonic()
                while vi.conn.pending and time.monotonic() - t1 < 5:
                    time.sleep(0.001)
        counters = dict(via.VipQuerySystemManagementInfo(nic)["counters"])
        via.VipDisconnect(vi)
    except via.VipError as exc:
        raise HspError(f"the soft RDMA Write bench failed: {exc}") from exc
    finally:
        via.VipCloseNic(nic)
        _end(p, "RDMA Write target")
    return size / statistics.median(times[1:]) / 1e6, size / min(times[1:]) / 1e6, counters


def _serve_write_target(ip: str, size: int) -> int:
    nic = via.VipOpenNic("soft:target")
    try:
        ptag = via.VipCreatePtag(nic)
        buf = via.shared_buffer(size)
        h = via.VipRegisterMem(nic, buf, via.MemAttributes(ptag=ptag, enable_rdma_write=True))
        info = bytearray(via.address_of(buf).to_bytes(8, "little") + int(h).to_bytes(8, "little"))
        hi = via.VipRegisterMem(nic, info, via.MemAttributes(ptag=ptag))
        sink = bytearray(16)
        hk = via.VipRegisterMem(nic, sink, via.MemAttributes(ptag=ptag))
        vi = via.VipCreateVi(nic, via.ViAttributes(ptag=ptag, enable_rdma_write=True))
        via.VipPostRecv(vi, via.VipDescriptor(segments=[
            via.DataSegment(via.address_of(sink), hk, 16)]))
        req = via.VipConnectWait(nic, via.NetAddress(ip, WRITE_DISC), 15_000)
        via.VipConnectAccept(req, vi)
        via.VipPostSend(vi, via.VipDescriptor(segments=[
            via.DataSegment(via.address_of(info), hi, 16)]))
        via.VipSendWait(vi, 10_000)
        via.VipRecvWait(vi, 600_000)  # flushed when the writer disconnects
    except via.VipInvalidState:
        pass  # the writer disconnected: done
    finally:
        via.VipCloseNic(nic)
    return 0


def _serve_unix(path: str, size: int) -> int:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    print("ready", flush=True)
    s, _ = srv.accept()
    buf = bytearray(size)
    view = memoryview(buf)
    while True:
        got = 0
        while got < size:
            n = s.recv_into(view[got:])
            if not n:
                return 0
            got += n
        s.sendall(view)


def _serve_soft(ip: str, size: int, count: int) -> int:
    nic, vi, _buf, send, recv = _soft_end("echo", size)
    try:
        req = via.VipConnectWait(nic, via.NetAddress(ip, ECHO_DISC), 15_000)
        via.VipPostRecv(vi, recv)
        via.VipConnectAccept(req, vi)
        for _ in range(count):
            via.VipRecvWait(vi, 10_000)
            via.VipPostRecv(vi, recv)
            via.VipPostSend(vi, send)
            via.VipSendWait(vi, 10_000)
        via.VipRecvWait(vi, 10_000)  # flushed when the pinger disconnects
    except via.VipInvalidState:
        pass  # the pinger disconnected: nothing more to echo
    finally:
        via.VipCloseNic(nic)
    return 0


# ---- the bench -------------------------------------------------------------------------------
def bench_gso_soft(args, step: Callable[[str], None] = _quiet,
                   on_gso: Callable[[int], None] = lambda _n: None) -> list[dict[str, Any]]:
    """ARGS: size, runs, chunk, depth, profiles, mode (hsp-bench gso's options); lat_iters
    optional. One result per mode, the baselines measured once in the same run."""
    profile = profile_for("soft:a", args.profiles)
    chunk = args.chunk or profile.chunk_size
    depth = args.depth or profile.queue_depth
    env = child_env()
    seen: list[dict] = []

    def on_event(_node: str, ev: dict) -> None:
        if ev["event"] == "gso" and ev["role"] == "active":
            seen.append(ev)
            on_gso(len(seen))

    results = []
    for mode in modes_of(args):
        step(f"{args.runs} GSO(s), {mode}, soft:a/soft:b on {STANDBY_IP}/{ACTIVE_IP}")
        events, rc, err = run_pair(args, mode, chunk, depth, env, on_event,
                                   timeout=60 + args.runs * (5 + args.size / 2e7))
        results.append((mode, events, f"rc {rc} {err.get('a', '')} {err.get('b', '')}"))
    image = next(e["image_bytes"] for _m, evs, _x in results for e in evs
                 if e["event"] == "gso" and e["role"] == "active")
    step(f"baseline: memcpy of {image} bytes, one core")
    mem = memcpy_MBps(image)
    iters = getattr(args, "lat_iters", LAT_ITERS)
    step(f"round trip: {LAT_BYTES} B x {iters} over an AF_UNIX socket")
    unix = unix_rtt(LAT_BYTES, iters, env)
    step(f"round trip: {LAT_BYTES} B x {iters} over soft VIs")
    soft = soft_rtt(LAT_BYTES, iters, env)
    u, s = lat_stats(unix), lat_stats(soft)
    step(f"round trip floors: {LAT_BYTES} B x {iters}, both ends in one thread")
    u1 = lat_stats(unix_rtt_one_thread(LAT_BYTES, iters))
    s1 = lat_stats(soft_rtt_one_thread(LAT_BYTES, iters))
    step(f"RDMA Write alone: {image} bytes in {chunk}-byte writes into another process")
    wbw, wbest, wcounters = soft_write_MBps(image, chunk, env)
    rtt_ratio = round(s["t_typical_us"] / u["t_typical_us"], 2)
    out = []
    for mode, events, extra in results:
        r = summarize(args, events, mem, 0, "soft:a/soft:b", profile, chunk, depth,
                      extra=extra, mode=mode)
        bw = r["stop_and_copy_MBps"]
        for key in ("baseline_ib_write_bw_MBps", "ratio", "baseline_ib_read_bw_MBps",
                    "ratio_vs_ib_read_bw", "reference_event_MBps", "reference_region_bytes",
                    "reference_one_chunk_event_MBps", "ratio_vs_one_chunk_event",
                    "ratio_vs_event", "baseline_retries"):
            r.pop(key, None)
        out.append(r | {
            "provider": "soft", "baseline_memcpy_MBps": round(mem, 1),
            "ratio_vs_memcpy": round(bw / mem, 3), "copy_goal": COPY_GOAL,
            "copy_goal_met": bw >= COPY_GOAL * mem,
            "rdma_write": {"MBps": round(wbw, 1), "ratio_vs_memcpy": round(wbw / mem, 3),
                           "best_MBps": round(wbest, 1),
                           "chunk": chunk, "passes": WRITE_REPS,
                           "direct_writes": wcounters.get("shm_writes_tx", 0),
                           "frame_writes": wcounters.get("frames_tx", 0)},
            "round_trip": {"bytes": LAT_BYTES, "iterations": iters, "soft_vi": s,
                           "unix_socket": u, "ratio": rtt_ratio, "goal": RTT_GOAL,
                           "met": rtt_ratio <= RTT_GOAL,
                           # the floors: no thread sleeps or wakes (see the method)
                           "soft_vi_one_thread": s1, "unix_socket_one_thread": u1,
                           "floor_ratio": round(s1["t_typical_us"] / u["t_typical_us"], 2)},
            "method": " ".join(__doc__.split("Method: ", 1)[1].split()),
        })
    return out


def goals_met(r: dict[str, Any]) -> bool:
    """Every goal the soft bench printed: copy vs memcpy, blackout, round trip."""
    return bool(r["copy_goal_met"] and r["blackout_goal_met"] and r["round_trip"]["met"])


def main(argv: list[str] | None = None) -> int:
    """The peers, run as programs by the bench: echo-unix PATH SIZE, echo-soft IP SIZE
    COUNT, write-target IP SIZE."""
    p = argparse.ArgumentParser(prog="python -m hsp_rdma.tools.soft_bench")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("echo-unix")
    u.add_argument("path")
    u.add_argument("size", type=int)
    w = sub.add_parser("write-target")
    w.add_argument("ip")
    w.add_argument("size", type=int)
    s = sub.add_parser("echo-soft")
    s.add_argument("ip")
    s.add_argument("size", type=int)
    s.add_argument("count", type=int)
    args = p.parse_args(argv)
    if args.cmd == "echo-unix":
        return _serve_unix(args.path, args.size)
    if args.cmd == "write-target":
        return _serve_write_target(args.ip, args.size)
    return _serve_soft(args.ip, args.size, args.count)


if __name__ == "__main__":
    sys.exit(main())
