"""hsp_rdma.via: the VIPL call list (VIA 1.0, as the patent drives it) in Python.

VIPL's semantics, Python's spelling: a failed call raises a VipError subclass whose ``code``
is the VipReturn; ``*Done`` returns None for NOT_DONE; ``*Wait`` raises VipTimeout. NIC names
are verbs devices (rxe0, siw0, mlx5_0), or ``soft:<name>`` for the software provider (VIPL over
TCP, any Linux host). Each call dispatches on its object's provider: the data-path calls are
methods of the provider's Vi, the others look at the NIC's (or CQ's, request's) class.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hsp_rdma.cext.verbs import buffer_address
from hsp_rdma.errors import VerbsError
from hsp_rdma.via.constants import *
from hsp_rdma.via.constants import Reliability, VipReturn, ViState
from hsp_rdma.via.providers import soft as _soft
from hsp_rdma.via.providers import verbs as _prov
from hsp_rdma.via.shm import shared_buffer  # registerable memory a same-host peer can map
from hsp_rdma.via.types import (
    AddressSegment,
    DataSegment,
    MemAttributes,
    MemHandle,
    NetAddress,
    NicAttributes,
    ViAttributes,
    VipDescriptor,
    VipDescriptorError,
    VipError,
    VipErrorResource,
    VipInvalidParameter,
    VipInvalidPtag,
    VipInvalidRdmaRead,
    VipInvalidReliabilityLevel,
    VipInvalidState,
    VipNoMatch,
    VipNotReachable,
    VipNotSupported,
    VipReject,
    VipTimeout,
)

Nic = _prov.Nic
Vi = _prov.Vi
Ptag = _prov.Ptag
CQ = _prov.CompletionQueue
ErrorDescriptor = _prov.ErrorDescriptor

QUEUE_DEPTH = _prov.QUEUE_DEPTH  # descriptors one work queue of a VI holds


def address_of(buffer, offset: int = 0) -> int:
    """The virtual address of BUFFER[OFFSET], for DataSegment / AddressSegment."""
    return buffer_address(buffer, offset)


# ---- hardware init (patent-specific) -----------------------------------------------------
def ServernetInit(device: str | None = None) -> dict:
    """Find the device(s) behind a NIC name; check port state and the IPv4 address/GID.
    A ``soft:<name>`` NIC needs no device: it is always there."""
    if device is not None and device.startswith("soft:"):
        return {device: {"state": "4: ACTIVE", "netdev": "tcp", "ipv4": None}}
    base = Path("/sys/class/infiniband")
    devs = sorted(p.name for p in base.iterdir()) if base.is_dir() else []
    if not devs:
        raise VipErrorResource("no RDMA device: load rdma_rxe or siw and add a link "
                               "('rdma link add rxe0 type rxe netdev eth0'), or use the lab")
    if device is not None and device not in devs:
        raise VipInvalidParameter(f"no RDMA device '{device}': this host has {', '.join(devs)}")
    out = {}
    for name in [device] if device else devs:
        state = (base / name / "ports/1/state").read_text().strip()
        netdevs = sorted(p.name for p in (base / name / "device/net").glob("*")) \
            if (base / name / "device/net").exists() else []
        if not netdevs:
            nd = base / name / "ports/1/gid_attrs/ndevs/0"
            netdevs = [nd.read_text().strip()] if nd.exists() else []
        ipv4 = _ipv4_of(netdevs[0]) if netdevs else None
        if "ACTIVE" not in state:
            raise VipErrorResource(f"{name} port 1 is {state.split(': ')[-1]}, not ACTIVE: "
                                   f"check the cable / 'ip link set {netdevs[0] if netdevs else '?'} up'")
        if ipv4 is None:
            raise VipErrorResource(f"{name}: its netdev {netdevs or '?'} has no IPv4 address "
                                   "(RoCE v2 and iWARP connect by IP)")
        out[name] = {"state": state, "netdev": netdevs[0], "ipv4": ipv4}
    return out


def _ipv4_of(netdev: str) -> str | None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=netdev)
        if not idx:
            return None
        for a in ipr.get_addr(index=idx[0], family=2):
            return a.get_attr("IFA_ADDRESS")
    return None


def ServernetReset(nic: Nic) -> None:
    """Flush every VI of NIC to ERROR (posted descriptors complete DESC_FLUSHED), destroy
    their queue pairs; VIs end IDLE and can reconnect, registered memory stays."""
    for vi in list(nic.vis):
        vi.disconnect()  # rdma_disconnect moves the QP to ERR (flush), then it is destroyed


# ---- NIC --------------------------------------------------------------------------------
def VipOpenNic(name: str | None = None) -> Nic:
    if name is not None and name.startswith("soft:"):
        return _soft.Nic(name[5:])
    return Nic(name)


def VipCloseNic(nic: Nic) -> None:
    nic.close()


def VipQuerySystemManagementInfo(nic: Nic, info_type: int = 0) -> dict:
    """Port state and the port's counters (sysfs ``counters`` and ``hw_counters``); for a
    soft NIC its own counters (frames, bytes, every refusal by kind)."""
    if isinstance(nic, _soft.Nic):
        return _soft.system_management_info(nic, info_type)
    port = Path("/sys/class/infiniband") / nic.name / "ports" / "1"

    def read_dir(d: Path) -> dict[str, int]:
        out = {}
        for f in sorted(d.glob("*")) if d.is_dir() else []:
            try:
                out[f.name] = int(f.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
        return out

    def text(name: str) -> str:
        try:
            return (port / name).read_text().strip()
        except OSError:
            return "unknown"

    return {"nic": nic.name, "info_type": info_type, "state": text("state"),
            "phys_state": text("phys_state"), "link_layer": text("link_layer"),
            "rate": text("rate"), "counters": read_dir(port / "counters"),
            "hw_counters": read_dir(port / "hw_counters")}


def VipQueryNic(nic: Nic) -> NicAttributes:
    if isinstance(nic, _soft.Nic):
        return _soft.query_nic(nic)
    try:
        d, p = nic.dev.query_device(), nic.dev.query_port(1)
    except VerbsError as exc:
        raise VipErrorResource(str(exc), exc.errno) from exc
    return NicAttributes(
        name=nic.name, hardware_version=d["hw_ver"], provider_version="hsp_rdma verbs",
        nic_address=nic.dev.query_gid(0).hex(), thread_safe=False,
        max_discriminator_len=_prov.MAX_DISCRIMINATOR, max_register_bytes=d["max_mr_size"],
        max_register_regions=d["max_mr"], max_register_block_bytes=d["max_mr_size"],
        max_vi=d["max_qp"], max_descriptors_per_queue=d["max_qp_wr"],
        max_segments_per_desc=d["max_sge"], max_cq=d["max_cq"], max_cq_entries=d["max_cqe"],
        max_transfer_size=p["max_msg_sz"], native_mtu=p["active_mtu"], max_ptags=d["max_pd"],
        reliability_level_support=int(Reliability.RELIABLE_DELIVERY),
        rdma_read_support=int(Reliability.RELIABLE_DELIVERY), extra={"port": p, "device": d})


# ---- protection and memory ----------------------------------------------------------------
def VipCreatePtag(nic: Nic) -> Ptag:
    if isinstance(nic, _soft.Nic):
        return _soft.Ptag(nic)
    return Ptag(nic)


def VipDestroyPtag(nic: Nic, ptag: Ptag) -> None:
    if isinstance(ptag, _soft.Ptag):
        ptag.close()
        return
    ptag.pd.close()


def VipRegisterMem(nic: Nic, buffer, attrs: MemAttributes) -> MemHandle:
    if isinstance(nic, _soft.Nic):
        return _soft.register(nic, buffer, attrs)
    if not isinstance(attrs.ptag, Ptag) or attrs.ptag.nic is not nic:
        raise VipInvalidPtag("the ptag does not belong to this NIC")
    from hsp_rdma.cext import verbs as cx

    access = cx.ACCESS_LOCAL_WRITE
    if attrs.enable_rdma_write:
        access |= cx.ACCESS_REMOTE_WRITE
    if attrs.enable_rdma_read:
        access |= cx.ACCESS_REMOTE_READ
    try:
        mr = cx.MR(attrs.ptag.pd, buffer, access)
    except VerbsError as exc:
        raise VipErrorResource(str(exc), exc.errno) from exc
    except (TypeError, BufferError) as exc:
        raise VipInvalidParameter(f"cannot register {type(buffer).__name__}: it must be a "
                                  "writable buffer (bytearray, mmap, numpy array…)") from exc
    h = MemHandle(mr.rkey, mr.lkey, mr)
    if attrs.enable_rdma_write or attrs.enable_rdma_read:
        nic.handles[int(h)] = h
    return h


def VipDeregisterMem(nic: Nic, buffer, handle: MemHandle) -> None:
    if isinstance(nic, _soft.Nic):
        _soft.deregister(nic, handle)
        return
    h = handle if isinstance(handle, MemHandle) else nic.handles.get(int(handle))
    if h is None or h.mr.closed:
        raise VipInvalidParameter(f"memory handle {int(handle)} is not registered on this NIC")
    if nic.handles.get(int(h)) is h:
        del nic.handles[int(h)]
    h.mr.close()


# ---- endpoints -------------------------------------------------------------------------------
def VipCreateVi(nic: Nic, attrs: ViAttributes, send_cq: CQ | None = None,
                recv_cq: CQ | None = None) -> Vi:
    """A VI; with SEND_CQ / RECV_CQ its work queues report to those completion queues."""
    if isinstance(nic, _soft.Nic):
        return _soft.Vi(nic, attrs, send_cq, recv_cq)
    return Vi(nic, attrs, send_cq, recv_cq)


def VipDestroyVi(vi: Vi) -> None:
    vi.destroy()


def VipQueryVi(vi: Vi) -> tuple[ViState, ViAttributes, bool, bool]:
    return vi.state, vi.attrs, not vi.sendq, not vi.recvq


def VipSetViAttributes(vi: Vi, attrs: ViAttributes) -> None:
    if vi.state is not ViState.IDLE:
        raise VipInvalidState("attributes change only on an IDLE VI")
    vi.attrs = attrs


def serve_reads(vi: Vi, allowed: bool) -> None:
    """Whether VI serves the peer's RDMA Reads (an extension; VIPL has no such call). Every
    VI serves them by default, as VIPL's do; off, a read the peer posts on this connection
    is refused whatever region it names: it completes in error on the peer
    (``RDMA_PROT_ERROR`` over soft; over RoCE the responder answers an invalid-request NAK)
    and the connection breaks, as for a read outside any registration. The setting holds across reconnections
    of VI, and takes effect at once on a connected VI: verbs changes the queue pair's
    IBV_ACCESS_REMOTE_READ in place; soft refuses read requests and withdraws the same-host
    read grants it gave on the connection. ``VipNotSupported`` on iWARP: siw serves every
    read request whatever the queue pair's flag says. A GSO's pull opens the
    frozen image this way, so that its read registration can be made before the freeze
    (where the device has no such gate, it registers at the seal)."""
    vi.serve_reads(bool(allowed))


# ---- connections ------------------------------------------------------------------------------
class ConnRequest:
    """An incoming connection: the peer's discriminator and reliability, to accept or reject."""

    def __init__(self, nic: Nic, cmid, local: NetAddress, reliability: Reliability):
        self.nic, self.cmid, self.local, self.reliability = nic, cmid, local, reliability
        self.remote_attrs = ViAttributes(reliability_level=reliability)


def VipConnectWait(nic: Nic, local_addr: NetAddress, timeout_ms: int | None) -> ConnRequest:
    if isinstance(nic, _soft.Nic):
        return _soft.connect_wait(nic, local_addr, timeout_ms)
    ipaddress.IPv4Address(local_addr.host)
    listener = _prov.accept_listener(nic, local_addr)
    t = 1e9 if timeout_ms is None else timeout_ms / 1000
    while True:
        ev = nic.wait_event(lambda e: e[0] == _cx().EV_CONNECT_REQUEST and e[3] is listener, t)
        if ev is None:
            raise VipTimeout(f"no connection request at {local_addr.host} in {timeout_ms} ms")
        cid, pdata = ev[2], ev[4]
        parsed = _prov.parse_conn(pdata)
        if parsed is None or parsed[1] != local_addr.discriminator:
            cid.reject(_prov.reject_data(VipReturn.NO_MATCH))
            cid.close()
            continue
        return ConnRequest(nic, cid, local_addr, Reliability(parsed[0]))


def _cx():
    from hsp_rdma.cext import verbs as cx

    return cx


def VipConnectAccept(conn: ConnRequest, vi: Vi) -> None:
    if isinstance(conn, _soft.ConnRequest):
        _soft.connect_accept(conn, vi)
        return
    if vi.state is not ViState.IDLE:
        raise VipInvalidState(f"VI is {vi.state.name}: only an IDLE VI accepts")
    if conn.reliability != vi.attrs.reliability_level:
        conn.cmid.reject(_prov.reject_data(VipReturn.INVALID_RELIABILITY_LEVEL))
        conn.cmid.close()
        raise VipInvalidReliabilityLevel(
            f"peer asks {conn.reliability.name}, this VI is {vi.attrs.reliability_level.name}")
    vi.accept(conn.cmid)


def VipConnectReject(conn: ConnRequest) -> None:
    if isinstance(conn, _soft.ConnRequest):
        _soft.connect_reject(conn)
        return
    conn.cmid.reject(_prov.reject_data(VipReturn.REJECT))
    conn.cmid.close()


def VipConnectRequest(vi: Vi, local_addr: NetAddress, remote_addr: NetAddress,
                      timeout_ms: int | None) -> ViAttributes:
    if isinstance(vi, _soft.Vi):
        return _soft.connect_request(vi, local_addr, remote_addr, timeout_ms)
    return vi.connect(local_addr, remote_addr, 60000 if timeout_ms is None else timeout_ms)


def VipDisconnect(vi: Vi) -> None:
    vi.disconnect()


# ---- data transfer ----------------------------------------------------------------------------
def VipPostSend(vi: Vi, desc: VipDescriptor, mem_handle=None) -> None:
    vi.post_send(desc)


def VipPostRecv(vi: Vi, desc: VipDescriptor, mem_handle=None) -> None:
    vi.post_recv(desc)


def VipSendDone(vi: Vi) -> VipDescriptor | None:
    return vi.done(recv=False)


def VipRecvDone(vi: Vi) -> VipDescriptor | None:
    return vi.done(recv=True)


def VipSendWait(vi: Vi, timeout_ms: int | None) -> VipDescriptor:
    return vi.wait(False, timeout_ms)


def VipRecvWait(vi: Vi, timeout_ms: int | None) -> VipDescriptor:
    return vi.wait(True, timeout_ms)


# ---- completion queues ---------------------------------------------------------------------
def VipCreateCQ(nic: Nic, entries: int) -> CQ:
    """A completion queue that VIs' work queues can share (VipCreateVi send_cq/recv_cq)."""
    if isinstance(nic, _soft.Nic):
        return _soft.CompletionQueue(nic, entries, vipl=True)
    return CQ(nic, entries, vipl=True)


def VipDestroyCQ(cq: CQ) -> None:
    if cq.users:
        raise VipInvalidState(f"the completion queue still serves {cq.users} work queue(s): "
                              "destroy those VIs first")
    cq.close()


def VipResizeCQ(cq: CQ, entries: int) -> None:
    if entries < 1:
        raise VipInvalidParameter(f"a completion queue needs at least 1 entry, not {entries}")
    if isinstance(cq, _soft.CompletionQueue):
        _soft.resize_cq(cq, entries)
        return
    try:
        cq.cq.resize(entries)
    except VerbsError as exc:
        if exc.errno == 95:  # EOPNOTSUPP (siw)
            raise VipNotSupported(f"{cq.nic.name} cannot resize a completion queue: create "
                                  "it with enough entries") from exc
        raise VipErrorResource(str(exc), exc.errno) from exc


def VipCQDone(cq: CQ) -> tuple[Vi, bool] | None:
    """(vi, is_recv_queue) of the oldest completion on CQ, or None; take the descriptor with
    that VI's VipSendDone / VipRecvDone."""
    if isinstance(cq, _soft.CompletionQueue):
        return cq.done()
    cq.drain()
    while cq.fifo:
        vi, recv = cq.fifo.popleft()
        q = vi.recvq if recv else vi.sendq
        if q and q[0].wr_id in vi._done:
            return vi, recv
    return None


def VipCQWait(cq: CQ, timeout_ms: int | None) -> tuple[Vi, bool]:
    deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
    while True:
        got = VipCQDone(cq)
        if got is not None:
            return got
        left = 1000 if deadline is None else (deadline - time.monotonic()) * 1000
        if left <= 0:
            raise VipTimeout(f"no completion on the CQ in {timeout_ms} ms")
        cq.wait(min(left, 1000))


# ---- notification -----------------------------------------------------------------------------
def _notify(vi: Vi, recv: bool, context, handler: Callable) -> None:
    """Call HANDLER(context, nic, vi, descriptor) from a thread once the queue's head
    completes (VIPL: do not call Done/Wait on that queue meanwhile)."""
    if not callable(handler):
        raise VipInvalidParameter("the notify handler is not callable")

    def run() -> None:
        while vi in vi.nic.vis and not vi.nic.closed:
            try:
                d = vi.wait(recv, 200)
            except VipTimeout:
                continue
            except VipInvalidState:
                time.sleep(0.02)  # nothing posted yet (or not connected): look again
                continue
            except VipError:
                return
            handler(context, vi.nic, vi, d)
            return

    t = threading.Thread(target=run, name=f"via-notify-{vi.serial}", daemon=True)
    vi._notify.append(t)
    t.start()


def VipSendNotify(vi: Vi, context, handler: Callable) -> None:
    _notify(vi, False, context, handler)


def VipRecvNotify(vi: Vi, context, handler: Callable) -> None:
    _notify(vi, True, context, handler)


def VipErrorCallback(nic: Nic, context, handler: Callable | None = None) -> None:
    """HANDLER(context, ErrorDescriptor) runs on every asynchronous error of NIC's VIs (peer
    lost, transport or protection error, QP fatal, port down), from the thread that saw it.
    ``VipErrorCallback(nic, handler)`` (no context) is accepted too."""
    if handler is None and callable(context):
        context, handler = None, context
    if handler is not None and not callable(handler):
        raise VipInvalidParameter("the error handler is not callable")
    nic.error_context, nic.error_handler = context, handler


__all__ = [
    "CQ",
    "AddressSegment",
    "ConnRequest",
    "DataSegment",
    "ErrorDescriptor",
    "MemAttributes",
    "MemHandle",
    "NetAddress",
    "Nic",
    "NicAttributes",
    "Ptag",
    "ServernetInit",
    "ServernetReset",
    "Vi",
    "ViAttributes",
    "VipCQDone",
    "VipCQWait",
    "VipCloseNic",
    "VipConnectAccept",
    "VipConnectReject",
    "VipConnectRequest",
    "VipConnectWait",
    "VipCreateCQ",
    "VipCreatePtag",
    "VipCreateVi",
    "VipDeregisterMem",
    "VipDescriptor",
    "VipDescriptorError",
    "VipDestroyCQ",
    "VipDestroyPtag",
    "VipDestroyVi",
    "VipDisconnect",
    "VipError",
    "VipErrorCallback",
    "VipErrorResource",
    "VipInvalidParameter",
    "VipInvalidPtag",
    "VipInvalidRdmaRead",
    "VipInvalidReliabilityLevel",
    "VipInvalidState",
    "VipNoMatch",
    "VipNotReachable",
    "VipNotSupported",
    "VipOpenNic",
    "VipPostRecv",
    "VipPostSend",
    "VipQueryNic",
    "VipQuerySystemManagementInfo",
    "VipQueryVi",
    "VipRecvDone",
    "VipRecvNotify",
    "VipRecvWait",
    "VipRegisterMem",
    "VipReject",
    "VipResizeCQ",
    "VipSendDone",
    "VipSendNotify",
    "VipSendWait",
    "VipSetViAttributes",
    "VipTimeout",
    "address_of",
    "serve_reads",
    "shared_buffer",
]
