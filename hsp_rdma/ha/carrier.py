"""A fabric's carrier, from the kernel's own link events: the netdev under an RDMA port.

rxe and real RoCE/InfiniBand NICs report a pulled cable as an asynchronous port event
(``IBV_EVENT_PORT_ERR``); siw (iWARP over any netdev) does not: it acts on a netdev going
down administratively, not on a lost carrier. Without a port event a pulled cable shows only
as heart-beat silence (two intervals) or as the transport giving up (seconds). The kernel
says it at once on rtnetlink, though: an ``RTM_NEWLINK`` for the netdev without
``IFF_LOWER_UP``. A node with two fabrics listens there (one netlink socket in its event loop,
no thread, nothing polled) and takes a carrier lost on a fabric's netdev as that fabric's
port down.

The netdev of a fabric is the one that holds the fabric's local IPv4 address (the address
the node's VIs bind), found once at start; a fabric whose address no netdev holds (the soft
provider on 127.0.0.x: loopback, which has no carrier to lose) is not watched.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

RTMGRP_LINK = 1
RTM_NEWLINK = 16
IFF_LOWER_UP = 0x10000
SIOCGIFADDR = 0x8915
_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change


def netdev_of(ipv4: str) -> tuple[str, int] | None:
    """(name, ifindex) of the netdev whose address is IPV4, or None: no netdev holds it,
    or it is a loopback address (no carrier to lose)."""
    if ipv4.startswith("127."):
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for index, name in socket.if_nameindex():
            try:
                got = fcntl.ioctl(s.fileno(), SIOCGIFADDR,
                                  struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on it
            if socket.inet_ntoa(got[20:24]) == ipv4:
                return name, index
    return None


def lower_up(name: str) -> bool | None:
    """Whether netdev NAME has its carrier now (sysfs), None if that cannot be read."""
    try:
        with open(f"/sys/class/net/{name}/carrier") as f:
            return f.read().strip() == "1"
    except OSError:
        return None  # (a netdev that is administratively down cannot say: EINVAL)


def parse_links(data: bytes) -> list[tuple[int, bool]]:
    """(ifindex, carrier) for every RTM_NEWLINK in DATA (one netlink datagram); other
    messages and a cut tail are skipped."""
    out = []
    off = 0
    while off + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size or off + length > len(data):
            break  # cut or damaged: nothing after it can be framed
        if kind == RTM_NEWLINK and length >= _NLMSG.size + _IFINFO.size:
            _fam, _type, index, flags, _change = _IFINFO.unpack_from(data, off + _NLMSG.size)
            out.append((index, bool(flags & IFF_LOWER_UP)))
        off += (length + 3) & ~3  # NLMSG_ALIGN
    return out


class CarrierWatch:
    """The netlink socket of link events and the fabrics it watches: ``fileno()`` for the
    caller's epoll, ``changes()`` when it is readable gives (fabric index, netdev, carrier)
    for each carrier that changed since the last look."""

    def __init__(self, fabrics: dict[int, tuple[str, int]], sock: socket.socket | None = None):
        self.fabrics = dict(fabrics)  # fabric index -> (netdev, ifindex)
        self._by_index = {ifi: (fab, name) for fab, (name, ifi) in self.fabrics.items()}
        self.carrier = {fab: lower_up(name) for fab, (name, _i) in self.fabrics.items()}
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
            sock.bind((0, RTMGRP_LINK))
        else:
            sock.setblocking(False)
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def changes(self) -> list[tuple[int, str, bool]]:
        out = []
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError as exc:  # ENOBUFS: events were dropped; read the state instead
                if exc.errno != getattr(os, "ENOBUFS", 105):
                    return out
                for fab, (name, _i) in self.fabrics.items():
                    now = lower_up(name)
                    if now is not None and now != self.carrier[fab]:
                        self.carrier[fab] = now
                        out.append((fab, name, now))
                continue
            if not data:
                return out
            for index, up in parse_links(data):
                hit = self._by_index.get(index)
                if hit is None or self.carrier.get(hit[0]) == up:
                    continue
                self.carrier[hit[0]] = up
                out.append((hit[0], hit[1], up))

    def close(self) -> None:
        self.sock.close()
