"""The fabrics' carrier from the kernel's link events (``ha.carrier``): rtnetlink parsing,
the netdev of a fabric's address, and a node with two fabrics that moves its traffic the
moment a fabric's netdev loses its carrier (siw has no port event of its own; the lab's
fabric drills and ``hsp-bench fabric --lab siw`` show it on the real thing). Here the link
events come from a socket the test writes (the host's own links are never touched)."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from pair_helpers import start_nodes
from test_fabrics_soft import Workload, carrier, links, make_pair, wait_until  # noqa: F401

from hsp_rdma.ha.carrier import IFF_LOWER_UP, RTM_NEWLINK, CarrierWatch, netdev_of, parse_links

NLMSG = struct.Struct("=IHHII")
IFINFO = struct.Struct("=BxHiII")


def newlink(index: int, up: bool, kind: int = RTM_NEWLINK, extra: bytes = b"\0" * 8) -> bytes:
    body = IFINFO.pack(0, 1, index, 0x1043 | (IFF_LOWER_UP if up else 0), 0) + extra
    msg = NLMSG.pack(NLMSG.size + len(body), kind, 0, 0, 0) + body
    return msg + b"\0" * (-len(msg) % 4)


def test_parse_links_takes_each_newlink_and_skips_the_rest() -> None:
    data = newlink(3, False) + newlink(4, True, kind=20) + newlink(5, True)
    assert parse_links(data) == [(3, False), (5, True)]
    assert parse_links(data[:-3]) == [(3, False)]  # a cut tail is dropped, never misread
    assert parse_links(b"") == [] and parse_links(b"\xff" * 7) == []
    assert parse_links(NLMSG.pack(2, RTM_NEWLINK, 0, 0, 0)) == []  # a length below a header


def test_netdev_of_loopback_and_unknown_addresses_is_none() -> None:
    assert netdev_of("127.0.0.1") is None  # loopback: no carrier to lose
    assert netdev_of("192.0.2.77") is None  # (TEST-NET-1: held by no netdev here)


def test_a_real_link_event_socket_opens_and_reads_nothing_unasked() -> None:
    w = CarrierWatch({})
    try:
        assert w.fileno() >= 0 and w.changes() == []
    finally:
        w.close()


def test_a_lost_carrier_moves_the_traffic_at_once(tmp_path: Path, links) -> None:  # noqa: F811
    a, b = make_pair(tmp_path)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.carrier_watch = CarrierWatch({0: ("ethx", 41), 1: ("ethy", 42)}, sock=ours)
    a.carrier_watch.carrier = {0: True, 1: True}
    try:
        assert not start_nodes((a, b))
        for n in (a, b):
            wait_until(lambda n=n: all(f["state"] == "up" for f in n.status()["fabrics"]),
                       what="both fabrics up")
        moves: list[tuple[str, str, str]] = []
        a.on_fabric_switch = lambda old, new, why: moves.append((old, new, why))
        work = Workload(a)
        work.thread.start()
        wait_until(lambda: work.done > 30)
        theirs.send(newlink(99, False) + newlink(41, True))  # another netdev; no change
        time.sleep(0.3)
        assert not moves and a.status()["port_downs"] == 0
        t0 = time.monotonic()
        theirs.send(newlink(41, False))  # ethx, fabric x: carrier lost
        wait_until(lambda: moves, timeout=5, what="a move")
        took = time.monotonic() - t0
        assert moves[0][:2] == ("x", "y") and "ethx: carrier lost" in moves[0][2], moves
        assert took < a.heartbeat_interval_s * 2, f"moved after {took * 1000:.0f} ms"
        wait_until(lambda: carrier(b) == "y", what="b followed to y")
        theirs.send(newlink(41, False))  # said again: taken once
        before = work.done
        wait_until(lambda: work.done > before + 50, what="commits going on over y")
        assert a.status()["port_downs"] == 1
        theirs.send(newlink(41, True))
        wait_until(lambda: any("ethx has its carrier again" in x for x in a.status()["alarms"]),
                   what="the carrier-back alarm")
        work.stop.set()
        work.thread.join(10)
        assert not work.errors, work.errors
        a.sync()
        assert a.digest()["pmem"] == b.digest()["pmem"]
    finally:
        for n in (a, b):
            n.close()
        theirs.close()
