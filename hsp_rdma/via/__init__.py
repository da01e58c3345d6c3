"""hsp_rdma.via: the VIPL call list (VIA 1.0, as the patent drives it) in Python.

VIPL's semantics, Python's spelling: a failed call raises a VipError subclass whose ``code``
is the VipReturn; ``*Done`` returns None for NOT_DONE; ``*Wait`` raises VipTimeout. NIC names
are verbs devices (rxe0, siw0, mlx5_0); ``soft:<name>`` is reserved for the software provider.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

from hsp_rdma.cext.verbs import buffer_address
from hsp_rdma.errors import VerbsError
from hsp_rdma.via.constants import *
from hsp_rdma.via.constants import Reliability, VipReturn, ViState
from hsp_rdma.via.providers import verbs as _prov
from hsp_rdma.via.types import (
    AddressSegment,
    DataSegment,
    MemAttributes,
    MemHandle,
    NetAddress,
    NicAttributes,
    ViAttributes,
    VipDescriptor,
    VipError,
    VipErrorResource,
    VipInvalidParameter,
    VipInvalidPtag,
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


def address_of(buffer, offset: int = 0) -> int:
    """The virtual address of BUFFER[OFFSET], for DataSegment / AddressSegment."""
    return buffer_address(buffer, offset)


# ---- hardware init (patent-specific) -----------------------------------------------------
def ServernetInit(device: str | None = None) -> dict:
    """Find the device(s) behind a NIC name; check port state and the IPv4 address/GID."""
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
    """Flush every VI of NIC (descriptors complete DESC_FLUSHED); VIs end IDLE, memory stays."""
    for vi in list(nic.vis):
        vi.disconnect()


# ---- NIC --------------------------------------------------------------------------------
def VipOpenNic(name: str | None = None) -> Nic:
    if name is not None and name.startswith("soft:"):
        raise VipNotSupported("the software VIA provider is not built yet: use a verbs "
                              "device (rxe0, siw0, mlx5_0)")
    return Nic(name)


def VipCloseNic(nic: Nic) -> None:
    nic.close()


def VipQueryNic(nic: Nic) -> NicAttributes:
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
    return Ptag(nic)


def VipDestroyPtag(nic: Nic, ptag: Ptag) -> None:
    ptag.pd.close()


def VipRegisterMem(nic: Nic, buffer, attrs: MemAttributes) -> MemHandle:
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
    h = handle if isinstance(handle, MemHandle) else nic.handles.get(int(handle))
    if h is None or h.mr.closed:
        raise VipInvalidParameter(f"memory handle {int(handle)} is not registered on this NIC")
    if nic.handles.get(int(h)) is h:
        del nic.handles[int(h)]
    h.mr.close()


# ---- endpoints -------------------------------------------------------------------------------
def VipCreateVi(nic: Nic, attrs: ViAttributes, send_cq=None, recv_cq=None) -> Vi:
    return Vi(nic, attrs)


def VipDestroyVi(vi: Vi) -> None:
    vi.destroy()


def VipQueryVi(vi: Vi) -> tuple[ViState, ViAttributes, bool, bool]:
    return vi.state, vi.attrs, not vi.sendq, not vi.recvq


def VipSetViAttributes(vi: Vi, attrs: ViAttributes) -> None:
    if vi.state is not ViState.IDLE:
        raise VipInvalidState("attributes change only on an IDLE VI")
    vi.attrs = attrs


# ---- connections ------------------------------------------------------------------------------
class ConnRequest:
    """An incoming connection: the peer's discriminator and reliability, to accept or reject."""

    def __init__(self, nic: Nic, cmid, local: NetAddress, reliability: Reliability):
        self.nic, self.cmid, self.local, self.reliability = nic, cmid, local, reliability
        self.remote_attrs = ViAttributes(reliability_level=reliability)


def VipConnectWait(nic: Nic, local_addr: NetAddress, timeout_ms: int | None) -> ConnRequest:
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
    if vi.state is not ViState.IDLE:
        raise VipInvalidState(f"VI is {vi.state.name}: only an IDLE VI accepts")
    if conn.reliability != vi.attrs.reliability_level:
        conn.cmid.reject(_prov.reject_data(VipReturn.INVALID_RELIABILITY_LEVEL))
        raise VipInvalidReliabilityLevel(
            f"peer asks {conn.reliability.name}, this VI is {vi.attrs.reliability_level.name}")
    cx = _cx()
    try:
        vi._make_qp(conn.cmid)
        conn.cmid.accept(b"", 0)
    except VerbsError as exc:
        vi._reset_qp()
        raise VipErrorResource(str(exc), exc.errno) from exc
    ev = conn.nic.wait_event(lambda e: e[2] is conn.cmid, 30)
    if ev is None or ev[0] != cx.EV_ESTABLISHED:
        vi._reset_qp()
        raise VipNotReachable(f"the connection did not establish "
                              f"({cx.cm_event_str(ev[0]) if ev else 'timeout'})")
    vi.state = ViState.CONNECTED


def VipConnectReject(conn: ConnRequest) -> None:
    conn.cmid.reject(_prov.reject_data(VipReturn.REJECT))
    conn.cmid.close()


def VipConnectRequest(vi: Vi, local_addr: NetAddress, remote_addr: NetAddress,
                      timeout_ms: int | None) -> ViAttributes:
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


def VipErrorCallback(nic: Nic, callback: Callable | None) -> None:
    nic.error_callback = callback


__all__ = [
    "AddressSegment", "ConnRequest", "DataSegment", "MemAttributes", "MemHandle", "NetAddress",
    "Nic", "NicAttributes", "Ptag", "ServernetInit", "ServernetReset", "Vi", "ViAttributes",
    "VipCloseNic", "VipConnectAccept", "VipConnectReject", "VipConnectRequest",
    "VipConnectWait", "VipCreatePtag", "VipCreateVi", "VipDeregisterMem", "VipDescriptor",
    "VipDestroyPtag", "VipDestroyVi", "VipDisconnect", "VipError", "VipErrorCallback",
    "VipErrorResource", "VipInvalidParameter", "VipInvalidPtag", "VipInvalidReliabilityLevel",
    "VipInvalidState", "VipNoMatch", "VipNotReachable", "VipNotSupported", "VipOpenNic",
    "VipPostRecv", "VipPostSend", "VipQueryNic", "VipQueryVi", "VipRecvDone", "VipRecvWait",
    "VipRegisterMem", "VipReject", "VipSendDone", "VipSendWait", "VipSetViAttributes",
    "VipTimeout", "address_of",
]
