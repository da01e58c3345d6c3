"""One fabric of a lab of 3+ nodes as a shared segment: a learning Ethernet switch on 127.0.0.1.

    python -m hsp_rdma.lab.hub LAB_DIR FABRIC HUB_PORT a=PORT,b=PORT,c=PORT

Every node's QEMU `-netdev dgram` sends its frames from 127.0.0.1:PORT (its own port) to
127.0.0.1:HUB_PORT; the hub learns which port each source MAC came from, sends a unicast frame
to its destination's port alone and floods broadcast, multicast and unknown destinations to
every other node. It accepts datagrams only from 127.0.0.1 and the node ports it was given, and
sends only to those. `Lab.up` starts one hub per fabric under `timeout`; it ends when the lab's
state file is gone or by its pid (`Lab.down`). Its counters are in LAB_DIR/hub-FABRIC.json.

A cable pulled on one node (`hsp-lab fault NODE link x down`, QMP set_link) is done in that
node's QEMU, so it cuts that node alone; the hub and the other nodes go on.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import sys
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
CHECK_S = 1.0  # how often the hub looks for the lab's state file and writes its counters
MAX_FRAME = 65535


def parse_node_ports(text: str) -> dict[str, int]:
    """'a=48001,b=48002' -> {'a': 48001, 'b': 48002}; ValueError naming what is wrong."""
    out: dict[str, int] = {}
    for item in text.split(","):
        name, sep, port = item.partition("=")
        if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"node port '{item}' is not NAME=PORT (a UDP port 1-65535)")
        if name in out or int(port) in out.values():
            raise ValueError(f"node port '{item}' repeats a node or a port")
        out[name] = int(port)
    if len(out) < 2:
        raise ValueError("a hub needs two node ports or more")
    return out


class Switch:
    """The forwarding decision, without sockets: which node ports a frame from SRC_PORT goes to."""

    def __init__(self, ports: dict[str, int]):
        self.ports = frozenset(ports.values())
        self.table: dict[bytes, int] = {}  # MAC -> port it was last seen from
        self.counters = {"frames_in": 0, "unicast": 0, "flooded": 0, "dropped": 0,
                         "send_errors": 0}

    def route(self, src_port: int, frame: bytes) -> list[int]:
        if src_port not in self.ports or len(frame) < 14:
            self.counters["dropped"] += 1
            return []
        self.counters["frames_in"] += 1
        dst, src = frame[0:6], frame[6:12]
        if not src[0] & 1:  # learn unicast sources only
            self.table[src] = src_port
        out = self.table.get(dst) if not dst[0] & 1 else None
        if out is not None:
            if out == src_port:  # both ends behind one port: nothing to send
                self.counters["dropped"] += 1
                return []
            self.counters["unicast"] += 1
            return [out]
        self.counters["flooded"] += 1
        return sorted(p for p in self.ports if p != src_port)

    def stats(self) -> dict[str, int]:
        return dict(self.counters, macs=len(self.table))


def serve(lab_dir: Path, fabric: str, hub_port: int, ports: dict[str, int],
          should_run=None) -> Switch:
    """Forward frames until the lab's state file is gone (or SHOULD_RUN() is false)."""
    switch = Switch(ports)
    stats_path = lab_dir / f"hub-{fabric}.json"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind((LOOPBACK, hub_port))
    sock.setblocking(False)
    should_run = should_run or (lambda: (lab_dir / "state.json").exists())

    def write_stats() -> None:
        tmp = stats_path.with_name(stats_path.name + ".tmp")
        tmp.write_text(json.dumps({"fabric": fabric, "port": hub_port, "pid": os.getpid(),
                                   "nodes": ports, **switch.stats()}))
        os.replace(tmp, stats_path)

    write_stats()  # tells Lab.up the hub is bound
    next_check = time.monotonic() + CHECK_S
    try:
        while True:
            ready, _, _ = select.select([sock], [], [], CHECK_S)
            if ready:
                while True:  # drain what is queued
                    try:
                        frame, (host, port) = sock.recvfrom(MAX_FRAME)
                    except BlockingIOError:
                        break
                    if host != LOOPBACK:
                        switch.counters["dropped"] += 1
                        continue
                    for out in switch.route(port, frame):
                        try:
                            sock.sendto(frame, (LOOPBACK, out))
                        except OSError as exc:  # a node powered off, a full buffer: the
                            if exc.errno not in (errno.ECONNREFUSED, errno.EAGAIN,  # frame is
                                                 errno.ENOBUFS):  # lost, as on a wire
                                raise
                            switch.counters["send_errors"] += 1
            now = time.monotonic()
            if now >= next_check:
                next_check = now + CHECK_S
                if not should_run():
                    break
                write_stats()
    finally:
        sock.close()
    return switch


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4 or not args[2].isdigit():
        print("usage: python -m hsp_rdma.lab.hub LAB_DIR FABRIC HUB_PORT a=PORT,b=PORT,...",
              file=sys.stderr)
        return 64
    try:
        ports = parse_node_ports(args[3])
    except ValueError as exc:
        print(f"hsp-lab hub: {exc}", file=sys.stderr)
        return 64
    try:
        serve(Path(args[0]), args[1], int(args[2]), ports)
    except OSError as exc:
        print(f"hsp-lab hub: fabric {args[1]} on 127.0.0.1:{args[2]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
