"""What the disk bench runs inside a lab node (stdlib only): a DRBD resync timed from the
reconnect to UpToDate/UpToDate by watching /proc/drbd, and plain TCP on the wire DRBD rides on
(4 KiB round trips, then a stream). Each prints one JSON object per line: its result, or {"event": "error", ...}."""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import time

PROC_DRBD = "/proc/drbd"
_STATE = re.compile(r"^\s*(\d+): cs:(\S+) ro:(\S+) ds:(\S+)")
_OOS = re.compile(r"\boos:(\d+)")
CHUNK = 1 << 20  # the TCP stream's send and receive size
PING_BYTES = 4096  # a round trip's message: one 4 KiB write's worth


class GuestError(Exception):
    """What went wrong, said in one line."""


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def drbd_state(minor: int) -> dict[str, object]:
    """Minor's connection state, roles, disk states and out-of-sync KiB from /proc/drbd."""
    try:
        with open(PROC_DRBD) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise GuestError(f"cannot read {PROC_DRBD} (is drbd loaded?): {exc.strerror}") from None
    for i, line in enumerate(lines):
        m = _STATE.match(line)
        if m and int(m.group(1)) == minor:
            oos = _OOS.search(" ".join(lines[i:i + 3]))
            return {"cs": m.group(2), "ro": m.group(3), "ds": m.group(4),
                    "oos_kib": int(oos.group(1)) if oos else None}
    raise GuestError(f"{PROC_DRBD} shows no minor {minor}: " + " | ".join(lines[-3:]))


def resync(config: str, resource: str, minor: int, poll_s: float, timeout: float) -> None:
    """`drbdadm connect` (the peer already waits for the connection), then watch until both
    disks are UpToDate. Times are seconds from just before the connect command."""
    before = drbd_state(minor)
    if before["cs"] != "StandAlone":
        raise GuestError(f"minor {minor} is {before['cs']}, not StandAlone: disconnect it first")
    t0 = time.monotonic()
    res = subprocess.run(["drbdadm", "-c", config, "connect", resource], capture_output=True,
                         text=True, timeout=30, check=False)
    if res.returncode != 0:
        raise GuestError(f"drbdadm -c {config} connect {resource}: exit {res.returncode}: "
                         f"{res.stderr.strip()[-400:]}")
    connect_s = time.monotonic() - t0
    sync_seen_s = None
    while True:
        s = drbd_state(minor)
        now = time.monotonic() - t0
        if str(s["cs"]).startswith("Sync") and sync_seen_s is None:
            sync_seen_s = now
        if s["cs"] == "Connected" and s["ds"] == "UpToDate/UpToDate":
            break
        if now > timeout:
            raise GuestError(f"resync not done after {timeout:.0f} s: cs:{s['cs']} "
                             f"ds:{s['ds']} oos:{s['oos_kib']} KiB")
        time.sleep(poll_s)
    emit("resync", oos_kib=before["oos_kib"], connect_cmd_s=round(connect_s, 4),
         sync_seen_s=None if sync_seen_s is None else round(sync_seen_s, 4),
         uptodate_s=round(now, 4), poll_s=poll_s)


def _recv_exact(conn: socket.socket, buf: bytearray, n: int) -> None:
    view, got = memoryview(buf), 0
    while got < n:
        k = conn.recv_into(view[got:n])
        if k == 0:
            raise GuestError(f"the peer closed after {got} of {n} bytes")
        got += k


def tcp_serve(ip: str, port: int, pings: int, nbytes: int, timeout: float) -> None:
    """Accept one connection: answer PINGS 4 KiB messages with one byte each, then read a
    stream of NBYTES, timed from its first byte to its last."""
    with socket.create_server((ip, port)) as srv:
        srv.settimeout(timeout)
        emit("listening", ip=ip, port=port)
        conn, _peer = srv.accept()
        with conn:
            conn.settimeout(timeout)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = bytearray(CHUNK)
            for _ in range(pings):
                _recv_exact(conn, buf, PING_BYTES)
                conn.sendall(b"p")
            got, first = 0, None
            while got < nbytes:
                n = conn.recv_into(buf)
                if n == 0:
                    raise GuestError(f"the sender closed after {got} of {nbytes} bytes")
                if first is None:
                    first = time.monotonic()
                got += n
            seconds = time.monotonic() - first
            conn.sendall(b"k")  # the sender waits for this, so both end together
    emit("tcp", bytes=got, seconds=round(seconds, 4))


def tcp_client(peer: str, port: int, pings: int, nbytes: int, timeout: float) -> None:
    """PINGS round trips of a 4 KiB message and a 1-byte answer (each timed), then the stream."""
    with socket.create_connection((peer, port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg, one = b"\x5a" * PING_BYTES, bytearray(1)
        rtts = []
        for _ in range(pings):
            t = time.monotonic()
            s.sendall(msg)
            _recv_exact(s, one, 1)
            rtts.append((time.monotonic() - t) * 1e6)
        chunk = b"\xa5" * CHUNK
        left = nbytes
        while left > 0:
            s.sendall(chunk[:left] if left < CHUNK else chunk)
            left -= CHUNK
        if s.recv(1) != b"k":
            raise GuestError("the receiver closed before confirming the stream")
    rtts.sort()
    emit("sent", bytes=nbytes, rtt_us=rtts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hsp_rdma.tools.disk_guest", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("resync", help="connect a StandAlone resource and time its resync")
    r.add_argument("--config", required=True)
    r.add_argument("--resource", required=True)
    r.add_argument("--minor", type=int, default=0)
    r.add_argument("--poll", type=float, default=0.02, help="seconds between looks")
    r.add_argument("--timeout", type=float, default=300.0)
    for name in ("tcp-serve", "tcp-client"):
        t = sub.add_parser(name)
        t.add_argument("--ip" if name == "tcp-serve" else "--peer", required=True)
        t.add_argument("--port", type=int, required=True)
        t.add_argument("--pings", type=int, default=200)
        t.add_argument("--bytes", type=int, required=True)
        t.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    try:
        if args.cmd == "resync":
            resync(args.config, args.resource, args.minor, args.poll, args.timeout)
        elif args.cmd == "tcp-serve":
            tcp_serve(args.ip, args.port, args.pings, args.bytes, args.timeout)
        else:
            tcp_client(args.peer, args.port, args.pings, args.bytes, args.timeout)
    except (GuestError, OSError, subprocess.TimeoutExpired) as exc:
        emit("error", error=f"{args.cmd}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
