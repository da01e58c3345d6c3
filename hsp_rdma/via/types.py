"""The VIPL objects every provider shares: errors, descriptors, attributes, addresses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

from hsp_rdma.errors import HspError
from hsp_rdma.via.constants import Reliability, VipReturn


class VipError(HspError):
    """A VIPL call failed; ``code`` is the VipReturn, ``errno`` set when verbs gave one."""

    code = VipReturn.ERROR_RESOURCE

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


def _sub(name: str, code: VipReturn) -> type[VipError]:
    return type(name, (VipError,), {"code": code, "__doc__": f"VIP_{code.name}"})


VipInvalidParameter = _sub("VipInvalidParameter", VipReturn.INVALID_PARAMETER)
VipErrorResource = _sub("VipErrorResource", VipReturn.ERROR_RESOURCE)
VipTimeout = _sub("VipTimeout", VipReturn.TIMEOUT)
VipReject = _sub("VipReject", VipReturn.REJECT)
VipInvalidReliabilityLevel = _sub("VipInvalidReliabilityLevel",
                                  VipReturn.INVALID_RELIABILITY_LEVEL)
VipInvalidPtag = _sub("VipInvalidPtag", VipReturn.INVALID_PTAG)
VipInvalidRdmaRead = _sub("VipInvalidRdmaRead", VipReturn.INVALID_RDMAREAD)
VipDescriptorError = _sub("VipDescriptorError", VipReturn.DESCRIPTOR_ERROR)
VipInvalidState = _sub("VipInvalidState", VipReturn.INVALID_STATE)
VipNoMatch = _sub("VipNoMatch", VipReturn.NO_MATCH)
VipNotReachable = _sub("VipNotReachable", VipReturn.NOT_REACHABLE)
VipNotSupported = _sub("VipNotSupported", VipReturn.ERROR_NOT_SUPPORTED)


@dataclass(frozen=True)
class DataSegment:
    """A local gather/scatter element: address inside registered memory, its handle, length."""

    address: int
    handle: int
    length: int


@dataclass(frozen=True)
class AddressSegment:
    """The remote side of an RDMA operation: the peer's address and memory handle (rkey)."""

    address: int
    handle: int


@dataclass(eq=False)
class VipDescriptor:
    """A VIPL descriptor. The provider fills ``status`` and ``length`` on completion."""

    control: int = 0
    segments: list[DataSegment] | tuple[DataSegment, ...] = ()
    address: AddressSegment | None = None
    immediate: int = 0
    length: int = 0
    status: int = 0
    slot: int = -1  # free for the caller (e.g. which receive buffer this is)
    wr_id: int = 0  # set by the provider when posted
    reason: str = ""  # on an error completion, the provider's own words (verbs wc status)


@dataclass(frozen=True)
class MemAttributes:
    ptag: object
    enable_rdma_write: bool = False
    enable_rdma_read: bool = False


class MemHandle(int):
    """The value a peer puts in an AddressSegment (the rkey); ``lkey`` stays local."""

    lkey: int
    mr: object

    def __new__(cls, rkey: int, lkey: int, mr: object) -> Self:
        h = super().__new__(cls, rkey)
        h.lkey, h.mr = lkey, mr
        return h


@dataclass
class ViAttributes:
    reliability_level: Reliability = Reliability.RELIABLE_DELIVERY
    max_transfer_size: int = 0  # 0: the NIC's maximum
    qos: int = 0
    ptag: object = None
    enable_rdma_write: bool = False
    enable_rdma_read: bool = False


@dataclass(frozen=True)
class NetAddress:
    """The peer's IP on a fabric plus the discriminator that selects its listener."""

    host: str
    discriminator: bytes = b""


@dataclass
class NicAttributes:
    name: str
    hardware_version: int
    provider_version: str
    nic_address: str
    thread_safe: bool
    max_discriminator_len: int
    max_register_bytes: int
    max_register_regions: int
    max_register_block_bytes: int
    max_vi: int
    max_descriptors_per_queue: int
    max_segments_per_desc: int
    max_cq: int
    max_cq_entries: int
    max_transfer_size: int
    native_mtu: int
    max_ptags: int
    reliability_level_support: int
    rdma_read_support: int
    extra: dict = field(default_factory=dict)
